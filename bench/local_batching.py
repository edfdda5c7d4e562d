"""The ``local`` provider's batching against transformers' own ways of generating.

A small random-weight Llama is built in a temporary directory (no model hub);
every way below generates the same greedy ``--tokens`` tokens for each prompt
(end of sequence ignored), and the aggregate tokens/s is compared:

* ``sequential generate()``: one prompt at a time, what a worker without
  batching would do; the baseline, the better of torch's default threads and
  the provider's;
* ``local provider, N jobs``: N jobs at once through the provider, which
  batches them in its engine thread;
* ``transformers generate_batch()``: its built-in continuous batching;
* ``one padded generate()``: all prompts in one left-padded batch, the ceiling
  for prompts that all arrive together and leave together.

While the provider runs 16 jobs, a task on the event loop measures how late
its timers fire (the loop's lag). Greedy outputs are checked equal across ways.

    python bench/local_batching.py [--tokens 48] [--hidden 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tables import Table

PROMPTS = [
    "hi",
    "How tall is the Eiffel Tower in Paris, France? Tell me everything.",
    "naïve café, 日本語 🚀",
    "hello world hello",
    "a",
    "user: hi assistant: hello, how can I help you today? I would like to know more.",
    "The quick brown fox jumps over the lazy dog.",
    "Where is it?",
] * 2  # 16 prompts of different lengths


def chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    return list(encoded["input_ids"])


def sequential(model: Any, tokenizer: Any, tokens: int) -> tuple[float, list[str]]:
    import torch

    texts = []
    started = time.perf_counter()
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = torch.tensor([chat_ids(tokenizer, prompt)])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return len(PROMPTS) * tokens / (time.perf_counter() - started), texts


def padded(model: Any, tokenizer: Any, tokens: int) -> float:
    import torch

    tokenizer.padding_side = "left"
    rows = [chat_ids(tokenizer, p) for p in PROMPTS]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return len(PROMPTS) * tokens / (time.perf_counter() - started)


def builtin_batching(model: Any, tokenizer: Any, tokens: int) -> float | None:
    from transformers import ContinuousBatchingConfig, GenerationConfig

    if not hasattr(model, "generate_batch"):
        return None
    config = GenerationConfig(
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    inputs = [chat_ids(tokenizer, p) for p in PROMPTS]
    # Sized for these prompts: left to size itself on a CPU, it takes the free memory for
    # its cache, and fills an attention mask to match at each call (14 GB, 20 s, here).
    pages = -(-(max(map(len, inputs)) + tokens) // ContinuousBatchingConfig.page_size)
    sizing = ContinuousBatchingConfig(
        num_blocks=len(inputs) * pages, max_batch_tokens=sum(map(len, inputs))
    )
    try:
        generate = functools.partial(
            model.generate_batch, generation_config=config, continuous_batching_config=sizing
        )
        generate(inputs=inputs[:2])  # warm-up
        started = time.perf_counter()
        generate(inputs=inputs)
    except Exception as exc:  # an experimental API: report, do not fail
        print(f"  (generate_batch failed: {type(exc).__name__}: {exc})")
        return None
    return len(PROMPTS) * tokens / (time.perf_counter() - started)


async def through_provider(
    model_dir: Path, tokens: int, concurrency: int
) -> tuple[float, list[str], dict[str, float]]:
    from llm_worker.jobs.templates import ChatMessage
    from llm_worker.providers.local import LocalModels, LocalProvider

    # As LOCAL_MODELS=bench=<model_dir> configures it.
    provider = LocalProvider(
        "local",
        models=LocalModels(max_models=1, max_batch=32),
        choices={"bench": str(model_dir)},
    )
    settings = {"model": "bench", "temperature": 0, "max_tokens": tokens, "ignore_eos": True}

    async def job(prompt: str) -> str:
        messages = [ChatMessage(role="user", content=prompt)]
        return "".join([d async for d in provider.stream(messages, settings) if isinstance(d, str)])

    lags: list[float] = []
    running = True

    async def watch_loop() -> None:
        while running:
            planned = time.perf_counter() + 0.005
            await asyncio.sleep(0.005)
            lags.append(max(0.0, time.perf_counter() - planned))

    try:
        await job("warm-up")
        watcher = asyncio.create_task(watch_loop())
        texts: list[str] = []
        started = time.perf_counter()
        for start in range(0, len(PROMPTS), concurrency):
            texts += await asyncio.gather(*(job(p) for p in PROMPTS[start : start + concurrency]))
        rate = len(PROMPTS) * tokens / (time.perf_counter() - started)
        running = False
        await watcher
    finally:
        await provider.aclose()
    lags.sort()
    lag = {
        "p50_ms": statistics.median(lags) * 1e3,
        "p99_ms": lags[int(len(lags) * 0.99)] * 1e3,
        "max_ms": lags[-1] * 1e3,
    }
    return rate, texts, lag


def measure(tokens: int, hidden: int, layers: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_worker.testing.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as directory:
        model_dir = build_tiny_model(
            Path(directory) / "model", hidden=hidden, layers=layers, heads=max(4, hidden // 64)
        )
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        parameters = sum(p.numel() for p in model.parameters())
        # The baseline with torch's own default threads, and with the provider's (it
        # sets them when it loads): the faster of the two is the one to beat.
        baseline_threads = torch.get_num_threads()
        base_rate, base_texts = sequential(model, tokenizer, tokens)
        rows: dict[str, Any] = {"sequential generate()": base_rate}
        same = True
        lag: dict[str, float] = {}
        for concurrency in (1, 4, 16):
            rate, texts, lag = asyncio.run(through_provider(model_dir, tokens, concurrency))
            rows[f"local provider, {concurrency} job{'s' if concurrency > 1 else ''} at once"] = (
                rate
            )
            same = same and texts == base_texts
        provider_threads = torch.get_num_threads()
        if provider_threads != baseline_threads:
            same_threads_rate, _ = sequential(model, tokenizer, tokens)
            rows[f"sequential generate(), {provider_threads} thread(s)"] = same_threads_rate
            base_rate = max(base_rate, same_threads_rate)
            rows["sequential generate()"] = base_rate
        rows["transformers generate_batch()"] = builtin_batching(model, tokenizer, tokens)
        rows["one padded generate() of all 16"] = padded(model, tokenizer, tokens)
    return {
        "model": {"hidden": hidden, "layers": layers, "parameters": parameters, "dtype": "float32"},
        "date": time.strftime("%Y-%m-%d"),
        "prompts": len(PROMPTS),
        "tokens_per_prompt": tokens,
        "tokens_per_second": rows,
        "speedup_16": rows["local provider, 16 jobs at once"] / base_rate,
        "greedy_outputs_equal_sequential": same,
        "event_loop_lag_during_16": lag,
        "torch_threads": {"baseline": baseline_threads, "provider": provider_threads},
    }


def local_table(result: dict[str, Any]) -> Table:
    """Tokens/s of each way of generating, against sequential ``generate()``."""
    base = result["tokens_per_second"]["sequential generate()"]
    table = Table(["", "tokens/s", "against sequential generate()"])
    for name, rate in result["tokens_per_second"].items():
        if rate is None:
            table.add(name, "n/a", "")
        else:
            table.add(name, f"{rate:,.0f}", f"{rate / base:.1f}x")
    return table


def summary(result: dict[str, Any]) -> str:
    lag = result["event_loop_lag_during_16"]
    return "\n".join(
        [
            f"{result['prompts']} prompts x {result['tokens_per_prompt']} greedy tokens, random "
            f"Llama ({result['model']['parameters'] / 1e6:.1f} M parameters, float32, CPU)",
            local_table(result).text(),
            f"event loop lag while 16 jobs generate: p50 {lag['p50_ms']:.2f} ms, "
            f"p99 {lag['p99_ms']:.2f} ms, max {lag['max_ms']:.2f} ms",
            "greedy outputs equal to sequential generate(): "
            + ("yes" if result["greedy_outputs_equal_sequential"] else "NO"),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.tokens, args.hidden, args.layers)
    print(summary(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
