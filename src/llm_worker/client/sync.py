"""The blocking client: :class:`~llm_worker.client.asyncio.Client` on an event loop in
a thread of its own, for scripts, and for notebooks whose loop must not block."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from llm_worker.client.asyncio import Client, Job
from llm_worker.client.errors import ClientError
from llm_worker.client.events import Event, Status
from llm_worker.client.results import Result

T = TypeVar("T")


class SyncClient:
    """A :class:`Client` for code without an event loop of its own (scripts), or whose
    loop must not block (notebooks): the client runs on a loop in a thread of its own.

    ``with SyncClient(url) as client: print(client.submit(query, assistant).text())``.
    Options as for :class:`Client`.
    """

    def __init__(self, url: str, api_key: str | None = None, **options: float) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="llm-worker-client", daemon=True
        )
        self._thread.start()
        try:
            self._client = self._call(_connected_client(url, api_key, options))
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coroutine.close()
            raise ClientError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted (Ctrl-C): stop what it was doing
            raise

    def submit(
        self,
        query: str,
        assistant: Mapping[str, Any],
        history: list[Mapping[str, Any]] | None = None,
        variables: Mapping[str, str | int | float | bool] | None = None,
    ) -> SyncJob:
        """Queue a job and follow it: see :meth:`Client.submit`."""
        job = self._call(self._client.submit(query, assistant, history, variables))
        return SyncJob(self, job)

    def job(self, job_id: str, after: int = 0) -> SyncJob:
        """Follow a job by its id: see :meth:`Client.job`."""
        return SyncJob(self, self._call(_follow(self._client, job_id, after)))

    def status(self, job_id: str) -> Status:
        """See :meth:`Client.status`."""
        return self._call(self._client.status(job_id))

    def cancel(self, job_id: str) -> None:
        """See :meth:`Client.cancel`."""
        self._call(self._client.cancel(job_id))

    def close(self) -> None:
        """Close the connection and stop the client's thread."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _connected_client(url: str, api_key: str | None, options: dict[str, float]) -> Client:
    client = Client(url, api_key, **options)
    await client.connect()
    return client


async def _follow(client: Client, job_id: str, after: int) -> Job:
    return client.job(job_id, after)


async def _next_event(job: Job) -> Event | None:
    try:
        return await job.__anext__()
    except StopAsyncIteration:
        return None


class SyncJob:
    """A :class:`Job` for blocking code: ``for event in job``, ``job.text()``, ..."""

    def __init__(self, client: SyncClient, job: Job) -> None:
        self._client = client
        self._job = job

    def __repr__(self) -> str:
        return f"<SyncJob {self.id} last_seq={self.last_seq}>"

    @property
    def id(self) -> str:
        return self._job.id

    @property
    def listen_token(self) -> str | None:
        return self._job.listen_token

    @property
    def last_seq(self) -> int:
        return self._job.last_seq

    @property
    def ended(self) -> bool:
        return self._job.ended

    @property
    def message(self) -> dict[str, Any]:
        """See :attr:`Job.message`."""
        return self._job.message

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """See :attr:`Job.tool_calls`."""
        return self._job.tool_calls

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        event = self._client._call(_next_event(self._job))
        if event is None:
            raise StopIteration
        return event

    def text(self) -> str:
        """See :meth:`Job.text`."""
        return self._client._call(self._job.text())

    def result(self) -> Result:
        """See :meth:`Job.result`."""
        return self._client._call(self._job.result())

    def cancel(self) -> None:
        """See :meth:`Job.cancel`."""
        self._client._call(self._job.cancel())

    def status(self) -> Status:
        """See :meth:`Job.status`."""
        return self._client._call(self._job.status())
