"""A store written by the version before typed events is read by this one.

``tests/support/fixtures/store-ac70428.db`` was written by the code of commit ac70428
(``SQLiteStore``, through its own API): one job done (its ``done`` says usage, finish
reason and providers, no message) and one still waiting. This version serves both:
the done one to listeners of every protocol, the waiting one run to its end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.wire.dialects import TYPED_SUBPROTOCOL
from tests.conftest import ConnectClient, StartWorker

FIXTURE = Path(__file__).parents[1] / "support" / "fixtures" / "store-ac70428.db"
DONE = "23c010b0-e049-473a-b68a-37162c10f2c9"
PENDING = "31c3e93b-e71b-479a-bfc0-7a678369484c"
USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 4,
    "total_tokens": 13,
    "streams": [{"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}],
}


async def test_a_store_of_the_previous_version_is_served_to_every_protocol(
    upstream: OpenAIServer, start_worker: StartWorker, connect: ConnectClient, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.db"
    shutil.copy(FIXTURE, path)
    upstream.handler = lambda body: Reply(tokens=["Still ", "here."])
    # Its jobs ended on 2026-12-07: kept far longer than that, whenever this runs.
    worker = await start_worker(store_url=f"sqlite:///{path}", job_ttl_seconds=100 * 365 * 86400)
    seed = await connect(worker.ws_url, seed=True)
    full = await connect(worker.ws_url)
    typed = await connect(worker.ws_url, subprotocols=[TYPED_SUBPROTOCOL])
    for client in (seed, full, typed):
        await client.send({"type": "listen", "job_id": DONE})
        frames = await client.job_messages(DONE)
        assert frames == [
            {"type": "running", "job_id": DONE, "message": "", "seq": 1},
            {"type": "running", "job_id": DONE, "message": "The capital is Paris.", "seq": 4},
            {
                "type": "done",
                "job_id": DONE,
                "seq": 5,
                "usage": USAGE,
                "finish_reason": "stop",
                "providers": ["openai"],
            },
        ]
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        status = (await http.get(f"/v1/jobs/{DONE}", params={"events": "typed"})).json()
    assert (status["state"], status["output"], status["usage"]) == (
        "done",
        "The capital is Paris.",
        USAGE,
    )
    # The job that waited in the old store runs here, and its done has the message.
    await typed.send({"type": "listen", "job_id": PENDING})
    frames = await typed.job_messages(PENDING)
    assert frames[-1]["type"] == "done", frames[-1]
    assert frames[-1]["message"] == {"role": "assistant", "content": "Still here."}
    sent = upstream.chat_requests[-1].body["messages"]
    assert sent == [{"role": "user", "content": "Capital of France?"}]
