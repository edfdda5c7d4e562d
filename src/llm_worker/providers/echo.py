"""The ``echo`` provider: answers with the question, word by word. For trying the
worker and for testing what surrounds a model, never for answers.

It streams back the last user message of the rendered prompt, a word (with the
spaces before it) per delta, ``ECHO_DELAY_SECONDS`` apart, then says what the
call took as a model would (usage and ``finish_reason``). It is offered only
where a deployment asks for it (``ECHO_PROVIDER=on``), or, with
``ECHO_PROVIDER=auto`` (what ``./run.sh`` sets), when no real provider is
configured: a fresh clone answers its first request with nothing else started.

Settings: ``model`` (any name: it is only reported), ``delay`` (seconds between
words, from 0 to :data:`MAX_DELAY`; ``ECHO_DELAY_SECONDS`` when unset) and
``max_tokens`` (stop after so many words: ``finish_reason`` is then ``length``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import TemplateError
from llm_worker.providers.base import CallEnd, Provider
from llm_worker.providers.checks import (
    check_integer,
    check_number,
    integer_schema,
    number_schema,
)

SETTINGS = frozenset({"model", "delay", "max_tokens"})
# A client's slowest echo: a word a second (a job's words are bounded by its size).
MAX_DELAY = 1.0
_WORD = re.compile(r"\s*\S+")


def words(text: str) -> list[str]:
    """``text`` as the deltas an echo sends: each word with the spaces before it."""
    return _WORD.findall(text)


class EchoProvider(Provider):
    """Repeats the question; ``delay`` seconds between words unless a job says otherwise."""

    def __init__(self, name: str = "echo", *, delay: float = 0.02) -> None:
        self.name = name
        self.delay = delay

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        unknown = sorted(set(settings) - SETTINGS)
        if unknown:
            known = ", ".join(sorted(SETTINGS))
            raise TemplateError(
                f"settings.{unknown[0]} is not a setting of provider {self.name!r} (known: {known})"
            )
        model = settings.get("model")
        if model is not None and not isinstance(model, str):
            raise TemplateError(f"settings.model must be a string, not {model!r}")
        check_number(settings, "delay", low=0, high=MAX_DELAY)
        check_integer(settings, "max_tokens", low=1)

    def settings_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "model": {"type": ["string", "null"]},
                "delay": number_schema(0, MAX_DELAY),
                "max_tokens": integer_schema(1),
            },
            "additionalProperties": False,
        }

    async def served_models(self) -> list[str]:
        """``echo``: any name works, this one stands for them in a model list."""
        return ["echo"]

    async def stream(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[str | CallEnd]:
        question = next((m.text for m in reversed(messages) if m.role == "user"), "")
        reply = words(question)
        limit = settings.get("max_tokens")
        finish_reason = "stop"
        if limit is not None and len(reply) > limit:
            reply, finish_reason = reply[:limit], "length"
        delay = settings.get("delay")
        delay = self.delay if delay is None else float(delay)
        for word in reply:
            await asyncio.sleep(delay)  # 0 still lets other tasks run between words
            yield word
        prompt = sum(len(words(message.text)) for message in messages)
        yield CallEnd(finish_reason, prompt, len(reply))
