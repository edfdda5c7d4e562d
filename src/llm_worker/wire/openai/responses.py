"""OpenAI's Responses API requests, read into what a job takes. Pure: no I/O.

A ``POST /v1/responses`` body becomes a chat history (``instructions`` a system
message first; ``input`` a user message, or its items: messages with
``input_text``/``input_image`` parts, ``function_call`` items an assistant's
``tool_calls``, ``function_call_output`` items ``tool`` messages) and the settings
a chat-compatible provider takes (function tools in chat's nested form,
``text.format`` as ``response_format``, ``reasoning.effort`` as
``reasoning_effort``, ``max_output_tokens`` as ``max_tokens``). A field this
worker does not take is refused naming it (:class:`InvalidParam`), never dropped.
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


def check_fields(body: Any) -> dict[str, Any]:
    """``body`` if it is a JSON object of fields this door takes, with a ``model`` and
    an ``input``; :class:`InvalidParam` naming the first field it cannot take."""
    if not isinstance(body, dict):
        raise InvalidParam("the request body must be a JSON object")
    for name in body:
        if name not in OWN_FIELDS and name not in PASSED_ON:
            raise InvalidParam(f"{name!r} is not supported by this worker", name)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidParam("'model' is required: a model name", "model")
    if "input" not in body:
        raise InvalidParam("'input' is required: text, or a list of input items", "input")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise InvalidParam("'metadata' must be an object of strings", "metadata")
    return body


def input_items(value: Any) -> list[dict[str, Any]]:
    """The request's ``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidParam("'input' must be text or a list of input items", "input")
    return value


def history(instructions: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages ``instructions`` and the input ``items`` make, in order."""
    messages: list[dict[str, Any]] = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidParam("'instructions' must be text", "instructions")
        messages.append({"role": "system", "content": instructions})
    for n, item in enumerate(items):
        _add_item(messages, item, f"input[{n}]")
    return messages


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise InvalidParam(f"{where}.role must be user, system, developer or assistant", where)
        messages.append({"role": role, "content": _content(item.get("content"), where)})
    elif kind == "function_call":
        call = {
            "id": _text(item, "call_id", where),
            "type": "function",
            "function": {
                "name": _text(item, "name", where),
                "arguments": item.get("arguments", ""),
            },
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)
        elif last is not None and last["role"] == "assistant":
            last["tool_calls"] = [call]
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        if not isinstance(output, str):
            raise InvalidParam(f"{where}.output must be text", f"{where}.output")
        call_id = _text(item, "call_id", where)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
    elif kind == "reasoning":
        return  # a model's own reasoning: chat-compatible upstreams take none back
    else:
        raise InvalidParam(f"{where}.type {kind!r} is not supported by this worker", where)


def _text(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidParam(f"{where}.{name} must be text", f"{where}.{name}")
    return value


def _content(content: Any, where: str) -> Any:
    """A message's content in chat's form: text as it is, parts as chat's parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParam(f"{where}.content must be text or a list of parts", f"{where}.content")
    parts = []
    for n, part in enumerate(content):
        place = f"{where}.content[{n}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": _text(part, "text", place)})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") not in (None, "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidParam(f"{place} of type {kind!r} is not supported by this worker", place)
    return parts


def settings(body: dict[str, Any]) -> dict[str, Any]:
    """The provider settings the request asks for, in chat-completions' names."""
    out: dict[str, Any] = {name: body[key] for key, name in SETTING_NAMES.items() if key in body}
    if body.get("tools"):
        out["tools"] = [_tool(tool, n) for n, tool in enumerate(body["tools"])]
    if "tool_choice" in body:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    if "parallel_tool_calls" in body:
        out["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        out["reasoning_effort"] = effort
    text_format = (body.get("text") or {}).get("format")
    if text_format is not None:
        out["response_format"] = _response_format(text_format)
    if body.get("user"):
        out["user"] = body["user"]
    if body.get("store") and body.get("metadata"):
        out["metadata"] = body["metadata"]
    return out


def _tool(tool: Any, n: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function" or "name" not in tool:
        raise InvalidParam(f"tools[{n}]: only function tools are supported", f"tools[{n}]")
    function = {key: tool[key] for key in ("name", "description", "parameters") if key in tool}
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidParam("tool_choice must be auto, none, required or a function", "tool_choice")


def _response_format(text_format: Any) -> dict[str, Any]:
    kind = text_format.get("type") if isinstance(text_format, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        schema = {k: v for k, v in text_format.items() if k != "type"}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidParam("text.format must be text, json_object or json_schema", "text.format")


def listed_item(item: dict[str, Any], item_id: str) -> dict[str, Any]:
    """An input item as ``input_items`` lists it: with an id, a message's text as parts."""
    listed = {"id": item_id, **item}
    if item.get("type", "message") == "message":
        listed |= {"type": "message", "status": "completed"}
        if isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            listed["content"] = [{"type": kind, "text": item["content"]}]
    return listed
