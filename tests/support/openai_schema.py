"""OpenAI's own JSON Schemas for the chat-completions API (vendored from the
openai-openapi repository, see the file's ``$comment``): what tests check our
requests upstream, and our replies, against."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

_FILE = Path(__file__).parent / "schemas" / "openai_chat.json"


@cache
def _document() -> dict[str, Any]:
    return json.loads(_FILE.read_text())


def errors(definition: str, instance: Any) -> list[str]:
    """What is wrong with ``instance`` as OpenAI's ``definition`` (for instance
    ``CreateChatCompletionRequest``) defines it; empty when it is valid."""
    schema = {"$ref": f"#/$defs/{definition}", "$defs": _document()["$defs"]}
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(instance)
    ]
