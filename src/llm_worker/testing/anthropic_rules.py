"""The rules of a Messages API request that the loopback Anthropic server enforces, as
the API does (a 400 with a message naming the field): turns, content blocks, tool uses
and their results, thinking blocks, tools and the settings that go with them. Not every
rule of the API: those a chat request translated from OpenAI's shape can break."""

from __future__ import annotations

from typing import Any

_USER_BLOCKS = frozenset({"text", "image", "document", "tool_result"})
_ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_THINKING = frozenset({"thinking", "redacted_thinking"})
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})


def api_refusal(body: dict[str, Any]) -> str | None:
    """Why the Messages API would answer 400 to ``body``, of the rules a chat request
    can break; ``None`` when it would take it."""
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    return (
        _turns_refusal(messages)
        or _system_refusal(body.get("system"))
        or _settings_refusal(body)
        or _tool_pairs_refusal(messages)
        or _thinking_refusal(body, messages)
    )


def _turns_refusal(messages: list[Any]) -> str | None:
    previous = None
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return (
                f'messages.{index}.role: Input should be "user" or "assistant"'
                if role != "system"
                else 'messages: Unexpected role "system". The Messages API accepts a '
                'top-level `system` parameter, not "system" as an input message role.'
            )
        if index == 0 and role != "user":
            return 'messages: first message must use the "user" role'
        if role == previous:
            return 'messages: roles must alternate between "user" and "assistant"'
        problem = _content_refusal(message.get("content"), role, f"messages.{index}")
        if problem:
            return problem
        previous = role
    return None


def _content_refusal(content: object, role: str, where: str) -> str | None:
    if isinstance(content, str):
        return None if content.strip() else f"{where}: text content blocks must be non-empty"
    if not isinstance(content, list) or not content:
        return f"{where}.content: Input should be a valid string or a non-empty list"
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    for number, block in enumerate(content):
        at = f"{where}.content.{number}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in allowed:
            return f"{at}.type: a {role} message cannot hold a {kind!r} block"
        problem = _block_refusal(block, at)
        if problem:
            return problem
    kinds = [block["type"] for block in content]
    if kinds != sorted(kinds, key=lambda kind: kind != "tool_result"):
        return f"{where}: tool_result blocks must come first in a user message"
    return None


def _block_refusal(block: dict[str, Any], at: str) -> str | None:
    kind = block["type"]
    if kind == "text":
        text = block.get("text")
        return None if isinstance(text, str) and text else f"{at}: text must be non-empty"
    if kind == "image":
        return _image_refusal(block.get("source"), at)
    if kind == "document":
        source = block.get("source")
        if not isinstance(source, dict) or source.get("media_type") != "application/pdf":
            return f"{at}.source: a base64 application/pdf source is required"
        return None
    if kind == "tool_use":
        if not (_strings(block, "id", "name") and isinstance(block.get("input"), dict)):
            return f"{at}: a tool_use block needs an id, a name and an input object"
        return None
    if kind == "tool_result":
        content = block.get("content")
        if not _strings(block, "tool_use_id"):
            return f"{at}.tool_use_id: Field required"
        if isinstance(content, list):
            return _content_refusal(content, "user", at) if content else None
        return None
    if kind == "thinking":
        return None if _strings(block, "thinking", "signature") else f"{at}.signature: required"
    return None if _strings(block, "data") else f"{at}.data: Field required"


def _image_refusal(source: object, at: str) -> str | None:
    if not isinstance(source, dict):
        return f"{at}.source: Field required"
    if source.get("type") == "url":
        return None if _strings(source, "url") else f"{at}.source.url: Field required"
    if source.get("type") != "base64" or not _strings(source, "data"):
        return f"{at}.source: a base64 or url source is required"
    if source.get("media_type") not in _IMAGE_TYPES:
        return f"{at}.source.media_type: Input should be one of {sorted(_IMAGE_TYPES)}"
    return None


def _tool_pairs_refusal(messages: list[dict[str, Any]]) -> str | None:
    """Each tool use answered by a result in the next message, each result answering
    a tool use of the message before."""
    for index, message in enumerate(messages):
        asked = _ids(messages[index - 1], "tool_use", "id") if index else set()
        answered = _ids(message, "tool_result", "tool_use_id")
        if message["role"] == "user" and answered - asked:
            return (
                f"messages.{index}: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{sorted(answered - asked)[0]}. Each `tool_result` block must have a "
                "corresponding `tool_use` block in the previous message."
            )
        if message["role"] == "user" and asked - answered:
            return (
                f"messages.{index - 1}: `tool_use` ids were found without `tool_result` "
                f"blocks immediately after: {sorted(asked - answered)[0]}"
            )
    last = messages[-1]
    if last["role"] == "assistant" and _ids(last, "tool_use", "id"):
        return (
            f"messages.{len(messages) - 1}: `tool_use` ids were found without `tool_result` "
            "blocks immediately after"
        )
    return None


def _thinking_refusal(body: dict[str, Any], messages: list[dict[str, Any]]) -> str | None:
    """With thinking on, the last assistant turn, when it used tools, starts with its
    thinking, as the API sent it."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    index, message = next(
        ((n, m) for n, m in reversed(list(enumerate(messages))) if m["role"] == "assistant"),
        (0, {}),
    )
    first = message["content"][0] if _ids(message, "tool_use", "id") else {}
    if first and first.get("type") not in _THINKING:
        return (
            f"messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, "
            f"but found `{first.get('type')}`. When `thinking` is enabled, a final "
            "`assistant` message must start with a thinking block"
        )
    return None


def _system_refusal(system: object) -> str | None:
    if system is None or isinstance(system, str):
        return None
    if isinstance(system, list) and all(
        isinstance(block, dict) and block.get("type") == "text" and _strings(block, "text")
        for block in system
    ):
        return None
    return "system: Input should be a valid string or a list of text blocks"


def _settings_refusal(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for number, tool in enumerate(tools):
            if not isinstance(tool, dict) or not _strings(tool, "name"):
                return f"tools.{number}.name: Field required"
            if tool.get("type") in (None, "custom") and not isinstance(
                tool.get("input_schema"), dict
            ):
                return f"tools.{number}.input_schema: Field required"
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICES:
            return "tool_choice: Input tag does not match any of 'auto', 'any', 'tool', 'none'"
        if choice["type"] == "tool" and not _strings(choice, "name"):
            return "tool_choice.tool.name: Field required"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or not 1024 <= budget < body["max_tokens"]:
            return "thinking.enabled.budget_tokens: must be >= 1024 and less than max_tokens"
    return None


def _ids(message: dict[str, Any], kind: str, key: str) -> set[str]:
    content = message.get("content")
    if not isinstance(content, list):
        return set()
    return {block[key] for block in content if block.get("type") == kind}


def _strings(block: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(block.get(key), str) and block[key] for key in keys)
