"""The reader of a streamed chat completion (``ChatChunks``) without a network: each
chunk of an OpenAI-compatible server in, the reply's parts out: text, reasoning,
refusal, tool-call fragments, the first choice only, the call's end and errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llm_worker.jobs.parts import Answer, Part, Reasoning, Refusal, ToolCallDelta
from llm_worker.jobs.usage import CallEnd
from llm_worker.providers.http_replies import ReplyProblem
from llm_worker.providers.openai_compatible import ChatChunks
from llm_worker.providers.sse import EventStreamDecoder


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **more: Any) -> str:
    """A chunk's data as OpenAI sends it, with one choice of index 0."""
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [choice], **more}  # fmt: skip
    return orjson.dumps(body).decode()


def parts(said: str | list[Part] | None) -> list[Part]:
    """What the reader's answer for one chunk yields, as the provider yields it."""
    if not said:
        return []
    return [said] if isinstance(said, str) else list(said)


def read_all(*data: str) -> tuple[list[Part], ChatChunks]:
    reader = ChatChunks()
    read: list[Part] = []
    for one in data:
        read += parts(reader.read(one))
    return read, reader


def test_a_delta_of_text_alone_is_its_text() -> None:
    reader = ChatChunks()
    said = reader.read(chunk({"content": " hi"}))
    assert said == " hi" and type(said) is str
    # Beside a role and empty fields (Ollama, OpenRouter send them with every chunk).
    full = {"role": "assistant", "content": " there", "refusal": None, "reasoning": None}
    assert reader.read(chunk(full)) == " there"
    assert not reader.read(chunk({"role": "assistant", "content": ""}))


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_reasoning_under_either_name_is_reasoning(key: str) -> None:
    read, _ = read_all(
        chunk({"role": "assistant", "content": None, key: "Let me"}),
        chunk({"content": None, key: " think."}),
        chunk({"content": "Paris", key: None}),
    )
    assert read == [Reasoning("Let me"), Reasoning(" think."), "Paris"]


def test_reasoning_said_under_both_names_is_read_once() -> None:
    read, _ = read_all(chunk({"reasoning_content": "hm", "reasoning": "hm"}))
    assert read == [Reasoning("hm")]


def test_reasoning_and_text_in_one_delta_come_in_the_model_order() -> None:
    read, _ = read_all(chunk({"content": " so: 4", "reasoning_content": "2+2"}))
    assert read == [Reasoning("2+2"), " so: 4"]


def test_a_refusal_is_a_refusal_not_text() -> None:
    read, reader = read_all(
        chunk({"role": "assistant", "content": None, "refusal": ""}),
        chunk({"refusal": "I can't"}),
        chunk({"refusal": " help with that."}),
        chunk({}, "stop"),
    )
    assert read == [Refusal("I can't"), Refusal(" help with that.")]
    answer = Answer()
    for part in read:
        answer.add(part)
    assert answer.message() == {
        "role": "assistant",
        "content": "",
        "refusal": "I can't help with that.",
    }
    assert reader.finished


def call(index: Any, arguments: str, **more: Any) -> dict[str, Any]:
    fragment = {"function": {"arguments": arguments, **more.pop("function", {})}, **more}
    if index is not None:
        fragment["index"] = index
    return fragment


def test_tool_call_fragments_keep_their_index_id_and_name() -> None:
    read, reader = read_all(
        chunk({"role": "assistant", "content": None, "tool_calls": [
            call(0, "", id="call_a", type="function", function={"name": "get_weather"})]}),
        chunk({"tool_calls": [call(0, '{"ci')]}),
        chunk({"tool_calls": [call(0, 'ty": "Paris"}')]}),
        chunk({"tool_calls": [
            call(1, "", id="call_b", type="function", function={"name": "get_time"})]}),
        chunk({"tool_calls": [call(1, '{"tz": "CET"}')]}),
        chunk({}, "tool_calls"),
    )  # fmt: skip
    assert read == [
        ToolCallDelta(0, "call_a", "get_weather", ""),
        ToolCallDelta(0, None, None, '{"ci'),
        ToolCallDelta(0, None, None, 'ty": "Paris"}'),
        ToolCallDelta(1, "call_b", "get_time", ""),
        ToolCallDelta(1, None, None, '{"tz": "CET"}'),
    ]
    assert reader.end().finish_reason == "tool_calls"


def test_several_calls_in_one_chunk_are_several_deltas() -> None:
    read, _ = read_all(
        chunk({"tool_calls": [
            call(0, '{"a": 1}', id="call_a", function={"name": "f"}),
            call(1, '{"b": 2}', id="call_b", function={"name": "g"}),
        ]}),
    )  # fmt: skip
    assert read == [ToolCallDelta(0, "call_a", "f", '{"a": 1}'),
                    ToolCallDelta(1, "call_b", "g", '{"b": 2}')]  # fmt: skip


def test_calls_without_an_index_are_told_apart_by_their_ids() -> None:
    """Gemini's OpenAI-compatible API sent whole calls without ``index``."""
    read, _ = read_all(
        chunk({"tool_calls": [call(None, '{"a": 1}', id="call_a", function={"name": "f"})]}),
        chunk({"tool_calls": [call(None, '{"b": 2}', id="call_b", function={"name": "g"})]}),
        chunk({"tool_calls": [call(None, "", id="call_a")]}),
        chunk({"tool_calls": [call(None, "}")]}),  # no id: the last call's
    )
    assert [delta.index for delta in read] == [0, 1, 0, 0]  # type: ignore[union-attr]


def test_arguments_sent_as_an_object_are_json_text() -> None:
    read, _ = read_all(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {
        "name": "f", "arguments": {"city": "Paris"}}}]}))  # fmt: skip
    assert read == [ToolCallDelta(0, "c", "f", '{"city":"Paris"}')]


def test_only_the_first_choice_counts() -> None:
    other = orjson.dumps({"choices": [{"index": 1, "delta": {"content": " NO"},
                                       "finish_reason": "length"}]}).decode()  # fmt: skip
    both = orjson.dumps({"choices": [
        {"index": 1, "delta": {"content": " no"}, "finish_reason": None},
        {"index": 0, "delta": {"content": " yes"}, "finish_reason": None},
    ]}).decode()  # fmt: skip
    read, reader = read_all(chunk({"content": "a"}), other, both, chunk({}, "stop"))
    assert read == ["a", " yes"]
    assert reader.end().finish_reason == "stop"
    # A finish reason of another choice does not finish the reply.
    _, unfinished = read_all(chunk({"content": "a"}), other)
    assert not unfinished.finished


def test_mistral_content_parts_are_text_and_reasoning() -> None:
    delta = {"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
                         {"type": "text", "text": "Yes."}]}  # fmt: skip
    read, _ = read_all(chunk(delta))
    assert read == [Reasoning("hmm"), "Yes."]


def test_usage_with_its_details_is_the_call_end() -> None:
    usage = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29,
             "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 5}}  # fmt: skip
    _, reader = read_all(chunk({}, "stop"), chunk(choices=[], usage=usage), "[DONE]")
    assert reader.end() == CallEnd("stop", 20, 9, cached_tokens=16, reasoning_tokens=5)
    # DeepSeek counts its cache hits apart.
    deepseek = {"prompt_tokens": 20, "completion_tokens": 9, "prompt_cache_hit_tokens": 12}
    _, reader = read_all(chunk({}, "stop"), chunk(choices=[], usage=deepseek))
    assert reader.end() == CallEnd("stop", 20, 9, cached_tokens=12)
    # Without details they stay unknown, not 0.
    _, reader = read_all(chunk({}, "stop"), chunk(usage={"prompt_tokens": 2}))
    assert reader.end() == CallEnd("stop", 2, None)


def test_an_error_in_the_stream_keeps_its_code() -> None:
    error = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    }
    reader = ChatChunks()
    with pytest.raises(ReplyProblem) as raised:
        reader.read(orjson.dumps(error).decode())
    assert raised.value.code == "context_length_exceeded"
    assert raised.value.said == (
        "reported an error: This model's maximum context length is 8192 tokens"
    )
    # A number for a code (vLLM's: the HTTP status it would have had) says nothing more.
    with pytest.raises(ReplyProblem) as raised:
        reader.read('{"error": {"message": "bad", "code": 400}}')
    assert raised.value.code is None


@pytest.mark.parametrize(
    "data",
    ['{"choices": [1]}', '{"choices": {"0": {}}}', '{"choices": [{"delta": "x"}]}',
     '{"choices": [{"delta": {"tool_calls": [{"index": 0, "function": 3}]}}]}'],
)  # fmt: skip
def test_a_chunk_of_another_shape_is_a_bad_reply(data: str) -> None:
    with pytest.raises(ReplyProblem, match="not shaped as a chat completion chunk") as raised:
        ChatChunks().read(data)
    assert raised.value.kind == "bad_reply"


def test_a_whole_reply_split_anywhere_reads_to_one_message() -> None:
    """Every split of the event stream's bytes reads to the same parts, put together
    into the same message."""
    events = [
        chunk({"role": "assistant", "content": None, "reasoning_content": "Two calls\u2028."}),
        chunk({"content": "Sure: caf\u00e9 \U0001f600"}),
        chunk({"tool_calls": [call(0, '{"c', id="call_a", function={"name": "f"})]}),
        chunk({"tool_calls": [call(0, 'ity": "Z\u00fcrich"}')]}),
        chunk({"tool_calls": [call(1, "{}", id="call_b", function={"name": "g"})]}),
        chunk({}, "tool_calls"),
        chunk(choices=[], usage={"prompt_tokens": 5, "completion_tokens": 7}),
        "[DONE]",
    ]
    stream = "".join(f"data: {data}\n\n" for data in events).encode()
    expected = {
        "role": "assistant",
        "content": "Sure: caf\u00e9 \U0001f600",
        "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "f", "arguments": '{"city": "Z\u00fcrich"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ],
        "reasoning": "Two calls\u2028.",
    }  # fmt: skip
    for split in range(1, len(stream)):
        decoder, reader, answer = EventStreamDecoder(), ChatChunks(), Answer()
        for piece in (stream[:split], stream[split:]):
            for data in decoder.feed(piece):
                for part in parts(reader.read(data)):
                    answer.add(part)
        assert answer.message() == expected, split
        assert reader.whole and reader.end() == CallEnd("tool_calls", 5, 7)
