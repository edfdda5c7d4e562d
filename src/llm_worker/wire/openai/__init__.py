"""OpenAI's API shapes, as the ``/v1/chat/completions`` and ``/v1/responses`` doors
take and give them: requests read into jobs, job events rendered as OpenAI's objects.
Pure: no I/O (the doors themselves are :mod:`llm_worker.server.openai_api`)."""

from __future__ import annotations


class InvalidParam(ValueError):
    """A request OpenAI's API would refuse with a 400 naming ``param``: a field that is
    not valid, or one this worker does not take (never dropped silently); ``status``
    another 4xx where OpenAI answers one (404 for a model not served)."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status
