"""The wire protocol: JSON text frames in, JSON text frames out. No I/O here.

Requests (client to server): ``add``, ``listen``, ``cancel``, ``status``, ``ping``.
Replies (server to client): ``resp_add``, ``pending``, ``cancelled``, ``status``,
``error``, ``pong``; a job's log events (``running``, ``done``, ...) are frames of
:mod:`llm_worker.wire.events`.

The seed's messages are kept exactly; everything else is additive, so a client
of the old system ignores what it does not know. Unknown fields in a request
are ignored for the same reason.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictInt,
    StrictStr,
    ValidationError,
)

from llm_worker.jobs.messages import CONTENT_TAGS, PART_TYPES, ChatMessage
from llm_worker.jobs.model import JobRecord, JobSpec
from llm_worker.jobs.schedule import rfc3339
from llm_worker.jobs.templates import Assistant, text_value
from llm_worker.wire import errors


def _request_id(value: Any) -> str | int:
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError("must be a string or an integer")


def _variable_text(value: Any) -> str:
    text = text_value(value)
    if text is None:
        raise ValueError("must be a string, a number or a boolean")
    return text


# Plain validators rather than unions: one clear error instead of one per member.
RequestId = Annotated[str | int, PlainValidator(_request_id)]
VariableText = Annotated[str, PlainValidator(_variable_text)]


class ProtocolError(ValueError):
    """A frame that cannot be honoured.

    ``request_type`` is the request's ``type`` when the frame names a known
    one, ``ref`` its ``id`` (``add``, ``ping``) or ``job_id`` (the others) when
    it has a usable one: how a refusal is answered depends on both. ``code`` is
    the refusal's code (:mod:`llm_worker.wire.errors`).
    """

    def __init__(
        self,
        message: str,
        ref: Any = None,
        request_type: str | None = None,
        code: str = errors.BAD_REQUEST,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.ref = ref
        self.request_type = request_type
        self.code = code


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class AddRequest(_Request):
    type: Literal["add"]
    id: RequestId | None = None
    idempotency_key: Any = None
    """The full protocol's: an add of the same key and request within its window is the
    first add's job again (checked by the gateway, so that a seed client's stray field
    changes nothing)."""
    query: StrictStr
    assistant: Assistant
    history: list[ChatMessage] = Field(default_factory=list)
    variables: dict[str, VariableText] = Field(default_factory=dict)
    webhook: Any = None
    """Where to report the job's end (full protocol; checked by the gateway, so that a
    seed client's stray field changes nothing)."""
    run_at: Any = None
    """When the job may start, an RFC 3339 time; or ``delay``, in seconds from now (the
    full protocol's; checked by the gateway, as ``webhook`` is)."""
    delay: Any = None

    def to_spec(self) -> JobSpec:
        return JobSpec(
            assistant=self.assistant,
            query=self.query,
            history=self.history,
            variables=self.variables,
        )


class ListenRequest(_Request):
    type: Literal["listen"]
    job_id: StrictStr
    after: StrictInt | None = Field(default=None, ge=0)


class UnlistenRequest(_Request):
    """Stop sending a job's events on this connection (the job goes on)."""

    type: Literal["unlisten"]
    job_id: StrictStr


class CancelRequest(_Request):
    type: Literal["cancel"]
    job_id: StrictStr


class StatusRequest(_Request):
    type: Literal["status"]
    job_id: StrictStr


class PingRequest(_Request):
    type: Literal["ping"]
    id: RequestId | None = None


Request = AddRequest | ListenRequest | UnlistenRequest | CancelRequest | StatusRequest | PingRequest

_REQUEST_TYPES: dict[str, type[Request]] = {
    "add": AddRequest,
    "listen": ListenRequest,
    "unlisten": UnlistenRequest,
    "cancel": CancelRequest,
    "status": StatusRequest,
    "ping": PingRequest,
}
# Tags pydantic puts in error locations of tagged unions; they mean nothing to a client.
_UNION_TAGS = frozenset({"message", "insert", "model", "pipeline", *PART_TYPES})
_JSON_TYPE_NAMES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def parse_request(data: str | bytes) -> Request:
    """The request a text frame holds; :class:`ProtocolError` saying what is wrong otherwise."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not valid JSON: {exc}", code=errors.INVALID_JSON) from None
    if not isinstance(obj, dict):
        kind = _JSON_TYPE_NAMES.get(type(obj), "something else")
        raise ProtocolError(
            f"a request must be a JSON object, not {kind}", code=errors.INVALID_JSON
        )
    return request_from(obj)


def request_from(obj: dict[str, Any]) -> Request:
    """The request a parsed JSON object holds; :class:`ProtocolError` otherwise."""
    request_type = obj.get("type")
    if request_type is None:
        raise ProtocolError("missing field 'type'", _ref_of(obj, None))
    model = _REQUEST_TYPES.get(request_type) if isinstance(request_type, str) else None
    if model is None:
        known = ", ".join(sorted(_REQUEST_TYPES))
        raise ProtocolError(f"unknown type {request_type!r} (known: {known})", _ref_of(obj, None))
    # An add that cannot be taken is a job that cannot run, as the HTTP API says it.
    code = errors.INVALID_JOB if request_type == "add" else errors.BAD_REQUEST
    # Only the template holds values of any shape (settings, options, its own fields).
    if _deeper_than(obj.get("assistant"), MAX_DEPTH):
        raise ProtocolError(
            f"invalid {request_type!r} request: field 'assistant' is nested more than "
            f"{MAX_DEPTH} levels deep",
            _ref_of(obj, request_type),
            request_type,
            code,
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ProtocolError(
            f"invalid {request_type!r} request: {describe(exc)}",
            _ref_of(obj, request_type),
            request_type,
            code,
        ) from None


# Deeper requests are refused: nothing a template needs nests so deep, and deep
# values cost recursion wherever they go (validation, storage, the provider's JSON).
MAX_DEPTH = 64


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests objects and arrays more than ``limit`` deep."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
    return False


def peek_request(data: str | bytes) -> tuple[str | None, Any]:
    """The ``type`` and reference of a frame that will not be parsed (too large, say).

    ``(None, None)`` when the frame is not a JSON object naming a known request.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    request_type = obj.get("type")
    if not isinstance(request_type, str) or request_type not in _REQUEST_TYPES:
        return None, _ref_of(obj, None)
    return request_type, _ref_of(obj, request_type)


# What an ``error`` about a request refers to: its ``id``, or the job it names.
_REF_KEYS: dict[str | None, tuple[str, ...]] = {
    "add": ("id",),
    "ping": ("id",),
    "listen": ("job_id",),
    "unlisten": ("job_id",),
    "cancel": ("job_id",),
    "status": ("job_id",),
    None: ("id", "job_id"),
}


def _ref_of(obj: dict[str, Any], request_type: str | None) -> Any:
    for key in _REF_KEYS.get(request_type, _REF_KEYS[None]):
        value = obj.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return value
    return None


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif (isinstance(previous, int) and part in _UNION_TAGS) or (
            previous == "content" and part in CONTENT_TAGS
        ):
            pass  # a union's tag in the location: nothing a client wrote
        else:
            text += f".{part}" if text else str(part)
        previous = part
    return text


def describe(exc: ValidationError, limit: int = 3) -> str:
    """A validation error in words a client can act on: which field, what is wrong."""
    problems = []
    errors = exc.errors(include_url=False)
    for error in errors[:limit]:
        where = _location(error["loc"])
        if error["type"] == "missing":
            problems.append(f"missing field '{where}'")
        elif error["type"] == "extra_forbidden":
            problems.append(f"unexpected field '{where}'")
        else:
            text = error["msg"].removeprefix("Value error, ")
            problems.append(f"field '{where}': {text}" if where else text)
    if len(errors) > limit:
        problems.append(f"and {len(errors) - limit} more")
    return "; ".join(problems)


# -- server to client ---------------------------------------------------------


def _frame(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


def resp_add(request_id: Any, job_id: str, listen_token: str | None = None) -> str:
    body = {"type": "resp_add", "id": request_id, "job_id": job_id}
    if listen_token is not None:
        body["listen_token"] = listen_token
    return _frame(body)


def pending(job_id: str, position: int) -> str:
    return _frame({"type": "pending", "job_id": job_id, "position": position})


def failed(job_id: Any, message: str) -> str:
    """A ``failed`` outside any job's log: how the seed dialect refuses a request."""
    return _frame({"type": "failed", "job_id": job_id, "message": message})


def cancelled(job_id: str) -> str:
    """Acknowledges a ``cancel`` to a client that does not follow the job."""
    return _frame({"type": "cancelled", "job_id": job_id})


def status(
    record: JobRecord,
    position: int | None,
    output: str,
    summary: dict[str, Any] | None = None,
    webhook: dict[str, Any] | None = None,
    now: float = 0.0,
) -> str:
    """The ``status`` reply; ``summary`` is what its ``done`` said (usage, finish_reason),
    ``webhook`` how the delivery of its webhook goes (the full protocol's). A job
    scheduled (by ``now``) is shown ``scheduled``, with its ``run_at``."""
    state = record.shown_state(now)
    body: dict[str, Any] = {"type": "status", "job_id": record.id, "state": state}
    if state == "scheduled":
        body["run_at"] = rfc3339(record.run_at or 0.0)
    if position is not None:
        body["position"] = position
    body["output"] = output
    if record.error is not None:
        body["error"] = record.error
    if summary:
        body.update(summary)
    if webhook is not None:
        body["webhook"] = webhook
    return _frame(body)


def error(message: str, ref: Any = None, code: str | None = None) -> str:
    """An ``error``: about the request or job ``ref``, with a ``code``
    (:mod:`llm_worker.wire.errors`) unless ``None`` (the seed's frames have none)."""
    body: dict[str, Any] = {"type": "error"}
    if code is not None:
        assert code in errors.CODES or code in errors.FRAME_ONLY, code
        body["code"] = code
    body["message"] = message
    if ref is not None:
        body["ref"] = ref
    return _frame(body)


def pong(request_id: Any = None) -> str:
    body: dict[str, Any] = {"type": "pong"}
    if request_id is not None:
        body["id"] = request_id
    return _frame(body)
