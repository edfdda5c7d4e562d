"""The client's side of one WebSocket connection, with no socket: sans-I/O.

A :class:`Session` turns what its user asks for into frames to send
(:meth:`Session.frames_to_send`) and the frames that come in
(:meth:`Session.receive`) into answers to requests and events of the jobs it
follows. It never waits and never touches a socket: an I/O shell
(:mod:`llm_worker.client.asyncio`, and through it the blocking client and the
command line) opens connections, sends, reads and wakes whoever waits. Every rule
of the protocol is here, each testable by feeding frames:

- Resuming. On a new connection (:meth:`Session.connected`) every job followed is
  asked for again with ``listen`` and ``after`` = the last ``seq`` it got, and every
  ``status`` again (asking twice changes nothing). An ``add`` or a ``cancel`` in
  flight when the connection drops fails with :class:`ConnectionLost`: sending it
  again could run the job twice, or the answer was lost.
- Order. A job's events pass once each, in order, across connections
  (:class:`EventFilter`); a job that runs again after its worker died yields
  :class:`Reset`.
- The answer. As its consumer reads a job's events, they are put together into the
  assistant message (:class:`~llm_worker.client.results.Assembly`): tool calls from
  their fragments, so the calls in progress can be read; a resumed job goes on with
  what it had (each fragment once), a :class:`Reset` voids it.
- Versions. The client offers :data:`SUBPROTOCOLS`, the newest first: a service that
  speaks ``llm-worker.v3`` sends typed events (reasoning, tool calls, refusals) and
  the finished message with ``done``; an older one, ``llm-worker.v2``, text only.
  Frames of a type the client does not know (from a newer service) are skipped.
- A bounded buffer per job. When ``max_buffered_events`` of a job wait for its
  consumer, the session stops following it (``unlisten``, then a ``ping`` whose
  ``pong`` fences the frames still in flight, which are dropped); once its consumer
  has read half of them and the fence has come back, it follows it again with
  ``listen`` and ``after`` = the last ``seq`` buffered.
- Refusals. An ``error`` is matched to what it refuses by its ``ref`` (an ``add``'s
  id, or a job's id: its oldest request waiting, else its ``listen``), and is known
  for what it is by its ``code`` (:func:`~llm_worker.client.errors.refusal`).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from llm_worker.client.errors import (
    ClientError,
    ConnectionLost,
    JobNotFound,
    RequestRefused,
    refusal,
)
from llm_worker.client.events import Event, EventFilter, Notice, decode_event, decode_status
from llm_worker.client.results import Assembly
from llm_worker.wire.dialects import SUBPROTOCOL, TYPED_SUBPROTOCOL

log = logging.getLogger(__name__)

SUBPROTOCOLS = (TYPED_SUBPROTOCOL, SUBPROTOCOL)
"""The WebSocket subprotocols the client speaks, the one it prefers first."""

_LOST = (
    "the connection dropped before the answer came: "
    "the request may or may not have been carried out"
)


class Follow:
    """A job the session follows: the events (or the error) its consumer has yet to read.

    ``paused`` while its consumer has too many to read: the service was asked to
    stop sending the job, and ``fence`` names the ``ping`` whose ``pong`` tells that
    the last of its frames has come (``None`` once it has). ``assembly`` is the answer
    its consumer's events have put together. ``waker`` belongs to the I/O shell (what
    to wake when events come); the session never touches it.
    """

    __slots__ = ("assembly", "buffer", "fence", "filter", "job_id", "paused", "waker")

    def __init__(self, job_id: str, after: int) -> None:
        self.job_id = job_id
        self.filter = EventFilter(after)
        self.assembly = Assembly()
        self.buffer: deque[Event | ClientError] = deque()
        self.paused = False
        self.fence: str | None = None
        self.waker: Any = None


RequestKind = Literal["add", "cancel", "status"]


class Request:
    """An ``add``, ``cancel`` or ``status`` awaiting its answer; ``settled`` once
    ``result`` or ``error`` holds it. An add's result is its ``(Follow, listen_token)``,
    a status's a :class:`Status`, a cancel's ``None``. ``waiter`` belongs to the I/O
    shell; the session never touches it."""

    __slots__ = ("error", "frame", "key", "kind", "result", "settled", "waiter")

    def __init__(self, kind: RequestKind, key: str, frame: str) -> None:
        self.kind = kind
        self.key = key
        """The add's id, or the job's id (what the service's answer names)."""
        self.frame = frame
        self.result: Any = None
        self.error: ClientError | None = None
        self.settled = False
        self.waiter: Any = None

    def settle(self, result: Any = None, error: ClientError | None = None) -> None:
        if not self.settled:
            self.result, self.error, self.settled = result, error, True


Change = Follow | Request
"""What a call changed: a job with new events to read, or a request settled."""


class Session:
    """The protocol state of a client's connection, and of the next ones."""

    def __init__(self, max_buffered_events: int = 1000) -> None:
        if max_buffered_events < 2:
            raise ValueError("max_buffered_events must be at least 2")
        self.max_buffered_events = int(max_buffered_events)
        self.follows: dict[str, Follow] = {}
        self.adds: dict[str, Request] = {}
        self.requests: dict[str, deque[Request]] = {}
        """The ``cancel`` and ``status`` requests awaiting an answer, by job, oldest first."""
        self.open = False
        """Whether there is a connection to send on."""
        self.failure: ClientError | None = None
        """Why there is no connection and will be none (closed, or given up)."""
        self._outgoing: list[str] = []
        self._fences: dict[str, Follow] = {}
        self._add_ids = itertools.count(1)
        self._fence_ids = itertools.count(1)
        self._changes: list[Change] = []

    # -- the connection -------------------------------------------------------

    def frames_to_send(self) -> list[str]:
        """The frames to send on the current connection, in order; each is given once."""
        frames, self._outgoing = self._outgoing, []
        return frames

    def connected(self) -> None:
        """A new connection: every job followed is asked for again after what it got,
        and every ``status`` awaiting an answer asked again."""
        self.open = True
        for follow in self.follows.values():
            follow.fence = None  # nothing of a paused job comes on a new connection
            if follow.paused and self._caught_up(follow):
                follow.paused = False
            if not follow.paused:
                self._send(_listen(follow.job_id, follow.filter.last_seq))
        for waiting in self.requests.values():
            self._outgoing.extend(r.frame for r in waiting if r.kind == "status")

    def dropped(self) -> list[Change]:
        """The connection is gone: the ``add`` and ``cancel`` requests awaiting an answer
        fail with :class:`ConnectionLost` (not asked twice); the rest waits for the next
        connection."""
        self.open = False
        self._outgoing.clear()
        self._fences.clear()  # the old connection sends nothing more
        for follow in self.follows.values():
            follow.fence = None
        lost = ConnectionLost(_LOST)
        settled = list(self.adds.values())
        self.adds.clear()
        for job_id, waiting in list(self.requests.items()):
            cancels = [r for r in waiting if r.kind == "cancel"]
            settled += cancels
            self._forget(job_id, *cancels)
        for request in settled:
            request.settle(error=lost)
        return list(settled)

    def fail(self, error: ClientError) -> list[Change]:
        """There is no connection and will be none: every job followed and every request
        gets ``error``, and so does whatever is asked from now on."""
        self.failure = error
        self.open = False
        self._outgoing.clear()
        changes: list[Change] = []
        for follow in self.follows.values():
            follow.buffer.append(error)
            changes.append(follow)
        requests = [*self.adds.values(), *(r for w in self.requests.values() for r in w)]
        for request in requests:
            request.settle(error=error)
        self.follows.clear()
        self.adds.clear()
        self.requests.clear()
        return changes + requests

    # -- requests out ----------------------------------------------------------

    def add(
        self,
        query: str,
        assistant: Mapping[str, Any],
        history: list[Mapping[str, Any]] | None = None,
        variables: Mapping[str, str | int | float | bool] | None = None,
    ) -> Request:
        """Ask for a job to be queued; settled with its ``(Follow, listen_token)``, the
        job followed from its first event. Needs a connection."""
        self._check_open()
        request_id = f"add-{next(self._add_ids)}"
        body: dict[str, Any] = {"type": "add", "id": request_id, "query": query}
        body["assistant"] = assistant
        if history is not None:
            body["history"] = history
        if variables is not None:
            body["variables"] = variables
        request = Request("add", request_id, orjson.dumps(body).decode())
        self.adds[request_id] = request
        self._send(request.frame)
        return request

    def follow(self, job_id: str, after: int = 0) -> Follow:
        """Follow a job: its events after ``seq`` ``after``, then live (asked for on the
        next connection if there is none now). One follow per job at a time."""
        if self.failure is not None:
            raise self.failure
        if job_id in self.follows:
            raise ClientError(f"this client follows job {job_id} already")
        follow = Follow(job_id, after)
        self.follows[job_id] = follow
        self._send(_listen(job_id, after))
        return follow

    def status(self, job_id: str) -> Request:
        """Ask for a job's state; settled with a :class:`Status`. Needs a connection."""
        return self._request("status", job_id)

    def cancel(self, job_id: str) -> Request:
        """Ask for a job to stop; settled once acknowledged. Needs a connection."""
        return self._request("cancel", job_id)

    def withdraw(self, request: Request) -> None:
        """Forget a request whose asker stopped waiting: its answer, if it comes, is
        ignored (an ``add``'s job runs, unfollowed here)."""
        if request.kind == "add":
            if self.adds.get(request.key) is request:
                del self.adds[request.key]
        else:
            self._forget(request.key, request)

    def take(self, follow: Follow) -> Event | ClientError | None:
        """The next event (or the error that ends it) of a job for its consumer; ``None``
        if none waits. The event is put into the job's answer; reading may follow a
        paused job again."""
        if not follow.buffer:
            return None
        item = follow.buffer.popleft()
        if not isinstance(item, ClientError):
            follow.assembly.add(item)
        if follow.paused:
            self._resume(follow)
        return item

    def _request(self, kind: Literal["cancel", "status"], job_id: str) -> Request:
        self._check_open()
        frame = orjson.dumps({"type": kind, "job_id": job_id}).decode()
        request = Request(kind, job_id, frame)
        self.requests.setdefault(job_id, deque()).append(request)
        self._send(frame)
        return request

    def _check_open(self) -> None:
        if self.failure is not None:
            raise self.failure
        if not self.open:
            raise ClientError("no connection to send on (the I/O shell waits for one first)")

    def _send(self, frame: str) -> None:
        # Nothing is kept for a connection to come: it asks for what it needs itself.
        if self.open:
            self._outgoing.append(frame)

    def _forget(self, job_id: str, *requests: Request) -> None:
        waiting = self.requests.get(job_id)
        if waiting is None:
            return
        for request in requests:
            if request in waiting:
                waiting.remove(request)
        if not waiting:
            del self.requests[job_id]

    # -- frames in ---------------------------------------------------------------

    def receive(self, raw: str | bytes) -> list[Change]:
        """Take in a frame from the service; what it changed. A frame the client does
        not understand is logged and ignored."""
        self._changes = []
        try:
            frame = orjson.loads(raw)
            if not isinstance(frame, dict):
                raise TypeError("not an object")
            kind = frame.get("type")
            if kind == "resp_add":
                self._added(frame)
            elif kind == "error":
                self._refused(frame)
            elif kind == "status":
                self._status(frame)
            elif kind == "pong":
                self._fenced(frame)
            else:
                self._job_event(frame)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring a frame the client does not understand (%s): %.200r", exc, raw)
        changes, self._changes = self._changes, []
        return changes

    def _added(self, frame: dict[str, Any]) -> None:
        job_id = frame["job_id"]
        request = self.adds.pop(str(frame.get("id")), None)
        if request is None:
            return  # withdrawn (its submit was cancelled): the job runs, unfollowed here
        # Followed from now on: the job's first events may be in the next frame.
        follow = Follow(job_id, 0)
        self.follows[job_id] = follow
        self._settle(request, (follow, frame.get("listen_token")))

    def _refused(self, frame: dict[str, Any]) -> None:
        ref = frame.get("ref")
        error = refusal(frame)
        if not isinstance(ref, str):
            log.warning("the service refused a request: %s", error.message)
            return
        if (request := self.adds.pop(ref, None)) is not None:
            self._settle(request, error=error)
            return
        # Requests are answered in order: a refusal is the oldest waiting request's.
        if waiting := self.requests.get(ref):
            request = waiting[0]
            self._forget(ref, request)
            self._settle(request, error=error)
            return
        follow = self.follows.get(ref)
        if follow is None:
            log.warning("the service refused a request: %s", error.message)
        elif isinstance(error, JobNotFound):
            del self.follows[ref]
            self._deliver(follow, error)
        elif not follow.paused:
            self._deliver(follow, Notice(error.message))

    def _status(self, frame: dict[str, Any]) -> None:
        job_id = frame["job_id"]
        waiting = self.requests.get(job_id, ())
        request = next((r for r in waiting if r.kind == "status"), None)
        if request is not None:
            self._forget(job_id, request)
            self._settle(request, decode_status(frame))

    def _job_event(self, frame: dict[str, Any]) -> None:
        job_id = frame.get("job_id")
        if not isinstance(job_id, str):
            return
        if frame.get("type") == "cancelled" and (waiting := self.requests.get(job_id)):
            # The acknowledgement of a cancel: bare, or the followed job's own event.
            cancels = [r for r in waiting if r.kind == "cancel"]
            self._forget(job_id, *cancels)
            for request in cancels:
                self._settle(request, None)
        follow = self.follows.get(job_id)
        if follow is None or follow.paused:
            return  # a paused job's frames in flight: asked for again on resuming
        event = decode_event(frame)
        if event is None or not follow.filter.admit(event):
            return
        self._deliver(follow, event)
        if follow.filter.ended:
            del self.follows[job_id]
        elif len(follow.buffer) >= self.max_buffered_events:
            self._pause(follow)

    def _deliver(self, follow: Follow, item: Event | RequestRefused) -> None:
        follow.buffer.append(item)
        self._changes.append(follow)

    def _settle(
        self, request: Request, result: Any = None, error: ClientError | None = None
    ) -> None:
        request.settle(result, error)
        self._changes.append(request)

    # -- a bounded buffer per job --------------------------------------------------

    def _caught_up(self, follow: Follow) -> bool:
        return len(follow.buffer) <= self.max_buffered_events // 2

    def _pause(self, follow: Follow) -> None:
        """Stop following a job whose consumer has a full buffer."""
        follow.paused = True
        if not self.open:
            return  # the next connection will not ask for it
        fence = f"fence-{next(self._fence_ids)}"
        follow.fence = fence
        self._fences[fence] = follow
        self._send(orjson.dumps({"type": "unlisten", "job_id": follow.job_id}).decode())
        self._send(orjson.dumps({"type": "ping", "id": fence}).decode())

    def _fenced(self, frame: dict[str, Any]) -> None:
        """A ``pong``: if it answers a fence, the job it fences sends nothing more."""
        follow = self._fences.pop(str(frame.get("id")), None)
        if follow is not None and follow.fence == frame.get("id"):
            follow.fence = None
            self._resume(follow)

    def _resume(self, follow: Follow) -> None:
        """Follow a paused job again, from its last buffered event, if its consumer has
        caught up and the last of its frames has come."""
        if not follow.paused or follow.fence is not None or not self._caught_up(follow):
            return
        if self.follows.get(follow.job_id) is not follow:
            return
        follow.paused = False
        self._send(_listen(follow.job_id, follow.filter.last_seq))


def _listen(job_id: str, after: int) -> str:
    return orjson.dumps({"type": "listen", "job_id": job_id, "after": after}).decode()
