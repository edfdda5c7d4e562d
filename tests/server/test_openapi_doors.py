"""The document's requests for OpenAI's doors say what the doors take, without a network:
for a deployment whose bare model names go to ``echo`` (a provider that takes only its
own settings and text) and whose ``openai`` provider forwards any setting, a request
the document calls valid is one the chat door reads and the deployment's checks
accept at add, and one it calls invalid is refused (schemathesis checks the same
against a running worker, for the default deployment)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from llm_worker.config import Settings
from llm_worker.jobs.templates import TemplateError
from llm_worker.server.app import Service
from llm_worker.server.openapi import openapi_document
from llm_worker.wire.openai import InvalidParam
from llm_worker.wire.openai.chat_request import read_chat_request

TEXT = [{"role": "user", "content": "hi"}]
IMAGE = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://a/b"}}]}]


@pytest.fixture(scope="module")
def service() -> Service:
    settings = Settings(
        openai_api_key="k",
        openai_base_url="http://127.0.0.1:9/v1",
        echo_provider="on",
        openai_api_provider="echo",
    )
    return Service(settings)


def valid(document: dict[str, Any], model: str, body: dict[str, Any]) -> bool:
    schema = {"$ref": f"#/components/schemas/{model}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema).is_valid(body)


def accepted(service: Service, body: dict[str, Any]) -> bool:
    """Whether the chat door reads ``body`` and the deployment would add its job."""
    try:
        chat = read_chat_request(body, service.runner.providers, "echo")
        service.runner.check(chat.job_spec(0))
    except (InvalidParam, TemplateError):
        return False
    return True


@pytest.mark.parametrize(
    "body",
    [
        {"model": "x", "messages": TEXT},
        {"model": "x", "messages": TEXT, "max_tokens": 3, "stream": True, "n": 1},
        {"model": "x", "messages": TEXT, "temperature": 0.5},  # echo takes none
        {"model": "x", "messages": IMAGE},  # echo takes text only
        {"model": "x", "messages": TEXT, "store": "yes"},
        {"model": "openai/gpt", "messages": IMAGE, "temperature": 0.5, "tools": []},
        {"model": "openai/gpt", "messages": TEXT, "max_tokens": 0},
        {"model": "openai/", "messages": TEXT},
        {"model": "echo/e", "messages": TEXT, "seed": 1},
        {"model": "vllm/m", "messages": TEXT},  # vllm has no URL here
        {"model": "x", "messages": TEXT, "logprobs": True},
        {"model": "x", "messages": []},
    ],
)
def test_the_chat_request_schema_says_what_the_door_accepts(
    service: Service, body: dict[str, Any]
) -> None:
    document = openapi_document(service.runner, keys=False, openai_provider="echo")
    assert valid(document, "ChatCompletionRequest", body) == accepted(service, body)


def test_the_responses_request_names_the_providers_and_what_each_takes(service: Service) -> None:
    document = openapi_document(service.runner, keys=False, openai_provider="echo")

    def ok(**fields: Any) -> bool:
        return valid(document, "ResponseRequest", {"input": "hi", **fields})

    assert ok(model="x", max_output_tokens=5)
    assert not ok(model="x", temperature=0.5)
    assert ok(model="x", temperature=None, tools=[])
    assert not ok(model="x", tools=[{"type": "function", "name": "f"}])
    assert not ok(model="x", input=[{"type": "function_call", "call_id": "c", "name": "f"}])
    assert ok(model="x", input=[{"type": "function_call_output", "call_id": "c", "output": "r"}])
    assert not ok(model="x", store=True, metadata={"k": "v"})  # sent to echo as a setting
    assert ok(
        model="openai/m", store=True, metadata={"k": "v"}, tools=[{"type": "function", "name": "f"}]
    )
    assert not ok(model="assistant:none")
    assert not ok(model="x", truncation="auto")
