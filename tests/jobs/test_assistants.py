"""Assistant templates end to end: chaining, placeholders, inserts, pipelines, plugins,
and injection attempts."""

from __future__ import annotations

from typing import Any

from llm_worker.testing.openai_server import OpenAIServer, Reply, echo_reply
from tests.conftest import ConnectClient, StartWorker
from tests.support.wsclient import WSClient, text_of

HISTORY = [
    {"role": "user", "content": "Where is the eiffel tower?"},
    {"role": "assistant", "content": "In Paris."},
    {"role": "user", "content": "Who built it?"},
    {"role": "assistant", "content": "Gustave Eiffel's company."},
    {"role": "user", "content": "When?"},
    {"role": "assistant", "content": "1887 to 1889."},
]


def model_stream(*messages: dict[str, Any], model: str = "gpt-test") -> dict[str, Any]:
    return {"provider": "openai", "settings": {"model": model}, "messages": list(messages)}


async def test_streams_chain_and_only_the_last_one_is_streamed(
    upstream: OpenAIServer, client: WSClient
) -> None:
    def handler(body: dict[str, Any]) -> Reply:
        if body["model"] == "drafter":
            return Reply(tokens=["draft", " about", " towers"])
        return echo_reply(body)

    upstream.handler = handler
    template = {
        "streams": [
            model_stream({"role": "user", "content": "Draft: {query}"}, model="drafter"),
            model_stream(
                {"role": "system", "content": "Polish this draft."},
                {"role": "user", "content": "{previous_stream_output} ({query})"},
                model="polisher",
            ),
        ]
    }
    _, messages = await client.run(query="towers", assistant=template)
    drafter, polisher = upstream.chat_requests
    assert drafter.body["messages"] == [{"role": "user", "content": "Draft: towers"}]
    assert polisher.body["messages"] == [
        {"role": "system", "content": "Polish this draft."},
        {"role": "user", "content": "draft about towers (towers)"},
    ]
    # Listeners hear only the last stream.
    assert text_of(messages) == "Echo: draft about towers (towers)"
    assert "draft" not in [m["message"] for m in messages if m["type"] == "running"]


async def test_a_failing_inner_stream_fails_the_job(
    upstream: OpenAIServer, client: WSClient
) -> None:
    upstream.handler = lambda body: (
        Reply(status=400, error="no drafter") if body["model"] == "drafter" else echo_reply(body)
    )
    template = {
        "streams": [
            model_stream({"role": "user", "content": "{query}"}, model="drafter"),
            model_stream({"role": "user", "content": "{previous_stream_output}"}),
        ]
    }
    _, messages = await client.run(assistant=template)
    assert [m["type"] for m in messages] == ["running", "failed"]
    assert "no drafter" in messages[-1]["message"]
    assert len(upstream.chat_requests) == 1


async def test_inner_streams_are_retried_even_after_partial_output(
    upstream: OpenAIServer, client: WSClient
) -> None:
    calls = {"drafter": 0}

    def handler(body: dict[str, Any]) -> Reply:
        if body["model"] == "drafter":
            calls["drafter"] += 1
            # Cut mid-stream the first time: nothing of it reached a listener yet.
            return Reply(tokens=["a", "b", "c"], cut_after=2 if calls["drafter"] == 1 else None)
        return echo_reply(body)

    upstream.handler = handler
    template = {
        "streams": [
            model_stream({"role": "user", "content": "{query}"}, model="drafter"),
            model_stream({"role": "user", "content": "{previous_stream_output}"}),
        ]
    }
    _, messages = await client.run(assistant=template)
    assert messages[-1]["type"] == "done"
    assert text_of(messages) == "Echo: abc"
    assert calls["drafter"] == 2


async def test_variables_fill_placeholders(upstream: OpenAIServer, client: WSClient) -> None:
    template = {
        "streams": [
            model_stream(
                {"role": "system", "content": "Answer in {language}, as {persona}; {{literal}}."},
                {"role": "user", "content": "{query}"},
            )
        ]
    }
    await client.run(
        query="Bonjour?",
        assistant=template,
        variables={"language": "French", "persona": "a guide", "unused": 3},
    )
    assert upstream.chat_requests[0].body["messages"][0] == {
        "role": "system",
        "content": "Answer in French, as a guide; {literal}.",
    }


async def test_injection_through_data_is_inert(upstream: OpenAIServer, client: WSClient) -> None:
    attacks = [
        "{query.__class__.__init__.__globals__}",
        "{previous_stream_output}",
        "{history[0]}",
        "{0}{1}",
        "{{",
        "{language}",
    ]
    template = {
        "streams": [
            model_stream(
                {"role": "system", "content": "Speak {language}."},
                {"insert": "history"},
                {"role": "user", "content": "{query}"},
            )
        ]
    }
    for index, attack in enumerate(attacks):
        await client.run(
            request_id=f"r{index}",
            query=attack,
            history=[{"role": "user", "content": attack}],
            variables={"language": attack},
            assistant=template,
        )
        body = upstream.chat_requests[-1].body
        # Every client-sent value reaches the model exactly as sent.
        assert body["messages"] == [
            {"role": "system", "content": f"Speak {attack}."},
            {"role": "user", "content": attack},
            {"role": "user", "content": attack},
        ]


async def test_history_insert_with_last(upstream: OpenAIServer, client: WSClient) -> None:
    template = {
        "streams": [
            model_stream({"insert": "history", "last": 2}, {"role": "user", "content": "x"})
        ]
    }
    await client.run(history=HISTORY, assistant=template)
    assert upstream.chat_requests[0].body["messages"] == [
        *HISTORY[-2:],
        {"role": "user", "content": "x"},
    ]


async def test_history_summary_summarises_the_older_part(
    upstream: OpenAIServer, client: WSClient
) -> None:
    def handler(body: dict[str, Any]) -> Reply:
        if body["model"] == "summariser":
            return Reply(tokens=["They", " discussed", " the", " tower."])
        return echo_reply(body)

    upstream.handler = handler
    template = {
        "streams": [
            model_stream(
                {"role": "system", "content": "Be brief."},
                {
                    "insert": "history_summary",
                    "provider": "openai",
                    "settings": {"model": "summariser"},
                },
                {"role": "user", "content": "{query}"},
            )
        ]
    }
    _, messages = await client.run(query="And its height?", history=HISTORY, assistant=template)
    summary_call, main_call = upstream.chat_requests
    assert summary_call.body["model"] == "summariser"
    transcript = summary_call.body["messages"][-1]["content"]
    # The three older messages are summarised; the last three are kept verbatim.
    assert transcript == (
        "user: Where is the eiffel tower?\n\nassistant: In Paris.\n\nuser: Who built it?"
    )
    assert main_call.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "system",
            "content": "Summary of the earlier conversation:\nThey discussed the tower.",
        },
        *HISTORY[-3:],
        {"role": "user", "content": "And its height?"},
    ]
    assert text_of(messages) == "Echo: And its height?"


async def test_history_summary_defaults_to_the_streams_provider_and_skips_short_history(
    upstream: OpenAIServer, client: WSClient
) -> None:
    template = {"streams": [model_stream({"insert": "history_summary", "keep_last": 1})]}
    await client.run(request_id="long", history=HISTORY[:3], assistant=template)
    summary_call, main_call = upstream.chat_requests
    assert summary_call.body["model"] == "gpt-test"
    assert main_call.body["messages"][-1] == HISTORY[2]

    await client.run(request_id="short", history=HISTORY[:1], assistant=template)
    # Nothing older than keep_last: no summary call.
    assert len(upstream.chat_requests) == 3
    assert upstream.chat_requests[-1].body["messages"] == HISTORY[:1]


async def test_echo_pipeline_chains_with_models(upstream: OpenAIServer, client: WSClient) -> None:
    template = {
        "streams": [
            model_stream({"role": "user", "content": "{query}"}),
            {"pipeline": "echo"},
        ]
    }
    _, messages = await client.run(query="ping", assistant=template)
    assert text_of(messages) == "Echo: ping"
    assert len(upstream.chat_requests) == 1


async def test_plugins_from_import_paths(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(
        extra_pipelines="shout=tests.support.plugins:ShoutPipeline,summarise=tests.support.plugins:SummarisePipeline",
        extra_inserts="facts=tests.support.plugins:FactsInsert",
        extra_providers="canned=tests.support.plugins:CannedProvider",
    )
    client = await connect(worker.ws_url)
    template = {
        "streams": [
            {
                "provider": "canned",
                "messages": [{"insert": "facts"}, {"role": "user", "content": "{query}"}],
            },
            {"pipeline": "shout"},
        ]
    }
    _, messages = await client.run(request_id="a", query="olleh dlrow", assistant=template)
    assert text_of(messages) == "WORLD HELLO "

    template = {"streams": [{"provider": "canned", "messages": [{"insert": "facts"}]}]}
    _, messages = await client.run(request_id="b", variables={"b": 2, "a": 1}, assistant=template)
    assert text_of(messages) == "2=b ,1=a :stcaF"

    # A plugin's own checks run at add time.
    bad = {
        "streams": [
            {"provider": "canned", "settings": {"fail": "maybe"}, "messages": [{"insert": "facts"}]}
        ]
    }
    await client.send({"type": "add", "id": "c", "query": "q", "assistant": bad})
    assert "settings.fail must be a boolean" in (await client.wait_for("error"))["message"]
    await client.send(
        {
            "type": "add",
            "id": "d",
            "query": "q",
            "assistant": {"streams": [{"pipeline": "summarise"}]},
        }
    )
    assert (
        "pipeline 'summarise' needs option 'provider'"
        in (await client.wait_for("error"))["message"]
    )

    # Pipelines call models with the retry policy.
    upstream.handler = lambda body: Reply(tokens=["short", " version"])
    template = {"streams": [{"pipeline": "summarise", "provider": "openai"}]}
    _, messages = await client.run(request_id="e", assistant=template)
    assert text_of(messages) == "short version"
    assert upstream.chat_requests[-1].body["model"] == "summariser"

    # A provider error in a plugin fails the job with its message.
    failing = {
        "streams": [
            {"provider": "canned", "settings": {"fail": True}, "messages": [{"insert": "facts"}]}
        ]
    }
    _, messages = await client.run(request_id="f", assistant=failing)
    assert messages[-1]["message"] == "canned failure"


async def test_a_buggy_plugin_costs_one_request_or_one_job_nothing_more(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    worker = await start_worker(
        extra_inserts="bad_check=tests.support.plugins:BuggyCheckInsert,"
        "bad_expand=tests.support.plugins:BuggyExpandInsert"
    )
    client = await connect(worker.ws_url)
    bad_check = {"streams": [model_stream({"insert": "bad_check"})]}
    await client.send({"type": "add", "id": "x", "query": "q", "assistant": bad_check})
    assert await client.recv() == {
        "type": "error",
        "code": "internal_error",
        "message": "internal error while handling 'add'",
        "ref": "x",
    }
    bad_expand = {"streams": [model_stream({"insert": "bad_expand"})]}
    _, messages = await client.run(request_id="y", assistant=bad_expand)
    assert messages[-1]["type"] == "failed"
    assert messages[-1]["message"] == ("internal error while running the job: KeyError('missing')")
    # The connection and the worker carry on.
    _, messages = await client.run(request_id="z")
    assert messages[-1]["type"] == "done"
