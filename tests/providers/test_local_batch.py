"""The local engine's batch with the tiny random Llama, and no thread: rows join, step
and leave, and each row gets the tokens it would get alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llm_worker.providers.local_batch import Batch  # noqa: E402
from llm_worker.providers.local_engine import ModelRunner  # noqa: E402

PROMPTS = ["hi", "How tall is the Eiffel Tower in Paris, France?", "naïve café 🚀", "a"]


@pytest.fixture(scope="module")
def runner(tiny_model: Path) -> ModelRunner:
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    return ModelRunner(model.eval(), torch.device("cpu"))


@pytest.fixture(scope="module")
def prompts(tiny_model: Path) -> list[list[int]]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    return [tokenizer.encode(p) for p in PROMPTS]


def join(batch: Batch[Any], runner: ModelRunner, row: Any, ids: list[int]) -> int:
    """Run a prompt alone and add it to the batch with its greedy first token."""
    logits, cache = runner.prefill(ids)
    token = int(logits.argmax())
    batch.add(row, cache, token)
    return token


def step(batch: Batch[Any], runner: ModelRunner) -> list[int]:
    """One greedy step of every row; the tokens it chose."""
    tokens = runner.decode(batch).argmax(-1).tolist()
    batch.advance(tokens)
    return tokens


def alone(runner: ModelRunner, ids: list[int], count: int) -> list[int]:
    batch: Batch[int] = Batch(torch.device("cpu"))
    tokens = [join(batch, runner, 0, ids)]
    while len(tokens) < count:
        tokens += step(batch, runner)
    return tokens


@torch.inference_mode()
def test_rows_that_join_at_different_steps_get_the_tokens_they_get_alone(
    runner: ModelRunner, prompts: list[list[int]]
) -> None:
    expected = {i: alone(runner, ids, 12) for i, ids in enumerate(prompts)}
    batch: Batch[int] = Batch(torch.device("cpu"))
    produced: dict[int, list[int]] = {}
    for index, ids in enumerate(prompts):
        produced[index] = [join(batch, runner, index, ids)]
        for row, token in zip(batch.rows, step(batch, runner), strict=True):
            produced[row].append(token)
    while len(produced[len(prompts) - 1]) < 12:
        for row, token in zip(batch.rows, step(batch, runner), strict=True):
            produced[row].append(token)
    assert batch.rows == list(range(len(prompts)))
    for index, tokens in produced.items():
        assert tokens[:12] == expected[index], index


@torch.inference_mode()
def test_inputs_put_each_row_at_its_own_position_and_mask_the_padding(
    runner: ModelRunner, prompts: list[list[int]]
) -> None:
    short, long = prompts[0], prompts[1]
    batch: Batch[str] = Batch(torch.device("cpu"))
    first = [join(batch, runner, "short", short), join(batch, runner, "long", long)]
    assert len(batch) == 2 and batch.width == len(long)
    inputs = batch.inputs()
    assert inputs["input_ids"].tolist() == [[first[0]], [first[1]]]
    assert inputs["position_ids"].tolist() == [[len(short)], [len(long)]]
    mask = inputs["attention_mask"].tolist()
    # A column per cached token, and one for the token the step feeds.
    assert mask[0] == [0] * (len(long) - len(short)) + [1] * (len(short) + 1)
    assert mask[1] == [1] * (len(long) + 1)
    step(batch, runner)
    assert batch.width == len(long) + 1
    assert batch.inputs()["position_ids"].tolist() == [[len(short) + 1], [len(long) + 1]]


@torch.inference_mode()
def test_retiring_rows_drops_the_padding_no_row_needs_and_the_rest_go_on(
    runner: ModelRunner, prompts: list[list[int]]
) -> None:
    short, long = prompts[0], prompts[1]
    expected = alone(runner, short, 8)
    batch: Batch[str] = Batch(torch.device("cpu"))
    tokens = [join(batch, runner, "short", short)]
    join(batch, runner, "long", long)
    tokens.append(step(batch, runner)[0])
    batch.retire([1])
    assert batch.rows == ["short"]
    assert batch.width == len(short) + 1
    assert batch.cache.get_seq_length() == len(short) + 1
    assert batch.inputs()["attention_mask"].tolist() == [[1] * (len(short) + 2)]
    while len(tokens) < 8:
        tokens += step(batch, runner)
    assert tokens == expected
    batch.retire([0])
    assert len(batch) == 0 and batch.cache is None and batch.width == 0
    # An empty batch takes rows again.
    assert [join(batch, runner, "again", short)] == expected[:1]
    assert batch.width == len(short)
