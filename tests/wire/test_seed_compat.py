"""The seed README's example, verbatim: an existing client keeps working unchanged."""

from __future__ import annotations

import json
import re

import pytest

from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import ConnectClient, RunningWorker
from tests.support.stores import STORE_KINDS

# Copied from the seed README, whitespace and all.
SEED_ADD_REQUEST = """{
  "type": "add",
  "id": "my-custom-id",
  "query": "How tall is it?",
  "assistant": {
    "streams": [
      {
        "provider": "openai",
        "settings": {
          "model": "gpt-3.5-turbo"
        },
        "messages": [
          {
            "role": "system",
            "content": "You are a helpful assistant."
          },
          {
            "insert": "history"
          },
          {
            "role": "user",
            "content": "{query}"
          }
        ]
      }
    ]
  },
  "history": [
    {
      "role": "user",
      "content": "Where is the eiffel tower?"
    },
    {
      "role": "system",
      "content": "The Eiffel Tower is located in Paris, France."
    }
  ]
}"""

SEED_TOKENS = [
    "The", " E", "iff", "el", " Tower", " is", " approximately", " ", "1", ",", "063",
    " feet", " (", "324", " meters", ")", " tall", ",", " including", " antennas", " at",
    " the", " top", ".",
]  # fmt: skip

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs on each store."""
    return request.param


def frames_of_whole_tokens(frames: list[str], tokens: list[str]) -> bool:
    """Whether ``frames`` are ``tokens`` in order, each frame one or more whole tokens."""
    remaining = list(tokens)
    for frame in frames:
        taken = ""
        while remaining and len(taken) < len(frame):
            taken += remaining.pop(0)
        if taken != frame:
            return False
    return not remaining


async def test_seed_example_streams_exactly_as_documented(
    worker: RunningWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    # Paced as a model streams: a frame per token, but a listener that falls behind
    # gets consecutive deltas merged, which a seed client, concatenating, does not notice.
    upstream.handler = lambda body: Reply(tokens=SEED_TOKENS, delay=0.003)
    client = await connect(seed=True)
    await client.send(SEED_ADD_REQUEST)

    resp_add = await client.recv()
    assert set(resp_add) == {"type", "id", "job_id"}
    assert resp_add["type"] == "resp_add"
    assert resp_add["id"] == "my-custom-id"
    assert UUID.match(resp_add["job_id"])
    job_id = resp_add["job_id"]

    stream = await client.job_messages(job_id)
    # A seed client reads type, job_id and message: nothing else is sent to it.
    assert all(m["job_id"] == job_id for m in stream)
    assert stream[0]["type"] == "running" and stream[0]["message"] == ""
    assert all(m["type"] == "running" for m in stream[1:-1])
    deltas = [m["message"] for m in stream[1:-1]]
    assert frames_of_whole_tokens(deltas, SEED_TOKENS)
    assert stream[-1]["type"] == "done"
    assert "".join(deltas) == (
        "The Eiffel Tower is approximately 1,063 feet (324 meters) tall, "
        "including antennas at the top."
    )

    # The provider got the template rendered in order: system, history, query.
    (request,) = upstream.chat_requests
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["model"] == "gpt-3.5-turbo"
    assert request.body["stream"] is True
    assert request.body["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Where is the eiffel tower?"},
        {"role": "system", "content": "The Eiffel Tower is located in Paris, France."},
        {"role": "user", "content": "How tall is it?"},
    ]


async def test_seed_failed_message_shape(
    worker: RunningWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(status=400, error="model not found")
    client = await connect(seed=True)
    await client.send(SEED_ADD_REQUEST)
    job_id = (await client.expect("resp_add"))["job_id"]
    failed = (await client.job_messages(job_id))[-1]
    assert failed["type"] == "failed"
    assert failed["job_id"] == job_id
    assert "HTTP 400" in failed["message"] and "model not found" in failed["message"]


async def test_seed_listen_on_another_connection(
    worker: RunningWorker, upstream: OpenAIServer, connect: ConnectClient
) -> None:
    upstream.handler = lambda body: Reply(tokens=SEED_TOKENS, delay=0.01)
    adder = await connect(seed=True)
    await adder.send(SEED_ADD_REQUEST)
    job_id = (await adder.expect("resp_add"))["job_id"]

    listener = await connect(seed=True)
    await listener.send(json.dumps({"type": "listen", "job_id": job_id}))
    heard = [m for m in await listener.job_messages(job_id) if m["type"] == "running"]
    assert "".join(m["message"] for m in heard) == "".join(SEED_TOKENS)
    added = [m for m in await adder.job_messages(job_id) if m["type"] == "running"]
    # Each gets the whole text (framed as its own pace allowed).
    assert "".join(m["message"] for m in added) == "".join(SEED_TOKENS)


# Refusals as a seed-dialect connection gets them, byte for byte (recorded before error
# frames of the full protocol got a ``code``: the seed's must not change). ``{job}``
# stands for the id a refused ``add`` is answered with, a new one each time.
SEED_REFUSALS: list[tuple[str | bytes, list[str]]] = [
    (b'{"type": "ping"}', ['{"type":"error","message":"binary frames are not accepted: send JSON as text"}']),  # noqa: E501
    ("x" * 1_100_000, ['{"type":"error","message":"message too large: 1100000 bytes, the limit is 1048576 (MAX_MESSAGE_BYTES)"}']),  # noqa: E501
    ("not json", ['{"type":"error","message":"not valid JSON: invalid literal, expected \'null\': line 1 column 1 (char 0)"}']),  # noqa: E501
    ("[1]", ['{"type":"error","message":"a request must be a JSON object, not an array"}']),
    ('{"id": "a"}', ['{"type":"error","message":"missing field \'type\'","ref":"a"}']),
    ('{"type": "launch", "id": "a"}', ['{"type":"error","message":"unknown type \'launch\' (known: add, cancel, listen, ping, status, unlisten)","ref":"a"}']),  # noqa: E501
    ('{"type": "add", "id": "a", "query": 3, "assistant": {}}', [
        '{"type":"resp_add","id":"a","job_id":"{job}"}',
        '{"type":"failed","job_id":"{job}","message":"invalid \'add\' request: field \'query\': Input should be a valid string; missing field \'assistant.streams\'"}',  # noqa: E501
    ]),
    ('{"type": "add", "id": "b", "query": "q", "assistant": {"streams": [{"provider": "nope", "settings": {"model": "m"}, "messages": [{"role": "user", "content": "{query}"}]}]}}', [  # noqa: E501
        '{"type":"resp_add","id":"b","job_id":"{job}"}',
        '{"type":"failed","job_id":"{job}","message":"invalid assistant template: assistant.streams[0]: unknown provider \'nope\' (available: openai; not configured: anthropic, local, vllm)"}',  # noqa: E501
    ]),
    ('{"type": "listen", "job_id": "nope"}', ['{"type":"failed","job_id":"nope","message":"unknown job_id \'nope\'"}']),  # noqa: E501
    ('{"type": "listen"}', ['{"type":"error","message":"invalid \'listen\' request: missing field \'job_id\'"}']),  # noqa: E501
    ('{"type": "status", "job_id": "nope"}', ['{"type":"error","message":"unknown job_id \'nope\'","ref":"nope"}']),  # noqa: E501
    ('{"type": "cancel", "job_id": "nope"}', ['{"type":"error","message":"unknown job_id \'nope\'","ref":"nope"}']),  # noqa: E501
    ('{"type": "unlisten", "job_id": 5}', ['{"type":"error","message":"invalid \'unlisten\' request: field \'job_id\': Input should be a valid string","ref":5}']),  # noqa: E501
]  # fmt: skip


async def test_seed_refusals_are_sent_byte_for_byte_as_before(
    worker: RunningWorker, connect: ConnectClient
) -> None:
    client = await connect(seed=True)
    for request, expected in SEED_REFUSALS:
        await client.ws.send(request)
        sent = [await client.ws.recv() for _ in expected]
        job_id = json.loads(sent[0]).get("job_id", "")
        assert sent == [frame.replace("{job}", job_id) for frame in expected], request
        assert all("code" not in json.loads(frame) for frame in sent)
