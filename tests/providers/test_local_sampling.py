"""Picking the next token from logits, without a model: greedy, temperature, top-p."""

from __future__ import annotations

import math
from collections import Counter

import pytest

torch = pytest.importorskip("torch")

from llm_worker.providers.local_sampling import Sampling, sample, sample_rows  # noqa: E402


def logits_of(*probabilities: float) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probabilities])


def draws(logits: torch.Tensor, sampling: Sampling, count: int = 400) -> Counter[int]:
    return Counter(sample(logits, sampling) for _ in range(count))


def test_greedy_takes_the_most_likely_token_and_the_first_of_a_tie() -> None:
    assert sample(logits_of(0.2, 0.5, 0.3), Sampling()) == 1
    assert sample(torch.tensor([1.0, 3.0, 3.0]), Sampling(temperature=0, top_p=0.1)) == 1


def test_a_seeded_generator_draws_the_same_tokens_again() -> None:
    logits = torch.randn(50)

    def run(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        sampling = Sampling(temperature=1.0, generator=generator)
        return [sample(logits, sampling) for _ in range(30)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_p_keeps_the_fewest_likely_tokens_that_reach_it() -> None:
    logits = logits_of(0.5, 0.3, 0.15, 0.05)
    generator = torch.Generator().manual_seed(0)
    # 0.5 + 0.3 < 0.9: the third is needed to reach it, the fourth is not.
    seen = draws(logits, Sampling(temperature=1.0, top_p=0.9, generator=generator))
    assert set(seen) == {0, 1, 2}
    only_first = draws(logits, Sampling(temperature=1.0, top_p=0.4, generator=generator))
    assert set(only_first) == {0}
    everything = draws(logits, Sampling(temperature=1.0, top_p=1.0, generator=generator), 2000)
    assert set(everything) == {0, 1, 2, 3}


def test_temperature_sharpens_or_flattens_the_distribution() -> None:
    logits = logits_of(0.6, 0.4)
    generator = torch.Generator().manual_seed(0)
    cold = draws(logits, Sampling(temperature=0.05, generator=generator))
    hot = draws(logits, Sampling(temperature=5.0, generator=generator))
    assert cold[0] == 400
    assert 120 < hot[1] < 280  # close to even


def test_each_row_of_a_batch_picks_its_own_way() -> None:
    logits = torch.stack([logits_of(0.1, 0.9), logits_of(0.9, 0.1), logits_of(0.5, 0.5)])
    seeded = Sampling(temperature=1.0, generator=torch.Generator().manual_seed(3))
    again = Sampling(temperature=1.0, generator=torch.Generator().manual_seed(3))
    tokens = sample_rows(logits, [Sampling(), Sampling(), seeded])
    assert tokens[:2] == [1, 0]
    assert tokens[2] == sample(logits[2], again)


def test_a_temperature_too_small_to_divide_by_is_greedy() -> None:
    # 1e-300 overflowed the logits: every probability NaN, and torch.multinomial raised.
    logits = logits_of(0.2, 0.5, 0.3) * 100
    for temperature in (1e-300, 1e-40, 1e-6):
        assert sample(logits, Sampling(temperature=temperature)) == 1
