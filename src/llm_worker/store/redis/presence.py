"""Which workers are alive: each says so every second, by Redis's clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from llm_worker.aio.tasks import cancel_requested
from llm_worker.store.base import WorkerCensus
from llm_worker.store.redis.connection import Connection
from llm_worker.store.redis.reachability import UNREACHABLE
from llm_worker.store.redis.scripts import CENSUS, PRESENT

log = logging.getLogger(__name__)

# How often a worker says it is alive, and how long one silent is remembered (as quiet).
_PRESENCE_SECONDS = 1.0
_FORGET_SILENT_SECONDS = 600.0


class Presence:
    """This worker's word that it is alive, and the census of every worker's."""

    def __init__(self, conn: Connection, worker_name: str, *, quiet_after: float) -> None:
        self._conn = conn
        self.worker_name = worker_name
        self.quiet_after = quiet_after
        """How long a worker may go unheard before it counts as gone quiet."""
        self.present = False
        """Whether this process claims jobs, and so says it is alive."""

    async def say_forever(self) -> None:
        """Say this worker is alive, every second."""
        while True:
            try:
                await self._conn.run(
                    PRESENT,
                    workers_key=self._conn.keys.workers_key,
                    worker=self.worker_name,
                    forget_after_ms=int(_FORGET_SILENT_SECONDS * 1000),
                )
            except UNREACHABLE as exc:
                self._conn.reach.went_down(exc)
            except Exception:
                log.exception("saying this worker is alive failed")
            if cancel_requested():  # a stop's cancel that the Redis client swallowed
                raise asyncio.CancelledError
            await asyncio.sleep(_PRESENCE_SECONDS)

    async def leave(self) -> None:
        """This worker is gone, not quiet (if it said it was present, and Redis is here)."""
        if self.present and not self._conn.reach.down:
            with contextlib.suppress(*UNREACHABLE, TimeoutError):
                await asyncio.wait_for(
                    self._conn.client.zrem(self._conn.keys.workers_key, self.worker_name), 1.0
                )

    async def census(self) -> WorkerCensus:
        now_ms, heard = await self._conn.reach.for_client(
            lambda: self._conn.run(CENSUS, workers_key=self._conn.keys.workers_key)
        )
        alive = 0
        quiet: dict[str, float] = {}
        for name, last_heard_ms in heard:
            silent = (now_ms - last_heard_ms) / 1000
            if silent > self.quiet_after:
                quiet[name] = silent
            else:
                alive += 1
        return WorkerCensus(alive, quiet)
