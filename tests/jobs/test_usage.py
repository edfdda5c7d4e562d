"""What a job's model calls took, in tokens, and why its answer ended: ``done`` and
``status`` carry ``usage`` (per stream and in all, the calls inserts make included)
and ``finish_reason``; a server that says nothing of its tokens is reported as such."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llm_worker.testing.openai_server import OpenAIServer, Reply, prompt_tokens
from tests.support.wsclient import WSClient, text_of

HISTORY = [
    {"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i}"}
    for i in range(8)
]


def tokens_of(reply: str) -> list[str]:
    return [f" {word}" for word in reply.split()]


async def test_usage_sums_every_call_by_stream_including_the_summary_an_insert_asks(
    upstream: OpenAIServer, client: WSClient
) -> None:
    def handler(body: dict[str, Any]) -> Reply:
        if "Summarize" in body["messages"][0]["content"]:
            return Reply(tokens=tokens_of("a short summary"))
        if body["messages"][-1]["content"].startswith("Draft"):
            return Reply(tokens=tokens_of("one two three four"), finish_reason="length")
        return Reply(tokens=tokens_of("a draft answer"))

    upstream.handler = handler
    assistant = {
        "streams": [
            {
                "provider": "openai",
                "settings": {"model": "drafter"},
                "messages": [
                    {"insert": "history_summary", "keep_last": 2},
                    {"role": "user", "content": "{query}"},
                ],
            },
            {
                "provider": "openai",
                "settings": {"model": "writer"},
                "messages": [{"role": "user", "content": "Draft: {previous_stream_output}"}],
            },
        ]
    }
    job_id, messages = await client.run(query="hi", assistant=assistant, history=HISTORY)
    assert text_of(messages) == " one two three four"
    requests = upstream.chat_requests
    assert len(requests) == 3  # the summary, the first stream, the second
    completions = [2 + 1, 3, 4]  # "a short summary", "a draft answer", "one two three four"
    prompts = [prompt_tokens(request.body) for request in requests]

    def tokens(prompt: int, completion: int) -> dict[str, int]:
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}  # fmt: skip

    first = tokens(prompts[0] + prompts[1], completions[0] + completions[1])
    second = tokens(prompts[2], completions[2])
    done = messages[-1]
    assert done["usage"] == tokens(sum(prompts), sum(completions)) | {"streams": [first, second]}
    assert done["finish_reason"] == "length"  # the last stream's
    await client.send({"type": "status", "job_id": job_id})
    status = await client.wait_for("status")
    assert status["usage"] == done["usage"] and status["finish_reason"] == "length"


async def test_a_server_that_gives_no_usage_is_reported_as_unknown(
    upstream: OpenAIServer, client: WSClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=[" a", " b"], usage=False)
    _, messages = await client.run()
    assert messages[-1]["usage"] is None
    assert messages[-1]["finish_reason"] == "stop"
    # It was asked, as OpenAI's API wants, and did not say.
    assert upstream.chat_requests[-1].body["stream_options"] == {"include_usage": True}


async def test_stream_options_null_in_settings_asks_for_no_usage(
    upstream: OpenAIServer, client: WSClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=[" a"])
    assistant = {
        "streams": [
            {
                "provider": "openai",
                "settings": {"model": "old-server", "stream_options": None},
                "messages": [{"role": "user", "content": "{query}"}],
            }
        ]
    }
    _, messages = await client.run(assistant=assistant)
    assert "stream_options" not in upstream.chat_requests[-1].body
    assert messages[-1]["usage"] is None


async def test_tokens_are_counted_in_the_metrics(upstream: OpenAIServer, start_worker: Any) -> None:
    upstream.handler = lambda body: Reply(tokens=[" x"] * 7)
    # The deployment knows its clients' model (METRICS_MODELS): it keeps its label.
    worker = await start_worker(metrics_models="gpt-test")
    async with WSClient(worker.ws_url) as client:
        for _ in range(2):
            _, messages = await client.run()
            assert messages[-1]["usage"]["completion_tokens"] == 7
    prompt = prompt_tokens(upstream.chat_requests[-1].body)
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        text = (await http.get("/metrics")).text
    counted = {
        (sample.labels["direction"], sample.labels["model"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "llm_worker_tokens_total"
    }
    assert counted == {("in", "gpt-test"): 2 * prompt, ("out", "gpt-test"): 14}
