"""Usage and finish_reason from a real ``transformers serve`` (Hugging Face's own
OpenAI-compatible server, which sends them with its last chunk and no ``[DONE]``),
answering with a tiny random model built here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from llm_worker.testing.redis_server import free_port
from tests.conftest import StartWorker
from tests.support.wsclient import WSClient

pytest.importorskip("transformers")
serve_available = pytest.importorskip("transformers.utils.import_utils").is_serve_available
if not serve_available():
    pytest.skip("transformers serve needs fastapi (the test extra)", allow_module_level=True)
pytest.importorskip("accelerate", reason="transformers serve needs accelerate (the test extra)")


@pytest.fixture
async def transformers_serve(tiny_model: Path, tmp_path: Path) -> AsyncIterator[str]:
    """``transformers serve`` on a free port, the tiny model preloaded; its base URL."""
    port = free_port()
    command = Path(sys.executable).with_name("transformers")
    process = await asyncio.create_subprocess_exec(
        str(command), "serve", str(tiny_model), "--port", str(port), "--device", "cpu",
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(1200):  # it loads the model first
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{base}/health")).status_code == 200:
                        break
                assert process.returncode is None, "transformers serve stopped"
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("transformers serve did not start within 60 s")
        yield f"{base}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()


async def test_usage_and_finish_reason_from_transformers_serve(
    start_worker: StartWorker, transformers_serve: str, tiny_model: Path
) -> None:
    from transformers import AutoTokenizer

    worker = await start_worker(openai_base_url=transformers_serve)
    assistant = {
        "streams": [
            {
                "provider": "openai",
                "settings": {"model": str(tiny_model), "max_tokens": 5},
                "messages": [{"role": "user", "content": "{query}"}],
            }
        ]
    }
    async with WSClient(worker.ws_url) as client:
        _, messages = await client.run(query="hello", assistant=assistant)
    done = messages[-1]
    assert done["type"] == "done", messages
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=True
    )
    prompt_ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    usage = done["usage"]
    assert usage["prompt_tokens"] == len(prompt_ids)
    assert 1 <= usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # "length" when the 5 tokens ran out, "stop" if the random model said its end first.
    assert (done["finish_reason"], usage["completion_tokens"] == 5) in (
        ("length", True),
        ("stop", False),
        ("stop", True),
    )
