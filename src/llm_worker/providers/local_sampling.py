"""The next token out of a model's logits: greedy, or sampled with a temperature and
top-p. Pure functions of their arguments (and of the generator's state)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

MIN_TEMPERATURE = 1e-5
"""Below it, sampling is greedy: what it tends to, and dividing the logits by less
overflows them (1e-300 made every probability NaN)."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """How one request picks its tokens; a temperature of 0 (below
    :data:`MIN_TEMPERATURE`) is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    """Seeded for reproducible sampling; ``None`` draws from torch's global one."""

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


def sample(logits: torch.Tensor, sampling: Sampling) -> int:
    """A token from ``logits`` (one row, over the vocabulary)."""
    if sampling.greedy:
        return int(logits.argmax())
    probabilities = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        # The smallest set of most likely tokens whose probabilities reach top_p.
        ordered, order = probabilities.sort(descending=True)
        outside = ordered.cumsum(-1) - ordered > sampling.top_p
        ordered[outside] = 0
        probabilities = torch.zeros_like(probabilities).scatter(0, order, ordered)
    return int(torch.multinomial(probabilities, 1, generator=sampling.generator))


def sample_rows(logits: torch.Tensor, samplings: Sequence[Sampling]) -> list[int]:
    """A token for each row of ``logits`` (rows, vocabulary), each row its own way;
    the greedy rows from one argmax of the whole batch."""
    greedy = logits.argmax(-1).tolist()
    return [
        greedy[index] if sampling.greedy else sample(logits[index], sampling)
        for index, sampling in enumerate(samplings)
    ]
