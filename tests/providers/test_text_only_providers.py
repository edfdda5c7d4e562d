"""Providers that take text only (the local models, echo): content given as text parts
is their text, and what they cannot send (other parts, tool calls, tools) is refused
when the job is added, naming it, never dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import TemplateError
from llm_worker.providers.base import CallEnd, Notice
from llm_worker.providers.echo import EchoProvider

TEXT_PARTS = [{"type": "text", "text": "hello"}, {"type": "text", "text": " there"}]
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
CALLS = [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]


def message(content: Any, **more: Any) -> ChatMessage:
    return ChatMessage.model_validate({"role": "user", "content": content, **more})


async def text(parts: AsyncIterator[Any]) -> tuple[str, CallEnd]:
    said = [part async for part in parts if not isinstance(part, Notice)]
    end = said.pop()
    assert isinstance(end, CallEnd)
    assert all(type(part) is str for part in said), said
    return "".join(said), end


async def test_echo_reads_text_parts_as_text() -> None:
    echo = EchoProvider(delay=0)
    echo.check_message(message(TEXT_PARTS), "history[0]", "echo")
    said, end = await text(echo.stream([message(TEXT_PARTS)], {}))
    plain, plain_end = await text(echo.stream([message("hello there")], {}))
    assert said == plain == "hello there"
    assert end == plain_end


@pytest.mark.parametrize(
    ("content", "more", "refusal"),
    [
        ([TEXT_PARTS[0], IMAGE], {}, "history[2].content[1]: provider 'p' takes text only, "
         "not 'image_url' parts"),
        (None, {"role": "assistant", "tool_calls": CALLS},
         "history[2].tool_calls: provider 'p' cannot take tool calls"),
    ],
)  # fmt: skip
def test_echo_refuses_what_it_cannot_send(content: Any, more: dict[str, Any], refusal: str) -> None:
    with pytest.raises(TemplateError) as raised:
        EchoProvider().check_message(message(content, **more), "history[2]", "p")
    assert str(raised.value) == refusal


# -- the local provider (needs the local extra) ------------------------------------


@pytest.fixture
async def local(tiny_model: Path) -> AsyncIterator[Any]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llm_worker.providers.local import LocalModels, LocalProvider

    provider = LocalProvider(
        "local", models=LocalModels(max_models=1, max_batch=4), choices={"tiny": str(tiny_model)}
    )
    yield provider
    await provider.aclose()


async def test_the_local_provider_reads_text_parts_as_text(local: Any) -> None:
    settings = {"model": "tiny", "temperature": 0, "max_tokens": 12, "ignore_eos": True}
    history = [ChatMessage(role="system", content="Be brief."), message(TEXT_PARTS)]
    for number, one in enumerate(history):
        local.check_message(one, f"history[{number}]", "local")
    said, end = await text(local.stream(history, settings))
    plain = [history[0], message("hello there")]
    expected, expected_end = await text(local.stream(plain, settings))
    assert said == expected and end == expected_end
    assert end.prompt_tokens > 0 and end.completion_tokens == 12


async def test_the_local_provider_refuses_parts_calls_and_tools(local: Any) -> None:
    with pytest.raises(TemplateError, match=r"content\[1\]: provider 'local' takes text only"):
        local.check_message(message([TEXT_PARTS[0], IMAGE]), "history[0]", "local")
    with pytest.raises(TemplateError, match="tool_calls: provider 'local' cannot take"):
        local.check_message(
            message(None, role="assistant", tool_calls=CALLS), "history[0]", "local"
        )
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for setting in ({"tools": tools}, {"tool_choice": "auto"}):
        name = next(iter(setting))
        with pytest.raises(TemplateError, match=rf"^settings\.{name} is not a setting of provider"):
            local.check_settings({"model": "tiny", **setting})
