"""A first run answers: the ``echo`` provider, offered where asked or while no real
provider is configured, the start-up log saying what each provider needs, and the
root leading to the console."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from llm_worker.config import Settings
from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import TemplateError
from llm_worker.providers.echo import EchoProvider, words
from llm_worker.providers.openai_compatible import ClientPool
from llm_worker.running.catalog import build_providers, provider_readiness, real_providers
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from tests.support.servers import make_settings, serve
from tests.support.wsclient import WSClient, assistant, text_of


def echo_assistant(**settings: object) -> dict[str, object]:
    return assistant(
        {"insert": "history"}, {"role": "user", "content": "{query}"}, provider="echo", **settings
    )


def providers_of(**values: object) -> list[str]:
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    pool = ClientPool(timeout=1, connect_timeout=1, max_connections=1)
    return list(build_providers(settings, pool))


def test_echo_is_offered_only_where_asked_or_while_nothing_else_is_configured() -> None:
    assert "echo" not in providers_of()  # plain `llm-worker serve`: never silently
    assert "echo" in providers_of(echo_provider="on", openai_api_key="sk-real")
    assert "echo" in providers_of(echo_provider="auto")
    assert "echo" not in providers_of(echo_provider="auto", openai_api_key="sk-real")
    assert "echo" not in providers_of(echo_provider="auto", vllm_uri="http://gpu:8000")
    assert "echo" not in providers_of(echo_provider="off")


def test_the_built_in_local_provider_is_not_a_configured_one() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    registry = build_providers(
        settings, ClientPool(timeout=1, connect_timeout=1, max_connections=1)
    )
    assert real_providers(registry) == []


def test_the_start_up_lines_say_what_each_provider_needs() -> None:
    settings = Settings(_env_file=None, echo_provider="auto")  # type: ignore[call-arg]
    registry = build_providers(
        settings, ClientPool(timeout=1, connect_timeout=1, max_connections=1)
    )
    lines = {line.split(":")[0]: (ready, line) for ready, line in provider_readiness(registry)}
    assert lines["provider 'openai'"] == (
        False,
        "provider 'openai': not ready: needs an API key: set OPENAI_API_KEY",
    )
    assert lines["provider 'vllm'"][1].endswith("needs VLLM_URI, such as http://127.0.0.1:8000/v1")
    ready, line = lines["provider 'echo'"]
    assert ready and "for trying and testing" in line
    ready, line = lines["no model provider is configured"]
    assert not ready and "OPENAI_API_KEY" in line


async def test_echo_streams_the_last_user_message_word_by_word() -> None:
    echo = EchoProvider(delay=0)
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="first question"),
        ChatMessage(role="assistant", content="an answer"),
        ChatMessage(role="user", content="How tall  is\nit?"),
    ]
    parts = [part async for part in echo.stream(messages, {"model": "anything"})]
    *deltas, end = parts
    assert deltas == ["How", " tall", "  is", "\nit?"]
    assert (end.finish_reason, end.prompt_tokens, end.completion_tokens) == ("stop", 10, 4)
    shortened = [part async for part in echo.stream(messages, {"max_tokens": 2})]
    assert shortened[:-1] == ["How", " tall"]
    assert shortened[-1].finish_reason == "length"


def test_echo_settings_are_checked() -> None:
    echo = EchoProvider()
    echo.check_settings({"model": "echo", "delay": 0.5, "max_tokens": 3})
    echo.check_settings({})  # any model, or none
    for bad, named in (
        ({"temperature": 1}, "settings.temperature is not a setting of provider 'echo'"),
        ({"delay": 2}, "settings.delay must be between 0 and 1.0"),
        ({"delay": "fast"}, "settings.delay must be a number"),
        ({"max_tokens": 0}, "settings.max_tokens must be at least 1"),
        ({"model": 3}, "settings.model must be a string"),
    ):
        with pytest.raises(TemplateError, match=named):
            echo.check_settings(bad)


def test_words_keep_every_character() -> None:
    text = "  a\u2028b \tc\n"
    assert "".join(words(text)) == text.rstrip()


async def test_an_echo_job_over_the_websocket_and_http() -> None:
    settings = make_settings(echo_provider="on", echo_delay_seconds=0.001)
    async with serve(settings) as worker:
        async with WSClient(worker.ws_url + "?protocol=2") as client:
            history = [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "X"}]
            _, messages = await client.run(
                query="How tall is the Eiffel Tower?",
                assistant=echo_assistant(model="echo"),
                history=history,
            )
        assert text_of(messages) == "How tall is the Eiffel Tower?"
        done = messages[-1]
        assert done["type"] == "done"
        assert done["finish_reason"] == "stop"
        assert done["providers"] == ["echo"]
        assert done["usage"]["completion_tokens"] == 6
        async with httpx.AsyncClient(base_url=worker.http_url) as http:
            created = await http.post(
                "/v1/jobs", json={"query": "Bonjour ?", "assistant": echo_assistant()}
            )
            assert created.status_code == 201
            job_id = created.json()["job_id"]
            events = await http.get(f"/v1/jobs/{job_id}/events")
            assert "event: done" in events.text
            status = (await http.get(f"/v1/jobs/{job_id}")).json()
            assert (status["state"], status["output"]) == ("done", "Bonjour ?")
            refused = await http.post(
                "/v1/jobs",
                json={"query": "q", "assistant": echo_assistant(temperature=0.2)},
            )
            assert refused.status_code == 400
            assert "settings.temperature is not a setting of provider 'echo'" in refused.text


async def test_an_echo_job_is_cancelled_between_words() -> None:
    settings = make_settings(echo_provider="on", echo_delay_seconds=0.2)
    async with serve(settings) as worker, WSClient(worker.ws_url + "?protocol=2") as client:
        job_id = await client.add(query="one two three four five", assistant=echo_assistant())
        started = time.monotonic()
        await client.wait_for("running", job_id)
        await client.send({"type": "cancel", "job_id": job_id})
        messages = await client.job_messages(job_id)
        assert messages[-1]["type"] == "cancelled"
        assert time.monotonic() - started < 0.9  # not the whole echo's 1 s
        assert len(text_of(messages).split()) < 5


async def test_run_sh_s_flag_offers_echo_and_the_log_says_what_to_set(tmp_path: Path) -> None:
    """What a fresh clone's ./run.sh does: no key, nothing else started, an answer."""
    env = clean_env(LISTEN_PORT="0", STORE_URL="memory://", ECHO_DELAY_SECONDS="0")
    async with processes() as started:
        worker = await WorkerProcess.start(env, tmp_path, "--echo-when-unconfigured")
        started.append(worker)
        async with WSClient(worker.ws_url) as client:
            _, messages = await client.run(query="Hello there", assistant=echo_assistant())
        assert text_of(messages) == "Hello there"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.port}") as http:
            root = await http.get("/")
            assert (root.status_code, root.headers["location"]) == (307, "/console")
            assert (await http.get("/", follow_redirects=True)).status_code == 200
    output = worker.output
    assert "provider 'echo': ready" in output
    assert "provider 'openai': not ready: needs an API key: set OPENAI_API_KEY" in output
    assert f"console: http://127.0.0.1:{worker.port}/console" in output


async def test_echo_when_unconfigured_yields_to_a_configured_provider_and_to_the_setting(
    tmp_path: Path,
) -> None:
    async with processes() as started:
        for env in (
            clean_env(LISTEN_PORT="0", STORE_URL="memory://", OPENAI_API_KEY="sk-real"),
            clean_env(LISTEN_PORT="0", STORE_URL="memory://", ECHO_PROVIDER="off"),
        ):
            worker = await WorkerProcess.start(env, tmp_path, "--echo-when-unconfigured")
            started.append(worker)
            async with httpx.AsyncClient() as http:
                catalog = await http.get(f"http://127.0.0.1:{worker.port}/v1/catalog")
            assert "echo" not in catalog.json()["providers"]
            await worker.stop()
            await asyncio.sleep(0)
