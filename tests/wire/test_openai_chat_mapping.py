"""The Chat Completions door's pure parts without a network: a request read into a
job (what is forwarded, what is refused and named), a job's log rendered as chunks."""

from __future__ import annotations

import orjson
import pytest

from llm_worker.jobs.model import Event, EventKind
from llm_worker.jobs.parts import ToolCallDelta
from llm_worker.wire.openai import InvalidParam
from llm_worker.wire.openai.chat_render import ChunkRenderer, completion
from llm_worker.wire.openai.chat_request import read_chat_request, resolve_model

USER = [{"role": "user", "content": "hi"}]
PROVIDERS = ("openai", "vllm")


def test_the_model_names_its_provider_or_goes_to_the_default() -> None:
    assert resolve_model("vllm/Qwen/Qwen2.5", PROVIDERS, "openai") == ("vllm", "Qwen/Qwen2.5")
    assert resolve_model("gpt-4.1", PROVIDERS, "vllm") == ("vllm", "gpt-4.1")
    assert resolve_model("meta/llama", PROVIDERS, "openai") == ("openai", "meta/llama")
    with pytest.raises(InvalidParam) as refused:
        resolve_model("vllm/", PROVIDERS, "openai")
    assert refused.value.param == "model"


def test_a_request_becomes_a_job() -> None:
    body = {
        "model": "vllm/m",
        "messages": USER,
        "temperature": 0.2,
        "tools": [],
        "stream": True,
        "stream_options": {"include_usage": True},
        "metadata": {"k": "v"},
    }
    chat = read_chat_request(body, PROVIDERS, "openai")
    assert (chat.stream, chat.include_usage) == (True, True)
    spec = chat.job_spec(created=7)
    stream = spec.assistant.streams[0].model_dump()
    assert stream["provider"] == "vllm"
    assert stream["settings"] == {"temperature": 0.2, "tools": [], "model": "m"}
    assert spec.assistant.fields["openai_request"]["metadata"] == {"k": "v"}
    assert [m.role for m in spec.history] == ["user"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": USER, "n": 2}, "n"),
        ({"model": "m", "messages": USER, "logprobs": True}, "logprobs"),
        ({"model": "m", "messages": USER, "functions": []}, "functions"),
        ({"model": "", "messages": USER}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": USER, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": USER, "store": "yes"}, "store"),
        ({"model": "m", "messages": USER, "stream_options": {"x": 1}}, "stream_options.x"),
    ],
)
def test_what_is_not_taken_is_refused_by_name(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidParam) as refused:
        read_chat_request(body, PROVIDERS, "openai")
    assert refused.value.param == param


def done(message: dict[str, object], finish: str = "stop") -> Event:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "streams": [None]}
    summary = {"usage": usage, "finish_reason": finish, "message": message}
    return Event(9, EventKind.DONE, orjson.dumps(summary).decode())


def test_a_log_rendered_as_chunks() -> None:
    renderer = ChunkRenderer("j1", "m", 7, include_usage=True)
    first = ToolCallDelta(0, "call_a", "f", '{"a"').as_json()
    events = [
        Event(1, EventKind.RUNNING),
        Event(2, EventKind.RUNNING, "Hi"),
        Event(3, EventKind.TOOL_CALL, first),
        Event(4, EventKind.TOOL_CALL, ToolCallDelta(0, arguments=":1}").as_json()),
        done({"role": "assistant", "content": "Hi"}, "tool_calls"),
    ]
    chunks = [renderer.start(), *renderer.chunks(events)]
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"arguments": '{"a"', "name": "f"},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]},
        {},
        None,
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert {c["id"] for c in chunks} == {"chatcmpl-j1"}
    assert renderer.finished and renderer.error is None


def test_a_reset_after_output_ends_the_stream_with_an_error() -> None:
    before = ChunkRenderer("j1", "m", 7, include_usage=False)
    assert before.chunks([Event(1, EventKind.RESET)]) == [] and not before.finished
    after = ChunkRenderer("j1", "m", 7, include_usage=False)
    after.chunks([Event(1, EventKind.RUNNING, "Hi"), Event(2, EventKind.RESET)])
    assert after.finished and after.error is not None and after.error[1] == "job_reset"
    failed = ChunkRenderer("j1", "m", 7, include_usage=False)
    failed.chunks([Event(1, EventKind.FAILED, "boom")])
    assert failed.error == ("boom", "job_failed")


def test_a_completion_says_refusal_and_reasoning_as_openai_does() -> None:
    body = completion(
        "j1",
        "m",
        7,
        orjson.loads(done({"role": "assistant", "content": "x", "reasoning": "r"}).message),
    )
    message = body["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": "x",
        "refusal": None,
        "reasoning_content": "r",
    }
    assert "streams" not in body["usage"]
