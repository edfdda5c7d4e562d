"""F-AI's RAG templates as written: the template's own fields reach pipelines and
placeholders, and a pipeline sets values (``{rag_output}``) for the streams after it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from llm_worker.testing.openai_server import OpenAIServer
from tests.conftest import ConnectClient, RunningWorker, StartWorker
from tests.support.plugins import COLLECTIONS
from tests.support.seed_client import SeedClient
from tests.support.stores import STORE_KINDS
from tests.support.wsclient import text_of

PLUGINS = {
    "extra_pipelines": "rag_scoring=tests.support.plugins:RagScoringPipeline,"
    "forgetful=tests.support.plugins:ForgetfulPipeline,"
    "overreaching=tests.support.plugins:OverreachingPipeline"
}

# The shape of F-AI's RAG assistant templates: its own id, meta and collection at the
# top level; a retrieval pipeline first; then a model call on what it retrieved.
F_AI_RAG_TEMPLATE: dict[str, Any] = {
    "id": "eiffel-docs",
    "meta": {
        "name": "Eiffel Tower documents",
        "description": "Answers from the uploaded documents.",
        "sample_questions": ["How tall is it?"],
    },
    "files_collection_id": "c-eiffel",
    "streams": [
        {"pipeline": "rag_scoring"},
        {
            "provider": "openai",
            "settings": {"model": "gpt-4o"},
            "messages": [
                {"role": "system", "content": "Answer from collection {files_collection_id}."},
                {"insert": "history"},
                {"role": "user", "content": "{rag_output}"},
            ],
        },
    ],
}


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """The template's fields travel with the job through every store."""
    return request.param


@pytest.fixture
async def rag_worker(start_worker: StartWorker) -> RunningWorker:
    return await start_worker(**PLUGINS)


def template(**changes: Any) -> dict[str, Any]:
    changed = copy.deepcopy(F_AI_RAG_TEMPLATE)
    changed.update(changes)
    return changed


async def test_the_f_ai_rag_template_runs_end_to_end_for_f_ai_s_client(
    rag_worker: RunningWorker, upstream: OpenAIServer
) -> None:
    async with SeedClient(rag_worker.ws_url) as client:
        answer = await client.ask("r1", "How tall is it?", F_AI_RAG_TEMPLATE)
    assert client.violations == []
    (request,) = upstream.chat_requests
    rag_output = f"Answer 'How tall is it?' from these documents:\n{COLLECTIONS['c-eiffel']}"
    assert request.body["messages"] == [
        {"role": "system", "content": "Answer from collection c-eiffel."},
        {"role": "user", "content": rag_output},
    ]
    assert answer == f"Echo: {rag_output}"


async def test_rag_output_is_refused_where_no_earlier_pipeline_sets_it(
    rag_worker: RunningWorker, connect: ConnectClient
) -> None:
    client = await connect(rag_worker.ws_url)
    answer_stream = F_AI_RAG_TEMPLATE["streams"][1]
    cases = {
        # No pipeline at all.
        "alone": (template(streams=[answer_stream]), "streams[0].messages[2].content"),
        # The pipeline comes after the stream that uses its value.
        "before": (
            template(streams=[answer_stream, {"pipeline": "rag_scoring"}]),
            "streams[0].messages[2].content",
        ),
        # A pipeline that sets other values.
        "other": (
            template(streams=[{"pipeline": "forgetful"}, answer_stream]),
            "streams[1].messages[2].content",
        ),
    }
    for name, (assistant, where) in cases.items():
        await client.send({"type": "add", "id": name, "query": "q", "assistant": assistant})
        error = await client.expect("error")
        assert error["ref"] == name
        assert error["message"].startswith(
            f"invalid assistant template: assistant.{where}: unknown placeholder {{rag_output}}"
        ), error


async def test_the_template_s_fields_are_checked_when_the_job_is_added(
    rag_worker: RunningWorker, connect: ConnectClient
) -> None:
    client = await connect(rag_worker.ws_url)
    no_collection = template()
    del no_collection["files_collection_id"]
    await client.send({"type": "add", "id": "a", "query": "q", "assistant": no_collection})
    assert (await client.expect("error"))["message"] == (
        "invalid assistant template: assistant.streams[0]: pipeline 'rag_scoring' "
        "needs the template's files_collection_id, a string"
    )
    # Only fields holding text, numbers or booleans are placeholders.
    meta = template()
    meta["streams"][1]["messages"][0]["content"] = "{meta}"
    await client.send({"type": "add", "id": "b", "query": "q", "assistant": meta})
    message = (await client.expect("error"))["message"]
    assert "unknown placeholder {meta} (known here: {files_collection_id}, {id}, " in message


async def test_a_pipeline_that_breaks_its_declaration_fails_the_job_saying_so(
    rag_worker: RunningWorker, connect: ConnectClient, upstream: OpenAIServer
) -> None:
    client = await connect(rag_worker.ws_url)
    uses_result = {
        "provider": "openai",
        "settings": {"model": "m"},
        "messages": [{"role": "user", "content": "{result}"}],
    }
    _, messages = await client.run(
        request_id="forgetful", assistant={"streams": [{"pipeline": "forgetful"}, uses_result]}
    )
    assert messages[-1]["message"] == (
        "assistant.streams[0]: pipeline 'forgetful' ended without setting 'result', "
        "which it declares"
    )
    _, messages = await client.run(
        request_id="overreaching", assistant={"streams": [{"pipeline": "overreaching"}]}
    )
    assert messages[-1]["message"] == (
        "assistant.streams[0]: pipeline 'overreaching' set 'surprise', "
        "which it does not declare (declared: none)"
    )
    assert upstream.chat_requests == []


async def test_a_template_field_is_a_default_that_variables_override(
    rag_worker: RunningWorker, connect: ConnectClient, upstream: OpenAIServer
) -> None:
    client = await connect(rag_worker.ws_url)
    assistant = {
        "tone": "dry",
        "turns": 3,
        "streams": [
            {
                "provider": "openai",
                "settings": {"model": "m"},
                "messages": [{"role": "user", "content": "{tone} {turns} {query}"}],
            }
        ],
    }
    _, messages = await client.run(request_id="a", query="q", assistant=assistant)
    assert text_of(messages) == "Echo: dry 3 q"
    _, messages = await client.run(
        request_id="b", query="q", assistant=assistant, variables={"tone": "warm"}
    )
    assert text_of(messages) == "Echo: warm 3 q"
