"""The ``local`` provider with a tiny random Llama built here, configured by its directory
as a deployment's model is: streaming, batching, cancel, caching, and end to end over the
WebSocket. What a job may not make it load is tests/providers/test_local_models_security.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llm_worker.client import Client, TextDelta  # noqa: E402
from llm_worker.client import Notice as NoticeEvent  # noqa: E402
from llm_worker.jobs.messages import ChatMessage  # noqa: E402
from llm_worker.jobs.templates import TemplateError  # noqa: E402
from llm_worker.providers import CallEnd, Notice, ProviderError  # noqa: E402
from llm_worker.providers.local import LocalModels, LocalProvider  # noqa: E402
from llm_worker.testing.openai_server import OpenAIServer, Reply  # noqa: E402
from tests.conftest import ConnectClient, StartWorker  # noqa: E402
from tests.support.waiting import eventually  # noqa: E402
from tests.support.wsclient import text_of  # noqa: E402

PROMPTS = [
    "hi",
    "How tall is the Eiffel Tower in Paris, France? Tell me everything you know about it.",
    "naïve café, 日本語 🚀",
    "hello world hello",
    "a",
    "user: hi assistant: hello, how can I help you today? I would like to know more.",
]


def configured(**choices: Path | str) -> dict[str, str]:
    return {name: str(source) for name, source in choices.items()}


@pytest.fixture
async def provider(tiny_model: Path) -> AsyncIterator[LocalProvider]:
    """The tiny model, as ``LOCAL_MODELS=tiny=<its directory>`` configures it."""
    local = LocalProvider(
        "local",
        models=LocalModels(max_models=1, max_batch=16),
        choices=configured(tiny=tiny_model),
    )
    yield local
    await local.aclose()


def reference(model_dir: Path, messages: list[dict[str, str]], max_tokens: int) -> str:
    """Greedy ``generate()`` of transformers itself, one prompt alone."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"])
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        ids = tokenizer.encode(text)
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        output = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


async def collect(provider: LocalProvider, text: str, **settings: Any) -> list[str]:
    """The text deltas; the :class:`CallEnd` that closes the stream, and the notice of a
    model loading that may open it, are checked apart."""
    deltas = [delta async for delta in provider.stream(user(text), settings)]
    assert isinstance(deltas[-1], CallEnd), deltas[-1:]
    if isinstance(deltas[0], Notice):
        deltas = deltas[1:]
    assert all(isinstance(delta, str) for delta in deltas[:-1]), deltas
    return deltas[:-1]


async def test_the_provider_counts_its_tokens_and_says_why_it_stopped(
    provider: LocalProvider, tiny_model: Path
) -> None:
    settings = {"model": "tiny", "temperature": 0, "max_tokens": 7, "ignore_eos": True}
    deltas = [delta async for delta in provider.stream(user("hello there"), settings)]
    end = deltas[-1]
    assert isinstance(end, CallEnd)
    assert end.finish_reason == "length"
    assert end.completion_tokens == 7
    engine = next(iter(provider.models._engines.values()))
    prompt = engine._prompt([{"role": "user", "content": "hello there"}])
    assert end.prompt_tokens == len(prompt) > 0
    stopped = [d async for d in provider.stream(user("hi"), {**settings, "stop": [" "]})]
    assert stopped[-1].finish_reason in ("stop", "length")


async def test_greedy_output_is_what_transformers_generates(
    provider: LocalProvider, tiny_model: Path
) -> None:
    settings = {"model": "tiny", "temperature": 0, "max_tokens": 40}
    for prompt in PROMPTS[:3]:
        deltas = await collect(provider, prompt, **settings)
        assert all(deltas), "no empty deltas"
        expected = reference(tiny_model, [{"role": "user", "content": prompt}], 40)
        assert "".join(deltas) == expected


async def test_a_tokenizer_without_chat_template_gets_a_plain_transcript(
    plain_model: Path,
) -> None:
    models = LocalModels(max_models=1, max_batch=8)
    local = LocalProvider("local", models=models, choices=configured(plain=plain_model))
    try:
        deltas = await collect(local, "hello there", model="plain", temperature=0)
    finally:
        await local.aclose()
    messages = [{"role": "user", "content": "hello there"}]
    assert "".join(deltas) == reference(plain_model, messages, 512)


async def test_concurrent_greedy_jobs_equal_sequential_ones_token_for_token(
    provider: LocalProvider, tiny_model: Path
) -> None:
    settings = {"model": "tiny", "temperature": 0, "max_tokens": 48}
    alone = ["".join(await collect(provider, p, **settings)) for p in PROMPTS]

    async def staggered(index: int, prompt: str) -> str:
        await asyncio.sleep(0.002 * index)  # join the batch at different steps
        return "".join(await collect(provider, prompt, **settings))

    together = await asyncio.gather(*(staggered(i, p) for i, p in enumerate(PROMPTS)))
    assert together == alone
    engine = next(iter(provider.models._engines.values()))
    assert engine.steps > 0
    assert engine.running == 0


async def test_null_settings_are_settings_not_given(
    provider: LocalProvider, tiny_model: Path
) -> None:
    # What OpenAI's API sends for "not given"; float(None) failed the job before.
    greedy = {"model": "tiny", "temperature": 0, "max_tokens": 6, "ignore_eos": True}
    nulls = {"temperature": None, "top_p": None, "seed": None, "stop": None}
    provider.check_settings({**greedy, **nulls})
    expected = await collect(provider, PROMPTS[0], **greedy)
    local = LocalProvider(
        "local", models=provider.models, choices=provider.choices, defaults=greedy
    )
    assert await collect(local, PROMPTS[0], model="tiny", max_tokens=6, **nulls) == expected


async def test_seeded_sampling_is_reproducible(provider: LocalProvider, tiny_model: Path) -> None:
    settings = {"model": "tiny", "temperature": 0.9, "top_p": 0.9, "max_tokens": 30}
    first = await collect(provider, "hi", seed=7, **settings)
    again = await collect(provider, "hi", seed=7, **settings)
    other = await collect(provider, "hi", seed=8, **settings)
    assert first == again
    assert first != other


async def test_max_tokens_and_stop_sequences(provider: LocalProvider) -> None:
    model = "tiny"
    full = "".join(await collect(provider, PROMPTS[1], model=model, temperature=0, max_tokens=40))
    short = "".join(await collect(provider, PROMPTS[1], model=model, temperature=0, max_tokens=5))
    assert full.startswith(short)
    assert len(short) < len(full)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = "".join(
        await collect(provider, PROMPTS[1], model=model, temperature=0, max_tokens=40, stop=[stop])
    )
    assert cut == full[: full.index(stop)]


async def test_cancel_frees_the_place_in_the_batch_at_the_next_step(
    provider: LocalProvider,
) -> None:
    model = "tiny"
    expected = "".join(await collect(provider, "hi", model=model, temperature=0, max_tokens=60))

    async def endless() -> None:
        settings = {"model": model, "max_tokens": 100_000, "ignore_eos": True}
        async for _ in provider.stream(user("hello"), settings):
            pass

    long_job = asyncio.create_task(endless())
    engine = next(iter(provider.models._engines.values()))
    await eventually(lambda: engine.running == 1)
    neighbour = asyncio.create_task(
        collect(provider, "hi", model=model, temperature=0, max_tokens=60)
    )
    await asyncio.sleep(0.05)
    long_job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long_job
    steps = engine.steps
    # Gone at the next step; the neighbour, unaffected, finishes with its own text.
    assert "".join(await neighbour) == expected
    await eventually(lambda: engine.running == 0)
    assert engine.steps >= steps


async def test_jobs_arriving_together_load_the_model_once(tiny_model: Path) -> None:
    models = LocalModels(max_models=1, max_batch=8)
    local = LocalProvider("local", models=models, choices=configured(tiny=tiny_model))
    try:
        settings = {"model": "tiny", "temperature": 0, "max_tokens": 5}
        await asyncio.gather(*(collect(local, p, **settings) for p in PROMPTS))
        await collect(local, "again", **settings)
        assert models.loads == 1
    finally:
        await local.aclose()


async def test_local_max_models_unloads_the_least_recently_used_idle_model(
    tiny_model: Path, plain_model: Path
) -> None:
    models = LocalModels(max_models=1, max_batch=8)
    choices = configured(tiny=tiny_model, plain=plain_model)
    local = LocalProvider("local", models=models, choices=choices)
    try:
        await collect(local, "hi", model="tiny", max_tokens=3)
        await collect(local, "hi", model="plain", max_tokens=3)
        assert models.loads == 2
        assert [key[0] for key in models._engines] == [str(plain_model)]

        # While the loaded model is busy, there is no room: a retryable error.
        busy = asyncio.create_task(
            collect(local, "hi", model="plain", max_tokens=100_000, ignore_eos=True)
        )
        engine = models._engines[(str(plain_model), "cpu", "auto")]
        await eventually(lambda: engine.running == 1)
        with pytest.raises(ProviderError, match="LOCAL_MAX_MODELS is 1") as raised:
            await collect(local, "hi", model="tiny", max_tokens=3)
        assert raised.value.retryable
        busy.cancel()
    finally:
        await local.aclose()


async def test_a_configured_directory_that_cannot_be_loaded_fails_naming_no_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = tmp_path / "no-such-model"
    local = LocalProvider(
        "local", models=LocalModels(max_models=1, max_batch=8), choices=configured(gone=gone)
    )
    with pytest.raises(ProviderError) as raised:
        await collect(local, "hi", model="gone")
    assert raised.value.message == (
        "cannot load local model 'gone': its files cannot be loaded (the worker's log says why)"
    )
    # The log, for the deployment, says which directory and why.
    assert any(str(gone) in record.getMessage() for record in caplog.records)


async def test_only_a_job_that_waits_for_its_model_to_load_gets_a_notice(
    provider: LocalProvider, tiny_model: Path
) -> None:
    settings = {"model": "tiny", "temperature": 0, "max_tokens": 3}

    async def parts() -> list[object]:
        return [part async for part in provider.stream(user("hi"), settings)]

    loading = "loading local model 'tiny': the answer starts once it is loaded"
    # Jobs arriving together all wait for the one load, and each says so first.
    together = await asyncio.gather(parts(), parts())
    for each in together:
        assert each[0] == Notice(loading)
        assert [type(part) for part in each[1:-1]] == [str] * (len(each) - 2)
    assert provider.models.loads == 1
    assert not any(isinstance(part, Notice) for part in await parts())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that takes connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


async def test_a_hub_that_does_not_answer_fails_the_load_within_its_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import constants

    from llm_worker.providers.local_engine import HUB_TIMEOUT_SECONDS

    models = LocalModels(max_models=1, max_batch=8)
    choices = configured(nobody="nobody/no-such-model")
    provider = LocalProvider("local", models=models, choices=choices)
    with silent_server() as port:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        started = time.monotonic()
        with pytest.raises(ProviderError, match="cannot be reached") as raised:
            await collect(provider, "hi", model="nobody")
        elapsed = time.monotonic() - started
    assert HUB_TIMEOUT_SECONDS - 0.5 < elapsed < HUB_TIMEOUT_SECONDS + 5
    assert "cannot load local model 'nobody'" in raised.value.message
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ProviderError, match="HF_HUB_OFFLINE is set"):
        await collect(provider, "hi", model="nobody")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "settings.model must name one of the models of provider 'local': tiny"),
        ({"model": "m"}, "settings.model must name one of the models of provider 'local': tiny"),
        ({"model": "tiny", "beams": 4}, "settings.beams is not a setting of provider 'local'"),
        ({"model": "tiny", "temperature": -1}, "settings.temperature must be at least 0, not -1"),
        ({"model": "tiny", "top_p": 1.5}, "settings.top_p must be between 0 and 1"),
        ({"model": "tiny", "max_tokens": 0}, "settings.max_tokens must be at least 1, not 0"),
        ({"model": "tiny", "dtype": "int3"}, "settings.dtype must be one of"),
        ({"model": "tiny", "device": "tpu"}, "settings.device must be cpu, cuda"),
        ({"model": "tiny", "stop": [1]}, "settings.stop must be a string or a list"),
    ],
)
def test_bad_settings_are_refused_when_the_job_is_added(
    provider: LocalProvider, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(TemplateError, match=message):
        provider.check_settings(settings)


async def test_end_to_end_over_the_websocket_beside_remote_jobs(
    start_worker: StartWorker, upstream: OpenAIServer, connect: ConnectClient, tiny_model: Path
) -> None:
    worker = await start_worker(local_models=f"tiny={tiny_model}")
    client = await connect(worker.ws_url)

    def template(max_tokens: int) -> dict[str, Any]:
        return {
            "streams": [
                {
                    "provider": "local",
                    "settings": {
                        "model": "tiny",
                        "temperature": 0,
                        "max_tokens": max_tokens,
                    },
                    "messages": [{"insert": "history"}, {"role": "user", "content": "{query}"}],
                }
            ]
        }

    expected = reference(tiny_model, [{"role": "user", "content": "Where is it?"}], 30)
    local_ids = [
        await client.add(f"l{i}", query="Where is it?", assistant=template(30)) for i in range(4)
    ]
    # A long local job keeps the model busy while the rest goes on.
    long_id = await client.add("long", query="hello", assistant=template(100_000))
    upstream.handler = lambda body: Reply(tokens=[" remote", " reply"], delay=0.01)
    remote_id = await client.add("remote")
    await client.send({"type": "ping", "id": "during"})
    assert (await client.wait_for("pong"))["id"] == "during"
    remote = await client.job_messages(remote_id)
    assert text_of(remote) == " remote reply"
    for job_id in local_ids:
        messages = await client.job_messages(job_id)
        assert messages[-1]["type"] == "done"
        assert text_of(messages) == expected
        # The provider counted its own tokens, and said why it stopped.
        done = messages[-1]
        usage = done["usage"]
        assert usage["prompt_tokens"] > 0 and 1 <= usage["completion_tokens"] <= 30
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert (done["finish_reason"], usage["completion_tokens"] == 30) in (
            ("stop", True),
            ("stop", False),
            ("length", True),
        )
    # /metrics shows the model loaded, and the long job in its batch.
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        scraped = (await http.get("/metrics")).text
    assert "llm_worker_local_models_loaded 1.0" in scraped.splitlines()
    assert "llm_worker_local_batch_size 1.0" in scraped.splitlines()
    await client.send({"type": "cancel", "job_id": long_id})
    assert (await client.job_messages(long_id))[-1]["type"] == "cancelled"


async def test_named_local_models_from_the_providers_file(
    start_worker: StartWorker, connect: ConnectClient, tiny_model: Path, tmp_path: Path
) -> None:
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(
        f'[providers.tiny]\ntype = "local"\nsettings = {{ model = "{tiny_model}", temperature = 0, '
        "max_tokens = 12 }\n"
    )
    worker = await start_worker(providers_file=providers_file)
    client = await connect(worker.ws_url)
    template = {
        "streams": [{"provider": "tiny", "messages": [{"role": "user", "content": "{query}"}]}]
    }
    _, messages = await client.run(query="hi", assistant=template)
    assert messages[-1]["type"] == "done"
    expected = reference(tiny_model, [{"role": "user", "content": "hi"}], 12)
    assert text_of(messages) == expected
    # Through OpenAI's doors, as /v1/models lists it: its one model, asked for without a
    # model setting (which a pinned provider refuses).
    sdk = openai.AsyncOpenAI(base_url=worker.http_url + "/v1", api_key="k", max_retries=0)
    async with sdk:
        assert "tiny/tiny" in [model.id async for model in sdk.models.list()]
        hi = [{"role": "user", "content": "hi"}]
        reply = await sdk.chat.completions.create(model="tiny/tiny", messages=hi)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == expected
        response = await sdk.responses.create(model="tiny/tiny", input="hi")
        assert response.output_text == expected
        with pytest.raises(openai.BadRequestError):  # another model: refused, clearly
            await sdk.chat.completions.create(model="tiny/other", messages=hi)  # type: ignore[arg-type]


def local_template(model: str, **settings: Any) -> dict[str, Any]:
    settings = {"model": model, "temperature": 0, "max_tokens": 8, **settings}
    return {
        "streams": [
            {
                "provider": "local",
                "settings": settings,
                "messages": [{"role": "user", "content": "{query}"}],
            }
        ]
    }


def sse_events(body: str) -> list[dict[str, str]]:
    events = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append(fields)
    return events


async def test_a_job_waiting_for_its_model_hears_so_in_the_full_dialect_only(
    start_worker: StartWorker, connect: ConnectClient, tiny_model: Path
) -> None:
    worker = await start_worker(local_models=f"tiny={tiny_model}")
    full = await connect(worker.ws_url)
    seed = await connect(worker.ws_url, seed=True)
    expected = reference(tiny_model, [{"role": "user", "content": "hi"}], 8)
    job_id = await full.add("loading", query="hi", assistant=local_template("tiny"))
    await seed.send({"type": "listen", "job_id": job_id})

    messages = await full.job_messages(job_id)
    types = [m["type"] for m in messages]
    assert types.count("notice") == 1, messages
    notice = messages[types.index("notice")]
    assert notice == {
        "type": "notice",
        "job_id": job_id,
        "message": "loading local model 'tiny': the answer starts once it is loaded",
        "seq": 2,  # after the start, before the text
    }
    first_text = next(i for i, m in enumerate(messages) if m["type"] == "running" and m["message"])
    assert types.index("notice") < first_text
    seqs = [m["seq"] for m in messages if "seq" in m]
    assert seqs == sorted(set(seqs))
    assert types[-1] == "done"
    assert text_of(messages) == expected

    # The seed dialect hears what it always heard: the start, the text, the end.
    heard = await seed.job_messages(job_id)
    assert {m["type"] for m in heard} == {"running", "done"}
    assert text_of(heard) == expected

    # A late listener gets the notice replayed; a resumed one from where it left off.
    late = await connect(worker.ws_url)
    await late.send({"type": "listen", "job_id": job_id})
    replayed = await late.job_messages(job_id)
    assert [m for m in replayed if m["type"] == "notice"] == [notice]
    assert text_of(replayed) == expected
    await late.send({"type": "listen", "job_id": job_id, "after": 1})
    resumed = await late.job_messages(job_id)
    assert resumed[0] == notice
    assert text_of(resumed) == expected
    await late.send({"type": "listen", "job_id": job_id, "after": 2})
    resumed = await late.job_messages(job_id)
    assert "notice" not in [m["type"] for m in resumed]
    assert resumed[0]["seq"] > 2
    assert text_of(resumed) == expected

    # The event stream over HTTP carries it too, with its seq as the event's id.
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        body = (await http.get(f"/v1/jobs/{job_id}/events")).text
    notices = [e for e in sse_events(body) if e["event"] == "notice"]
    assert [(e["id"], json.loads(e["data"])) for e in notices] == [("2", notice)]

    # Once the model is loaded, nobody waits, and nothing is said.
    _, again = await full.run(query="hi", assistant=local_template("tiny"))
    assert "notice" not in [m["type"] for m in again]
    assert text_of(again) == expected


async def test_the_python_client_yields_the_notice_before_the_text(
    start_worker: StartWorker, tiny_model: Path
) -> None:
    worker = await start_worker(local_models=f"tiny={tiny_model}")
    async with Client(worker.ws_url) as client:
        job = await client.submit("hi", local_template("tiny"))
        events = [event async for event in job]
    notices = [event for event in events if isinstance(event, NoticeEvent)]
    assert [(n.seq, n.message.startswith("loading local model")) for n in notices] == [(2, True)]
    first_text = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    assert events.index(notices[0]) < first_text


async def test_a_model_that_cannot_be_had_fails_the_job_in_seconds(
    start_worker: StartWorker, connect: ConnectClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # A hub that cannot be reached, whatever this machine's network.
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    worker = await start_worker(local_models="nobody=nobody/no-such-model")
    client = await connect(worker.ws_url)
    started = time.monotonic()
    _, messages = await client.run(query="hi", assistant=local_template("nobody"))
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert [m["type"] for m in messages if m["type"] != "pending"] == [
        "running",
        "notice",
        "failed",
    ]
    failed = messages[-1]["message"]
    assert "cannot load local model 'nobody'" in failed, failed
    assert "cannot be reached" in failed, failed


async def test_after_a_notice_a_model_that_cannot_be_had_falls_back(
    start_worker: StartWorker,
    connect: ConnectClient,
    upstream: OpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    upstream.handler = lambda body: Reply(tokens=["from", " the", " backup"])
    worker = await start_worker(local_models="nobody=nobody/no-such-model")
    client = await connect(worker.ws_url)
    assistant = local_template("nobody")
    assistant["streams"][0]["fallbacks"] = [{"provider": "openai", "settings": {"model": "m"}}]
    _, messages = await client.run(query="hi", assistant=assistant)
    assert [m["type"] for m in messages if m["type"] in ("notice", "done")] == ["notice", "done"]
    assert text_of(messages) == "from the backup"
    assert messages[-1]["providers"] == ["openai"]
