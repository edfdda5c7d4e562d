"""Settings, from the environment and a ``.env`` file (the environment wins).

Every setting is documented in ``.env.example`` and in docs/configuration.md; the
names of the system we replace keep their meaning.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_worker.ops.redaction import redact_url

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# The SDK appends the API's own paths (/v1/messages) to it.
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"


class ConfigError(RuntimeError):
    """Settings that cannot work, found at start-up; the message says which and why."""


def validation_problems(exc: ValidationError) -> str:
    """What a settings file got wrong, one ``where: what`` per problem."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()
    )


def check_http_url(value: str) -> None:
    """Raise :class:`ValueError` unless ``value`` is an ``http(s)://host...`` URL."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, not {value[:200]!r}")


LOCAL_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
"""A name a job gives a local model by: never a path nor a hub id (no ``/``)."""


def parse_local_models(text: str) -> dict[str, str]:
    """``LOCAL_MODELS`` as {name a job gives: directory or hub id}; a
    :class:`ValueError` says what is wrong with it."""
    models: dict[str, str] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        name, equals, source = (part.strip() for part in entry.partition("="))
        if not equals or not source:
            raise ValueError(f"{entry.strip()!r} is not name=directory-or-hub-id")
        if not LOCAL_MODEL_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a model name: 1 to 64 letters, digits, '.', '_', ':' "
                "or '-', starting with a letter or digit"
            )
        if name in models:
            raise ValueError(f"model name {name!r} is given twice")
        models[name] = source
    return models


LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]
Role = Literal["all", "gateway", "worker"]
"""What a process runs: gateway and worker (``all``), or one of them."""
ROLES: tuple[Role, ...] = ("all", "gateway", "worker")


_SCHEDULE = r"^\s*[0-9]+(\.[0-9]+)?\s*(,\s*[0-9]+(\.[0-9]+)?\s*)*$"
"""A list of seconds, comma-separated (``WEBHOOK_RETRY_SCHEDULE``)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # -- network ------------------------------------------------------------
    listen_address: str = "127.0.0.1"
    """Interface to bind. The old default, 0.0.0.0, exposed the worker to every network."""
    listen_port: int = Field(8001, ge=0, le=65535)
    """TCP port; 0 picks a free one (the log says which)."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Where a ``--role worker`` process serves ``/metrics`` (a gateway serves it on its
    own port); unset: nowhere."""

    # -- access -------------------------------------------------------------
    api_keys: SecretStr = SecretStr("")
    """Comma-separated API keys, each its own tenant. With none here nor in
    API_KEYS_FILE, anyone who reaches the port may do anything."""
    api_keys_file: Path | None = None
    """TOML file of tenants: the SHA-256 of each of their keys, and their limits."""
    admin_keys: str = ""
    """Comma-separated SHA-256 (hex) of the keys, among those above, that may list every
    tenant's jobs (``GET /v1/jobs``)."""
    token_secret: SecretStr | None = None
    """Signs listen tokens; every gateway must share it."""
    allowed_origins: str = ""
    """Origins of browser pages allowed besides the worker's own; ``*`` for any."""
    allowed_hosts: str = ""
    """Names requests may call the worker by (``Host``), comma-separated, besides IP
    addresses and ``localhost``: ``*.example.com`` for subdomains, ``*`` for any."""
    tenant_max_running_jobs: int = Field(0, ge=0)
    """Jobs of one tenant running at once (0: up to WORKER_CONCURRENCY); with keys only."""
    tenant_max_queued_jobs: int = Field(1000, ge=0)
    """Jobs of one tenant waiting at once; with keys only."""
    tenant_adds_per_minute: int = Field(600, ge=0)
    """Jobs one tenant may add per minute (0: no limit); with keys only."""

    # -- limits -------------------------------------------------------------
    max_connections: int = Field(10_000, ge=1)
    """Open connections (WebSocket and HTTP) at once; more are refused."""
    handshake_timeout_seconds: float = Field(10.0, gt=0)
    """How long a new connection may take to send its request (and upgrade)."""
    body_timeout_seconds: float = Field(10.0, gt=0)
    """How long a request's body may take to arrive, plus a second for every
    BODY_MIN_BYTES_PER_SECOND bytes it has delivered."""
    body_min_bytes_per_second: int = Field(16384, ge=1)
    """The slowest a request's body may arrive, on average, past BODY_TIMEOUT_SECONDS."""
    slow_listener_seconds: float = Field(30.0, gt=0)
    """How long a connection may leave what it was sent unread before it is closed."""
    sse_keepalive_seconds: float = Field(15.0, gt=0)
    """How often an idle event stream sends a comment, to keep it open through proxies
    and to find readers that went away."""
    max_followed_jobs: int = Field(1000, ge=1)
    """Jobs one connection may follow at once."""
    max_streams: int = Field(16, ge=1)
    """Streams in one template."""
    max_history_messages: int = Field(1000, ge=0)
    """Messages in one request's history."""
    max_model_request_chars: int = Field(4_000_000, ge=1000)
    """Longest request a job may send to a model: its messages' text, rendered."""
    queue_max_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    """Bytes of requests waiting in the queue at once (each counted as stored)."""

    # -- logging ------------------------------------------------------------
    log_level: LogLevel = "INFO"
    log_format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    log_file: Path | None = None
    log_stdout: bool = True
    log_json: bool = False
    """One JSON object per line (with ``job_id`` and ``tenant`` on lines about a job)."""

    # -- metrics ------------------------------------------------------------
    metrics_key: SecretStr | None = None
    """A key ``/metrics`` asks for (``Authorization: Bearer``); unset: with API keys, an
    admin key; without keys, none."""
    metrics_models: str = ""
    """Comma-separated model names that get a label of their own in ``/metrics``, besides
    the models the providers file and LOCAL_MODELS name; every other is ``other``."""

    # -- providers ----------------------------------------------------------
    openai_api_key: SecretStr | None = None
    openai_base_url: str = OPENAI_DEFAULT_BASE_URL
    vllm_uri: str | None = None
    vllm_api_key: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str = ANTHROPIC_DEFAULT_BASE_URL
    """Where the ``anthropic`` provider sends requests (the Messages API's root, no /v1)."""
    providers_file: Path | None = None
    """TOML or YAML file naming further OpenAI-compatible endpoints."""
    openai_api_provider: str = "openai"
    """The provider that OpenAI's API (``/v1/chat/completions``, ``/v1/responses``) runs a
    ``model`` on when the name does not start with a provider's (``vllm/...``)."""
    assistants: Path | None = None
    """A JSON file of assistant templates by name, or a directory of ``NAME.json``
    templates, that OpenAI's API serves as the models ``assistant:NAME``."""
    echo_provider: Literal["off", "on", "auto"] = "off"
    """The ``echo`` provider, which repeats the question word by word, for trying and
    testing: ``on``; ``auto``, only while no real provider is configured (what
    ``./run.sh`` sets); ``off``."""
    echo_delay_seconds: float = Field(0.02, ge=0, le=1)
    """Seconds between the words of an echo (a job may set its own ``delay``)."""
    provider_timeout_seconds: float = Field(120.0, gt=0)
    """Longest wait for the next bytes of a model's reply."""
    provider_connect_timeout_seconds: float = Field(10.0, gt=0)
    provider_retries: int = Field(2, ge=0, le=10)
    """Further tries after a rate limit, server error or lost connection, before any output."""
    provider_retry_base_seconds: float = Field(0.5, ge=0)
    """First back-off delay; it doubles with each retry, with jitter."""

    local_models: str = ""
    """The models provider ``local`` may run, as comma-separated ``name=source``: a
    job names one by ``name``; ``source`` is a directory or a hub id. Unset: no
    ``local`` provider."""
    local_max_models: int = Field(1, ge=1)
    """Local models kept loaded at once (provider ``local``)."""
    local_max_batch: int = Field(32, ge=1)
    """Jobs decoded together by one local model; more wait their turn."""
    local_threads: int = Field(0, ge=0)
    """Threads torch computes with on the CPU; 0: one per core but one, left to the event loop."""

    # -- registries ---------------------------------------------------------
    extra_providers: str = ""
    extra_inserts: str = ""
    extra_pipelines: str = ""
    """Comma-separated ``name=package.module:attribute`` plugins."""

    # -- store --------------------------------------------------------------
    store_url: str = "sqlite:///llm-worker.db"
    """Where jobs live: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
    ``redis://host:6379/0``, ``redis+cluster://host:6379`` or ``memory://``."""
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """SQLite's sync level: FULL survives power loss, NORMAL only process crashes."""
    redis_prefix: str = Field("llmw", pattern=r"^[A-Za-z0-9_.-]+$")
    """Prefix of every Redis key and channel, to share one Redis between deployments."""
    worker_heartbeat_timeout_seconds: float = Field(15.0, gt=0)
    """Silence after which a worker counts as dead and its jobs run elsewhere (Redis)."""
    redis_outage_grace_seconds: float = Field(10.0, ge=0)
    """How long Redis may be unreachable before listeners are told."""

    # -- jobs ---------------------------------------------------------------
    worker_concurrency: int = Field(16, ge=1)
    queue_max: int = Field(10_000, ge=1)
    job_ttl_seconds: float = Field(3600.0, gt=0)
    tombstone_seconds: float = Field(7 * 86400.0, ge=0)
    """How long an expired job's id is still known as expired (410) rather than unknown."""
    idempotency_window_seconds: float = Field(86400.0, gt=0)
    """How long an idempotency key holds the job it first added."""
    max_message_bytes: int = Field(1024 * 1024, ge=1024)
    job_max_attempts: int = Field(3, ge=1)
    """Runs of a job whose worker keeps dying, before it fails."""
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    """How long running jobs may go on after a stop is asked for."""

    # -- webhooks -----------------------------------------------------------
    webhook_url: str | None = None
    """Where jobs that name no ``webhook`` (and whose tenant has none) report their end;
    unset: only jobs that name one do (docs/webhooks.md)."""
    webhook_secret: SecretStr | None = None
    """The key webhooks are signed with, ``whsec_<base64>`` (Standard Webhooks); without
    it (and a tenant's own), no webhook is sent and a job naming one is refused."""
    webhook_retry_schedule: str = Field("5,300,1800,7200,18000,36000", pattern=_SCHEDULE)
    """Seconds between a webhook's attempts, comma-separated, each give or take 10%: the
    first attempt is at the job's end, and once the list is spent the delivery is given
    up (the default: 7 attempts over about 17.6 hours)."""
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=300)
    """How long one attempt may take."""
    webhook_allow_private_targets: bool = False
    """Let webhooks go to loopback, link-local and private addresses (tests, an internal
    receiver); off, such targets are refused at add and before each attempt."""

    @field_validator("echo_provider", mode="before")
    @classmethod
    def _lower_echo(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("openai_base_url", "anthropic_base_url", "vllm_uri")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_http_url(value)
        return value

    @field_validator("local_models")
    @classmethod
    def _local_models(cls, value: str) -> str:
        parse_local_models(value)
        return value

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _upper_sync(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "log_file",
        "providers_file",
        "assistants",
        "vllm_uri",
        "api_keys_file",
        "metrics_port",
        "webhook_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("openai_base_url", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return OPENAI_DEFAULT_BASE_URL if value in ("", None) else value

    @field_validator("anthropic_base_url", mode="before")
    @classmethod
    def _empty_is_anthropic_default(cls, value: object) -> object:
        return ANTHROPIC_DEFAULT_BASE_URL if value in ("", None) else value

    @field_validator(
        "openai_api_key",
        "vllm_api_key",
        "anthropic_api_key",
        "token_secret",
        "metrics_key",
        "webhook_secret",
        mode="before",
    )
    @classmethod
    def _empty_key_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    def __repr_args__(self) -> Any:
        # URLs may carry credentials (redis://:PASSWORD@..., ?api-key=...): a repr, as
        # logged or shown in a traceback, shows them without (keys are SecretStr).
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in _URL_SETTINGS and value else value

    @property
    def ws_max_frame_bytes(self) -> int:
        """The transport's hard limit; frames between the two limits get an ``error``."""
        return self.max_message_bytes * 4


_URL_SETTINGS = frozenset({"store_url", "openai_base_url", "anthropic_base_url", "vllm_uri"})

# Variables of ours that are not settings of the server: the clients' and the scripts'.
OTHER_VARIABLES = frozenset({"LLM_WORKER_URL", "LLM_WORKER_API_KEY", "LLM_WORKER_VENV"})
OUR_PREFIX = "LLM_WORKER_"
# Names people reach for that mean one of ours.
LIKELY_MEANT = {
    "OPENAI_API_BASE": "OPENAI_BASE_URL",
    "OPENAI_API_BASE_URL": "OPENAI_BASE_URL",
    "ANTHROPIC_API_URL": "ANTHROPIC_BASE_URL",
    "VLLM_BASE_URL": "VLLM_URI",
    "VLLM_URL": "VLLM_URI",
    "OPENAI_KEY": "OPENAI_API_KEY",
    "ANTHROPIC_KEY": "ANTHROPIC_API_KEY",
}


def setting_names() -> frozenset[str]:
    """Every setting's variable, as the environment spells it."""
    return frozenset(name.upper() for name in Settings.model_fields)


def unknown_variables(names: Iterable[str]) -> list[str]:
    """Warnings about variables among ``names`` that look meant for this service but
    are none of its settings (and so are ignored): ours by their prefix, or a known
    setting's name misspelt. Each says which setting was likely meant."""
    known = setting_names()
    warnings = []
    for name in sorted({name.upper() for name in names}):
        if name in known or name in OTHER_VARIABLES:
            continue
        meant = LIKELY_MEANT.get(name)
        if meant is None and len(name) >= 6:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            meant = close[0] if close else None
        if meant is not None:
            warnings.append(f"{name} is not a setting and is ignored: did you mean {meant}?")
        elif name.startswith(OUR_PREFIX):
            warnings.append(f"{name} is not a setting and is ignored")
    return warnings
