"""What the process is doing, in Prometheus' terms, with ``prometheus_client``.

One :class:`Metrics` per process (its own registry, so that several services in
one test process do not mix their figures), handed to the parts that measure:
the gateway (jobs added, connections, the latency it adds), the worker (queue
wait, job duration and outcome), the runner (model calls: time to first token,
time per output token, errors, retries) and the store (commit latency, errors).
What is read rather than counted (queued, running, connections) is read when
``/metrics`` is scraped.

Label values are bounded: tenants come from the keys file, providers from the
deployment's registry, outcomes and error kinds from fixed lists; model names
come from clients' templates, so only those the deployment knows get a label of
their own (:class:`KnownLabel`), every other one counts as ``other``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llm_worker.jobs.model import JobSpec
from llm_worker.jobs.templates import ModelStream
from llm_worker.jobs.usage import CallEnd

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_MODELS = 64
MAX_LABEL_CHARS = 100
OTHER = "other"
# Jobs whose first text is yet to reach a listener, remembered for the added latency.
MAX_AWAITED_FRAMES = 10_000
# Seconds: from a millisecond (the loopback model) to minutes (a long answer).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
PER_TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


def tenant_label(tenant: str) -> str:
    """A tenant's label: its name (from the keys file), ``anonymous`` without keys."""
    return tenant or "anonymous"


class KnownLabel:
    """A label whose values a client chooses (model names): only names the deployment
    knows keep theirs, at most :data:`MAX_MODELS` of at most :data:`MAX_LABEL_CHARS`
    characters; any other value is ``other`` and takes no slot, so what clients send
    can neither grow a scrape nor push the deployment's own names out."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        names = sorted(name for name in set(known) if 0 < len(name) <= MAX_LABEL_CHARS)
        self.known = frozenset(names[:MAX_MODELS])

    def __call__(self, value: str) -> str:
        return value if value in self.known else OTHER


@dataclass(frozen=True, slots=True)
class Readings:
    """What is read at each scrape, from the parts that know it."""

    queued: int
    running: int
    connections: int
    followed_jobs: int
    local_models: int
    local_batch: int


class Metrics:
    """The process's metrics; ``models`` are the model names the deployment knows (its
    providers' default models, its local models, ``METRICS_MODELS``): the only ones
    that get a label of their own."""

    def __init__(self, models: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model = KnownLabel(models)
        self._define_job_metrics(self.registry)
        self._define_call_metrics(self.registry)
        self._define_store_metrics(self.registry)
        self._first_deltas: dict[str, float] = {}
        self._readings = _ReadingsCollector()
        self.registry.register(self._readings)

    def _define_job_metrics(self, r: CollectorRegistry) -> None:
        """Jobs: added, ended, their wait in the queue and their duration."""
        self.jobs_added = Counter(
            "llm_worker_jobs_added", "Jobs queued, by tenant.", ["tenant"], registry=r
        )
        self.jobs_finished = Counter(
            "llm_worker_jobs_finished",
            "Jobs ended, by outcome (done, failed, cancelled), the provider and model of "
            "their last stream, and tenant.",
            ["outcome", "provider", "model", "tenant"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "llm_worker_queue_wait_seconds",
            "From a job's add (a scheduled job's time) to its start by a worker.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.job_duration = Histogram(
            "llm_worker_job_duration_seconds",
            "From a job's start to its end, by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )

    def _define_call_metrics(self, r: CollectorRegistry) -> None:
        """Model calls: tokens, timing, errors, retries, fallbacks; the latency the worker adds."""
        self.time_to_first_token = Histogram(
            "llm_worker_time_to_first_token_seconds",
            "From a model call to its first text delta, by provider and model.",
            ["provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "llm_worker_time_per_output_token_seconds",
            "Between a model call's text deltas, averaged over the call, by provider and model.",
            ["provider", "model"],
            buckets=PER_TOKEN_BUCKETS,
            registry=r,
        )
        self.added_latency = Histogram(
            "llm_worker_added_latency_seconds",
            "From a job's first text arriving from its model to its send to a listener "
            "that was following the job already, once per job (where the gateway and the "
            "worker share a process; a listener that came later is not counted).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "llm_worker_tokens",
            "Tokens into (prompt) and out of (completion) the models, as they counted them, "
            "by provider and model.",
            ["direction", "provider", "model"],
            registry=r,
        )
        self.provider_calls = Counter(
            "llm_worker_provider_calls", "Model calls, by provider.", ["provider"], registry=r
        )
        self.provider_errors = Counter(
            "llm_worker_provider_errors",
            "Failed model calls (each try), by provider and kind.",
            ["provider", "kind"],
            registry=r,
        )
        self.provider_fallbacks = Counter(
            "llm_worker_provider_fallbacks",
            "Streams handed to their next fallback, by the provider that failed.",
            ["provider"],
            registry=r,
        )
        self.provider_retries = Counter(
            "llm_worker_provider_retries", "Model calls tried again, by provider.", ["provider"],
            registry=r,
        )  # fmt: skip

    def _define_store_metrics(self, r: CollectorRegistry) -> None:
        """The store: commit latency and errors."""
        self.store_commit = Histogram(
            "llm_worker_store_commit_seconds",
            "How long the store takes to make a round of events durable (a SQLite commit, "
            "a round of Redis writes).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "llm_worker_store_errors",
            "Store operations that failed, by operation.",
            ["operation"],
            registry=r,
        )

    def know_models(self, names: Iterable[str]) -> None:
        """Give the model names the deployment knows a label of their own (the rest:
        ``other``)."""
        self.model = KnownLabel(names)

    def render(self, readings: Readings) -> bytes:
        """The text ``/metrics`` answers, with the gauges at ``readings``."""
        self._readings.readings = readings
        return generate_latest(self.registry)

    # -- the latency the worker adds, where gateway and worker share a process --

    def first_delta(self, job_id: str, at: float) -> None:
        """A job's model gave its first delta at ``at`` (``time.perf_counter()``)."""
        first_deltas = self._first_deltas
        if len(first_deltas) >= MAX_AWAITED_FRAMES:  # jobs nobody listens to: the oldest go
            del first_deltas[next(iter(first_deltas))]
        first_deltas[job_id] = at

    def first_frame_sent(self, job_id: str, since: float, at: float) -> None:
        """A listener following the job since ``since`` was sent its first text at ``at``.

        Observed once per job, and only for a listener that was there before the text
        arrived: one that came later waited for its own arrival, not for the worker, and
        leaves the job's first text for those who were there.
        """
        arrived = self._first_deltas.get(job_id)
        if arrived is not None and since <= arrived:
            del self._first_deltas[job_id]
            self.added_latency.observe(max(at - arrived, 0.0))

    def forget(self, job_id: str) -> None:
        self._first_deltas.pop(job_id, None)

    def job_added(self, tenant: str) -> None:
        self.jobs_added.labels(tenant_label(tenant)).inc()

    def job_finished(self, outcome: str, spec: JobSpec, tenant: str) -> None:
        """A job ended (``done``, ``failed``, ``cancelled``); labelled by its last stream."""
        last = spec.assistant.streams[-1]
        if isinstance(last, ModelStream):
            provider, model = last.provider, last.settings.get("model")
        else:
            provider, model = f"pipeline:{last.pipeline}", None
        self.jobs_finished.labels(
            outcome,
            provider,
            self.model(model) if isinstance(model, str) else "none",
            tenant_label(tenant),
        ).inc()

    def waiting_job_cancelled(self, tenant: str) -> None:
        """A job cancelled before it ran: it met no provider (``none``)."""
        self.jobs_finished.labels("cancelled", "none", "none", tenant_label(tenant)).inc()

    def model_call(self, provider: str, settings: Mapping[str, Any]) -> ModelCall:
        """A call (one try) to a model, measured as its deltas come."""
        model = settings.get("model")
        model_label = self.model(model) if isinstance(model, str) else "none"
        self.provider_calls.labels(provider).inc()
        return ModelCall(self, provider, model_label)


class ModelCall:
    """One try of a model call: its time to first delta and between deltas."""

    __slots__ = ("deltas", "first", "last", "metrics", "model", "provider", "started")

    def __init__(self, metrics: Metrics, provider: str, model: str) -> None:
        self.metrics = metrics
        self.provider = provider
        self.model = model
        self.started = time.perf_counter()
        self.first = 0.0
        self.last = 0.0
        self.deltas = 0

    def delta(self) -> None:
        now = time.perf_counter()
        if not self.deltas:
            self.first = now
            self.metrics.time_to_first_token.labels(self.provider, self.model).observe(
                now - self.started
            )
        self.last = now
        self.deltas += 1

    def finished(self, end: CallEnd | None = None) -> None:
        """The call ended well; ``end`` is what the model said of its tokens, if anything."""
        metrics = self.metrics
        completion = end.completion_tokens if end is not None else None
        # Per token when the model counted them, else per delta (one token each, mostly).
        steps = (completion or self.deltas) - 1
        if self.deltas > 1 and steps > 0:
            metrics.time_per_output_token.labels(self.provider, self.model).observe(
                (self.last - self.first) / steps
            )
        if end is not None:
            if end.prompt_tokens is not None:
                metrics.tokens.labels("in", self.provider, self.model).inc(end.prompt_tokens)
            if completion is not None:
                metrics.tokens.labels("out", self.provider, self.model).inc(completion)

    def failed(self, kind: str) -> None:
        self.metrics.provider_errors.labels(self.provider, kind).inc()

    def retried(self) -> None:
        self.metrics.provider_retries.labels(self.provider).inc()


class _ReadingsCollector(Collector):
    """The gauges, as last read (the reading is async; collecting is not)."""

    def __init__(self) -> None:
        self.readings = Readings(0, 0, 0, 0, 0, 0)

    def collect(self) -> Iterable[Metric]:
        readings = self.readings
        for name, documentation, value in (
            ("llm_worker_jobs_queued", "Jobs waiting in the queue.", readings.queued),
            ("llm_worker_jobs_running", "Jobs running.", readings.running),
            ("llm_worker_connections", "Open WebSocket connections.", readings.connections),
            (
                "llm_worker_followed_jobs",
                "Jobs followed by this process's listeners (WebSocket and event streams).",
                readings.followed_jobs,
            ),
            ("llm_worker_local_models_loaded", "Local models loaded.", readings.local_models),
            (
                "llm_worker_local_batch_size",
                "Jobs in the local models' batches now.",
                readings.local_batch,
            ),
        ):
            yield GaugeMetricFamily(name, documentation, value=value)
