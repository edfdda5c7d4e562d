"""The ``anthropic`` provider through the real ``anthropic`` SDK against a loopback server
that speaks the Messages API: the request it sends, streaming, usage, retries, errors,
cut streams, cancellation, keys, named entries of a providers file."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import TemplateError
from llm_worker.providers import anthropic as anthropic_provider
from llm_worker.providers.anthropic import (
    DEFAULT_MAX_TOKENS,
    AnthropicClients,
    AnthropicProvider,
    MessageEvents,
    to_anthropic,
)
from llm_worker.providers.base import CallEnd, ProviderError
from llm_worker.providers.http_replies import ReplyProblem
from llm_worker.running.registry import RegistryError
from llm_worker.server.app import create_app
from llm_worker.testing.anthropic_server import AnthropicServer, RecordedRequest, Reply
from tests.conftest import ConnectClient, StartWorker, make_settings
from tests.support.wsclient import WSClient, assistant, text_of

KEY = "test-anthropic-key-8f3e"
TOKENS = [" alpha", " beta", " gamma", " delta", " epsilon"]
OVERLOADED = {"type": "overloaded_error", "message": "Overloaded"}


def scripted(*replies: Reply) -> Callable[[dict[str, Any]], Reply]:
    """A handler that plays ``replies`` in order, then repeats the last one."""
    queue = list(replies)

    def handler(body: dict[str, Any]) -> Reply:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return handler


def sent_key(request: RecordedRequest) -> str | None:
    """The API key a request carried, in either header the SDK has used for it."""
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
    return request.headers.get("x-api-key") or bearer or None


def claude(provider: str = "anthropic", **settings: Any) -> dict[str, Any]:
    """A one-stream template of ``provider``: system, history, ``{query}``."""
    return assistant(provider=provider, **{"model": "claude-test", **settings})


@pytest.fixture
async def api() -> AsyncIterator[AnthropicServer]:
    async with AnthropicServer() as server:
        yield server


@pytest.fixture
async def client(
    start_worker: StartWorker, api: AnthropicServer, connect: ConnectClient
) -> WSClient:
    """A client of a worker whose ``anthropic`` provider is the loopback server."""
    worker = await start_worker(anthropic_api_key=KEY, anthropic_base_url=api.base_url)
    return await connect(worker.ws_url)


@pytest.fixture
async def provider(api: AnthropicServer) -> AsyncIterator[AnthropicProvider]:
    clients = AnthropicClients(timeout=5, connect_timeout=5, max_connections=4)
    yield AnthropicProvider("anthropic", clients=clients, base_url=api.base_url, api_key=KEY)
    await clients.aclose()


# -- the request --------------------------------------------------------------


def test_messages_fold_into_the_shape_the_api_takes() -> None:
    def message(role: str, content: str) -> ChatMessage:
        return ChatMessage(role=role, content=content)  # type: ignore[arg-type]

    system, turns = to_anthropic(
        [
            message("system", "Be brief."),
            message("assistant", "Hello, how can I help?"),  # before any user turn
            message("user", "First question."),
            message("user", "More of it."),
            message("tool", "tool output"),
            message("assistant", "An answer."),
            message("system", "Answer in French."),  # a system message anywhere
            message("function", "function output"),
            message("user", "   "),  # no text: the API refuses such a block
            message("user", "Last question."),
        ]
    )
    assert system == "Be brief.\n\nHello, how can I help?\n\nAnswer in French."
    assert turns == [
        {"role": "user", "content": "First question.\n\nMore of it.\n\ntool output"},
        {"role": "assistant", "content": "An answer."},
        {"role": "user", "content": "function output\n\nLast question."},
    ]
    assert to_anthropic([message("user", "hi")]) == (None, [{"role": "user", "content": "hi"}])


async def test_a_job_streams_end_to_end_with_the_request_the_api_takes(
    api: AnthropicServer, client: WSClient
) -> None:
    api.handler = lambda body: Reply(tokens=TOKENS)
    history = [
        {"role": "user", "content": "Earlier question."},
        {"role": "tool", "content": "A tool said this."},
        {"role": "assistant", "content": "Earlier answer."},
    ]
    _, messages = await client.run(
        query="Now this?", history=history, assistant=claude(stop="\n\nHuman:")
    )
    assert messages[-1]["type"] == "done"
    assert text_of(messages) == "".join(TOKENS)
    (request,) = api.message_requests
    assert request.body == {
        "model": "claude-test",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "system": "You are a helpful assistant.",
        "messages": [
            {"role": "user", "content": "Earlier question.\n\nA tool said this."},
            {"role": "assistant", "content": "Earlier answer."},
            {"role": "user", "content": "Now this?"},
        ],
        "stop_sequences": ["\n\nHuman:"],
        "stream": True,
    }
    assert sent_key(request) == KEY
    assert request.headers["anthropic-version"]
    assert request.completed


def test_the_docs_state_the_max_tokens_default() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "providers.md").read_text()
    assert re.search(rf"`max_tokens` \({DEFAULT_MAX_TOKENS} when\s+unset", page)


async def test_done_carries_the_usage_and_finish_reason_the_api_gave(
    api: AnthropicServer, client: WSClient
) -> None:
    api.handler = lambda body: Reply(
        tokens=TOKENS[:3],
        stop_reason="max_tokens",
        input_tokens=7,
        cache_creation_input_tokens=20,
        cache_read_input_tokens=100,
    )
    settings = {"max_tokens": 3, "temperature": 0.2, "top_p": 0.9, "top_k": 40}
    _, messages = await client.run(assistant=claude(**settings, metadata={"user_id": "u-1"}))
    done = messages[-1]
    assert done["type"] == "done"
    assert done["finish_reason"] == "length"
    # The prompt's tokens: uncached, written to the cache and read from it.
    usage = {"prompt_tokens": 127, "completion_tokens": 3, "total_tokens": 130}
    assert done["usage"] == usage | {"streams": [usage]}
    body = api.message_requests[0].body
    assert {key: body[key] for key in settings} == settings
    assert body["metadata"] == {"user_id": "u-1"}


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"seed": 1}, "settings.seed is not a setting of provider 'anthropic' (known: max_tokens"),
        ({"temperature": 1.5}, "settings.temperature must be between 0 and 1, not 1.5"),
        ({"top_k": "many"}, "settings.top_k must be an integer, not 'many'"),
        ({"max_tokens": 0}, "settings.max_tokens must be at least 1, not 0"),
        ({"metadata": "u-1"}, "settings.metadata must be an object"),
        ({"stop": 3}, "settings.stop must be a string or a list of strings"),
        ({"model": ""}, "settings.model must name a model of provider 'anthropic'"),
    ],
)
async def test_settings_are_checked_when_the_job_is_added(
    api: AnthropicServer, client: WSClient, settings: dict[str, Any], problem: str
) -> None:
    await client.send({"type": "add", "id": "q", "query": "q", "assistant": claude(**settings)})
    error = await client.expect("error")
    assert error["message"].startswith("invalid assistant template: assistant.streams[0]: ")
    assert problem in error["message"]
    assert api.message_requests == []


# -- failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "retryable", "kind", "retry_after"),
    [
        (Reply(status=429, error_type="rate_limit_error", headers={"retry-after": "3"}), True,
         "rate_limited", 3.0),
        (Reply(status=529, error_type="overloaded_error", error="Overloaded"), True, "http_5xx",
         None),
        (Reply(status=500), True, "http_5xx", None),
        (Reply(status=400, error_type="invalid_request_error"), False, "http_4xx", None),
        (Reply(status=404, error_type="not_found_error"), False, "http_4xx", None),
        # The rules the official SDKs follow: a request timeout and a lock conflict are
        # retried, the server's x-should-retry wins, retry-after-ms before retry-after.
        (Reply(status=408, error_type="timeout_error"), True, "http_4xx", None),
        (Reply(status=409, error_type="conflict_error"), True, "http_4xx", None),
        (Reply(status=400, headers={"x-should-retry": "true"}), True, "http_4xx", None),
        (Reply(status=529, headers={"x-should-retry": "false"}), False, "http_5xx", None),
        (Reply(status=429, headers={"retry-after-ms": "1500", "retry-after": "2"}), True,
         "rate_limited", 1.5),
        (Reply(tokens=TOKENS, stream_error=OVERLOADED), True, "http_5xx", None),
        (Reply(tokens=TOKENS, stream_error={"type": "api_error", "message": "x"}), True,
         "http_5xx", None),
        (Reply(tokens=TOKENS, stream_error={"type": "invalid_request_error", "message": "x"}),
         False, "error", None),
        (Reply(tokens=TOKENS, cut_after=1, cut_mode="clean"), True, "cut", None),
        (Reply(tokens=TOKENS, cut_after=1), True, "connection", None),
    ],
)  # fmt: skip
async def test_each_failure_says_whether_another_try_may_cure_it(
    api: AnthropicServer,
    provider: AnthropicProvider,
    reply: Reply,
    retryable: bool,
    kind: str,
    retry_after: float | None,
) -> None:
    api.handler = lambda body: reply
    messages = [ChatMessage(role="user", content="hi")]
    with pytest.raises(ProviderError) as raised:
        async for _ in provider.stream(messages, {"model": "claude-test"}):
            pass
    error = raised.value
    assert (error.retryable, error.kind, error.retry_after) == (retryable, kind, retry_after)
    assert error.message.startswith(
        (f"provider 'anthropic' at {api.base_url}", "the reply from", "lost the reply")
    )


async def test_an_overloaded_api_is_retried_before_any_output_honouring_retry_after(
    api: AnthropicServer, client: WSClient
) -> None:
    api.handler = scripted(
        Reply(
            status=529,
            error_type="overloaded_error",
            error="Overloaded",
            headers={"retry-after": "0.2"},
        ),
        Reply(tokens=TOKENS),
    )
    _, messages = await client.run(assistant=claude())
    assert messages[-1]["type"] == "done"
    assert text_of(messages) == "".join(TOKENS)
    first, second = api.message_requests
    # PROVIDER_RETRY_BASE_SECONDS is 0.01 here: the pause is the server's asking.
    assert second.received_at - first.received_at >= 0.2


@pytest.mark.parametrize(
    ("status", "headers", "tries"),
    [(408, {}, 2), (409, {}, 2), (400, {"x-should-retry": "true"}, 2),
     (529, {"x-should-retry": "false"}, 1)],
)  # fmt: skip
async def test_the_api_is_retried_as_the_official_sdk_would(
    api: AnthropicServer, client: WSClient, status: int, headers: dict[str, str], tries: int
) -> None:
    api.handler = scripted(Reply(status=status, headers=headers), Reply(tokens=TOKENS))
    _, messages = await client.run(assistant=claude())
    assert messages[-1]["type"] == ("done" if tries == 2 else "failed")
    assert len(api.message_requests) == tries


async def test_a_bad_request_is_reported_in_the_api_words_and_not_retried(
    api: AnthropicServer, client: WSClient
) -> None:
    api.handler = lambda body: Reply(
        status=400, error_type="invalid_request_error", error="prompt is too long: 250000 tokens"
    )
    _, messages = await client.run(assistant=claude())
    assert [m["type"] for m in messages] == ["running", "failed"]
    assert messages[-1]["message"] == (
        f"provider 'anthropic' at {api.base_url} answered HTTP 400: "
        "prompt is too long: 250000 tokens (code invalid_request_error)"
    )
    assert len(api.message_requests) == 1


async def test_an_error_event_before_any_output_is_retried(
    api: AnthropicServer, client: WSClient
) -> None:
    api.handler = scripted(Reply(tokens=TOKENS, stream_error=OVERLOADED), Reply(tokens=TOKENS))
    _, messages = await client.run(assistant=claude())
    assert messages[-1]["type"] == "done"
    assert text_of(messages) == "".join(TOKENS)
    assert len(api.message_requests) == 2


async def test_an_error_event_after_output_fails_the_job(
    api: AnthropicServer, client: WSClient
) -> None:
    api.handler = lambda body: Reply(tokens=TOKENS, stream_error=OVERLOADED, error_after=2)
    _, messages = await client.run(assistant=claude())
    assert messages[-1]["type"] == "failed"
    assert messages[-1]["message"] == (
        f"provider 'anthropic' at {api.base_url} reported an error during the reply: "
        "Overloaded (code overloaded_error)"
    )
    # Listeners got the first two deltas, once: a retry would have repeated them.
    assert text_of(messages) == "".join(TOKENS[:2])
    assert len(api.message_requests) == 1


@pytest.mark.parametrize(
    ("mode", "said"), [("abort", "lost the reply from"), ("clean", "(no message_stop)")]
)
async def test_a_cut_stream_is_retried_before_output_and_fails_after(
    api: AnthropicServer, client: WSClient, mode: Any, said: str
) -> None:
    api.handler = scripted(Reply(tokens=TOKENS, cut_after=0, cut_mode=mode), Reply(tokens=TOKENS))
    _, messages = await client.run(request_id="before", assistant=claude())
    assert messages[-1]["type"] == "done"
    assert text_of(messages) == "".join(TOKENS)
    assert len(api.message_requests) == 2

    api.handler = lambda body: Reply(tokens=TOKENS, cut_after=2, cut_mode=mode)
    _, messages = await client.run(request_id="after", assistant=claude())
    assert messages[-1]["type"] == "failed"
    assert said in messages[-1]["message"]
    assert all(m["type"] != "done" for m in messages)
    assert text_of(messages) == "".join(TOKENS[:2])
    assert len(api.message_requests) == 3


async def test_cancel_closes_the_upstream_stream(api: AnthropicServer, client: WSClient) -> None:
    # Two tokens, then the model goes quiet until the client hangs up.
    api.handler = lambda body: Reply(tokens=TOKENS, hold_after=2)
    job_id = await client.add(assistant=claude())
    text = ""
    while text != "".join(TOKENS[:2]):
        text += (await client.wait_for("running", job_id))["message"]
    await client.send({"type": "cancel", "job_id": job_id})
    assert (await client.job_messages(job_id))[-1]["type"] == "cancelled"
    (request,) = api.message_requests
    await asyncio.wait_for(request.client_gone.wait(), 5)
    assert request.tokens_sent == 2
    assert not request.completed


async def test_the_key_never_reaches_clients(api: AnthropicServer, client: WSClient) -> None:
    api.handler = lambda body: Reply(
        status=401, error_type="authentication_error", error=f"invalid x-api-key: {KEY}"
    )
    _, messages = await client.run(assistant=claude())
    failed = messages[-1]
    assert failed["message"].endswith(
        "answered HTTP 401: invalid x-api-key: [redacted] (code authentication_error)"
    )
    assert KEY not in str(messages)
    assert len(api.message_requests) == 1


async def test_a_refused_connection_and_a_silent_api_fail_saying_so(
    start_worker: StartWorker, api: AnthropicServer, connect: ConnectClient
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    worker = await start_worker(anthropic_api_key=KEY, anthropic_base_url=dead)
    _, messages = await (await connect(worker.ws_url)).run(assistant=claude())
    assert messages[-1]["message"].startswith(f"cannot reach provider 'anthropic' at {dead}")
    assert messages[-1]["message"].endswith("(gave up after 3 tries)")

    worker = await start_worker(
        anthropic_api_key=KEY,
        anthropic_base_url=api.base_url,
        provider_timeout_seconds=0.3,
        provider_retries=0,
    )
    api.handler = lambda body: Reply(tokens=TOKENS, hold_after=0)
    _, messages = await (await connect(worker.ws_url)).run(assistant=claude())
    assert messages[-1]["message"] == f"provider 'anthropic' at {api.base_url} timed out"


async def test_one_client_serves_every_job(api: AnthropicServer, client: WSClient) -> None:
    for index in range(4):
        _, messages = await client.run(request_id=f"r{index}", assistant=claude())
        assert messages[-1]["type"] == "done"
    assert len(api.message_requests) == 4
    assert api.connections == 1


# -- configuration ----------------------------------------------------------------


async def test_without_a_key_templates_naming_it_are_refused(
    start_worker: StartWorker, api: AnthropicServer, connect: ConnectClient
) -> None:
    worker = await start_worker(anthropic_api_key=None, anthropic_base_url=api.base_url)
    client = await connect(worker.ws_url)
    await client.send({"type": "add", "id": "q", "query": "q", "assistant": claude()})
    assert (await client.expect("error"))["message"] == (
        "invalid assistant template: assistant.streams[0]: "
        "provider 'anthropic' needs an API key: set ANTHROPIC_API_KEY"
    )
    assert api.message_requests == []


async def test_anthropic_entries_of_a_providers_file(
    start_worker: StartWorker,
    api: AnthropicServer,
    connect: ConnectClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEAM_CLAUDE_KEY", "team-key-51ac")
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(
        f"""
[providers.team-claude]
type = "anthropic"
base_url = "{api.base_url}"
api_key_env = "TEAM_CLAUDE_KEY"
settings = {{ model = "claude-team", max_tokens = 50, temperature = 0.2 }}

[providers.claude-fast]
type = "anthropic"
base_url = "{api.base_url}"
settings = {{ model = "claude-fast" }}

[providers.locked]
type = "anthropic"
api_key_env = "UNSET_KEY_VARIABLE"
"""
    )
    worker = await start_worker(
        anthropic_api_key=KEY, anthropic_base_url=api.base_url, providers_file=providers_file
    )
    client = await connect(worker.ws_url)
    # The entry's settings are defaults under the template's; its key is its own.
    team = {
        "streams": [
            {
                "provider": "team-claude",
                "settings": {"temperature": 0.7},
                "messages": [{"role": "user", "content": "hi"}],
            }
        ]
    }
    _, messages = await client.run(request_id="a", assistant=team)
    assert messages[-1]["type"] == "done"
    request = api.message_requests[-1]
    assert (request.body["model"], request.body["max_tokens"]) == ("claude-team", 50)
    assert request.body["temperature"] == 0.7
    assert sent_key(request) == "team-key-51ac"
    # Without api_key_env, the deployment's ANTHROPIC_API_KEY.
    _, messages = await client.run(request_id="b", assistant=claude(provider="claude-fast"))
    assert messages[-1]["type"] == "done"
    assert sent_key(api.message_requests[-1]) == KEY
    # An entry whose key variable is empty cannot run jobs: refused when added.
    await client.send(
        {"type": "add", "id": "c", "query": "q", "assistant": claude(provider="locked")}
    )
    assert (await client.wait_for("error"))["message"] == (
        "invalid assistant template: assistant.streams[0]: "
        "provider 'locked' needs an API key: set UNSET_KEY_VARIABLE"
    )
    assert len(api.message_requests) == 2


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('type = "anthropic"\nsettings = { seed = 1 }\n', "settings.seed is not an anthropic"),
        ('type = "anthropic"\nkey = "k"\n', "providers.x.key"),
    ],
)
def test_a_bad_anthropic_entry_stops_start_up(tmp_path: Path, entry: str, problem: str) -> None:
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(f"[providers.x]\n{entry}")
    with pytest.raises(RegistryError, match="PROVIDERS_FILE") as raised:
        create_app(make_settings(providers_file=providers_file))
    assert problem in str(raised.value)


def test_without_the_sdk_the_provider_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(anthropic_provider, "sdk_installed", lambda: False)
    clients = AnthropicClients(timeout=5, connect_timeout=5, max_connections=1)
    provider = AnthropicProvider("claude", clients=clients, base_url="http://h", api_key=KEY)
    hint = "install llm-worker[anthropic] (the anthropic SDK) to use provider 'claude'"
    assert provider.configuration_problem() == hint
    with pytest.raises(TemplateError, match=r"install llm-worker\[anthropic\]"):
        provider.check_settings({"model": "claude-test"})


def test_the_sdk_is_imported_when_a_job_first_needs_it_not_at_start_up() -> None:
    code = """
import sys
from llm_worker.server.app import build_runner
from llm_worker.config import Settings
from llm_worker.providers.openai_compatible import ClientPool

settings = Settings(_env_file=None, anthropic_api_key="k", store_url="memory://")
runner = build_runner(settings, ClientPool(timeout=1, connect_timeout=1, max_connections=1))
runner.providers.get("anthropic").check_settings({"model": "claude-test"})
assert "anthropic" not in sys.modules, "the anthropic SDK was imported at start-up"
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_messages_stream_reads_without_a_network() -> None:
    reply = MessageEvents()
    reply.read('{"type": "message_start", "message": {"usage": {"input_tokens": 5, '
               '"cache_read_input_tokens": 2}}}')  # fmt: skip
    assert reply.read('{"type": "content_block_delta", "delta": {"type": "text_delta", '
                      '"text": " hi"}}') == " hi"  # fmt: skip
    reply.read('{"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, '
               '"usage": {"output_tokens": 9}}')  # fmt: skip
    assert not reply.finished
    reply.read('{"type": "message_stop"}')
    assert reply.finished and reply.whole
    assert reply.end() == CallEnd("length", 7, 9, cached_tokens=2)
    with pytest.raises(ReplyProblem) as raised:
        MessageEvents().read('{"type": "error", "error": {"type": "overloaded_error"}}')
    assert (raised.value.retryable, raised.value.kind) == (True, "http_5xx")
