"""What the ``anthropic`` provider sends: the chat in the Messages API's shape.

The chat comes in OpenAI's shape (:class:`~llm_worker.jobs.messages.ChatMessage`);
the API takes it apart: system and developer messages go to its ``system``
parameter; content parts become content blocks (text, ``image`` from a data URL or
an http(s) URL, ``document`` from a PDF); an assistant's signed
``reasoning_details`` become its ``thinking`` blocks, first, and its ``tool_calls``
its ``tool_use`` blocks; a ``tool`` message answering a call becomes a
``tool_result`` block of a user turn; consecutive turns of one role merge, as the
API wants them to alternate. The settings ``tools``, ``tool_choice`` and
``parallel_tool_calls`` are translated from OpenAI's forms (Anthropic's are taken
as they are), ``thinking`` is forwarded.

Each function that translates also refuses, with a :class:`TemplateError` naming
the field, what has no place in the API's shape, so that the check at add
(:func:`check_message`) and the request are one code: nothing is dropped silently.
Two things are left out on purpose: an assistant's plain ``reasoning`` (the API takes
back only signed thinking blocks, which ``reasoning_details`` carries; OpenAI's API
is not sent it either) and a message's ``name`` (the API has no place for it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from llm_worker.jobs.messages import (
    AudioPart,
    ChatMessage,
    ContentPart,
    FilePart,
    ImagePart,
    TextPart,
    ToolCall,
)
from llm_worker.jobs.templates import TemplateError

Block = dict[str, Any]

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
"""The image formats the API reads."""
PDF = "application/pdf"
MIN_THINKING_BUDGET = 1024
"""The fewest ``budget_tokens`` the API takes for ``thinking``."""

# Where a message's parts may go: the API's system text and assistant turns take text
# only; user turns and tool results take images and documents too.
_SPEAKERS = {"system": "system", "developer": "system", "assistant": "assistant"}
_PLACES = {"system": "the system text", "assistant": "an assistant message"}
_TOOL_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}
_ANTHROPIC_CHOICES = frozenset({"auto", "any", "tool", "none"})
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})


def check_message(message: ChatMessage, where: str, name: str) -> None:
    """Raise :class:`TemplateError` naming the first thing of ``message`` (found at
    ``where``) that provider ``name`` cannot send to the API."""
    blocks_of(message, where, name)


def to_anthropic(
    messages: Sequence[ChatMessage], name: str = "anthropic"
) -> tuple[str | list[Block] | None, list[dict[str, Any]]]:
    """The ``system`` and the ``messages`` of a Messages API request.

    System and developer messages make the system text. Assistant turns of text
    before the first user turn join it too: the API wants a user turn first, and
    inventing one would put words in the user's mouth. A ``tool`` message with a
    ``tool_call_id`` is a ``tool_result`` block; one without, and a ``function``
    message, speak as the user. Consecutive turns of one role merge (a user turn's
    tool results first, as the API wants them); messages with no content are left
    out, as the API refuses them. Text alone stays text, blank lines between its
    pieces; anything else is a list of content blocks.
    """
    system: list[Block] = []
    turns: list[dict[str, Any]] = []
    for number, message in enumerate(messages):
        blocks = blocks_of(message, f"messages[{number}]", name)
        if not blocks:
            continue
        role = _SPEAKERS.get(message.role, "user")
        if role == "system" or (role == "assistant" and not turns and _text_only(blocks)):
            system.extend(blocks)
        elif turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
        turn["content"] = _compact(turn["content"])
    return (_compact(system) if system else None), turns


def blocks_of(message: ChatMessage, where: str, name: str) -> list[Block]:
    """The content blocks of ``message`` (found at ``where``), in the order the API
    wants them: an assistant's thinking first, then the content, then its tool calls;
    a tool's result is one ``tool_result`` block."""
    if message.role == "tool" and message.tool_call_id:
        return [_tool_result(message, where, name)]
    speaker = _SPEAKERS.get(message.role, "user")
    blocks: list[Block] = []
    if message.reasoning_details:
        if speaker != "assistant":
            raise TemplateError(
                f"{where}.reasoning_details: only an assistant message has reasoning_details"
            )
        for number, detail in enumerate(message.reasoning_details):
            blocks.append(_thinking(detail, f"{where}.reasoning_details[{number}]", name))
    blocks += _content_blocks(message.content, speaker, where, name)
    if message.refusal:
        blocks.append({"type": "text", "text": message.refusal})
    calls = message.tool_calls or ()
    blocks += [_tool_use(call, f"{where}.tool_calls[{n}]", name) for n, call in enumerate(calls)]
    return blocks


def _content_blocks(
    content: str | list[ContentPart] | None, speaker: str, where: str, name: str
) -> list[Block]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks = []
    for number, part in enumerate(content):
        block = _part_block(part, speaker, f"{where}.content[{number}]", name)
        if block is not None:
            blocks.append(block)
    return blocks


def _part_block(part: ContentPart, speaker: str, where: str, name: str) -> Block | None:
    """The block of one content part; ``None`` for text with nothing in it (the API
    refuses an empty text block). The part's fields of Anthropic's own
    (``cache_control``) go with it."""
    extra = dict(part.model_extra or {})
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text, **extra} if part.text.strip() else None
    if isinstance(part, AudioPart):
        raise TemplateError(f"{where}: provider {name!r} cannot take 'input_audio' parts")
    if speaker != "user":
        raise TemplateError(
            f"{where}: provider {name!r} cannot take {part.type!r} parts in "
            f"{_PLACES[speaker]} (text only)"
        )
    if isinstance(part, ImagePart):
        return {"type": "image", "source": _image_source(part, where, name), **extra}
    assert isinstance(part, FilePart)
    return {**_document(part, where, name), **extra}


def _image_source(part: ImagePart, where: str, name: str) -> Block:
    image = part.image_url
    unknown = sorted(image.model_extra or {})
    if unknown:
        raise TemplateError(f"{where}.image_url.{unknown[0]}: provider {name!r} cannot take it")
    if image.detail not in (None, "auto"):
        raise TemplateError(
            f"{where}.image_url.detail: provider {name!r} cannot take {image.detail!r} "
            "(the API sizes images itself; leave it out or say 'auto')"
        )
    url = image.url
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    media_type, data = _data_url(url, f"{where}.image_url.url", name)
    if media_type not in IMAGE_TYPES:
        raise TemplateError(
            f"{where}.image_url.url: provider {name!r} cannot take {media_type!r} images "
            f"(it takes {', '.join(IMAGE_TYPES)})"
        )
    return {"type": "base64", "media_type": media_type, "data": data}


def _document(part: FilePart, where: str, name: str) -> Block:
    file = part.file
    unknown = sorted(file.model_extra or {})
    if unknown:
        raise TemplateError(f"{where}.file.{unknown[0]}: provider {name!r} cannot take it")
    if file.file_id is not None:
        raise TemplateError(
            f"{where}.file.file_id: provider {name!r} cannot take file ids "
            "(send the file as file_data, a data URL)"
        )
    if not file.file_data:
        raise TemplateError(f"{where}.file.file_data: provider {name!r} needs the file's data")
    media_type, data = _data_url(file.file_data, f"{where}.file.file_data", name)
    if media_type != PDF:
        raise TemplateError(
            f"{where}.file.file_data: provider {name!r} cannot take {media_type!r} files (PDF only)"
        )
    source = {"type": "base64", "media_type": PDF, "data": data}
    block: Block = {"type": "document", "source": source}
    if file.filename:
        block["title"] = file.filename
    return block


def _data_url(url: str, where: str, name: str) -> tuple[str, str]:
    """The media type and base64 data of a ``data:<type>;base64,<data>`` URL."""
    head, comma, data = url.partition(",")
    params = head.removeprefix("data:").split(";")
    if not head.startswith("data:") or not comma or "base64" not in params[1:]:
        raise TemplateError(
            f"{where}: provider {name!r} takes an http(s) URL or a base64 data URL "
            "(data:<type>;base64,...), not this"
        )
    return params[0].lower(), data


def _tool_use(call: ToolCall, where: str, name: str) -> Block:
    text = call.function.arguments
    try:
        arguments = orjson.loads(text) if text.strip() else {}
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise TemplateError(
            f"{where}.function.arguments: provider {name!r} takes a tool call's arguments "
            f"as a JSON object, not {text[:40]!r}"
        )
    return {"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments}


def _tool_result(message: ChatMessage, where: str, name: str) -> Block:
    block: Block = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    content = message.content
    if isinstance(content, list):
        if blocks := _content_blocks(content, "user", where, name):
            block["content"] = blocks
    elif content:
        block["content"] = content
    return block


def _thinking(block: Mapping[str, Any], where: str, name: str) -> Block:
    """A signed thinking block, or a redacted one, sent back as given."""
    kind = block.get("type")
    if kind == "thinking" and _strings(block, "thinking", "signature"):
        return dict(block)
    if kind == "redacted_thinking" and _strings(block, "data"):
        return dict(block)
    raise TemplateError(
        f"{where}: provider {name!r} takes back only Anthropic's thinking blocks as "
        'it sent them: {"type": "thinking", "thinking", "signature"} or '
        '{"type": "redacted_thinking", "data"}'
    )


def _strings(block: Mapping[str, Any], *keys: str) -> bool:
    return all(isinstance(block.get(key), str) for key in keys)


def _text_only(blocks: list[Block]) -> bool:
    return all(block["type"] == "text" for block in blocks)


def _compact(blocks: list[Block]) -> str | list[Block]:
    """Plain text blocks as one text, blank lines between; other blocks as they are."""
    if all(block.keys() == {"type", "text"} and block["type"] == "text" for block in blocks):
        return "\n\n".join(block["text"] for block in blocks)
    return blocks


# -- settings ---------------------------------------------------------------------


def tools_setting(tools: object) -> list[Block]:
    """``settings.tools`` as the API takes them: OpenAI's function tools translated
    (``parameters`` is the ``input_schema``), Anthropic's as they are."""
    if not isinstance(tools, list):
        raise TemplateError(f"settings.tools must be a list of tools, not {tools!r}")
    return [_tool(tool, f"settings.tools[{number}]") for number, tool in enumerate(tools)]


def _tool(tool: object, where: str) -> Block:
    if not isinstance(tool, dict):
        raise TemplateError(f"{where} must be an object, not {tool!r}")
    if tool.get("type") != "function":
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise TemplateError(
                f"{where}.name: a tool needs a name (OpenAI's form: "
                '{"type": "function", "function": {"name", "description", "parameters"}})'
            )
        return tool
    unknown = sorted(set(tool) - {"type", "function"})
    function = tool.get("function")
    if unknown or not isinstance(function, dict):
        field = f".{unknown[0]}" if unknown else ".function"
        raise TemplateError(f"{where}{field}: a function tool has only a 'function' object")
    unknown = sorted(set(function) - _FUNCTION_KEYS)
    if unknown:
        raise TemplateError(f"{where}.function.{unknown[0]}: the API has no place for it")
    if not isinstance(function.get("name"), str) or not function["name"]:
        raise TemplateError(f"{where}.function.name: a tool needs a name")
    schema = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(schema, dict):
        raise TemplateError(f"{where}.function.parameters must be a JSON Schema object")
    translated: Block = {"name": function["name"]}
    if function.get("description") is not None:
        translated["description"] = function["description"]
    translated["input_schema"] = schema
    if function.get("strict") is not None:
        translated["strict"] = function["strict"]
    return translated


def tool_choice_setting(choice: object, parallel: object) -> Block | None:
    """``settings.tool_choice`` as the API takes it (``required`` is ``any``, a named
    function a named ``tool``), with ``parallel_tool_calls: false`` as its
    ``disable_parallel_tool_use``; ``None`` when neither says anything."""
    if parallel is not None and not isinstance(parallel, bool):
        raise TemplateError(f"settings.parallel_tool_calls must be true or false, not {parallel!r}")
    translated: Block | None
    if choice is None:
        translated = None if parallel is not False else {"type": "auto"}
    elif isinstance(choice, str) and choice in _TOOL_CHOICES:
        translated = dict(_TOOL_CHOICES[choice])
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TemplateError("settings.tool_choice.function.name must name a tool")
        translated = {"type": "tool", "name": function["name"]}
    elif isinstance(choice, dict) and choice.get("type") in _ANTHROPIC_CHOICES:
        translated = dict(choice)
    else:
        raise TemplateError(
            "settings.tool_choice must be 'auto', 'required', 'none', "
            '{"type": "function", "function": {"name": ...}} or one of Anthropic\'s '
            f"(auto, any, tool, none), not {choice!r}"
        )
    if parallel is False and translated is not None and translated["type"] != "none":
        translated["disable_parallel_tool_use"] = True
    return translated


def check_thinking(thinking: object, max_tokens: int) -> None:
    """``settings.thinking``, when set, is an object with a ``type``; enabled, its
    ``budget_tokens`` at least :data:`MIN_THINKING_BUDGET` and below ``max_tokens``."""
    if thinking is None:
        return
    if not isinstance(thinking, dict) or not isinstance(thinking.get("type"), str):
        raise TemplateError(
            'settings.thinking must be an object such as {"type": "enabled", '
            f'"budget_tokens": 2048}}, not {thinking!r}'
        )
    if thinking["type"] != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TemplateError(
            "settings.thinking.budget_tokens must be an integer when thinking is enabled, "
            f"not {budget!r}"
        )
    if not MIN_THINKING_BUDGET <= budget < max_tokens:
        raise TemplateError(
            f"settings.thinking.budget_tokens must be at least {MIN_THINKING_BUDGET} and "
            f"less than max_tokens ({max_tokens}), not {budget}"
        )


_IMAGE = {
    "properties": {
        "type": {"const": "image_url"},
        "image_url": {
            "properties": {
                "url": {
                    "type": "string",
                    "pattern": "^(https?://|data:(" + "|".join(IMAGE_TYPES) + ");base64,)",
                },
                "detail": {"enum": ["auto", None]},
            },
            "additionalProperties": {"not": {}},
        },
    }
}
_PDF = {
    "properties": {
        "type": {"const": "file"},
        "file": {
            "required": ["file_data"],
            "properties": {
                "file_data": {"type": "string", "pattern": "^data:application/pdf;base64,"},
                "file_id": {"type": "null"},
            },
        },
    }
}
MESSAGE_SCHEMA: dict[str, Any] = {
    "properties": {
        "content": {
            "anyOf": [
                {"type": ["string", "null"]},
                {
                    "type": "array",
                    "items": {"anyOf": [{"properties": {"type": {"const": "text"}}}, _IMAGE, _PDF]},
                },
            ]
        },
        "tool_calls": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "array",
                    "items": {
                        "properties": {
                            "function": {"properties": {"arguments": {"pattern": r"^\s*\{"}}}
                        }
                    },
                },
            ]
        },
    },
    "description": "Text, images (http(s) or base64 data URLs of "
    + ", ".join(IMAGE_TYPES)
    + ") and PDF files (base64 data URLs), in a user's turn; tool calls whose arguments "
    "are a JSON object; no audio.",
}
"""Roughly what :func:`check_message` asks, as a JSON Schema (the HTTP API's document):
that a tool call's arguments parse as a JSON object, and that images and files stand in
a user's turn, it cannot say."""
