"""What a job's model calls cost, in tokens, and why its answer ended.

The runner adds each model call's :class:`CallEnd` to the
job's :class:`JobUsage`, to the stream being run when the call was made, so the
calls an insert makes (``history_summary`` summarizing the history) count with
the stream they build. A call whose model said nothing of its tokens makes its
stream's, and the job's, usage unknown (``None``): reported as such, not guessed.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CallEnd:
    """What a provider may yield last, after the text: why the model stopped
    (``stop``, ``length``, ``tool_calls``, ...) and the tokens the call took, each
    ``None`` where the model did not say: of the prompt's, those read from the
    provider's cache (``cached_tokens``); of the completion's, those spent
    reasoning (``reasoning_tokens``)."""

    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


UNKNOWN = CallEnd()
"""What a call that said nothing of its tokens counts as."""

_CURRENT: contextvars.ContextVar[JobUsage | None] = contextvars.ContextVar(
    "llm_worker_usage", default=None
)


def _sum(total: int | None, more: int | None) -> int | None:
    return None if total is None or more is None else total + more


@dataclass(slots=True)
class Tokens:
    """Tokens into and out of the models, summed; ``None`` once a part is unknown.

    The details (cached, reasoning) are summed apart: ``None`` from the first call
    that did not say them, as a model that never does (most) leaves them."""

    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    cached_tokens: int | None = 0
    reasoning_tokens: int | None = 0

    def add(self, end: CallEnd | Tokens) -> None:
        self.prompt_tokens = _sum(self.prompt_tokens, end.prompt_tokens)
        self.completion_tokens = _sum(self.completion_tokens, end.completion_tokens)
        self.cached_tokens = _sum(self.cached_tokens, end.cached_tokens)
        self.reasoning_tokens = _sum(self.reasoning_tokens, end.reasoning_tokens)

    def as_json(self) -> dict[str, Any] | None:
        """OpenAI's ``usage``: the counts and their total, and, where every call said
        them, ``prompt_tokens_details.cached_tokens`` and
        ``completion_tokens_details.reasoning_tokens``."""
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


class JobUsage:
    """One job's tokens, by stream and in all, and why its last stream ended."""

    def __init__(self, streams: int) -> None:
        self.streams = [Tokens() for _ in range(streams)]
        self.current = 0
        """The stream being run: calls made now count for it."""
        self.finish_reason: str | None = None
        self.providers: list[str | None] = [None] * streams
        """The provider that answered each model stream (its own, or a fallback)."""

    def answered(self, provider: str) -> None:
        """The stream being run got its reply from ``provider``."""
        self.providers[self.current] = provider

    def record(self, end: CallEnd | None) -> None:
        """A model call ended, having said ``end`` (``None``: it said nothing)."""
        self.streams[self.current].add(end or UNKNOWN)
        if self.current == len(self.streams) - 1:
            self.finish_reason = end.finish_reason

    def as_json(self) -> dict[str, Any]:
        """What ``done`` and ``status`` carry: ``usage`` (``null`` when no model said
        anything of its tokens; a part unknown is ``null`` too), ``finish_reason``, and
        ``providers``, the one that answered each stream (``null`` for a pipeline)."""
        streams = [tokens.as_json() for tokens in self.streams]
        if all(stream is None for stream in streams):
            return {
                "usage": None,
                "finish_reason": self.finish_reason,
                "providers": self.providers,
            }
        total = Tokens()
        for tokens in self.streams:
            total.add(tokens)
        usage: dict[str, Any] = total.as_json() or dict.fromkeys(
            ("prompt_tokens", "completion_tokens", "total_tokens")
        )
        usage["streams"] = streams
        return {"usage": usage, "finish_reason": self.finish_reason, "providers": self.providers}


def track(usage: JobUsage) -> None:
    """Model calls made from here on in this task (and those it starts) count for ``usage``."""
    _CURRENT.set(usage)


def current() -> JobUsage | None:
    return _CURRENT.get()
