"""The worker: claims jobs from the store, runs up to N at once, honours cancels.

Its loop takes a free slot, then a job, then starts the job in a task of its
own; a slot is taken before a job is claimed so that a busy worker leaves
waiting jobs to others. A job's reply goes to the store part by part (text deltas,
reasoning, tool-call fragments, refusals) as the provider produces it; the store
fans it out to listeners. Its ``done`` carries the message the parts make.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from contextlib import aclosing

import orjson

from llm_worker.jobs.model import Claim, EventKind
from llm_worker.jobs.parts import Answer, Reasoning, Refusal, ToolCallDelta
from llm_worker.jobs.templates import TemplateError
from llm_worker.jobs.usage import JobUsage
from llm_worker.ops.logs import set_job
from llm_worker.ops.metrics import Metrics
from llm_worker.providers import Notice, ProviderError
from llm_worker.running.runner import Runner
from llm_worker.store import JobStore, NotOwner, StoreError

log = logging.getLogger(__name__)

CLAIM_WAIT_SECONDS = 5.0
STORE_ERROR_BACKOFF_SECONDS = 1.0
# After the grace, how long stopping the unfinished jobs and queueing them again may take.
GIVE_UP_SECONDS = 2.0


class Worker:
    def __init__(
        self,
        store: JobStore,
        runner: Runner,
        *,
        concurrency: int,
        max_attempts: int = 3,
        shutdown_grace: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.metrics = metrics or runner.metrics
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.shutdown_grace = shutdown_grace
        self._slots = asyncio.Semaphore(concurrency)
        self._jobs: dict[asyncio.Task[None], Claim] = {}
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        """Jobs this worker is running now."""
        return len(self._jobs)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._claim_forever(), name="worker-claim-loop")

    async def drain(self, until: float) -> None:
        """Stop claiming; let running jobs finish until ``until`` (loop time), then give
        up those still running: a shared or durable store queues them again."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if not self._jobs:
            return
        remaining = max(until - asyncio.get_running_loop().time(), 0)
        log.info("waiting up to %.0fs for %d running jobs", remaining, len(self._jobs))
        _, unfinished = await asyncio.wait(list(self._jobs), timeout=remaining)
        if not unfinished:
            return
        # Giving the rest up takes the store: bounded, so that a store that is away
        # (the jobs' last events waiting for it too) cannot hold the stop up.
        claims = [claim for task in unfinished if (claim := self._jobs.get(task)) is not None]
        giving_up = asyncio.ensure_future(self._give_up(unfinished, claims))
        _, late = await asyncio.wait({giving_up}, timeout=GIVE_UP_SECONDS)
        if late:
            giving_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await giving_up
            log.warning(
                "%d unfinished jobs could not be queued again within %.0fs (the store does not "
                "answer): another worker takes them over once their claims go stale",
                len(claims),
                GIVE_UP_SECONDS,
            )

    async def _give_up(self, tasks: set[asyncio.Task[None]], claims: list[Claim]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        outcomes = await asyncio.gather(
            *(
                self.store.release(
                    claim.job_id, claim.attempt, "the worker stopped before the job finished"
                )
                for claim in claims
            ),
            return_exceptions=True,
        )
        for claim, outcome in zip(claims, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.warning("job %s could not be queued again: %s", claim.job_id, outcome)

    async def stop(self) -> None:
        """Stop claiming; let running jobs finish within the grace period, then give them up."""
        await self.drain(asyncio.get_running_loop().time() + self.shutdown_grace)

    async def _claim_forever(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                claim = await self.store.claim(max_wait=CLAIM_WAIT_SECONDS)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except Exception as exc:
                self._slots.release()
                self.metrics.store_errors.labels("claim").inc()
                if isinstance(exc, StoreError):  # an outage, said in one line
                    log.warning("claiming a job failed: %s; trying again shortly", exc)
                else:
                    log.exception("claiming a job failed; trying again shortly")
                await asyncio.sleep(STORE_ERROR_BACKOFF_SECONDS)
                continue
            if claim is None:
                self._slots.release()
                continue
            task = asyncio.create_task(self._execute(claim), name=f"job-{claim.job_id}")
            self._jobs[task] = claim
            task.add_done_callback(self._job_finished)

    def _job_finished(self, task: asyncio.Task[None]) -> None:
        self._jobs.pop(task, None)
        self._slots.release()

    async def _execute(self, claim: Claim) -> None:
        job_id, attempt, store = claim.job_id, claim.attempt, self.store
        if attempt > self.max_attempts:
            log.warning("job %s given up after %d attempts", job_id, attempt - 1)
            await self._fail(
                claim,
                f"gave up after {attempt - 1} attempts: the worker running the job "
                "stopped each time before it finished (JOB_MAX_ATTEMPTS)",
            )
            return
        task = asyncio.current_task()
        assert task is not None
        cancelled = False

        def on_cancel() -> None:
            nonlocal cancelled
            cancelled = True
            task.cancel()

        set_job(job_id, claim.tenant)  # this task's log lines are about the job
        stop_watching = store.on_cancel(job_id, on_cancel)
        started = time.perf_counter()
        if attempt == 1 and claim.created_at:
            # A scheduled job waits in the queue from its time on, not from its add.
            queued_at = max(claim.created_at, claim.spec.run_at or 0.0)
            self.metrics.queue_wait.observe(max(time.time() - queued_at, 0.0))
        outcome: str | None = None
        log.debug("job %s started (attempt %d)", job_id, attempt)
        start = _StartEvent(store.append(job_id, attempt, EventKind.RUNNING))
        try:
            await self._produce(claim, start)
            outcome = "done"
            # A line per job is noise at INFO under load; failures and cancels are logged there.
            log.debug("job %s done in %.3fs", job_id, time.perf_counter() - started)
        except (ProviderError, TemplateError) as exc:
            log.info("job %s failed: %s", job_id, exc)
            await start.settled()
            if await self._fail(claim, str(exc)):
                outcome = "failed"
        except NotOwner:
            log.info("job %s ended elsewhere (cancelled, taken over, or lost)", job_id)
        except StoreError as exc:
            # The store ended the job itself: its listeners got `failed`.
            log.warning("job %s stopped: %s", job_id, exc)
        except asyncio.CancelledError:
            if not cancelled:
                raise  # the worker is stopping; stop() gives the job up
            log.info("job %s cancelled after %.3fs", job_id, time.perf_counter() - started)
            outcome = "cancelled"
        except Exception as exc:
            log.exception("job %s crashed", job_id)
            await start.settled()
            if await self._fail(claim, f"internal error while running the job: {exc!r}"):
                outcome = "failed"
        finally:
            start.discard()
            stop_watching()
            self._count(claim, outcome, time.perf_counter() - started)

    async def _produce(self, claim: Claim, start: _StartEvent) -> None:
        """Run the job, storing what it produces as it comes (its notices, the parts of
        its reply), then ``done`` with the message they make and what its model calls
        took."""
        job_id, attempt, store = claim.job_id, claim.attempt, self.store
        usage = JobUsage(len(claim.spec.assistant.streams))
        answer = Answer()
        add = answer.add
        awaiting_output = True
        async with aclosing(self.runner.run(claim.spec, usage)) as parts:
            async for part in parts:
                kind = type(part)
                if kind is Notice:  # for the listeners, no part of the answer
                    await start.landed()
                    await store.append(job_id, attempt, EventKind.NOTICE, part.message)  # type: ignore[union-attr]
                    continue
                if awaiting_output:
                    awaiting_output = False
                    self.metrics.first_delta(job_id, time.perf_counter())
                    await start.landed()
                add(part)  # type: ignore[arg-type]
                if kind is str:
                    await store.append(job_id, attempt, EventKind.RUNNING, part)  # type: ignore[arg-type]
                else:
                    event = _event_of(part)  # type: ignore[arg-type]
                    if event is not None:
                        await store.append(job_id, attempt, *event)
        await start.landed()  # a reply without any output
        # The message the reply makes, what the calls took and why the answer ended.
        summary = usage.as_json()
        summary["message"] = answer.message()
        await store.append(job_id, attempt, EventKind.DONE, orjson.dumps(summary).decode())

    def _count(self, claim: Claim, outcome: str | None, seconds: float) -> None:
        """A job's end in the metrics (``None``: it ended elsewhere, or not at all)."""
        if outcome != "done":  # a done job's first text may be on its way still
            self.metrics.forget(claim.job_id)
        if outcome is not None:
            self.metrics.job_duration.labels(outcome).observe(seconds)
            self.metrics.job_finished(outcome, claim.spec, claim.tenant)

    async def _fail(self, claim: Claim, message: str) -> bool:
        """Fail the job; whether its failure was stored (the job was still its attempt's)."""
        try:
            await self.store.append(claim.job_id, claim.attempt, EventKind.FAILED, message)
        except NotOwner:
            return False
        except StoreError as exc:
            self.metrics.store_errors.labels("append").inc()
            log.warning("job %s: its failure could not be stored: %s", claim.job_id, exc)
            return False
        return True


class _StartEvent:
    """A job's start event, stored while its model call begins (a store may take a round
    trip for it): every later event goes after it, and failed never precedes it."""

    __slots__ = ("_pending",)

    def __init__(self, append: Awaitable[object]) -> None:
        self._pending: asyncio.Future[object] | None = asyncio.ensure_future(append)

    async def landed(self) -> None:
        """Wait for it to be stored (once; at once after that)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    async def settled(self) -> None:
        """Let it land, or fail, before the job's failure is stored."""
        if self._pending is not None:
            with contextlib.suppress(Exception):
                await self._pending

    def discard(self) -> None:
        """Let go of it if nobody waits for it any more, taking its outcome."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if not pending.done():
            pending.cancel()
        pending.add_done_callback(_take_outcome)


def _take_outcome(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


def _event_of(part: Reasoning | ToolCallDelta | Refusal) -> tuple[EventKind, str] | None:
    """The log event of a typed part of the reply; ``None`` for one listeners are not
    shown as it comes (a reasoning block's signature: ``done``'s message carries it)."""
    if type(part) is ToolCallDelta:
        return EventKind.TOOL_CALL, part.as_json()
    if type(part) is Reasoning:
        return (EventKind.REASONING, part.text) if part.text else None
    if type(part) is Refusal:
        return (EventKind.REFUSAL, part.text) if part.text else None
    return None
