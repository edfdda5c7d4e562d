"""The HTTP API beside the WebSocket: jobs created, read, streamed and cancelled with
plain HTTP, on the same port, with the same keys, tenants, origins and limits.

    POST /v1/jobs                  the ``add`` fields as JSON -> 201 {"job_id": ...}
    GET  /v1/jobs/{id}             the ``status`` reply
    GET  /v1/jobs/{id}/events      Server-Sent Events, resumable
    POST /v1/jobs/{id}/cancel      the ``cancelled`` reply, or 409 if the job had ended
    GET  /v1/jobs?state=&limit=    the newest jobs of every tenant: for an admin key
    GET  /v1/catalog               the providers, inserts and pipelines templates may name

The events endpoint sends each frame of the full protocol as one event: ``id:``
is its ``seq``, ``event:`` its ``type``, ``data:`` the frame. With ``?events=typed``
(there, and on ``GET /v1/jobs/{id}``) it is the typed protocol's frames: the
reply's reasoning, tool calls and refusals, and the finished message
(:mod:`llm_worker.wire.events`). It starts after
``Last-Event-ID`` (what a browser's ``EventSource`` sends when it reconnects) or
``?after=``, and ends after the job's terminal event. Asked for more once the
job has ended, it answers 204, which tells ``EventSource`` to stop reconnecting.
A stream whose reader leaves it unread for ``SLOW_LISTENER_SECONDS`` is cut, to
be resumed like any other: whether its writes wait (the buffers between are
full), or what was sent stays unacknowledged by the reader's TCP (a path that
went dark, which the kernel's buffers hide from the first test). An idle stream
sends a comment every ``SSE_KEEPALIVE_SECONDS``, which also finds a reader gone.
Resuming after a seq past the end of a running job's log (never sent, or lost with
a worker that died) resumes from the log's end: the stream still ends with the
job's terminal event. Past the end of an ended job's log, nothing can have been
lost: 409 ``after_beyond_end`` (the request is sound, the job's state makes it
wrong), saying where the log ends.

``POST /v1/jobs`` with ``Idempotency-Key`` adds its job once per key
(:mod:`.idempotent`): a replay answers 201 naming the first add's job, its state as
it stands now, with ``Idempotent-Replayed: true``.

Errors are JSON, ``{"type": "error", "code": ..., "message": ...}``, with the
WebSocket's messages, a stable ``code`` (:mod:`llm_worker.wire.errors`) and the status
codes of HTTP: 400 a bad request, 401 no valid key, 403 a listen token asking
more than to listen (or a key not an admin's listing jobs), 404 an unknown job,
409 a cancel of a job that ended or an idempotency key reused for another request,
410 a job that expired (``expired``), 413 a request above ``MAX_MESSAGE_BYTES``, 429
a tenant over its limits, 503 the queue full, the store away or the worker
stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from llm_worker.jobs.model import JobRecord, JobState
from llm_worker.server.access import Principal
from llm_worker.server.follower import Follower
from llm_worker.server.idempotent import HEADER as IDEMPOTENCY_HEADER
from llm_worker.server.idempotent import REPLAYED_HEADER, idempotent_add
from llm_worker.server.refusals import Refused, error_response, refusal_response
from llm_worker.server.sse import KEEPALIVE, JobStream
from llm_worker.store import StoreError
from llm_worker.store.base import ListingKey
from llm_worker.wire import errors, protocol
from llm_worker.wire.dialects import Dialect
from llm_worker.wire.events import Frame
from llm_worker.wire.protocol import AddRequest, ProtocolError

if TYPE_CHECKING:
    from llm_worker.server.gateway import Gateway

log = logging.getLogger(__name__)

# Jobs a listing answers with, unless it asks for fewer; at most.
LISTING_LIMIT = 50
# Notices (an outage, a quiet worker) an event stream holds for a reader that does not read.
MAX_NOTICES = 16
LISTING_MAX = 500


class JobsAPI:
    """The ``/v1/jobs`` routes, served by the gateway's operations."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[Route]:
        return [
            # One route per path, so that a 405 lists every method the path serves.
            Route("/v1/jobs", _answered(self.jobs), methods=["GET", "POST"]),
            Route("/v1/catalog", _answered(self.catalog), methods=["GET"]),
            Route("/v1/jobs/{job_id}", _answered(self.get), methods=["GET"]),
            Route("/v1/jobs/{job_id}/events", _answered(self.events), methods=["GET"]),
            Route("/v1/jobs/{job_id}/cancel", _answered(self.cancel), methods=["POST"]),
        ]

    # -- requests -------------------------------------------------------------

    async def jobs(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.create(request)
        return await self.listing(request)

    async def create(self, request: Request) -> Response:
        try:
            principal = self.gateway.authenticate(request)
            body = await read_body(request, self.gateway.limits.max_message_bytes)
            add = self._add_request(body)
            # Each checked when given; the header wins.
            in_body = idempotent_add(add.idempotency_key, "idempotency_key")
            once = idempotent_add(request.headers.get(IDEMPOTENCY_HEADER)) or in_body
            record, token = await self.gateway.add_job(
                principal, add.to_spec(), add.webhook, once=once, run_at=add.run_at, delay=add.delay
            )
            if once is not None and once.replayed:  # the job as it stands now
                record = await self.gateway.store.get(record.id) or record
        except (Refused, StoreError) as exc:
            return refusal_response(exc)
        reply: dict[str, Any] = {"job_id": record.id, "state": record.shown_state(time.time())}
        if token is not None:
            reply["listen_token"] = token
        headers = {"location": f"/v1/jobs/{record.id}"}
        if once is not None and once.replayed:  # the first add's answer, again
            headers[REPLAYED_HEADER] = "true"
        return JSONResponse(reply, status_code=201, headers=headers)

    async def get(self, request: Request) -> Response:
        try:
            principal = self.gateway.authenticate(request)
            typed = _typed(request)
            frame = await self.gateway.status_of(principal, request.path_params["job_id"], typed)
        except (Refused, StoreError) as exc:
            return refusal_response(exc)
        return Response(frame, media_type="application/json")

    async def cancel(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            principal = self.gateway.authenticate(request)
            record = await self.gateway.cancel_job(principal, job_id)
        except (Refused, StoreError) as exc:
            return refusal_response(exc)
        if record.state is not JobState.CANCELLED:
            return error_response(
                errors.JOB_ENDED,
                f"job {record.id} already ended ({record.state.value}); nothing to cancel",
            )
        return Response(protocol.cancelled(record.id), media_type="application/json")

    async def listing(self, request: Request) -> Response:
        try:
            principal = self.gateway.authenticate(request)
            state, limit, below = _listing_query(request)
            # One more than the page: whether a next one starts after it.
            records = await self.gateway.recent_jobs(principal, state, limit + 1, below)
        except (Refused, StoreError) as exc:
            return refusal_response(exc)
        page = records[:limit]
        reply: dict[str, Any] = {"jobs": [_summary(record) for record in page]}
        if len(records) > limit:
            reply["next"] = ListingKey.of(page[-1]).cursor()
        return JSONResponse(reply)

    async def catalog(self, request: Request) -> Response:
        try:
            principal = self.gateway.authenticate(request)
            return JSONResponse(self.gateway.catalog(principal))
        except Refused as exc:
            return refusal_response(exc)

    async def events(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            principal = self.gateway.authenticate(request)
            after = _resume_point(request)
            dialect = Dialect.TYPED if _typed(request) else Dialect.FULL
            record = await self.gateway.visible(principal, job_id)
            # From the event `after` on: whether the job has sent it, and what follows.
            since = await self.gateway.store.read(job_id, max(after - 1, 0))
            if after and not since:
                # Past the log's end: never sent, or lost with a worker that died before
                # its store had it. Followed as it is, it would skip every event up to
                # it, the job's end included: resume from the log's end instead.
                after = max(
                    (event.seq for event in await self.gateway.store.read(job_id)), default=0
                )
                if record.state.finished:  # nothing was lost: the client is wrong
                    raise Refused(
                        f"after {_resume_point(request)} is beyond the end of job {job_id}'s "
                        f"log: it ended, at seq {after}",
                        errors.AFTER_BEYOND_END,
                    )
            if record.state.finished and not any(event.seq > after for event in since):
                # Nothing more will come: 204 tells EventSource not to reconnect.
                return Response(status_code=204)
        except (Refused, StoreError) as exc:
            return refusal_response(exc)
        return EventStream(self.gateway, principal, job_id, after, dialect)

    # -- reading requests -------------------------------------------------------

    @staticmethod
    def _add_request(body: bytes) -> AddRequest:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Refused(f"not valid JSON: {exc}", errors.INVALID_JSON) from None
        if not isinstance(obj, dict):
            raise Refused(
                "a job must be a JSON object with the fields of 'add'", errors.INVALID_JSON
            )
        whole_numbers(obj)
        try:
            request = protocol.request_from({**obj, "type": "add"})
        except ProtocolError as exc:
            raise Refused(exc.message, errors.INVALID_JOB) from None
        assert isinstance(request, AddRequest)
        return request


# Whole numbers written as floats (5.0) are integers to JSON Schema, and so to the
# API: the checks of integer settings and options take them (those that fit 64 bits).
_EXACT_FLOATS = 2.0**63


def whole_numbers(obj: dict[str, Any]) -> None:
    """Turn the whole numbers written as floats in ``obj`` (nested) into ints, in place."""
    stack: list[dict[str, Any] | list[Any]] = [obj]
    while stack:
        container = stack.pop()
        keys = container.keys() if isinstance(container, dict) else range(len(container))
        for key in keys:
            value = container[key]  # type: ignore[index]
            if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_FLOATS:
                container[key] = int(value)  # type: ignore[index]
            elif isinstance(value, dict | list):
                stack.append(value)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) past ``limit`` bytes (``MAX_MESSAGE_BYTES``)
    without reading on."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(_too_large(int(declared), limit), errors.PAYLOAD_TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(_too_large(size, limit), errors.PAYLOAD_TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)


def _answered(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """``handler``, answering in JSON even when it fails: a bug of ours costs the one
    request a 500, with a message in the API's shape, and a traceback in the log."""

    @functools.wraps(handler)
    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(
                errors.INTERNAL_ERROR,
                f"internal error while handling {request.method} {request.url.path}",
            )

    return answer


def _too_large(size: int, limit: int) -> str:
    return f"message too large: {size} bytes, the limit is {limit} (MAX_MESSAGE_BYTES)"


def _listing_query(request: Request) -> tuple[JobState | None, int, ListingKey | None]:
    """A listing's ``state`` (any when absent), ``limit`` and where its page starts (the
    ``cursor`` a page before gave as ``next``; the newest job when absent);
    :class:`Refused` (400) for a state that is none, a limit that is not a whole number
    from 1 to the most, or a cursor this listing never gave (an empty value is neither:
    absent is how to say "any")."""
    state_text = request.query_params.get("state")
    limit_text = request.query_params.get("limit")
    cursor = request.query_params.get("cursor")
    below = None
    if cursor is not None:
        try:
            below = ListingKey.from_cursor(cursor)
        except ValueError:
            raise Refused(
                f"cursor must be the 'next' of a page of this listing, not {cursor[:40]!r}"
            ) from None
    state = None
    if state_text is not None:
        try:
            state = JobState(state_text)
        except ValueError:
            states = ", ".join(JobState)
            raise Refused(f"state must be one of {states}, not {state_text[:40]!r}") from None
    if limit_text is None:
        return state, LISTING_LIMIT, below
    if not (
        limit_text.isascii()
        and limit_text.isdigit()
        and len(limit_text) <= len(str(LISTING_MAX))
        and 1 <= int(limit_text) <= LISTING_MAX
    ):
        raise Refused(
            f"limit must be a whole number from 1 to {LISTING_MAX}, not {limit_text[:40]!r}"
        )
    return state, int(limit_text), below


def _summary(record: JobRecord) -> dict[str, Any]:
    """A job as a listing shows it."""
    return {
        "job_id": record.id,
        "state": record.shown_state(time.time()),
        "created_at": record.created_at,
        "finished_at": record.finished_at,
        "attempt": record.attempt,
        "error": record.error,
        "tenant": record.tenant,
    }


def _typed(request: Request) -> bool:
    """Whether ``?events=`` asks for typed events (``typed``) or the text alone (``text``,
    the default); :class:`Refused` (400) for anything else."""
    events = request.query_params.get("events", "text")
    if events not in ("text", "typed"):
        raise Refused(f"events must be 'text' or 'typed', not {events[:40]!r}")
    return events == "typed"


def _resume_point(request: Request) -> int:
    """The seq to resume after: ``Last-Event-ID`` first (a reconnecting ``EventSource``
    sends it, with the URL it started with), else ``?after=``, else 0. Each, when
    present, must be a seq (:class:`Refused`, 400, otherwise; an empty one too)."""
    seqs = [
        _seq(name, value)
        for name, value in (
            ("Last-Event-ID", request.headers.get("last-event-id")),
            ("after", request.query_params.get("after")),
        )
        if value is not None
    ]
    return seqs[0] if seqs else 0


# Digits a seq may have: few enough for a seq (Redis keeps seqs in 64 bits).
SEQ_DIGITS = 18


def _seq(name: str, value: str) -> int:
    # ASCII digits only ("²" is a digit to str.isdigit, not to int).
    if not (value.isascii() and value.isdigit() and len(value) <= SEQ_DIGITS):
        raise Refused(
            f"{name} must be a seq, a whole number from 0 to {10**SEQ_DIGITS - 1}, "
            f"not {value[:40]!r}"
        )
    return int(value)


class EventStream(JobStream):
    """One job's log as Server-Sent Events, live, in the full protocol's frames (or the
    typed protocol's), with the notices about its job (:meth:`announce`) between them."""

    def __init__(
        self,
        gateway: Gateway,
        principal: Principal,
        job_id: str,
        after: int,
        dialect: Dialect = Dialect.FULL,
    ) -> None:
        super().__init__(gateway, principal, job_id)
        self.after = after
        self.dialect = dialect
        self.followers: dict[str, asyncio.Task[None]] = {}
        """The job it relays, by the task relaying it (what a gateway's listener has)."""
        self._notices: asyncio.Queue[bytes] = asyncio.Queue(MAX_NOTICES)

    def announce(self, message: str, jobs: Collection[str] | None, code: str) -> None:
        """Tell the reader ``message`` about its job (if among ``jobs``), as an ``error``
        event with ``code``: the store is away, or the job's worker went quiet. A
        reader that lets notices pile up misses the ones past :data:`MAX_NOTICES`."""
        if jobs is not None and self.job_id not in jobs:
            return
        frame = Frame(protocol.error(message, self.job_id, code), "error")
        with contextlib.suppress(asyncio.QueueFull):
            self._notices.put_nowait(_sse(frame))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A listener of the gateway's while it streams: it is told of outages.
        self.gateway.event_streams.add(self)
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.gateway.event_streams.discard(self)

    def side_tasks(self, send: Send) -> list[Coroutine[Any, Any, None]]:
        return [self._announce(send)]

    async def _announce(self, send: Send) -> None:
        """Write the notices :meth:`announce` queues, between the job's events."""
        while True:
            notice = await self._notices.get()
            await send({"type": "http.response.body", "body": notice, "more_body": True})

    async def chunks(self) -> AsyncIterator[bytes]:
        """The stream's bytes: its events, comments to keep it alive, and its end."""
        follower = Follower(
            self.gateway.store, self.gateway.metrics, self.job_id, self.dialect, self.after
        )
        keepalive = self.gateway.limits.sse_keepalive_seconds
        async for frames in follower.watch(keepalive):
            yield KEEPALIVE if frames is None else b"".join(map(_sse, frames))


def _sse(frame: Frame) -> bytes:
    """One frame as one Server-Sent Event: its seq as ``id:``, its type as ``event:``."""
    # A frame is one line of JSON: its newlines are escaped, so one data line holds it.
    if frame.seq is None:
        return f"event: {frame.type}\ndata: {frame.text}\n\n".encode()
    return f"id: {frame.seq}\nevent: {frame.type}\ndata: {frame.text}\n\n".encode()
