"""The providers a deployment offers, built from its settings.

Built in: ``openai`` (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``), ``vllm``
(``VLLM_URI``, ``VLLM_API_KEY``), ``anthropic`` (``ANTHROPIC_API_KEY``,
``ANTHROPIC_BASE_URL``), ``local`` (``LOCAL_MODELS``: models in this process) and, where
``ECHO_PROVIDER`` asks for it, ``echo`` (repeats the question; for trying and testing).
``PROVIDERS_FILE`` names more OpenAI-compatible endpoints, Anthropic presets or
local models, in TOML::

    [providers.ollama]
    base_url = "http://127.0.0.1:11434/v1"
    settings = { model = "llama3.2" }       # defaults under each template's settings

    [providers.my-vllm]
    base_url = "http://gpu-box:8000/v1"
    api_key_env = "MY_VLLM_KEY"              # the variable that holds its key

    [providers.qwen]
    type = "local"                           # a model run in this process, pinned:
    settings = { model = "Qwen/Qwen2.5-0.5B-Instruct", temperature = 0.7 }  # jobs pick no other

    [providers.claude]
    type = "anthropic"                       # the Messages API; base_url is optional
    settings = { model = "claude-sonnet-4-5", max_tokens = 4096 }

or the same structure in YAML. Plugins come from entry points
(``llm_worker.providers``) and ``EXTRA_PROVIDERS``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llm_worker.config import (
    ANTHROPIC_DEFAULT_BASE_URL,
    Settings,
    check_http_url,
    parse_local_models,
    validation_problems,
)
from llm_worker.ops.redaction import redact_url
from llm_worker.providers.anthropic import SETTINGS as ANTHROPIC_SETTINGS
from llm_worker.providers.anthropic import AnthropicClients, AnthropicProvider
from llm_worker.providers.base import Provider
from llm_worker.providers.echo import EchoProvider
from llm_worker.providers.local import LocalModels, LocalProvider
from llm_worker.providers.openai_compatible import ClientPool, OpenAICompatibleProvider
from llm_worker.running.registry import Registry, RegistryError

# Servers that check no key still need the SDK to send one.
NO_KEY = "no-key"


class EndpointConfig(BaseModel):
    """One entry of ``PROVIDERS_FILE``: an OpenAI-compatible endpoint, a local model, or
    the Anthropic API (at ``base_url`` when given, with the key in ``api_key_env``, else
    ``ANTHROPIC_API_KEY``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["openai", "local", "anthropic"] = "openai"
    base_url: str | None = None
    api_key_env: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _endpoint_needs_a_url(self) -> EndpointConfig:
        if self.type == "openai" and not self.base_url:
            raise ValueError("an openai endpoint needs base_url")
        if self.base_url is not None:
            try:
                check_http_url(self.base_url)
            except ValueError as exc:
                raise ValueError(f"base_url {exc}") from None
        if self.type == "local" and (self.base_url or self.api_key_env):
            raise ValueError("a local model takes neither base_url nor api_key_env")
        if self.type == "local" and not (
            isinstance(model := self.settings.get("model"), str) and model.strip()
        ):
            raise ValueError("a local model needs settings.model: the directory or hub id it runs")
        if self.type == "anthropic" and (
            unknown := sorted(set(self.settings) - ANTHROPIC_SETTINGS)
        ):
            known = ", ".join(sorted(ANTHROPIC_SETTINGS))
            raise ValueError(f"settings.{unknown[0]} is not an anthropic setting (known: {known})")
        return self


class ProvidersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    providers: dict[str, EndpointConfig] = Field(default_factory=dict)


def load_providers_file(path: Path) -> ProvidersFile:
    """Parse and validate a providers file; any problem is a :class:`RegistryError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"PROVIDERS_FILE {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise RegistryError(f"PROVIDERS_FILE {path} is not UTF-8 text: {exc}") from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            try:
                import yaml
            except ImportError:
                raise RegistryError(
                    f"PROVIDERS_FILE {path} is YAML: install llm-worker[yaml] to read it"
                ) from None
            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                # Its message spans lines (where, and a quote of the line): one line here.
                said = " ".join(str(exc).split())
                raise RegistryError(f"PROVIDERS_FILE {path} is not valid YAML: {said}") from None
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise RegistryError(f"PROVIDERS_FILE {path} is not valid: {exc}") from exc
    try:
        return ProvidersFile.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(f"PROVIDERS_FILE {path}: {validation_problems(exc)}") from None


def vllm_base_url(uri: str | None) -> str | None:
    """``VLLM_URI`` as an API base: a bare ``http://host:8000`` gets vLLM's ``/v1``."""
    if not uri:
        return None
    uri = uri.rstrip("/")
    return uri + "/v1" if urlsplit(uri).path in {"", "/"} else uri


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def _anthropic_entry(
    name: str, endpoint: EndpointConfig, settings: Settings, clients: AnthropicClients
) -> AnthropicProvider:
    """A providers-file entry of ``type = "anthropic"``: its own key variable, or the
    deployment's ``ANTHROPIC_API_KEY``."""
    if endpoint.api_key_env:
        api_key, variable = os.environ.get(endpoint.api_key_env) or None, endpoint.api_key_env
    else:
        api_key, variable = _secret(settings.anthropic_api_key), "ANTHROPIC_API_KEY"
    return AnthropicProvider(
        name,
        clients=clients,
        base_url=endpoint.base_url or ANTHROPIC_DEFAULT_BASE_URL,
        api_key=api_key,
        missing_key=f"provider {name!r} needs an API key: set {variable}",
        defaults=endpoint.settings,
    )


def build_providers(settings: Settings, clients: ClientPool) -> Registry[Provider]:
    """Every provider this deployment offers, by name: the built-ins, the providers
    file's, the plugins', and ``echo`` where ``ECHO_PROVIDER`` asks for it."""
    providers: Registry[Provider] = Registry("provider", lambda p: p.configuration_problem())
    local_models = LocalModels(
        max_models=settings.local_max_models,
        max_batch=settings.local_max_batch,
        threads=settings.local_threads,
    )
    anthropic_clients = AnthropicClients(
        timeout=settings.provider_timeout_seconds,
        connect_timeout=settings.provider_connect_timeout_seconds,
        # As many as the openai clients keep: every running job may hold one.
        max_connections=settings.worker_concurrency + 16,
    )
    for name, provider in _built_in(settings, clients, local_models, anthropic_clients):
        providers.register(name, provider)
    if settings.providers_file is not None:
        entries = load_providers_file(settings.providers_file).providers
        for name, endpoint in entries.items():
            made = _file_entry(name, endpoint, settings, clients, local_models, anthropic_clients)
            providers.register(name, made)
    providers.load_entry_points("llm_worker.providers")
    providers.load_specs(settings.extra_providers)
    if settings.echo_provider == "on" or (
        settings.echo_provider == "auto" and not real_providers(providers)
    ):
        providers.register("echo", EchoProvider("echo", delay=settings.echo_delay_seconds))
    return providers


def _built_in(
    settings: Settings,
    clients: ClientPool,
    local_models: LocalModels,
    anthropic_clients: AnthropicClients,
) -> list[tuple[str, Provider]]:
    """The providers every deployment has, configured (or not) by its settings."""
    return [
        (
            "openai",
            OpenAICompatibleProvider(
                "openai",
                clients=clients,
                base_url=settings.openai_base_url,
                api_key=_secret(settings.openai_api_key),
                missing_key="provider 'openai' needs an API key: set OPENAI_API_KEY",
            ),
        ),
        (
            "vllm",
            OpenAICompatibleProvider(
                "vllm",
                clients=clients,
                base_url=vllm_base_url(settings.vllm_uri),
                api_key=_secret(settings.vllm_api_key) or NO_KEY,
                missing_base_url="provider 'vllm' needs VLLM_URI, such as http://127.0.0.1:8000/v1",
            ),
        ),
        (
            "local",
            LocalProvider(
                "local", models=local_models, choices=parse_local_models(settings.local_models)
            ),
        ),
        (
            "anthropic",
            AnthropicProvider(
                "anthropic",
                clients=anthropic_clients,
                base_url=settings.anthropic_base_url,
                api_key=_secret(settings.anthropic_api_key),
                missing_key="provider 'anthropic' needs an API key: set ANTHROPIC_API_KEY",
            ),
        ),
    ]


def _file_entry(
    name: str,
    endpoint: EndpointConfig,
    settings: Settings,
    clients: ClientPool,
    local_models: LocalModels,
    anthropic_clients: AnthropicClients,
) -> Provider:
    """The provider a ``PROVIDERS_FILE`` entry describes."""
    if endpoint.type == "local":
        return LocalProvider.pinned_to(name, models=local_models, settings=endpoint.settings)
    if endpoint.type == "anthropic":
        return _anthropic_entry(name, endpoint, settings, anthropic_clients)
    api_key: str | None = NO_KEY
    if endpoint.api_key_env:
        api_key = os.environ.get(endpoint.api_key_env) or None
    return OpenAICompatibleProvider(
        name,
        clients=clients,
        base_url=endpoint.base_url,
        api_key=api_key,
        missing_key=f"provider {name!r} needs an API key: set {endpoint.api_key_env}",
        defaults=endpoint.settings,
    )


def real_providers(providers: Registry[Provider]) -> list[str]:
    """The providers ready to answer with a model: configured ones, not ``echo``."""
    return [
        name
        for name, provider in providers.items()
        if provider.configuration_problem() is None and not isinstance(provider, EchoProvider)
    ]


def provider_readiness(providers: Registry[Provider]) -> list[tuple[bool, str]]:
    """A line per provider for the start-up log: ready (and where it sends requests),
    or what the deployment must set first; a last line if none but ``echo`` is."""
    lines = []
    for name, provider in providers.items():
        problem = provider.configuration_problem()
        if problem is not None:
            said = problem.removeprefix(f"provider {name!r} ")
            lines.append((False, f"provider {name!r}: not ready: {said}"))
        elif isinstance(provider, EchoProvider):
            lines.append(
                (
                    True,
                    f"provider {name!r}: ready; it repeats each question word by word, "
                    "for trying and testing (ECHO_PROVIDER), never for answers",
                )
            )
        else:
            base_url = getattr(provider, "base_url", None)
            where = f" ({redact_url(base_url)})" if isinstance(base_url, str) else ""
            lines.append((True, f"provider {name!r}: ready{where}"))
    if not real_providers(providers):
        lines.append(
            (
                False,
                "no model provider is configured: set OPENAI_API_KEY (and OPENAI_BASE_URL "
                "for a server of your own), ANTHROPIC_API_KEY, VLLM_URI, LOCAL_MODELS or "
                "PROVIDERS_FILE"
                + ("" if "echo" in providers else ", or ECHO_PROVIDER=on to try the worker"),
            )
        )
    return lines


def local_model_readings(providers: Registry[Provider]) -> dict[str, int]:
    """How many local models are loaded, and how many jobs their batches hold (for the
    gauges of ``/metrics``)."""
    pools = {
        id(provider.models): provider.models
        for _, provider in providers.items()
        if isinstance(provider, LocalProvider)
    }
    return {
        "local_models": sum(pool.loaded() for pool in pools.values()),
        "local_batch": sum(pool.batched() for pool in pools.values()),
    }


def pinned_to(provider: Provider, model: str) -> bool:
    """Whether ``provider`` runs one model its deployment chose (its settings take no
    ``model``: a pinned local provider) and ``model`` names it: a request for it is then
    sent without a model setting."""
    schema = provider.settings_schema()
    takes_model = (
        "model" in (schema.get("properties") or {})
        or schema.get("additionalProperties", True) is not False
    )
    return not takes_model and model in provider_models(provider)


def known_models(providers: Registry[Provider], also: str = "") -> set[str]:
    """The model names this deployment knows: its providers' default models, its local
    models' names, and ``also`` (``METRICS_MODELS``, comma-separated). Only these get
    a metric label of their own; a name a client makes up does not."""
    names = {name.strip() for name in also.split(",") if name.strip()}
    for _, provider in providers.items():
        names.update(provider_models(provider))
    return names


def provider_models(provider: Provider) -> set[str]:
    """The models ``provider`` is known to serve: its default model, a local provider's
    models."""
    names = set()
    model = getattr(provider, "defaults", {}).get("model")
    if isinstance(model, str):
        names.add(model)
    if isinstance(provider, LocalProvider):
        names.update(provider.choices)
    return names
