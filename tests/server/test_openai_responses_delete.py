"""``DELETE /v1/responses/{id}`` is durable: the store forgets the response's job, so
no gateway on the store serves it again, nor the same worker after a restart. A
running response is cancelled first (its model stopped), then forgotten. Driven by
the official ``openai`` SDK unchanged."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI

from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import WorkerProcess, clean_env, processes
from llm_worker.testing.redis_server import RedisServer, unique_prefix
from tests.conftest import StartWorker
from tests.server.test_openai_responses_durable import sdk
from tests.support.waiting import eventually


async def assert_gone(client: AsyncOpenAI, response_id: str) -> None:
    """Every route of the response answers OpenAI's 404."""
    with pytest.raises(openai.NotFoundError) as raised:
        await client.responses.retrieve(response_id)
    assert raised.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        await client.responses.input_items.list(response_id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response_id, stream=True)
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(response_id)


async def test_a_deleted_response_stays_gone_after_a_restart_on_sqlite(
    upstream: OpenAIServer, tmp_path: Path
) -> None:
    env = clean_env(LISTEN_PORT="0", STORE_URL="sqlite:///jobs.db", OPENAI_API_KEY="k")
    env["OPENAI_BASE_URL"] = upstream.base_url
    upstream.handler = lambda body: Reply(tokens=["Hello ", "there."])
    async with processes() as started:

        async def worker_process() -> tuple[WorkerProcess, AsyncOpenAI]:
            started.append(await WorkerProcess.start(env, tmp_path))
            return started[-1], sdk(f"http://127.0.0.1:{started[-1].port}")

        first, client = await worker_process()
        deleted = await client.responses.create(model="gpt-test", input="Hi")
        kept = await client.responses.create(model="gpt-test", input="Hi again")
        assert deleted.status == kept.status == "completed"
        await client.responses.delete(deleted.id)
        await assert_gone(client, deleted.id)
        first.kill()  # its store's file is all that is left of it
        await first.process.wait()

        _, client = await worker_process()
        await assert_gone(client, deleted.id)
        # The restarted worker does serve what the file keeps: the other response.
        assert (await client.responses.retrieve(kept.id)).output_text == "Hello there."


async def test_a_response_deleted_on_one_gateway_is_gone_from_another_on_redis(
    upstream: OpenAIServer, start_worker: StartWorker, own_redis: RedisServer
) -> None:
    shared = {"store_url": own_redis.url, "redis_prefix": unique_prefix()}
    one = sdk((await start_worker(**shared)).http_url)
    other = sdk((await start_worker(**shared)).http_url)
    upstream.handler = lambda body: Reply(tokens=["Done."])
    done = await one.responses.create(model="gpt-test", input="Hi")
    assert (await other.responses.retrieve(done.id)).output_text == "Done."
    await one.responses.delete(done.id)
    await assert_gone(other, done.id)

    # A response still running: cancelled (the model stopped), then gone everywhere.
    upstream.handler = lambda body: Reply(tokens=[f" t{i}" for i in range(200)], delay=0.05)
    running = await one.responses.create(model="gpt-test", input="Go", background=True)
    await eventually(lambda: len(upstream.chat_requests) == 2)
    await other.responses.delete(running.id)
    await eventually(lambda: upstream.chat_requests[-1].client_gone.is_set())
    await assert_gone(one, running.id)
    await assert_gone(other, running.id)
