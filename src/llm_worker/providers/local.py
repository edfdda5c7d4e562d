"""The ``local`` provider: Hugging Face models run in this process, batched.

Which models it runs is the deployment's choice, never a job's: ``LOCAL_MODELS``
names them (``name=directory-or-hub-id``, and a job's ``model`` must be one of
those names), and a ``PROVIDERS_FILE`` entry of ``type = "local"`` runs the one
model its ``settings.model`` pins (a job may not name another). Nothing a job
sends becomes a path or a download, and what a job's listeners are told of a
model that cannot be loaded names no file of this machine.

Settings: ``model`` (one of the names), ``max_tokens`` (512),
``temperature`` (1; 0 is greedy, as is any below 1e-5), ``top_p`` (1), ``stop``, ``seed``, and
optionally ``device`` (``cuda`` when there is one, else ``cpu``), ``dtype``
(``auto``: float32 on the CPU, the model's own on a GPU) and ``ignore_eos``
(vLLM's name: go on to ``max_tokens`` past the end of sequence, as benchmarks do).

Needs the ``local`` extra (``pip install 'llm-worker[local]'``): torch and
transformers are imported when the first local job runs, not before. Each
model is loaded once and serves every job that names it; at most
``LOCAL_MAX_MODELS`` stay loaded, the least recently used idle one making room.
A job that has to wait for its model to load tells its listeners so (a
:class:`~llm_worker.providers.base.Notice`). A hub id is taken from the hub's
cache when it is there; otherwise the hub is asked once, briefly, before any
download, so that a model that cannot be had fails the job in seconds.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import TemplateError
from llm_worker.providers.base import CallEnd, Notice, Provider, ProviderError
from llm_worker.providers.checks import (
    STOP_SCHEMA,
    check_integer,
    check_number,
    check_stop,
    integer_schema,
    number_schema,
    settings_schema,
)
from llm_worker.providers.local_request import LocalRequest, Output

if TYPE_CHECKING:
    from llm_worker.providers.local_engine import LocalEngine

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 512
SETTINGS = frozenset(
    {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "device", "dtype", "ignore_eos"}
)
DTYPE_NAMES = frozenset({"auto", "float32", "float16", "bfloat16", "float64"})
INSTALL_HINT = "install llm-worker[local] (torch and transformers) to use provider 'local'"


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class LocalModels:
    """Loaded models by (name, device, dtype): at most ``max_models``, one load each."""

    def __init__(self, *, max_models: int, max_batch: int, threads: int = 0) -> None:
        self.max_models = max_models
        self.max_batch = max_batch
        self.threads = threads or max(1, (os.cpu_count() or 1) - 1)
        self.loads = 0
        self._engines: OrderedDict[tuple[str, str, str], LocalEngine] = OrderedDict()
        self._loading: dict[tuple[str, str, str], asyncio.Future[LocalEngine]] = {}
        self._usual_device: str | None = None

    def loaded(self) -> int:
        return len(self._engines)

    def batched(self) -> int:
        """Jobs in the loaded models' batches now."""
        return sum(engine.running for engine in self._engines.values())

    async def device(self, device: str | None) -> str:
        """``device``, or the default one when it is ``None``."""
        if device is not None:
            return device
        if self._usual_device is None:
            self._usual_device = await asyncio.to_thread(_default_device)
        return self._usual_device

    def ready(self, name: str, device: str, dtype: str) -> LocalEngine | None:
        """The model's engine if it is loaded; ``None`` if a job would wait for a load."""
        key = (name, device, dtype)
        engine = self._engines.get(key)
        if engine is not None:
            self._engines.move_to_end(key)
        return engine

    async def get(self, name: str, device: str | None, dtype: str) -> LocalEngine:
        device = await self.device(device)
        key = (name, device, dtype)
        engine = self.ready(name, device, dtype)
        if engine is not None:
            return engine
        loading = self._loading.get(key)
        if loading is not None:
            # Jobs that arrive while the model loads wait for that one load.
            return await asyncio.shield(loading)
        loading = self._loading[key] = asyncio.get_running_loop().create_future()
        try:
            self._make_room()
            engine = await self._load(name, device, dtype)
        except BaseException as exc:
            error = exc if isinstance(exc, ProviderError) else ProviderError(str(exc))
            loading.set_exception(error)
            loading.exception()  # the waiters, if any, get it; nobody else must
            raise error from exc
        finally:
            del self._loading[key]
        self._engines[key] = engine
        loading.set_result(engine)
        return engine

    def _make_room(self) -> None:
        while len(self._engines) + len(self._loading) > self.max_models:
            idle = next((k for k, e in self._engines.items() if not e.busy), None)
            if idle is None:
                raise ProviderError(
                    f"{len(self._engines)} local models are busy and LOCAL_MAX_MODELS is "
                    f"{self.max_models}: no room to load another now",
                    retryable=True,
                    retry_after=1.0,
                )
            engine = self._engines.pop(idle)
            log.info("unloading local model %s to make room", engine.name)
            engine.close()

    async def _load(self, name: str, device: str, dtype: str) -> LocalEngine:
        """Load model ``name`` (a configured source); a :class:`ProviderError` says why
        it cannot be, in words that name no file of this machine (the log has them)."""
        try:
            from llm_worker.providers.local_engine import Unavailable, load_engine
        except ImportError as exc:
            raise ProviderError(f"{INSTALL_HINT}: {exc}") from exc
        self.loads += 1
        log.info("loading local model %s (%s, %s)", name, device, dtype)
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.to_thread(
                load_engine,
                name,
                device=device,
                dtype=dtype,
                max_batch=self.max_batch,
                threads=self.threads,
                loop=loop,
            )
        except Unavailable as exc:
            log.warning("cannot load local model %s: %s", name, exc)
            raise ProviderError(str(exc)) from exc
        except Exception as exc:
            # transformers' messages quote the model's files: for the log alone.
            log.warning("cannot load local model %s: %s: %s", name, type(exc).__name__, exc)
            raise ProviderError("its files cannot be loaded (the worker's log says why)") from exc

    async def aclose(self) -> None:
        engines, self._engines = list(self._engines.values()), OrderedDict()
        for engine in engines:
            await asyncio.to_thread(engine.close)


@functools.cache
def _local_extra_installed() -> bool:
    return all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


class LocalProvider(Provider):
    """Models run in this process, among those the deployment chose.

    ``choices`` maps the names a job may give as ``settings.model`` to the directory
    or hub id each stands for. A ``pinned`` provider (a providers-file entry) runs
    its one model, ``choices``' only source, and a job may not set ``model``.
    """

    def __init__(
        self,
        name: str,
        *,
        models: LocalModels,
        choices: Mapping[str, str],
        pinned: bool = False,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        if pinned and len(choices) != 1:
            raise ValueError("a pinned local provider runs exactly one model")
        self.name = name
        self.models = models
        self.choices = dict(choices)
        self.pinned = pinned
        self.defaults = dict(defaults or {})
        self.defaults.pop("model", None)

    @classmethod
    def pinned_to(
        cls, name: str, *, models: LocalModels, settings: Mapping[str, Any]
    ) -> LocalProvider:
        """A providers-file entry: the model its ``settings.model`` pins, its other
        settings as defaults."""
        return cls(
            name, models=models, choices={name: settings["model"]}, pinned=True, defaults=settings
        )

    def configuration_problem(self) -> str | None:
        if not self.choices:
            return (
                f"provider {self.name!r} needs LOCAL_MODELS: the models it may run, "
                "as name=directory-or-hub-id"
            )
        return None if _local_extra_installed() else INSTALL_HINT

    def _model_problem(self, settings: Mapping[str, Any]) -> str | None:
        """Why ``settings.model`` is refused, naming no more than the configured names:
        whatever a job sends, it learns nothing of this machine's files."""
        if self.pinned:
            if "model" in settings:
                return (
                    f"provider {self.name!r} runs the one model its deployment chose: "
                    "settings.model cannot be set"
                )
            return None
        model = settings.get("model")
        if isinstance(model, str) and model in self.choices:
            return None
        return (
            f"settings.model must name one of the models of provider {self.name!r}: "
            f"{', '.join(self.choices)}"
        )

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        problem = self.configuration_problem()
        if problem is not None:
            raise TemplateError(problem)
        merged = {**self.defaults, **settings}
        unknown = sorted(set(merged) - SETTINGS)
        if unknown:
            known = ", ".join(sorted(SETTINGS))
            raise TemplateError(
                f"settings.{unknown[0]} is not a setting of provider {self.name!r} (known: {known})"
            )
        problem = self._model_problem(settings)
        if problem is not None:
            raise TemplateError(problem)
        check_integer(merged, "max_tokens", low=1)
        check_number(merged, "temperature", low=0)
        check_number(merged, "top_p", low=0, high=1)
        check_integer(merged, "seed")
        check_stop(merged)
        device = merged.get("device")
        if device is not None and not (
            isinstance(device, str) and device.split(":")[0] in {"cpu", "cuda", "mps"}
        ):
            raise TemplateError(f"settings.device must be cpu, cuda, cuda:N or mps, not {device!r}")
        dtype = merged.get("dtype", "auto")
        if not isinstance(dtype, str) or dtype not in DTYPE_NAMES:
            raise TemplateError(
                f"settings.dtype must be one of {', '.join(sorted(DTYPE_NAMES))}, not {dtype!r}"
            )
        if not isinstance(merged.get("ignore_eos", False), bool):
            raise TemplateError(
                f"settings.ignore_eos must be true or false, not {merged['ignore_eos']!r}"
            )

    def settings_schema(self) -> dict[str, Any]:
        devices = ["cpu", "cuda", "mps"]
        model = {} if self.pinned else {"model": {"enum": list(self.choices)}}
        return settings_schema(
            {
                **model,
                "max_tokens": integer_schema(1),
                "temperature": number_schema(0),
                "top_p": number_schema(0, 1),
                "seed": integer_schema(),
                "stop": STOP_SCHEMA,
                # cpu, cuda, cuda:N, mps (no "$": a trailing newline would pass it).
                "device": {
                    "anyOf": [
                        {"enum": [*devices, None]},
                        {"type": "string", "pattern": f"^({'|'.join(devices)}):"},
                    ]
                },
                "dtype": {"enum": sorted(DTYPE_NAMES)},
                "ignore_eos": {"type": "boolean"},
            },
            self.defaults,
            closed=True,
        )

    async def stream(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[str | Notice | CallEnd]:
        # A setting given as null is one not given (as OpenAI's API reads it).
        params = {**self.defaults, **{k: v for k, v in settings.items() if v is not None}}
        problem = self._model_problem(settings)
        if problem is not None:  # checked at add; a job is never the way to a file
            raise ProviderError(problem)
        label = self.name if self.pinned else params["model"]
        source, dtype = self.choices[label], params.get("dtype", "auto")
        device = await self.models.device(params.get("device"))
        engine = self.models.ready(source, device, dtype)
        if engine is None:
            yield Notice(f"loading local model {label!r}: the answer starts once it is loaded")
            try:
                engine = await self.models.get(source, device, dtype)
            except ProviderError as exc:
                if exc.retryable:
                    raise
                raise ProviderError(f"cannot load local model {label!r}: {exc.message}") from exc
        outputs: asyncio.Queue[Output] = asyncio.Queue()
        stop = params.get("stop") or []
        request = LocalRequest(
            # Text only (check_message refused other parts at add): the engine's chat
            # template and its plain transcript both take a string.
            messages=[{"role": m.role, "content": m.text} for m in messages],
            max_tokens=params.get("max_tokens", DEFAULT_MAX_TOKENS),
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            seed=params.get("seed"),
            stop=[stop] if isinstance(stop, str) else list(stop),
            ignore_eos=bool(params.get("ignore_eos", False)),
            on_output=outputs.put_nowait,
        )
        engine.submit(request)
        finished = False
        try:
            while not finished:
                output = await outputs.get()
                finished = output.finished
                if output.error is not None:
                    raise ProviderError(f"provider {self.name!r}: {output.error}")
                if output.text:
                    yield output.text
        finally:
            if not finished:
                request.cancel()
        # Counted by the engine's thread before its last output, which came after.
        yield CallEnd(request.finish_reason, request.prompt_tokens, request.completion_tokens)

    async def aclose(self) -> None:
        await self.models.aclose()
