"""Incremental detokenization and stop sequences (pure units; the tokenizer is the
tiny model's real byte-level BPE)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_worker.providers.detokenizer import IncrementalDetokenizer, StopMatcher

transformers = pytest.importorskip("transformers")

TEXTS = [
    "The Eiffel Tower is located in Paris, France.",
    "naïve café façade — Über ünïcödé",
    "日本語のテキスト and emoji 🚀✨👩‍👩‍👧 together",
    "  leading spaces,\ttabs\nand newlines  ",
    "a",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(tiny_model)


def stream(tokenizer: Any, ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.add(token) for token in ids]
    return [*deltas, detokenizer.finish()]


@pytest.mark.parametrize("text", TEXTS)
def test_text_comes_back_whole_and_no_character_is_ever_broken(tokenizer: Any, text: str) -> None:
    ids = tokenizer.encode(text)
    assert len(ids) > 1 or text == "a"
    deltas = stream(tokenizer, ids)
    assert "".join(deltas) == text
    # Multi-byte characters span several tokens here; no delta shows half of one.
    assert not any("\ufffd" in delta for delta in deltas)
    assert max(len(d) for d in deltas) < len(text) or len(ids) == 1


def test_spaces_between_words_are_kept(tokenizer: Any) -> None:
    deltas = stream(tokenizer, tokenizer.encode("hello world hello there"))
    assert "".join(deltas) == "hello world hello there"
    assert sum(d.startswith(" ") for d in deltas) >= 3


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.integers(min_value=0, max_value=399), max_size=40))
def test_any_token_sequence_joins_to_its_full_decoding(tokenizer: Any, ids: list[int]) -> None:
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_sequences_cut_before_the_stop_across_deltas() -> None:
    matcher = StopMatcher(["STOP", "\n\n"])
    shown = [matcher.push(d) for d in ["Hello ", "wor", "ld S", "TO", "P and more"]]
    assert "".join(shown) == "Hello world "
    assert matcher.stopped
    assert matcher.push("later") == ""
    assert matcher.finish() == ""


def test_text_that_only_looked_like_a_stop_is_released() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("a ST") == "a "  # "ST" could begin STOP: held
    assert matcher.push("ART") == "START"
    assert matcher.push(" S") == " "
    assert matcher.finish() == "S"
    assert not matcher.stopped


def test_no_stops_pass_everything_through() -> None:
    matcher = StopMatcher([])
    assert matcher.push("anything") == "anything"
    assert matcher.finish() == ""
