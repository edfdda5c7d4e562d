"""OpenAI-compatible providers through the real ``openai`` SDK against a loopback server:
retries, errors, cut streams, keys, client reuse, named endpoints."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.usage import CallEnd
from llm_worker.providers.base import ProviderError
from llm_worker.providers.http_replies import ReplyProblem
from llm_worker.providers.openai_compatible import ChatChunks, ClientPool, OpenAICompatibleProvider
from llm_worker.running.registry import RegistryError
from llm_worker.server.app import create_app
from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import ConnectClient, StartWorker, make_settings
from tests.support.wsclient import assistant, text_of

TOKENS = [" alpha", " beta", " gamma", " delta", " epsilon"]


def scripted(*replies: Reply) -> Any:
    """A handler that plays ``replies`` in order, then repeats the last one."""
    queue = list(replies)

    def handler(body: dict[str, Any]) -> Reply:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return handler


async def run_job(connect: ConnectClient, url: str | None = None, **fields: Any) -> list[dict]:
    client = await connect(url)
    _, messages = await client.run(**fields)
    return messages


async def test_rate_limit_is_retried_before_any_output(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = scripted(
        Reply(status=429, error="slow down", headers={"retry-after": "0.05"}),
        Reply(status=503, error="warming up"),
        Reply(tokens=TOKENS),
    )
    messages = await run_job(connect)
    assert messages[-1]["type"] == "done"
    assert text_of(messages) == "".join(TOKENS)
    assert len(upstream.chat_requests) == 3
    # The retry honoured Retry-After.
    first, second, _ = upstream.chat_requests
    assert second.received_at - first.received_at >= 0.05


@pytest.mark.parametrize(
    ("reply", "retryable", "kind", "retry_after"),
    [
        (Reply(status=429, headers={"retry-after": "3"}), True, "rate_limited", 3.0),
        (Reply(status=429, headers={"retry-after-ms": "250", "retry-after": "1"}), True,
         "rate_limited", 0.25),
        (Reply(status=429, headers={"retry-after": "3600"}), True, "rate_limited", 60.0),
        (Reply(status=503, headers={"retry-after": "soon"}), True, "http_5xx", None),
        (Reply(status=408), True, "http_4xx", None),
        (Reply(status=409), True, "http_4xx", None),
        (Reply(status=400), False, "http_4xx", None),
        # The server's x-should-retry wins, as in the official SDKs.
        (Reply(status=400, headers={"x-should-retry": "true"}), True, "http_4xx", None),
        (Reply(status=500, headers={"x-should-retry": "false"}), False, "http_5xx", None),
    ],
)  # fmt: skip
async def test_each_status_says_whether_another_try_may_cure_it(
    upstream: OpenAIServer, reply: Reply, retryable: bool, kind: str, retry_after: float | None
) -> None:
    upstream.handler = lambda body: reply
    pool = ClientPool(timeout=5, connect_timeout=5, max_connections=1)
    provider = OpenAICompatibleProvider(
        "openai", clients=pool, base_url=upstream.base_url, api_key="k"
    )
    try:
        with pytest.raises(ProviderError) as raised:
            async for _ in provider.stream(
                [ChatMessage(role="user", content="hi")], {"model": "m"}
            ):
                pass
    finally:
        await pool.aclose()
    error = raised.value
    assert (error.retryable, error.kind, error.retry_after) == (retryable, kind, retry_after)
    assert error.message.startswith(f"provider 'openai' at {upstream.base_url} answered HTTP")


async def test_a_server_saying_not_to_retry_is_not_retried(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = scripted(
        Reply(status=503, error="down for good", headers={"x-should-retry": "false"}),
        Reply(tokens=TOKENS),
    )
    messages = await run_job(connect)
    assert messages[-1]["message"].endswith("answered HTTP 503: down for good")
    assert len(upstream.chat_requests) == 1


async def test_server_errors_fail_the_job_after_the_retries(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(status=500, error="kaput")
    messages = await run_job(connect)
    assert [m["type"] for m in messages] == ["running", "failed"]
    failed = messages[-1]["message"]
    assert failed.startswith(f"provider 'openai' at {upstream.base_url} answered HTTP 500: kaput")
    assert failed.endswith("(gave up after 3 tries)")
    assert len(upstream.chat_requests) == 3  # PROVIDER_RETRIES=2 retries


@pytest.mark.parametrize(("status", "error"), [(400, "bad request body"), (401, "invalid key")])
async def test_client_errors_are_not_retried(
    upstream: OpenAIServer, connect: ConnectClient, status: int, error: str
) -> None:
    upstream.handler = lambda body: Reply(status=status, error=error)
    messages = await run_job(connect)
    assert messages[-1]["type"] == "failed"
    assert messages[-1]["message"].endswith(f"answered HTTP {status}: {error}")
    assert len(upstream.chat_requests) == 1


async def test_a_stream_cut_after_output_fails_and_is_not_retried(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=TOKENS, cut_after=2)
    messages = await run_job(connect)
    assert messages[-1]["type"] == "failed"
    assert "lost the reply from provider 'openai'" in messages[-1]["message"]
    # Listeners got the first two deltas, once, and no retry duplicated them.
    assert text_of(messages) == "".join(TOKENS[:2])
    assert len(upstream.chat_requests) == 1


async def test_a_stream_ending_without_finish_marker_is_a_failure_not_done(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=TOKENS, cut_after=3, cut_mode="clean")
    messages = await run_job(connect)
    assert messages[-1]["type"] == "failed"
    assert "ended before the model finished (no finish_reason)" in messages[-1]["message"]
    assert all(m["type"] != "done" for m in messages)


async def test_a_stream_cut_before_any_output_is_retried(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = scripted(Reply(tokens=TOKENS, cut_after=0), Reply(tokens=TOKENS))
    messages = await run_job(connect)
    assert messages[-1]["type"] == "done"
    assert text_of(messages) == "".join(TOKENS)
    assert len(upstream.chat_requests) == 2


async def test_refused_connections_fail_with_a_clear_message(
    start_worker: StartWorker, connect: ConnectClient
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    worker = await start_worker(openai_base_url=f"http://127.0.0.1:{dead_port}/v1")
    messages = await run_job(connect, worker.ws_url)
    assert messages[-1]["type"] == "failed"
    assert messages[-1]["message"].startswith(
        f"cannot reach provider 'openai' at http://127.0.0.1:{dead_port}/v1"
    )
    assert "gave up after 3 tries" in messages[-1]["message"]


async def test_a_silent_server_times_out(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(provider_timeout_seconds=0.2, provider_retries=1)
    upstream.handler = lambda body: Reply(tokens=TOKENS, first_delay=2)
    started = asyncio.get_running_loop().time()
    messages = await run_job(connect, worker.ws_url)
    assert messages[-1]["type"] == "failed"
    assert "timed out" in messages[-1]["message"]
    assert asyncio.get_running_loop().time() - started < 1.5
    assert len(upstream.chat_requests) == 2


async def test_a_stall_mid_stream_times_out(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(provider_timeout_seconds=0.2)
    upstream.handler = lambda body: Reply(tokens=TOKENS, delay=1.0)
    messages = await run_job(connect, worker.ws_url)
    assert messages[-1]["type"] == "failed"
    assert "timed out" in messages[-1]["message"]


async def test_a_provider_without_its_key_is_refused_when_the_job_is_added(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(openai_api_key=None, echo_provider="on")
    client = await connect(worker.ws_url)
    await client.send({"type": "add", "id": "q", "query": "q", "assistant": assistant()})
    assert await client.recv() == {
        "type": "error",
        "code": "invalid_job",
        "message": "invalid assistant template: assistant.streams[0]: "
        "provider 'openai' needs an API key: set OPENAI_API_KEY",
        "ref": "q",
    }
    # Also where a provider is named inside an insert.
    summary = assistant({"insert": "history_summary", "provider": "openai"}, provider="echo")
    await client.send({"type": "add", "id": "s", "query": "q", "assistant": summary})
    assert "set OPENAI_API_KEY" in (await client.recv())["message"]
    assert upstream.chat_requests == []


async def test_settings_pass_through_to_the_api(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    settings = {
        "model": "my-model",
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 12,
        "stop": ["\n\n"],
        "seed": 42,
        "top_k": 20,  # not an OpenAI parameter: vLLM and others take it in the body
        "repetition_penalty": 1.1,
    }
    await run_job(connect, assistant=assistant(**settings))
    body = upstream.chat_requests[0].body
    for key, value in settings.items():
        assert body[key] == value, key
    assert body["stream"] is True


async def test_one_client_serves_every_job(upstream: OpenAIServer, connect: ConnectClient) -> None:
    client = await connect()
    for index in range(8):
        _, messages = await client.run(request_id=f"r{index}")
        assert messages[-1]["type"] == "done"
    # Eight jobs, one TCP connection: the shared client keeps it alive.
    assert len(upstream.chat_requests) == 8
    assert upstream.connections == 1


async def test_named_endpoints_from_a_toml_providers_file(
    start_worker: StartWorker,
    upstream: OpenAIServer,
    connect: ConnectClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCAL_LLM_KEY", "sk-local")
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(
        f"""
[providers.ollama]
base_url = "{upstream.base_url}"
settings = {{ model = "llama3.2", temperature = 0.0 }}

[providers.my-vllm]
base_url = "{upstream.base_url}"
api_key_env = "LOCAL_LLM_KEY"

[providers.locked]
base_url = "{upstream.base_url}"
api_key_env = "UNSET_KEY_VARIABLE"
settings = {{ model = "m" }}
"""
    )
    worker = await start_worker(providers_file=providers_file)
    client = await connect(worker.ws_url)

    # Defaults come from the file; the template's settings override them.
    ollama = {"streams": [{"provider": "ollama", "messages": [{"role": "user", "content": "hi"}]}]}
    _, messages = await client.run(request_id="a", assistant=ollama)
    assert messages[-1]["type"] == "done"
    request = upstream.chat_requests[-1]
    assert request.body["model"] == "llama3.2"
    assert request.body["temperature"] == 0.0
    assert request.headers["authorization"] == "Bearer no-key"

    _, messages = await client.run(
        request_id="b", assistant=assistant(provider="my-vllm", model="qwen")
    )
    assert messages[-1]["type"] == "done"
    request = upstream.chat_requests[-1]
    assert request.body["model"] == "qwen"
    assert request.headers["authorization"] == "Bearer sk-local"

    # An endpoint whose key variable is empty cannot run jobs: refused when added.
    locked = {"streams": [{"provider": "locked", "messages": [{"role": "user", "content": "x"}]}]}
    await client.send({"type": "add", "id": "c", "query": "q", "assistant": locked})
    assert (await client.wait_for("error"))["message"] == (
        "invalid assistant template: assistant.streams[0]: "
        "provider 'locked' needs an API key: set UNSET_KEY_VARIABLE"
    )

    # With no model in the file, the template must name one.
    no_model = {"streams": [{"provider": "my-vllm", "messages": [{"insert": "history"}]}]}
    await client.send({"type": "add", "id": "d", "query": "q", "assistant": no_model})
    error = await client.wait_for("error")
    assert "settings.model must name a model of provider 'my-vllm'" in error["message"]


async def test_named_endpoints_from_a_yaml_providers_file(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient, tmp_path: Path
) -> None:
    providers_file = tmp_path / "providers.yaml"
    providers_file.write_text(
        f"providers:\n  lmstudio:\n    base_url: {upstream.base_url}\n"
        "    settings:\n      model: phi-4\n"
    )
    worker = await start_worker(providers_file=providers_file)
    template = {
        "streams": [{"provider": "lmstudio", "messages": [{"role": "user", "content": "x"}]}]
    }
    messages = await run_job(connect, worker.ws_url, assistant=template)
    assert messages[-1]["type"] == "done"
    assert upstream.chat_requests[-1].body["model"] == "phi-4"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[providers.x]\n", "providers.x: an openai endpoint needs base_url"),
        ('[providers.x]\ntype = "local"\nbase_url = "http://h"\n', "takes neither base_url"),
        ('[providers.x]\nbase_url = "http://h"\nkey = 1\n', "providers.x.key"),
        ("[providers.x\n", "is not valid"),
        ('[providers.x]\nbase_url = "http://h"\ntype = "grpc"\n', "providers.x.type"),
    ],
)
def test_a_bad_providers_file_stops_start_up_with_a_clear_message(
    tmp_path: Path, content: str, problem: str
) -> None:
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(content)
    with pytest.raises(RegistryError, match="PROVIDERS_FILE") as raised:
        create_app(make_settings(providers_file=providers_file))
    assert problem in str(raised.value)


def test_a_missing_providers_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="No such file"):
        create_app(make_settings(providers_file=tmp_path / "absent.toml"))


async def test_vllm_provider_uses_vllm_uri(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    # A bare host:port gets vLLM's /v1 path; no key is needed.
    worker = await start_worker(vllm_uri=f"http://127.0.0.1:{upstream.port}")
    messages = await run_job(connect, worker.ws_url, assistant=assistant(provider="vllm"))
    assert messages[-1]["type"] == "done"
    request = upstream.chat_requests[-1]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer no-key"


async def test_unconfigured_providers_are_refused_and_not_listed_as_available(
    start_worker: StartWorker, connect: ConnectClient
) -> None:
    worker = await start_worker(vllm_uri=None, anthropic_api_key=None)
    client = await connect(worker.ws_url)
    await client.send(
        {"type": "add", "id": "v", "query": "q", "assistant": assistant(provider="vllm")}
    )
    assert (await client.recv())["message"] == (
        "invalid assistant template: assistant.streams[0]: "
        "provider 'vllm' needs VLLM_URI, such as http://127.0.0.1:8000/v1"
    )
    await client.send(
        {"type": "add", "id": "t", "query": "q", "assistant": assistant(provider="opena1")}
    )
    assert (await client.recv())["message"] == (
        "invalid assistant template: assistant.streams[0]: unknown provider 'opena1' "
        "(available: openai; not configured: anthropic, local, vllm)"
    )


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        # FastAPI's shape: transformers serve, many OpenAI-compatible servers.
        (400, {"detail": "Model 'x' is not loaded"}, "Model 'x' is not loaded"),
        (
            422,
            {"detail": [{"loc": ["body", "messages", 0, "role"], "msg": "Field required"}]},
            "body.messages.0.role: Field required",
        ),
        # vLLM's shape.
        (400, {"object": "error", "message": "max_tokens is too large"}, "max_tokens is too large"),
        (400, {"error": "context length exceeded"}, "context length exceeded"),
    ],
)
async def test_error_bodies_in_other_shapes_are_reported(
    upstream: OpenAIServer, connect: ConnectClient, status: int, body: Any, detail: str
) -> None:
    upstream.handler = lambda request: Reply(status=status, error_body=body)
    messages = await run_job(connect)
    assert messages[-1]["message"] == (
        f"provider 'openai' at {upstream.base_url} answered HTTP {status}: {detail}"
    )


async def test_an_empty_reply_stream_says_the_server_sent_no_output(
    upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(empty=True)
    messages = await run_job(connect)
    assert messages[-1]["message"].startswith(
        f"provider 'openai' at {upstream.base_url} sent no output: its reply stream was empty"
    )
    # The same prompt would get the same empty answer: not retried.
    assert len(upstream.chat_requests) == 1


def test_a_chat_completion_stream_reads_without_a_network() -> None:
    reply = ChatChunks()
    assert reply.read('{"choices": [{"delta": {"content": " hi"}}]}') == " hi"
    assert reply.read('{"choices": [{"delta": {}, "finish_reason": "length"}]}') is None
    assert (reply.finished, reply.whole) == (True, False)  # the usage chunk is still to come
    reply.read('{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": true}}')
    assert reply.read("[DONE]") is None and reply.whole
    assert reply.end() == CallEnd("length", 3, None)
    with pytest.raises(ReplyProblem, match="not JSON") as raised:
        ChatChunks().read("{")
    assert raised.value.kind == "bad_reply"
    with pytest.raises(ReplyProblem, match="reported an error: overloaded"):
        ChatChunks().read('{"error": {"message": "overloaded"}}')
