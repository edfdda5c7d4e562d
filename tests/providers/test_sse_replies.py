"""Replies whose text holds U+2028, U+2029 or U+0085 (legal unescaped in JSON, and sent
so by orjson, as by many servers) arrive whole through both HTTP providers, whatever
ends the event stream's lines and however the reads split it; the official SDKs read
the same streams to the same text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import httpx2
import openai
import pytest

from llm_worker.testing import anthropic_server, openai_server
from llm_worker.testing.anthropic_server import AnthropicServer
from llm_worker.testing.openai_server import LineEnd, OpenAIServer
from tests.conftest import ConnectClient, StartWorker
from tests.support.wsclient import assistant, text_of

# Besides the three separators: NEL's two bytes, a three-byte and a four-byte
# character, and CR/LF escaped in the JSON (text, not line ends).
TOKENS = [
    "line\u2028separator",
    " paragraph\u2029separator",
    " next\u0085line",
    " \u2028\u2029\u0085",
    " caf\u00e9 \u20ac \U0001f600",
    " escaped\r\nnewline\rand\nmore",
]
LINE_ENDS: list[LineEnd] = ["\n", "\r\n", "\r"]
KEY = "test-anthropic-key-sse"


@pytest.fixture
async def api() -> AsyncIterator[AnthropicServer]:
    async with AnthropicServer() as server:
        yield server


@pytest.mark.parametrize("line_end", LINE_ENDS, ids=["lf", "crlf", "cr"])
async def test_the_loopback_servers_split_their_streams_as_asked(
    upstream: OpenAIServer, api: AnthropicServer, line_end: LineEnd
) -> None:
    """What the tests below rest on: ``write_size=1`` is a byte per read, and the lines
    end as ``line_end`` says."""
    upstream.handler = lambda body: openai_server.Reply(
        tokens=TOKENS, line_end=line_end, write_size=1
    )
    api.handler = lambda body: anthropic_server.Reply(
        tokens=TOKENS, line_end=line_end, write_size=1
    )
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    messages = {**chat, "max_tokens": 16}
    async with httpx2.AsyncClient() as http:
        for url, body in (
            (f"{upstream.base_url}/chat/completions", chat),
            (f"{api.base_url}/v1/messages", messages),
        ):
            async with http.stream("POST", url, json=body) as response:
                pieces = [piece async for piece in response.aiter_bytes()]
            stream = b"".join(pieces)
            assert {len(piece) for piece in pieces} == {1}
            assert "\u2028\u2029\u0085".encode() in stream  # unescaped
            others = {"\n": b"\r", "\r\n": b"\r\r", "\r": b"\n"}[line_end]
            assert stream.count(line_end.encode() * 2) > len(TOKENS)
            assert others not in stream


@pytest.mark.parametrize("write_size", [None, 1])
@pytest.mark.parametrize("line_end", LINE_ENDS, ids=["lf", "crlf", "cr"])
async def test_openai_compatible_reply_arrives_whole(
    upstream: OpenAIServer, connect: ConnectClient, line_end: LineEnd, write_size: int | None
) -> None:
    upstream.handler = lambda body: openai_server.Reply(
        tokens=TOKENS, line_end=line_end, write_size=write_size
    )
    client = await connect()
    _, messages = await client.run()
    assert messages[-1]["type"] == "done", messages[-1]
    assert text_of(messages) == "".join(TOKENS)
    assert upstream.chat_requests[-1].completed

    # The reference: the official SDK reads the very same stream to the same text.
    sdk = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0)
    async with sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "".join(TOKENS)


@pytest.mark.parametrize("write_size", [None, 1])
@pytest.mark.parametrize("line_end", LINE_ENDS, ids=["lf", "crlf", "cr"])
async def test_anthropic_reply_arrives_whole(
    start_worker: StartWorker,
    api: AnthropicServer,
    connect: ConnectClient,
    line_end: LineEnd,
    write_size: int | None,
) -> None:
    api.handler = lambda body: anthropic_server.Reply(
        tokens=TOKENS, line_end=line_end, write_size=write_size
    )
    worker = await start_worker(anthropic_api_key=KEY, anthropic_base_url=api.base_url)
    client = await connect(worker.ws_url)
    _, messages = await client.run(assistant=assistant(provider="anthropic", model="claude-test"))
    assert messages[-1]["type"] == "done", messages[-1]
    assert text_of(messages) == "".join(TOKENS)
    assert api.message_requests[-1].completed

    sdk = anthropic.AsyncAnthropic(base_url=api.base_url, api_key=KEY, max_retries=0)
    async with sdk:
        stream = await sdk.messages.create(
            model="claude-test",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        text = "".join(
            [e.delta.text async for e in stream if e.type == "content_block_delta"]  # type: ignore[union-attr]
        )
    assert text == "".join(TOKENS)
