"""``model: "assistant:NAME"``: the deployment's templates (``ASSISTANTS``) served
through OpenAI's API, driven by the official ``openai`` SDK unchanged. A two-stream
template (the first stream's notes feeding the last by ``{previous_stream_output}``)
reached through chat streamed and through responses, its fallback taking over, the
models list naming it, an unknown name a 404, request settings the template fixes
refused, and a bad ``ASSISTANTS`` file stopping the start."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from llm_worker.config import ConfigError
from llm_worker.server.app import Service
from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import RunningWorker, StartWorker
from tests.support.servers import make_settings

TEMPLATE: dict[str, Any] = {
    "streams": [
        {
            "provider": "openai",
            "settings": {"model": "note-taker"},
            "messages": [
                {"role": "system", "content": "Note what matters."},
                {"insert": "history"},
                {"role": "user", "content": "{query}"},
            ],
        },
        {
            "provider": "openai",
            "settings": {"model": "writer"},
            "messages": [
                {"role": "system", "content": "Notes: {previous_stream_output}"},
                {"role": "user", "content": "{query}"},
            ],
            "fallbacks": [{"provider": "backup", "settings": {"model": "backup-writer"}}],
        },
    ]
}
EARLIER: Any = [
    {"role": "user", "content": "I live in Oslo."},
    {"role": "assistant", "content": "Noted."},
]


def by_model(body: dict[str, Any]) -> Reply:
    if body["model"] == "note-taker":
        return Reply(tokens=["lives ", "in Oslo"])
    return Reply(tokens=["Bring ", "a coat"])


@pytest.fixture
async def backup() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as server:
        yield server


@pytest.fixture
async def worker(
    start_worker: StartWorker, upstream: OpenAIServer, backup: OpenAIServer, tmp_path: Path
) -> RunningWorker:
    providers = tmp_path / "providers.toml"
    providers.write_text(f'[providers.backup]\nbase_url = "{backup.base_url}"\n')
    (tmp_path / "assistants").mkdir()
    (tmp_path / "assistants" / "weather.json").write_text(json.dumps(TEMPLATE))
    upstream.handler = by_model
    return await start_worker(
        providers_file=providers, assistants=tmp_path / "assistants", provider_retries=0
    )


@contextlib.asynccontextmanager
async def sdk(worker: RunningWorker) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="none", max_retries=0)
    async with client:
        yield client


def assert_ran_the_template(upstream: OpenAIServer) -> None:
    """The first stream got the history and the query; the last, its notes and the query."""
    notes, writer = (request.body for request in upstream.chat_requests)
    assert notes["model"] == "note-taker"
    assert notes["messages"] == [
        {"role": "system", "content": "Note what matters."},
        *EARLIER,
        {"role": "user", "content": "What should I wear?"},
    ]
    assert writer["model"] == "writer"
    assert writer["messages"] == [
        {"role": "system", "content": "Notes: lives in Oslo"},
        {"role": "user", "content": "What should I wear?"},
    ]


async def test_a_template_streamed_through_chat(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    question = {"role": "user", "content": "What should I wear?"}
    async with sdk(worker) as client:
        stream = await client.chat.completions.create(
            model="assistant:weather", messages=[*EARLIER, question], stream=True
        )
        chunks = [chunk async for chunk in stream]
    # Only the last stream's output is the reply.
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Bring a coat"
    assert {chunk.model for chunk in chunks} == {"assistant:weather"}
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert_ran_the_template(upstream)


async def test_a_template_through_responses(worker: RunningWorker, upstream: OpenAIServer) -> None:
    items: Any = [*EARLIER, {"role": "user", "content": "What should I wear?"}]
    async with sdk(worker) as client:
        response = await client.responses.create(model="assistant:weather", input=items)
        assert response.output_text == "Bring a coat"
        assert response.model == "assistant:weather"
        assert_ran_the_template(upstream)
        # The conversation goes on: the template runs again with the whole of it.
        await client.responses.create(
            model="assistant:weather", input="And tomorrow?", previous_response_id=response.id
        )
    assert upstream.chat_requests[2].body["messages"][1:] == [
        *EARLIER,
        {"role": "user", "content": "What should I wear?"},
        {"role": "assistant", "content": "Bring a coat"},
        {"role": "user", "content": "And tomorrow?"},
    ]


async def test_the_templates_fallback_answers_when_its_provider_fails(
    worker: RunningWorker, upstream: OpenAIServer, backup: OpenAIServer
) -> None:
    upstream.handler = lambda body: (
        Reply(status=503, error="overloaded") if body["model"] == "writer" else by_model(body)
    )
    backup.handler = lambda body: Reply(tokens=["From ", "backup"])
    async with sdk(worker) as client:
        stream = await client.chat.completions.create(
            model="assistant:weather",
            messages=[{"role": "user", "content": "What should I wear?"}],
            stream=True,
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "From backup"
    assert [r.body["model"] for r in backup.chat_requests] == ["backup-writer"]
    assert backup.chat_requests[0].body["messages"][0]["content"] == "Notes: lives in Oslo"


async def test_models_lists_the_templates_and_an_unknown_one_is_not_found(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    async with sdk(worker) as client:
        listed = {model.id: model.owned_by async for model in client.models.list()}
        assert listed["assistant:weather"] == "assistant"
        assert (await client.models.retrieve("assistant:weather")).id == "assistant:weather"
        question: Any = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.NotFoundError) as chat_missing:
            await client.chat.completions.create(model="assistant:nope", messages=question)
        with pytest.raises(openai.NotFoundError) as responses_missing:
            await client.responses.create(model="assistant:nope", input="hi")
    for missing in (chat_missing, responses_missing):
        assert missing.value.code == "model_not_found"
        assert missing.value.param == "model"
        assert "assistant:nope" in missing.value.message
    assert upstream.chat_requests == []


async def test_settings_the_template_fixes_are_refused(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    question: Any = [{"role": "user", "content": "hi"}]
    async with sdk(worker) as client:
        with pytest.raises(openai.BadRequestError) as temperature:
            await client.chat.completions.create(
                model="assistant:weather", messages=question, temperature=0.2
            )
        with pytest.raises(openai.BadRequestError) as tools:
            await client.responses.create(
                model="assistant:weather",
                input="hi",
                tools=[{"type": "function", "name": "f", "parameters": {}}],
            )
        with pytest.raises(openai.BadRequestError) as not_a_query:
            await client.chat.completions.create(
                model="assistant:weather", messages=[{"role": "system", "content": "hi"}]
            )
    assert temperature.value.param == "temperature"
    assert tools.value.param == "tools"
    assert not_a_query.value.param == "messages"
    assert upstream.chat_requests == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot be read"),
        ("{not json", "not JSON"),
        ("[]", "must be a JSON object of templates by name"),
        ('{"weather": {"streams": []}}', "template 'weather': streams"),
        (
            '{"weather": {"streams": [{"provider": "nowhere", "messages": '
            '[{"role": "user", "content": "{query}"}]}]}}',
            "template 'weather': assistant.streams[0]: unknown provider 'nowhere'",
        ),
        (
            '{"weather": {"streams": [{"provider": "openai", "settings": {"model": "m"}, '
            '"messages": [{"role": "user", "content": "{qeury}"}]}]}}',
            "template 'weather': assistant.streams[0].messages[0].content: unknown placeholder",
        ),
    ],
)
def test_a_bad_assistants_file_stops_the_start(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "assistants.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as refused:
        Service(make_settings(openai_api_key="sk-test", assistants=path))
    assert str(refused.value).startswith(f"ASSISTANTS {path}: ")
    assert problem in str(refused.value)
