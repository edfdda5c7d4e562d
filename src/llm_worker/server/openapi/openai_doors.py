"""What the document's parts for OpenAI's API share: the answers every route may give,
and who answers a request (:class:`Doors`): the provider its ``model`` names
(``<provider>/<name>``, or a bare name for ``OPENAI_API_PROVIDER``'s), or one of the
deployment's templates (``assistant:NAME``).

A request's schema is one branch per provider a model may name, each with only the
settings that provider takes as its settings schema says
(:meth:`~llm_worker.providers.Provider.settings_schema`), so that a request the
document calls valid is one whose job the provider accepts at add. A provider
that cannot run jobs here has no branch: a model naming it is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import TemplateError
from llm_worker.running.catalog import provider_models
from llm_worker.server.openapi.requests import ref
from llm_worker.wire.openai.assistants import PREFIX as ASSISTANT_PREFIX

if TYPE_CHECKING:
    from llm_worker.providers import Provider
    from llm_worker.running.runner import Runner

NULL = {"type": "null"}
ANY_CHARACTER = r"[\s\S]"
_REGEX_SPECIALS = frozenset("\\^$.|?*+()[]{}")


def reply_error(description: str, *models: str, headers: dict[str, Any] | None = None) -> dict:
    """An error reply in ``models``' shape (one, or any of them)."""
    schema = ref(models[0]) if len(models) == 1 else {"anyOf": [ref(m) for m in models]}
    reply: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        reply["headers"] = headers
    return reply


def openai_error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error reply in OpenAI's shape."""
    return reply_error(description, "OpenAIError", headers=headers)


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def common_replies(keys: bool) -> dict[str, Any]:
    """The answers every route of OpenAI's API may give. Those the server gives before
    a route answers (a foreign origin's 403, a stopping server's 503) may be in the rest
    of the API's shape (``Error``)."""
    common = {
        "403": reply_error(
            "A page from an origin not allowed (origin_not_allowed)"
            + (", or a listen token (listen_only)." if keys else "."),
            "Error",
            "OpenAIError",
        ),
        "500": openai_error("A bug of ours (internal_error)."),
        "503": reply_error("The worker is stopping (shutting_down).", "Error", "OpenAIError"),
    }
    if keys:
        common["401"] = openai_error(
            "No valid API key (unauthorized).",
            {"WWW-Authenticate": {"schema": {"type": "string"}}},
        )
    return common


def adding_replies() -> dict[str, Any]:
    """The answers of a route that adds a job, beyond :func:`common_replies`."""
    return {
        "413": openai_error("Larger than MAX_MESSAGE_BYTES (payload_too_large)."),
        "429": openai_error(
            "The tenant is over its rate (rate_limited) or its queued jobs (tenant_queue_full).",
            RETRY_AFTER,
        ),
        "503": reply_error(
            "The queue is full (queue_full), the store is unavailable (store_unavailable), "
            "or the worker is stopping (shutting_down).",
            "Error",
            "OpenAIError",
            headers=RETRY_AFTER,
        ),
    }


def setting(settings: Mapping[str, Any], name: str) -> Any:
    """The schema of setting ``name`` as a provider whose settings schema is ``settings``
    takes it: its own, any value for a provider that forwards settings it does not
    know, ``False`` when it refuses it."""
    properties = settings.get("properties") or {}
    if name in properties:
        return properties[name]
    additional = settings.get("additionalProperties", True)
    return {} if additional is True else additional


def takes(schema: Any) -> bool:
    """Whether a setting of ``schema`` (:func:`setting`) is taken at all."""
    return schema is not False


# What a provider is asked to send, beyond text, by the Responses API's input items.
_IMAGE = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://a/b"}}]}
_CALL = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
_CALLS = {"role": "assistant", "content": None, "tool_calls": [_CALL]}
_RESULT = {"role": "tool", "tool_call_id": "c", "content": "r"}


def sends(provider: Provider, message: dict[str, Any]) -> bool:
    """Whether ``provider`` may be sent ``message`` (its own check, as at add)."""
    try:
        provider.check_message(ChatMessage.model_validate(message), "message", "provider")
    except TemplateError:
        return False
    return True


@dataclass(frozen=True)
class Capabilities:
    """What a provider may be sent beyond text messages."""

    images: bool
    tool_calls: bool
    tool_results: bool

    @classmethod
    def of(cls, provider: Provider) -> Capabilities:
        return cls(sends(provider, _IMAGE), sends(provider, _CALLS), sends(provider, _RESULT))


Properties = Callable[[str, "Provider"], dict[str, Any]]


@dataclass(frozen=True)
class Doors:
    """Who answers a request to OpenAI's API in this deployment."""

    runner: Runner
    default_provider: str = "openai"
    assistants: tuple[str, ...] = field(default=())

    @property
    def max_history(self) -> int:
        return self.runner.limits.max_history_messages

    def provider_branches(
        self, routed: Collection[str], properties: Properties, required: list[str]
    ) -> dict[str, dict[str, Any]]:
        """The request's schema for each provider a model may name, by provider: for each
        usable one of ``routed`` (the providers whose ``<name>/`` a door reads as naming
        them), ``model`` its ``<name>/...`` models; for the default provider, also its
        bare names (those not naming a provider of ``routed`` or a template). Each has
        the ``properties`` given for that provider, and no others."""
        usable = self.runner.providers.usable()
        branches = {}
        for name in sorted(set(routed) & set(usable)):
            provider = self.runner.providers.get(name)
            models = [_prefixed(name, _model_schema(provider))]
            if name == self.default_provider:
                models.append(_bare(_model_schema(provider), routed))
            models = [model for model in models if model is not None]
            if models:
                model = models[0] if len(models) == 1 else {"anyOf": models}
                branches[name] = _closed(model, properties(name, provider), required)
        if self.default_provider in usable and self.default_provider not in routed:
            provider = self.runner.providers.get(self.default_provider)
            model = _bare(_model_schema(provider), routed)
            if model is not None:
                branches[self.default_provider] = _closed(
                    model, properties(self.default_provider, provider), required
                )
        return branches

    def assistant_branch(
        self, properties: dict[str, Any], required: list[str]
    ) -> dict[str, Any] | None:
        """The request's schema for the deployment's templates (``assistant:NAME``)."""
        if not self.assistants:
            return None
        names = [ASSISTANT_PREFIX + name for name in self.assistants]
        return _closed({"enum": names}, properties, required)


def _closed(model: dict[str, Any], properties: dict[str, Any], required: list[str]) -> dict:
    return {
        "type": "object",
        "required": required,
        "properties": {"model": model, **properties},
        "additionalProperties": False,
    }


def _model_schema(provider: Provider) -> Any:
    """What a request's model may name of ``provider``: what its ``settings.model`` may
    be; for one that takes none (a pinned local provider) the one model it runs, which
    the doors ask for without a model setting (:func:`~llm_worker.running.catalog.
    pinned_to`)."""
    model = setting(provider.settings_schema(), "model")
    if takes(model):
        return model
    pinned = sorted(provider_models(provider))
    return {"enum": pinned} if pinned else False


def _prefixed(name: str, model: Any) -> dict[str, Any] | None:
    """``<name>/<model>`` for each ``model`` the provider takes: its names when it lists
    them, else any name (it judges the name beyond that: a non-empty string here)."""
    if not takes(model):
        return None
    names = _names(model)
    if names is not None:
        return {"enum": [f"{name}/{each}" for each in names]} if names else None
    return {"type": "string", "pattern": f"^{_literal(name)}/{ANY_CHARACTER}"}


def _bare(model: Any, routed: Collection[str]) -> dict[str, Any] | None:
    """A bare model name for the default provider: one that names neither a provider of
    ``routed`` (``<provider>/...``) nor a template (``assistant:...``)."""
    if not takes(model):
        return None
    taken = [f"{name}/" for name in sorted(routed)] + [ASSISTANT_PREFIX]
    names = _names(model)
    if names is not None:
        free = [name for name in names if not name.startswith(tuple(taken))]
        return {"enum": free} if free else None
    pattern = f"^({'|'.join(map(_literal, taken))})"
    return {"type": "string", "minLength": 1, "not": {"pattern": pattern}}


def _names(model: Any) -> list[str] | None:
    """The model names a ``settings.model`` schema lists (``None`` if it lists none)."""
    if not isinstance(model, dict):
        return None
    if "enum" in model:
        return [name for name in model["enum"] if isinstance(name, str) and name]
    if "const" in model:
        return [model["const"]] if isinstance(model["const"], str) and model["const"] else []
    return None


def _literal(text: str) -> str:
    """``text`` as a regular expression that matches it alone."""
    return "".join(f"\\{c}" if c in _REGEX_SPECIALS else c for c in text)


def with_rule(schema: dict[str, Any], rule: dict[str, Any] | None) -> dict[str, Any]:
    """``schema``, and ``rule`` beside it when there is one."""
    return schema if rule is None else {"allOf": [schema, rule]}
