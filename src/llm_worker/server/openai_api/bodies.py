"""Reading an OpenAI request's body: JSON within ``MAX_MESSAGE_BYTES``, as the rest of
the HTTP API reads its bodies (a 413 past the limit, whole floats as integers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request

from llm_worker.server.http_api import read_body, whole_numbers
from llm_worker.wire.openai import InvalidParam

if TYPE_CHECKING:
    from llm_worker.server.gateway import Gateway


async def read_json(gateway: Gateway, request: Request) -> dict[str, Any]:
    """The request's body, a JSON object; :class:`InvalidParam` for anything else,
    :class:`~llm_worker.server.refusals.Refused` (413) for one too large."""
    body = await read_body(request, gateway.limits.max_message_bytes)
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidParam(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise InvalidParam("the body must be a JSON object", code="invalid_json")
    whole_numbers(obj)
    return obj
