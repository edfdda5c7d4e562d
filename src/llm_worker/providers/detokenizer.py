"""Text out of tokens as they come, and stop sequences: no I/O, no torch.

Decoding each new token on its own breaks characters that span tokens (a
multi-byte UTF-8 character, an emoji) and drops the spaces that some
tokenizers attach to the following token. :class:`IncrementalDetokenizer`
decodes a short window of recent tokens and hands out only text that is
settled, so that the deltas joined are exactly the decoding of all tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

_INCOMPLETE = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Feeds on token ids one at a time; returns the text each one settles."""

    def __init__(self, tokenizer: Decoder) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._emitted: list[str] = []

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """The text that ``token_id`` completes ("" while a character is unfinished)."""
        self._ids.append(token_id)
        # Decoding a window that starts a few tokens back keeps the tokenizer's
        # view of word boundaries (leading spaces) the same as in the full text.
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        if len(text) > len(prefix) and not text.endswith(_INCOMPLETE):
            delta = text[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            self._emitted.append(delta)
            return delta
        return ""

    def finish(self) -> str:
        """What is left once no token follows, so that all deltas join to the full text."""
        full = self._decode(self._ids)
        emitted = "".join(self._emitted)
        rest = full[len(emitted) :] if full.startswith(emitted) else ""
        if rest:
            self._emitted.append(rest)
        return rest


class StopMatcher:
    """Cuts text at the first stop sequence, holding back what might begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def push(self, delta: str) -> str:
        """The part of ``delta`` (with what was held) that is safe to show."""
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        text = self._held + delta
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), keep, -1):
                if text.endswith(stop[:size]):
                    keep = size
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> str:
        """What was held back, once the text is complete and no stop came."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
