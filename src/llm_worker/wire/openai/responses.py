"""OpenAI's Responses API requests, read into what a job takes. Pure: no I/O.

A ``POST /v1/responses`` body becomes a chat history (``instructions`` a system
message first; ``input`` a user message, or its items: messages with
``input_text``/``input_image`` parts, ``function_call`` items an assistant's
``tool_calls``, ``function_call_output`` items ``tool`` messages) and the settings
a chat-compatible provider takes (function tools in chat's nested form,
``text.format`` as ``response_format``, ``reasoning.effort`` as
``reasoning_effort``, ``max_output_tokens`` as ``max_tokens``).

Every field is checked here, before a job exists, as the OpenAPI document
describes it (:mod:`llm_worker.server.openapi`): a field this worker does not
take, or a value of the wrong shape, is refused naming it (:class:`InvalidParam`),
never dropped; ``null`` is a field not given. The values a provider judges (the
model's name, ``temperature``, ``max_output_tokens``...) are judged by it when
the job is added.
"""

from __future__ import annotations

from typing import Any

from llm_worker.wire.openai import InvalidParam

# What the door reads itself (the rest it passes on, or keeps with the job).
OWN_FIELDS = frozenset(
    {"model", "input", "instructions", "stream", "background", "store", "metadata"}
)
PASSED_ON = frozenset(
    {"tools", "tool_choice", "parallel_tool_calls", "text", "reasoning", "max_output_tokens"}
    | {"temperature", "top_p", "previous_response_id", "user"}
)
SETTING_NAMES = {"temperature": "temperature", "top_p": "top_p"}
FLAGS = ("stream", "background", "store", "parallel_tool_calls")
TEXTS = ("instructions", "previous_response_id", "user")
ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text")
IMAGE_DETAILS = (None, "auto", "low", "high")
TOOL_CHOICES = ("auto", "none", "required")
TOOL_FIELDS = frozenset({"type", "name", "description", "parameters", "strict"})
REASONING_FIELDS = frozenset({"effort", "summary"})
JSON_SCHEMA_FIELDS = frozenset({"type", "name", "schema", "description", "strict"})


def check_fields(body: Any) -> dict[str, Any]:
    """``body`` if it is a JSON object of fields this door takes, each of the shape it
    takes, with a ``model`` and an ``input``; :class:`InvalidParam` naming the first
    field it cannot take."""
    if not isinstance(body, dict):
        raise InvalidParam("the request body must be a JSON object")
    for name in body:
        if name not in OWN_FIELDS and name not in PASSED_ON:
            raise InvalidParam(f"{name!r} is not supported by this worker", name)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidParam("'model' is required: a model name", "model")
    if "input" not in body:
        raise InvalidParam("'input' is required: text, or a list of input items", "input")
    for name in FLAGS:
        _of_type(body, name, bool, "true or false")
    for name in TEXTS:
        _of_type(body, name, str, "text")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise InvalidParam("'metadata' must be an object of strings", "metadata")
    _check_tools(body.get("tools"))
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"])
    _check_text(body.get("text"))
    _check_reasoning(body.get("reasoning"))
    input_items(body["input"])
    return body


def _of_type(body: dict[str, Any], name: str, kind: type, said: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise InvalidParam(f"{name!r} must be {said} (or null)", name)


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidParam("'tools' must be a list of function tools", "tools")
    for n, tool in enumerate(tools):
        _tool(tool, n)


def _check_text(text: Any) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        raise InvalidParam("'text' must be an object", "text")
    for name in text:
        if name != "format":
            raise InvalidParam(f"text.{name} is not supported by this worker", f"text.{name}")
    if text.get("format") is not None:
        _response_format(text["format"])


def _check_reasoning(reasoning: Any) -> None:
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        raise InvalidParam("'reasoning' must be an object", "reasoning")
    for name, value in reasoning.items():
        if name not in REASONING_FIELDS:
            raise InvalidParam(
                f"reasoning.{name} is not supported by this worker", f"reasoning.{name}"
            )
        if value is not None and not isinstance(value, str):
            raise InvalidParam(f"reasoning.{name} must be text (or null)", f"reasoning.{name}")


def input_items(value: Any) -> list[dict[str, Any]]:
    """The request's ``input`` as a list of items (a string is one user message), each
    checked: :class:`InvalidParam` naming the first that is not an item this door takes."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidParam("'input' must be text or a list of input items", "input")
    for n, item in enumerate(value):
        _check_item(item, f"input[{n}]")
    return value


def _check_item(item: dict[str, Any], where: str) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        if item.get("role") not in ROLES:
            raise InvalidParam(f"{where}.role must be user, system, developer or assistant", where)
        _check_content(item.get("content"), where)
    elif kind == "function_call":
        _text(item, "call_id", where)
        _text(item, "name", where)
        if not isinstance(item.get("arguments", ""), str):
            raise InvalidParam(f"{where}.arguments must be text", f"{where}.arguments")
    elif kind == "function_call_output":
        if not isinstance(item.get("output"), str):
            raise InvalidParam(f"{where}.output must be text", f"{where}.output")
        _text(item, "call_id", where)
    elif kind != "reasoning":  # a model's own reasoning: chat-compatible upstreams take none back
        raise InvalidParam(f"{where}.type {kind!r} is not supported by this worker", where)


def _check_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidParam(f"{where}.content must be text or a list of parts", f"{where}.content")
    for n, part in enumerate(content):
        place = f"{where}.content[{n}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS:
            _text(part, "text", place)
        elif kind == "input_image":
            _text(part, "image_url", place)
            if part.get("detail") not in IMAGE_DETAILS:
                raise InvalidParam(
                    f"{place}.detail must be auto, low or high (or null)", f"{place}.detail"
                )
        else:
            raise InvalidParam(f"{place} of type {kind!r} is not supported by this worker", place)


def history(instructions: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages ``instructions`` and the input ``items`` (as
    :func:`input_items` checked them) make, in order."""
    messages: list[dict[str, Any]] = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidParam("'instructions' must be text", "instructions")
        messages.append({"role": "system", "content": instructions})
    for item in items:
        _add_item(messages, item)
    return messages


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        messages.append({"role": item["role"], "content": _content(item["content"])})
    elif kind == "function_call":
        call = {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item.get("arguments", "")},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)
        elif last is not None and last["role"] == "assistant":
            last["tool_calls"] = [call]
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        messages.append(
            {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
        )


def _text(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidParam(f"{where}.{name} must be text", f"{where}.{name}")
    return value


def _content(content: str | list[dict[str, Any]]) -> Any:
    """A message's content in chat's form: text as it is, parts as chat's parts."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part["type"] in TEXT_PARTS:
            parts.append({"type": "text", "text": part["text"]})
        else:
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") not in (None, "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
    return parts


def settings(body: dict[str, Any]) -> dict[str, Any]:
    """The provider settings the request (as :func:`check_fields` checked it) asks for,
    in chat-completions' names; a field that is null is not given."""
    out: dict[str, Any] = {
        name: body[key] for key, name in SETTING_NAMES.items() if body.get(key) is not None
    }
    if body.get("tools"):
        out["tools"] = [_tool(tool, n) for n, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("parallel_tool_calls") is not None:
        out["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        out["reasoning_effort"] = effort
    text_format = (body.get("text") or {}).get("format")
    if text_format is not None:
        out["response_format"] = _response_format(text_format)
    if body.get("user") is not None:
        out["user"] = body["user"]
    if body.get("store") is True and body.get("metadata"):
        out["metadata"] = body["metadata"]
    return out


def _tool(tool: Any, n: int) -> dict[str, Any]:
    where = f"tools[{n}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise InvalidParam(f"{where}: only function tools are supported", where)
    for name in tool:
        if name not in TOOL_FIELDS:
            raise InvalidParam(f"{where}.{name} is not supported by this worker", f"{where}.{name}")
    _text(tool, "name", where)
    _optional(tool, "description", str, where, "text")
    _optional(tool, "parameters", dict, where, "an object (a JSON Schema)")
    _optional(tool, "strict", bool, where, "true or false")
    function = {
        key: tool[key]
        for key in ("name", "description", "parameters", "strict")
        if tool.get(key) is not None
    }
    return {"type": "function", "function": function}


def _optional(item: dict[str, Any], name: str, kind: type, where: str, said: str) -> None:
    value = item.get(name)
    if value is not None and not isinstance(value, kind):
        raise InvalidParam(f"{where}.{name} must be {said} (or null)", f"{where}.{name}")


def _tool_choice(choice: Any) -> Any:
    if choice in TOOL_CHOICES:
        return choice
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and set(choice) == {"type", "name"}
        and isinstance(choice["name"], str)
        and choice["name"]
    ):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidParam(
        "tool_choice must be auto, none, required or {type: function, name}", "tool_choice"
    )


def _response_format(text_format: Any) -> dict[str, Any]:
    kind = text_format.get("type") if isinstance(text_format, dict) else None
    if kind in ("text", "json_object") and len(text_format) == 1:
        return {"type": kind}
    if kind == "json_schema":
        for name in text_format:
            if name not in JSON_SCHEMA_FIELDS:
                raise InvalidParam(
                    f"text.format.{name} is not supported by this worker", f"text.format.{name}"
                )
        _text(text_format, "name", "text.format")
        if not isinstance(text_format.get("schema"), dict):
            raise InvalidParam("text.format.schema must be an object", "text.format.schema")
        _optional(text_format, "description", str, "text.format", "text")
        _optional(text_format, "strict", bool, "text.format", "true or false")
        schema = {k: v for k, v in text_format.items() if k != "type" and v is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidParam(
        "text.format must be {type: text}, {type: json_object} or {type: json_schema, ...}",
        "text.format",
    )


def listed_item(item: dict[str, Any], item_id: str) -> dict[str, Any]:
    """An input item as ``input_items`` lists it: with an id, a message's text as parts."""
    listed = {"id": item_id, **item}
    if item.get("type", "message") == "message":
        listed |= {"type": "message", "status": "completed"}
        if isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            listed["content"] = [{"type": kind, "text": item["content"]}]
    return listed


def items_page(
    items: list[dict[str, Any]], order: str, after: str | None, limit: int
) -> dict[str, Any]:
    """A page of listed ``items`` (in the input's order) as ``input_items`` answers it:
    ``order`` ``asc`` or ``desc``, those after the item ``after`` (an id; none after
    one that is not the response's, as after the last), ``limit`` of them at most, and
    whether more follow."""
    ordered = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [item["id"] for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    data = ordered[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(ordered) > limit,
    }
