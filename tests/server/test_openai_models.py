"""``GET /v1/models`` through the official ``openai`` SDK: the models a deployment
serves (each usable provider's known ones as ``<provider>/<model>``, the default
provider's bare too), one of them, and a 404 in OpenAI's shape for another; the
names route requests to their providers."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from llm_worker.testing.openai_server import OpenAIServer
from tests.conftest import StartWorker


async def test_the_models_served(
    start_worker: StartWorker, upstream: OpenAIServer, tmp_path: Path
) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(
        f'[providers.ollama]\nbase_url = "{upstream.base_url}"\n'
        'settings = { model = "llama3.2" }\n'
        '[providers.claude]\ntype = "anthropic"\napi_key_env = "NO_SUCH_KEY_VARIABLE"\n'
        'settings = { model = "claude-x", max_tokens = 100 }\n'
    )
    worker = await start_worker(providers_file=providers, openai_api_provider="ollama")
    client = openai.AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="none", max_retries=0)
    async with client:
        listed = [model async for model in client.models.list()]
        # claude has no key: it serves nothing.
        assert [model.id for model in listed] == ["llama3.2", "ollama/llama3.2"]
        assert {(model.object, model.owned_by) for model in listed} == {("model", "ollama")}
        one = await client.models.retrieve("ollama/llama3.2")
        assert one.id == "ollama/llama3.2"
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("claude/claude-x")
        assert missing.value.code == "model_not_found"
        await client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}]
        )
        await client.chat.completions.create(
            model="ollama/other", messages=[{"role": "user", "content": "hi"}]
        )
    assert [r.body["model"] for r in upstream.chat_requests] == ["llama3.2", "other"]


async def test_keys_are_asked_for(start_worker: StartWorker) -> None:
    worker = await start_worker(api_keys="sk-alice")
    client = openai.AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="sk-bob", max_retries=0)
    async with client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()


async def test_an_openai_compatible_server_lists_its_own_models(
    start_worker: StartWorker, upstream: OpenAIServer
) -> None:
    # A vLLM or Ollama behind the default provider, no model named in the settings: the
    # server's own list is what the deployment serves.
    upstream.models = ("qwen-7b", "llama-8b")
    worker = await start_worker()
    client = openai.AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="none", max_retries=0)
    async with client:
        listed = [model.id async for model in client.models.list()]
        assert {"llama-8b", "qwen-7b", "openai/llama-8b", "openai/qwen-7b"} <= set(listed)
        assert (await client.models.retrieve("openai/qwen-7b")).owned_by == "openai"
        # Asked once a minute at most, not per listing.
        await client.models.list()
        asked = [r for r in upstream.requests if r.path.partition("?")[0].endswith("/models")]
        assert len(asked) == 1, [r.path for r in upstream.requests]


async def test_a_server_that_cannot_list_its_models_lists_none(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(  # nothing listens on port 9 (discard)
        '[providers.down]\nbase_url = "http://127.0.0.1:9/v1"\nsettings = { model = "gpt-x" }\n'
    )
    worker = await start_worker(providers_file=providers, openai_api_provider="down")
    client = openai.AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="none", max_retries=0)
    async with client:
        listed = [model.id async for model in client.models.list()]
    # What the settings name is still served; nothing else, and no error.
    assert sorted(listed) == ["down/gpt-x", "gpt-x"]


async def test_the_echo_provider_of_a_fresh_clone_is_listed(start_worker: StartWorker) -> None:
    worker = await start_worker(echo_provider="on")
    client = openai.AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="none", max_retries=0)
    async with client:
        listed = [model.id async for model in client.models.list()]
        assert "echo/echo" in listed
        reply = await client.chat.completions.create(
            model="echo/echo", messages=[{"role": "user", "content": "Hello there"}]
        )
    assert reply.choices[0].message.content == "Hello there"
