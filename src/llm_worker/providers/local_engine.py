"""Batched generation with a Hugging Face model, in a thread of this process.

One :class:`LocalEngine` per loaded model runs a decode loop in its own thread,
so the event loop never waits for the model. Every running request is a row
of one left-padded batch that shares a KV cache:

* a request joins between two steps: its prompt is run alone (exactly as if
  it were the only one), then its cache is merged into the batch's, the
  shorter side padded on the left and masked out;
* each step decodes one token for every row, each at its own position;
* a row leaves when it ends (end of sequence, ``max_tokens``, a stop
  sequence) or is cancelled, at the next step; padding that no row needs any
  more is trimmed.

A greedy request (temperature 0) therefore gets the same tokens whether it
runs alone or beside others, whatever their lengths. This module imports
torch and transformers: it is loaded only when a local job runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from llm_worker.providers.detokenizer import IncrementalDetokenizer, StopMatcher

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_IDLE_WAIT_SECONDS = 0.5


@dataclass(eq=False)
class LocalRequest:
    """One job's generation, as the engine sees it.

    ``on_output(text, finished, error)`` is called on the event loop's thread
    with each piece of text, and once with ``finished`` or an ``error``.
    """

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: Sequence[str]
    on_output: Callable[[str, bool, str | None], None]
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


@dataclass(eq=False)
class _Row:
    request: LocalRequest
    length: int
    """Real tokens in the cache for this row: the position of its next input."""
    last: int
    """The token to feed at the next step."""
    detokenizer: IncrementalDetokenizer
    stopper: StopMatcher
    generator: torch.Generator | None
    produced: int = 0
    output: list[str] = field(default_factory=list)


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
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.max_batch = max_batch
        self._loop = loop
        self._incoming: queue.SimpleQueue[LocalRequest | None] = queue.SimpleQueue()
        # Requests submitted and not yet started or dropped; both threads change it.
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._eos = self._eos_ids()
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        # transformers renamed `past_key_values` to `cache` (5.x); take what this one has.
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name=f"local-{name}", daemon=True)
        self._thread.start()

    # -- the event loop's side ------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether any request is queued or running."""
        return self._queued > 0 or bool(self._rows)

    @property
    def running(self) -> int:
        return len(self._rows)

    def submit(self, request: LocalRequest) -> None:
        with self._queued_lock:
            self._queued += 1
        self._incoming.put(request)

    def close(self) -> None:
        """Stop the thread; requests still running end with an error."""
        self._incoming.put(None)
        self._thread.join()

    # -- the engine's thread --------------------------------------------------

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(v for v in value if isinstance(v, int))
        return frozenset(ids)

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                outputs: list[tuple[LocalRequest, str, bool, str | None]] = []
                if not self._admit(outputs, block=not self._rows):
                    break
                if self._rows:
                    try:
                        self._step(outputs)
                    except Exception as exc:  # a broken step fails the batch, not the engine
                        log.exception("local model %s: a decode step failed", self.name)
                        for row in self._rows:
                            outputs.append(
                                (row.request, "", True, f"the local model failed: {exc}")
                            )
                        self._reset()
                if outputs:
                    self._loop.call_soon_threadsafe(_deliver, outputs)
        for row in self._rows:
            self._loop.call_soon_threadsafe(
                _deliver, [(row.request, "", True, "the local model was unloaded")]
            )
        self._reset()

    def _admit(self, outputs: list[Any], *, block: bool) -> bool:
        """Take in waiting requests (up to the batch size); ``False`` once closed."""
        while len(self._rows) < self.max_batch:
            try:
                request = (
                    self._incoming.get(timeout=_IDLE_WAIT_SECONDS)
                    if block
                    else (self._incoming.get_nowait())
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
                outputs.append((request, "", True, str(exc)))
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

    def _start(self, request: LocalRequest, outputs: list[Any]) -> None:
        ids = self._prompt(request.messages)
        if not ids:
            raise ValueError("the prompt is empty")
        if self.max_positions is not None and len(ids) >= self.max_positions:
            raise ValueError(
                f"the prompt has {len(ids)} tokens; the model takes at most {self.max_positions}"
            )
        request.prompt_tokens = len(ids)
        generator = None
        if request.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(request.seed)
        cache = DynamicCache(config=self.model.config)
        inputs = torch.tensor([ids], device=self.device)
        # Alone, as if no other request ran: the prompt's cache is exact.
        out = self.model(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: cache},
        )
        row = _Row(
            request=request,
            length=len(ids),
            last=0,
            detokenizer=IncrementalDetokenizer(self.tokenizer),
            stopper=StopMatcher(request.stop),
            generator=generator,
        )
        token = self._sample(out.logits[0, -1], row)
        if self._advance(row, token, outputs):
            return
        self._merge(row, cache)

    def _merge(self, row: _Row, cache: Any) -> None:
        """Add a started row to the batch, padding the shorter side on the left."""
        length = row.length
        if self._cache is None or self._mask is None:
            self._cache = cache
            self._mask = torch.ones(1, length, dtype=torch.long, device=self.device)
            self._rows = [row]
            return
        width = self._mask.shape[1]
        target = max(width, length)
        for batch_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            batch_layer.keys = torch.cat(
                [_pad_left(batch_layer.keys, target), _pad_left(new_layer.keys, target)], 0
            )
            batch_layer.values = torch.cat(
                [_pad_left(batch_layer.values, target), _pad_left(new_layer.values, target)], 0
            )
        new_mask = torch.zeros(1, target, dtype=torch.long, device=self.device)
        new_mask[:, target - length :] = 1
        mask = self._mask
        if width < target:
            mask = torch.cat([mask.new_zeros(mask.shape[0], target - width), mask], 1)
        self._mask = torch.cat([mask, new_mask], 0)
        self._rows.append(row)

    def _step(self, outputs: list[Any]) -> None:
        cancelled = [i for i, row in enumerate(self._rows) if row.request.cancelled]
        if cancelled:
            self._retire(set(cancelled))
            if not self._rows:
                return
        assert self._mask is not None
        rows = self._rows
        inputs = torch.tensor([[row.last] for row in rows], device=self.device)
        positions = torch.tensor([[row.length] for row in rows], device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], 1)
        out = self.model(
            input_ids=inputs,
            attention_mask=self._mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_argument: self._cache},
        )
        self.steps += 1
        logits = out.logits[:, -1]
        greedy = logits.argmax(-1).tolist()
        finished = set()
        for index, row in enumerate(rows):
            row.length += 1
            request = row.request
            token = greedy[index] if request.temperature == 0 else self._sample(logits[index], row)
            if self._advance(row, token, outputs):
                finished.add(index)
        if finished:
            self._retire(finished)

    def _sample(self, logits: torch.Tensor, row: _Row) -> int:
        request = row.request
        if request.temperature == 0:
            return int(logits.argmax())
        probabilities = torch.softmax(logits.float() / request.temperature, dim=-1)
        if request.top_p < 1:
            ordered, order = probabilities.sort(descending=True)
            outside = ordered.cumsum(-1) - ordered > request.top_p
            ordered[outside] = 0
            probabilities = torch.zeros_like(probabilities).scatter(0, order, ordered)
        return int(torch.multinomial(probabilities, 1, generator=row.generator))

    def _advance(self, row: _Row, token: int, outputs: list[Any]) -> bool:
        """Take a sampled token into the row; ``True`` when the row is finished."""
        request = row.request
        row.produced += 1
        row.last = token
        ended = token in self._eos and not request.ignore_eos
        text = "" if ended else row.stopper.push(row.detokenizer.add(token))
        done = ended or row.stopper.stopped or row.produced >= request.max_tokens
        if done:
            text += row.stopper.push(row.detokenizer.finish()) + row.stopper.finish()
            request.completion_tokens = row.produced
            request.finish_reason = "stop" if ended or row.stopper.stopped else "length"
        if text or done:
            outputs.append((request, text, done, None))
        return done

    def _retire(self, indexes: set[int]) -> None:
        keep = [i for i in range(len(self._rows)) if i not in indexes]
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._reset()
            return
        assert self._mask is not None
        kept = torch.tensor(keep, device=self.device)
        mask = self._mask[kept]
        # Columns that are padding for every remaining row are dead weight.
        first = int(mask.any(0).nonzero()[0])
        for layer in self._cache.layers:
            layer.keys = layer.keys[kept][:, :, first:]
            layer.values = layer.values[kept][:, :, first:]
        self._mask = mask[:, first:]

    def _reset(self) -> None:
        self._rows = []
        self._cache = None
        self._mask = None


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[2]
    if missing <= 0:
        return tensor
    shape = (tensor.shape[0], tensor.shape[1], missing, tensor.shape[3])
    return torch.cat([tensor.new_zeros(shape), tensor], 2)


def _deliver(outputs: list[tuple[LocalRequest, str, bool, str | None]]) -> None:
    for request, text, finished, error in outputs:
        with contextlib.suppress(Exception):
            request.on_output(text, finished, error)


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

    Blocking: run it in a thread. The hub is reached only when the files are
    not local and ``HF_HUB_OFFLINE`` is not set. ``threads`` is torch's number
    of CPU threads (for the whole process): as many as the cores would leave
    the engine's and the event loop's threads fighting torch's for them
    (bench/local_batching.py: 2.7x -> 5.2x at 16 jobs on 2 cores with 1 thread).
    """
    started = time.perf_counter()
    if device == "cpu" and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(name)
    torch_dtype: Any = DTYPES.get(dtype, "auto")
    if dtype == "auto" and device == "cpu":
        torch_dtype = torch.float32
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
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
