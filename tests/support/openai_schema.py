"""OpenAI's own JSON Schemas for the chat-completions API (vendored from the
openai-openapi repository, see the file's ``$comment``): what tests check our
requests upstream, and our replies, against."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

_SCHEMAS = Path(__file__).parent / "schemas"


@cache
def _document(name: str = "openai_chat") -> dict[str, Any]:
    return _nullable(json.loads((_SCHEMAS / f"{name}.json").read_text()))


def _nullable(node: Any) -> Any:
    """``node`` with OpenAPI 3.0's ``"nullable": true``, which some of the schemas still
    use (a chunk's ``finish_reason``) and JSON Schema ignores, said the JSON Schema way."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [{"type": "null"}, node]}
    return node


def errors(definition: str, instance: Any, document: str = "openai_chat") -> list[str]:
    """What is wrong with ``instance`` as OpenAI's ``definition`` (for instance
    ``CreateChatCompletionRequest``) defines it; empty when it is valid. The Responses
    API's definitions are in ``document="openai_responses"``."""
    schema = {"$ref": f"#/$defs/{definition}", "$defs": _document(document)["$defs"]}
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(instance)
    ]
