"""Batched generation with a Hugging Face model, in a thread of this process.

One :class:`LocalEngine` per loaded model runs a decode loop in its own thread,
so the event loop never waits for the model. Every running request is a row
of one :class:`~llm_worker.providers.local_batch.Batch`, which shares a KV cache:

* a request joins between two steps: its prompt is run alone (exactly as if
  it were the only one), then its cache is merged into the batch's;
* each step decodes one token for every row, each at its own position;
* a row leaves when it ends (end of sequence, ``max_tokens``, a stop
  sequence) or is cancelled, at the next step.

A greedy request (temperature 0) therefore gets the same tokens whether it
runs alone or beside others, whatever their lengths. The engine's thread
admits, prefills, steps and turns tokens into text; the batch
(``local_batch``) and the sampling (``local_sampling``) are pure, and what the
provider sees (``local_request``) needs no torch. This module imports torch
and transformers: it is loaded only when a local job runs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from llm_worker.providers.detokenizer import IncrementalDetokenizer, StopMatcher
from llm_worker.providers.local_batch import Batch
from llm_worker.providers.local_request import LocalRequest, Output, deliver
from llm_worker.providers.local_sampling import Sampling, sample, sample_rows

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_IDLE_WAIT_SECONDS = 0.5
HUB_TIMEOUT_SECONDS = 5.0
"""How long the hub may take to say whether it has a model this process lacks."""


class ModelRunner:
    """The model's forward passes: a prompt alone, and one step of a batch."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        # transformers renamed `past_key_values` to `cache` (5.x); take what this one has.
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"

    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, Any]:
        """The logits after the prompt ``ids`` (over the vocabulary), and its cache."""
        cache = DynamicCache(config=self.model.config)
        inputs = torch.tensor([ids], device=self.device)
        # Alone, as if no other request ran: the prompt's cache is exact. The prompts of
        # 16 jobs arriving together, prefilled as one padded batch, took 108 ms against
        # 145 ms one by one (bench/local_batching.py's model, 1 thread): a few percent of
        # the 16 jobs' time, not worth giving that up.
        out = self.model(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: cache},
        )
        return out.logits[0, -1], cache

    def decode(self, batch: Batch[Any]) -> torch.Tensor:
        """The logits (rows, vocabulary) after one step of ``batch``; its cache grows."""
        out = self.model(**batch.inputs(), use_cache=True, **{self._cache_argument: batch.cache})
        return out.logits[:, -1]


@dataclass(eq=False)
class _Sequence:
    """A running request: how it picks tokens, and the text they make so far."""

    request: LocalRequest
    sampling: Sampling
    detokenizer: IncrementalDetokenizer
    stopper: StopMatcher
    produced: int = 0

    def take(self, token: int, eos: frozenset[int]) -> Output | None:
        """Take a sampled token: the output it makes, if any; ``finished`` for the last."""
        request = self.request
        self.produced += 1
        ended = token in eos and not request.ignore_eos
        text = "" if ended else self.stopper.push(self.detokenizer.add(token))
        done = ended or self.stopper.stopped or self.produced >= request.max_tokens
        if done:
            text += self.stopper.push(self.detokenizer.finish()) + self.stopper.finish()
            request.completion_tokens = self.produced
            request.finish_reason = "stop" if ended or self.stopper.stopped else "length"
        if text or done:
            return Output(request, text, finished=done)
        return None


class LocalEngine:
    """A model and its tokenizer, and the thread that decodes for them."""

    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: Any,
        *,
        device: str,
        max_batch: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.runner = ModelRunner(model, torch.device(device))
        self.max_batch = max_batch
        self.steps = 0
        self._eos = _eos_ids(model, tokenizer)
        self._batch: Batch[_Sequence] = Batch(self.runner.device)
        self._loop = loop
        self._incoming: queue.SimpleQueue[LocalRequest | None] = queue.SimpleQueue()
        # Requests submitted and not yet started or dropped; both threads change it.
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"local-{name}", daemon=True)
        self._thread.start()

    # -- the event loop's side ------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether any request is queued or running."""
        return self._queued > 0 or bool(self._batch)

    @property
    def running(self) -> int:
        """Requests in the batch now."""
        return len(self._batch)

    def submit(self, request: LocalRequest) -> None:
        with self._queued_lock:
            self._queued += 1
        self._incoming.put(request)

    def close(self) -> None:
        """Stop the thread; requests still running end with an error."""
        self._incoming.put(None)
        self._thread.join()

    # -- the engine's thread --------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                outputs: list[Output] = []
                if not self._admit(outputs, block=not self._batch):
                    break
                if self._batch:
                    try:
                        self._step(outputs)
                    except Exception as exc:  # a broken step fails the batch, not the engine
                        log.exception("local model %s: a decode step failed", self.name)
                        self._fail_all(outputs, f"the local model failed: {exc}")
                if outputs:
                    self._loop.call_soon_threadsafe(deliver, outputs)
        outputs = []
        self._fail_all(outputs, "the local model was unloaded")
        if outputs:
            self._loop.call_soon_threadsafe(deliver, outputs)

    def _fail_all(self, outputs: list[Output], error: str) -> None:
        """End every running request with ``error``; the batch is empty after."""
        outputs.extend(Output(row.request, finished=True, error=error) for row in self._batch.rows)
        self._batch.clear()

    def _admit(self, outputs: list[Output], *, block: bool) -> bool:
        """Take in waiting requests (up to the batch size); ``False`` once closed."""
        while len(self._batch) < self.max_batch:
            try:
                request = (
                    self._incoming.get(timeout=_IDLE_WAIT_SECONDS)
                    if block
                    else self._incoming.get_nowait()
                )
            except queue.Empty:
                return True
            if request is None:
                return False
            block = False
            try:
                if not request.cancelled:
                    self._start(request, outputs)
            except Exception as exc:
                log.warning("local model %s: a request could not start: %s", self.name, exc)
                outputs.append(Output(request, finished=True, error=str(exc)))
            finally:
                # Counted out only once it is a row (or gone): never idle in between.
                with self._queued_lock:
                    self._queued -= 1
        return True

    def _prompt(self, messages: list[dict[str, str]]) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
            # A BatchEncoding (a mapping) in recent transformers, a list before.
            ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
            return list(ids)
        # No chat template: a plain transcript that ends where the reply begins.
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return list(self.tokenizer.encode(text))

    def _start(self, request: LocalRequest, outputs: list[Output]) -> None:
        """Run the request's prompt, take its first token, and add it to the batch."""
        ids = self._prompt(request.messages)
        if not ids:
            raise ValueError("the prompt is empty")
        limit = self.runner.max_positions
        if limit is not None and len(ids) >= limit:
            raise ValueError(f"the prompt has {len(ids)} tokens; the model takes at most {limit}")
        request.prompt_tokens = len(ids)
        generator = None
        if request.seed is not None:
            generator = torch.Generator(device=self.runner.device).manual_seed(request.seed)
        sequence = _Sequence(
            request=request,
            sampling=Sampling(request.temperature, request.top_p, generator),
            detokenizer=IncrementalDetokenizer(self.tokenizer),
            stopper=StopMatcher(request.stop),
        )
        logits, cache = self.runner.prefill(ids)
        token = sample(logits, sequence.sampling)
        output = sequence.take(token, self._eos)
        if output is not None:
            outputs.append(output)
            if output.finished:
                return
        self._batch.add(sequence, cache, token)

    def _step(self, outputs: list[Output]) -> None:
        """Decode one token for every row; retire the rows that end or were cancelled."""
        batch = self._batch
        cancelled = [i for i, row in enumerate(batch.rows) if row.request.cancelled]
        if cancelled:
            batch.retire(cancelled)
            if not batch:
                return
        logits = self.runner.decode(batch)
        self.steps += 1
        tokens = sample_rows(logits, [row.sampling for row in batch.rows])
        batch.advance(tokens)
        finished = []
        for index, (row, token) in enumerate(zip(batch.rows, tokens, strict=True)):
            output = row.take(token, self._eos)
            if output is not None:
                outputs.append(output)
                if output.finished:
                    finished.append(index)
        if finished:
            batch.retire(finished)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def _pretrained(name: str, torch_dtype: Any, **options: Any) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(name, **options)
    return tokenizer, AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, **options)


class Unavailable(OSError):
    """Why a model cannot be had, in words of ours that a job's listeners may read
    (they name the hub, never a file of this machine)."""


def is_directory(source: str) -> bool:
    """Whether ``source`` names a directory (written as a path, or one that exists
    here) rather than a hub id: a directory is never looked for on the hub."""
    return source.startswith(("/", "./", "../")) or os.path.isdir(source)


def _ask_hub(name: str) -> None:
    """Return if the hub has model ``name``; raise ``Unavailable`` saying why not at once.

    One request, bounded: the downloads' own retries would spend a minute on a hub
    that cannot be reached.
    """
    api = HfApi()
    try:
        api.model_info(name, timeout=HUB_TIMEOUT_SECONDS)
    except HFValidationError:
        raise Unavailable("it is neither a directory nor a valid hub id") from None
    except RepositoryNotFoundError:
        raise Unavailable(
            f"the hub ({api.endpoint}) has no such model (or not for this process's token)"
        ) from None
    except HfHubHTTPError as exc:
        raise Unavailable(f"the hub ({api.endpoint}) refused it: {exc}") from None
    except Exception as exc:  # no connection, no answer: the HTTP library's errors
        reason = str(exc) or type(exc).__name__
        raise Unavailable(
            f"it is not in the hub's cache, and the hub "
            f"({api.endpoint}) cannot be reached: {reason}"
        ) from None


def load_engine(
    name: str,
    *,
    device: str,
    dtype: str,
    max_batch: int,
    threads: int,
    loop: asyncio.AbstractEventLoop,
) -> LocalEngine:
    """Load a model and its tokenizer (a directory or a hub id) and start its engine.

    Blocking: run it in a thread. ``name`` is what the deployment configured, never
    what a job sent. The hub is reached only for a hub id missing from the hub's
    cache, and not when ``HF_HUB_OFFLINE`` is set: it is asked once, for at most
    :data:`HUB_TIMEOUT_SECONDS`, whether it has the model, and the files are
    downloaded only if it does. An ``OSError`` says why a model cannot be had (an
    :class:`Unavailable` in words a job's listeners may read). ``threads`` is
    torch's number of CPU threads (for the whole process): as many as the cores
    would leave the engine's and the event loop's threads fighting torch's for them
    (bench/local_batching.py: 2.7x -> 5.2x at 16 jobs on 2 cores with 1 thread).
    """
    started = time.perf_counter()
    if device == "cpu" and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch_dtype: Any = DTYPES.get(dtype, "auto")
    if dtype == "auto" and device == "cpu":
        torch_dtype = torch.float32
    try:
        tokenizer, model = _pretrained(name, torch_dtype, local_files_only=True)
    except OSError as exc:
        if is_directory(name):
            raise
        if constants.is_offline_mode():
            raise Unavailable(
                "it is not in the Hugging Face hub's cache, and HF_HUB_OFFLINE is set"
            ) from exc
        _ask_hub(name)
        tokenizer, model = _pretrained(name, torch_dtype)
    model.to(device)
    model.eval()
    log.info(
        "local model %s loaded in %.1fs (%s, %s)",
        name,
        time.perf_counter() - started,
        device,
        str(model.dtype).removeprefix("torch."),
    )
    return LocalEngine(name, model, tokenizer, device=device, max_batch=max_batch, loop=loop)
