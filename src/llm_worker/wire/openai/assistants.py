"""``model: "assistant:NAME"``: a request to OpenAI's API run by one of the
deployment's assistant templates. Pure: no I/O.

The request's last message, a user's text, is the template's ``{query}``; the
messages before it are its history (``{"insert": "history"}``). The template runs
with its own providers, settings, fallbacks and pipelines: a request setting that
would change them (``tools``, ``temperature``, ...) is refused naming it, never
dropped and never half-applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from llm_worker.jobs.model import JobSpec
from llm_worker.jobs.templates import Assistant
from llm_worker.wire.openai import InvalidParam

PREFIX = "assistant:"


def model_id(name: str) -> str:
    """The ``model`` that names template ``name``."""
    return PREFIX + name


def template_for(model: str, templates: Mapping[str, Assistant]) -> Assistant | None:
    """The template ``model`` names (``None`` if it names none: a provider's model);
    a 404 ``model_not_found`` for ``assistant:NAME`` when there is no ``NAME``."""
    if not model.startswith(PREFIX):
        return None
    template = templates.get(model.removeprefix(PREFIX))
    if template is None:
        raise InvalidParam(
            f"the model {model!r} is not served here: no assistant template by that name",
            "model",
            "model_not_found",
            status=404,
        )
    return template


def refuse_settings(model: str, asked: Iterable[str]) -> None:
    """Refuse (400 naming it) the first of ``asked``, settings of a provider's call that a
    template's own streams fix."""
    name = next(iter(asked), None)
    if name is not None:
        raise InvalidParam(
            f"{name!r} is not taken with {model!r}: the template's streams carry their own "
            "settings",
            name,
        )


def assistant_job(
    template: Assistant,
    messages: list[Any],
    openai_request: dict[str, Any],
    param: str,
    keep_request: bool = False,
) -> JobSpec:
    """The job running ``template`` on ``messages``: the last one, a user's text, as
    ``{query}``, the others as the history; ``openai_request`` kept beside (what the
    replies are rendered with). :class:`InvalidParam` naming ``param`` otherwise."""
    *history, last = messages or [None]
    query = _query_text(last)
    if query is None:
        raise InvalidParam(
            f"{openai_request.get('model')!r} takes the last message, a user's text, as its query",
            param,
        )
    assistant = {**template.model_dump(mode="json"), "openai_request": openai_request}
    try:
        return JobSpec.model_validate(
            {
                "assistant": assistant,
                "query": query,
                "history": history,
                "keep_request": keep_request,
            }
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if part != "history")
        raise InvalidParam(f"{param}.{where}: {error['msg']}", param) from None


def _query_text(message: Any) -> str | None:
    """A user message's text (its text parts joined); ``None`` for anything else."""
    if not isinstance(message, dict) or message.get("role") != "user":
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    return None
