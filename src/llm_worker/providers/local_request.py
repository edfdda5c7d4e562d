"""What the ``local`` provider and its engine hand each other: no torch.

The provider makes a :class:`LocalRequest` on the event loop; the engine's
thread runs it and answers with :class:`Output` values, which :func:`deliver`
hands back on the event loop's thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LocalRequest:
    """One job's generation, as the engine sees it.

    ``on_output`` is called on the event loop's thread with each piece of
    text, and once with ``finished`` or an ``error``.
    """

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: Sequence[str]
    on_output: Callable[[Output], None]
    ignore_eos: bool = False
    cancelled: bool = False
    prompt_tokens: int = 0
    """Set by the engine when the request starts."""
    completion_tokens: int = 0
    finish_reason: str | None = None
    """Set by the engine before its last output: ``stop`` (end of sequence, or a stop
    sequence) or ``length`` (``max_tokens`` reached)."""

    def cancel(self) -> None:
        """Free the request's place in the batch at the next step."""
        self.cancelled = True


@dataclass(frozen=True, slots=True)
class Output:
    """What one step made for a request: text, the end (``finished``), or an ``error``
    (which is the end too)."""

    request: LocalRequest
    text: str = ""
    finished: bool = False
    error: str | None = None


def deliver(outputs: Iterable[Output]) -> None:
    """Hand each output to its request; a callback that fails is logged, and the
    outputs after it are delivered all the same."""
    for output in outputs:
        try:
            output.request.on_output(output)
        except Exception:
            log.exception("a local request's output callback failed")
