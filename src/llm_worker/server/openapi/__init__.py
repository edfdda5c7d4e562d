"""The OpenAPI document of the HTTP API (:mod:`llm_worker.server.http_api`), served at
``/openapi.json``.

It describes the deployment that serves it, so that a request the document
calls valid is one this server accepts, and the other way round: the providers a
template may name are those usable here, each with its settings as the provider
checks them (:meth:`~llm_worker.providers.Provider.settings_schema`), the
inserts and pipelines registered here with their options, the request limits
(``MAX_STREAMS``, ``MAX_HISTORY_MESSAGES``), and keys only when keys are
configured. The shapes come from the objects that validate (the pydantic models
of messages, the providers, inserts and pipelines), not from a copy.

OpenAI's API on the same port (``/v1/models``, ``/v1/chat/completions``,
``/v1/responses``) is described too, each request as one branch per provider its
``model`` may name, with the settings that provider takes.

What JSON Schema cannot say, the server still checks: a placeholder may name a
variable or a template field the same request defines (the document allows
only ``{query}``), ``{previous_stream_output}`` after the first stream, and the
size of the rendered request (``MAX_MODEL_REQUEST_CHARS``); for OpenAI's API, that
an ``assistant:NAME`` request ends with a user's text (its query) that its
template's providers may be sent, that a ``previous_response_id`` names a stored
response that ended, and how many messages a Responses ``input`` makes
(``MAX_HISTORY_MESSAGES``).
"""

from llm_worker.server.openapi.document import openapi_document

__all__ = ["openapi_document"]
