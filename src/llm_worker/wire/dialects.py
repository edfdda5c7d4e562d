"""The two dialects a connection speaks, and what each is sent. No I/O here.

The **seed dialect** is the protocol of the system this one replaces, as its
clients know it. Such clients are strict: F-AI's knows ``resp_add``,
``running`` and ``done``, and on any other type drops its connection with
every request on it. So a seed-dialect connection is never sent, unasked, a
type other than ``resp_add``, ``running``, ``done`` and ``failed``:

* a job's ``pending`` positions, its ``notice`` events (a local model loading,
  say) and store-outage notices are not sent;
* ``cancelled`` (another client cancelled the job) becomes ``failed`` with the
  message ``the job was cancelled``;
* ``reset`` (the job runs again after its worker died) is not sent. While the
  listener has been shown no text of the job, the new attempt simply follows;
  once it has, the listening ends with ``failed`` saying that the job runs
  again (its text so far is void), and a new ``listen`` replays the new attempt
  from its start. A seed client never shows two attempts' text run together;
* a refused ``add`` is answered as a job that cannot run: ``resp_add`` with a
  job id (that no store knows) and then ``failed`` with the reason; a refused
  ``listen``, ``failed`` for the job it named;
* requests only the full protocol has (``cancel``, ``status``, ``ping``,
  ``listen`` with ``after``) are answered as in the full protocol: the client
  that sends one knows the replies;
* a frame that is no request at all (not JSON, no known ``type``, binary)
  still gets ``error``: there is no job to answer it with.

The **full protocol**, ``llm-worker.v2``, is sent everything but the reply's typed
parts: a job's text, its notices, positions, resets, cancels. A client opts in by
offering the WebSocket subprotocol ``llm-worker.v2`` or, where its library cannot,
with the query parameter ``?protocol=2``.

The **typed protocol**, ``llm-worker.v3`` (``?protocol=3``), is the full protocol
with the reply's typed parts too: ``reasoning``, ``tool_call`` and ``refusal``
frames, and a ``done`` (and ``status``) that carries the finished message and the
usage's details (:mod:`llm_worker.wire.events`). A client offering both gets v3.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from typing import Any

from llm_worker.jobs.model import Event, EventKind
from llm_worker.wire import events as event_frames
from llm_worker.wire import protocol
from llm_worker.wire.events import Frame
from llm_worker.wire.protocol import ProtocolError

SUBPROTOCOL = "llm-worker.v2"
TYPED_SUBPROTOCOL = "llm-worker.v3"
SEED_TYPES = frozenset({"resp_add", "running", "done", "failed"})
"""Every type the seed's server ever sent; a seed client knows no other."""

CANCELLED = "the job was cancelled"
INTERRUPTED = (
    "the worker running the job stopped before it finished, and the job runs again "
    "from the start: the text so far is void; listen to the job again for the new answer"
)


class Dialect(enum.Enum):
    SEED = "seed"
    FULL = SUBPROTOCOL
    TYPED = TYPED_SUBPROTOCOL

    @property
    def typed(self) -> bool:
        """Whether listeners get the reply's typed parts (and ``done``'s message)."""
        return self is Dialect.TYPED


def negotiate(offered: Sequence[str], protocol_param: str | None) -> tuple[Dialect, str | None]:
    """The dialect of a new connection, and the subprotocol to accept (if any).

    ``offered`` are the subprotocols the client offered, ``protocol_param`` the
    value of its ``?protocol=`` query parameter. :class:`ProtocolError` for a
    ``protocol`` this server does not speak.
    """
    if TYPED_SUBPROTOCOL in offered:
        return Dialect.TYPED, TYPED_SUBPROTOCOL
    if SUBPROTOCOL in offered:
        return Dialect.FULL, SUBPROTOCOL
    if protocol_param is None or protocol_param == "1":
        return Dialect.SEED, None
    if protocol_param == "2":
        return Dialect.FULL, None
    if protocol_param == "3":
        return Dialect.TYPED, None
    raise ProtocolError(
        f"unknown protocol {protocol_param!r}: ?protocol=2 (or the subprotocol "
        f"{SUBPROTOCOL}) asks for the full protocol, ?protocol=3 (or {TYPED_SUBPROTOCOL}) "
        "for it with typed events; without either, the seed's is spoken"
    )


def refusal(
    dialect: Dialect, request_type: str | None, ref: Any, message: str, code: str
) -> list[str]:
    """The frames that refuse a request, ``ref`` being its ``id`` or ``job_id``, and
    ``code`` the refusal's (:mod:`llm_worker.wire.errors`), which only the full
    protocol's ``error`` carries."""
    if dialect is Dialect.SEED:
        if request_type == "add":
            job_id = str(uuid.uuid4())
            return [protocol.resp_add(ref, job_id), protocol.failed(job_id, message)]
        if request_type == "listen" and ref is not None:
            return [protocol.failed(ref, message)]
        return [protocol.error(message, ref)]
    return [protocol.error(message, ref, code)]


class Relay:
    """What one listener is sent of one job's log, batch by batch, in its dialect.

    ``finished`` turns true when the listening must end although the job goes
    on (a seed listener shown text of an attempt that was reset).
    """

    __slots__ = ("_shown_text", "dialect", "finished", "job_id")

    def __init__(self, job_id: str, dialect: Dialect, after: int) -> None:
        self.job_id = job_id
        self.dialect = dialect
        self.finished = False
        # Seq 1 is the job's empty start event: a listener that saw more saw text, or
        # perhaps a notice only; counting it as text errs on the safe side (a reset
        # then ends the listening rather than following the new attempt).
        self._shown_text = after > 1

    def frames(self, events: list[Event]) -> list[Frame]:
        """The frames this listener is sent of ``events``, the log's next batch."""
        dialect = self.dialect
        if dialect is Dialect.SEED:
            events = self._seed_events(events)
        if not events:
            return []
        return event_frames.event_frames(self.job_id, events, dialect is Dialect.TYPED)

    def _seed_events(self, events: list[Event]) -> list[Event]:
        """The events as a seed listener is to get them; most batches as they are."""
        for event in events:
            kind = event.kind
            if kind is EventKind.RESET or kind is EventKind.CANCELLED or kind is EventKind.NOTICE:
                break
            if not self._shown_text and kind is EventKind.RUNNING and event.message:
                self._shown_text = True
        else:
            return events
        shown: list[Event] = []
        for event in events:
            kind = event.kind
            if kind is EventKind.NOTICE:
                continue
            if kind is EventKind.RESET:
                if not self._shown_text:
                    continue
                shown.append(Event(event.seq, EventKind.FAILED, INTERRUPTED, event.attempt))
                self.finished = True
                break
            if kind is EventKind.CANCELLED:
                event = Event(event.seq, EventKind.FAILED, CANCELLED, event.attempt)
            elif kind is EventKind.RUNNING and event.message:
                self._shown_text = True
            shown.append(event)
        return shown
