"""A response's request, as its job keeps it beside its log: what the Responses door
needs to answer for it later (pure).

A response's request-side fields (model as asked, instructions, tools...) and its
input items ride in its job's request, as the template's ``openai_request`` field;
the chat history its job ran on is the request's history. A response created with
``store`` true (the default) asks the store to keep that request for the job's TTL
(``keep_request``), so any gateway, this process after a restart included, serves
its input items, its echoed fields and a next turn's ``previous_response_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llm_worker.jobs.model import JobSpec

API = "responses"
"""The ``api`` of the ``openai_request`` of a job made by the Responses door."""


@dataclass
class ResponseRequest:
    base: dict[str, Any]
    """The Response's fields that come from its request."""
    background: bool
    items: list[dict[str, Any]]
    """The input, as items."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The chat messages its job ran on (for a next turn's ``previous_response_id``)."""

    def request(self) -> dict[str, Any]:
        """The ``openai_request`` field of the job's template: what :meth:`of` reads."""
        return {"api": API, **self.base, "input_items": self.items}

    @classmethod
    def of(cls, spec: JobSpec) -> ResponseRequest | None:
        """The response a job's request makes; ``None`` for a job of another door."""
        request = spec.assistant.fields.get("openai_request")
        if not isinstance(request, dict) or request.get("api") != API:
            return None
        base = {k: v for k, v in request.items() if k not in ("api", "input_items")}
        history = [message.model_dump(mode="json") for message in spec.history]
        if spec.query:  # a template's job (assistant:NAME): its query was the last message
            history.append({"role": "user", "content": spec.query})
        return cls(base, bool(base.get("background")), request.get("input_items", []), history)
