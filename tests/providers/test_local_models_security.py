"""Local models are the deployment's choice, not the client's (issue 21, row 2).

Attacked as a client would, over a real server: ``settings.model`` set to a file of the
server, a directory, a model directory the deployment did not configure, a hub id it
did not configure. Each is refused at ``add`` with the same words, which name only the
configured models; nothing is loaded and the hub is never asked (its endpoint is a
loopback socket that counts connections). A configured name runs; a providers-file entry
that pins a model cannot be pointed elsewhere; unconfigured, ``local`` is not offered.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_worker.config import Settings, parse_local_models
from llm_worker.providers import ProviderError
from llm_worker.providers.base import Provider
from llm_worker.providers.local import LocalModels, LocalProvider
from llm_worker.providers.openai_compatible import ClientPool
from llm_worker.running.catalog import (
    build_providers,
    load_providers_file,
    provider_readiness,
    real_providers,
)
from llm_worker.running.registry import Registry, RegistryError
from tests.conftest import ConnectClient, RunningWorker, StartWorker
from tests.support.wsclient import text_of

REFUSED = (
    "invalid assistant template: assistant.streams[0]: "
    "settings.model must name one of the models of provider 'local': tiny"
)


class Hub:
    """A loopback port standing for the model hub: it counts the connections made to it
    and closes each at once (a hub that cannot be had)."""

    def __init__(self) -> None:
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> Hub:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """The hub this process would download from, counting every attempt."""
    from huggingface_hub import constants

    with Hub() as counting:
        monkeypatch.setattr(constants, "ENDPOINT", counting.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield counting


def local_template(**settings: Any) -> dict[str, Any]:
    return {
        "streams": [
            {
                "provider": "local",
                "settings": {"temperature": 0, "max_tokens": 6, **settings},
                "messages": [{"role": "user", "content": "{query}"}],
            }
        ]
    }


def local_models_of(worker: RunningWorker) -> LocalModels:
    provider = worker.app.state.service.runner.providers.get("local")
    assert isinstance(provider, LocalProvider)
    return provider.models


@pytest.fixture
async def tiny_worker(start_worker: StartWorker, tiny_model: Path, hub: Hub) -> RunningWorker:
    """A deployment that offers one local model, by the name ``tiny``."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return await start_worker(local_models=f"tiny={tiny_model}")


ATTACKS = {
    "a file of the server": "/etc/passwd",
    "a directory of the server": "/etc",
    "a path out of a directory": "../../../../etc",
    "a hub id": "Qwen/Qwen2.5-0.5B-Instruct",
    "a hub id on its own": "gpt2",
}


@pytest.mark.parametrize("attack", [*ATTACKS, "a model directory not configured"])
async def test_a_model_not_configured_is_refused_at_add_and_nothing_is_loaded_or_asked(
    tiny_worker: RunningWorker,
    connect: ConnectClient,
    hub: Hub,
    plain_model: Path,
    attack: str,
) -> None:
    model = ATTACKS.get(attack) or str(plain_model)  # a real model, loadable, not offered
    client = await connect(tiny_worker.ws_url)
    await client.send(
        {"type": "add", "id": "a", "query": "hi", "assistant": local_template(model=model)}
    )
    # The same words whatever was sent: whether the path exists is not told.
    assert await client.recv() == {
        "type": "error",
        "code": "invalid_job",
        "message": REFUSED,
        "ref": "a",
    }
    async with httpx.AsyncClient(base_url=tiny_worker.http_url) as http:
        answer = await http.post(
            "/v1/jobs", json={"query": "hi", "assistant": local_template(model=model)}
        )
    assert answer.status_code == 400
    assert answer.json()["message"] == REFUSED
    models = local_models_of(tiny_worker)
    assert (models.loads, models.loaded()) == (0, 0)
    assert hub.connections == 0


async def test_a_configured_name_runs_its_model(
    tiny_worker: RunningWorker, connect: ConnectClient, hub: Hub, tiny_model: Path
) -> None:
    client = await connect(tiny_worker.ws_url)
    _, messages = await client.run(query="hi", assistant=local_template(model="tiny"))
    assert messages[-1]["type"] == "done", messages
    assert text_of(messages)
    notices = [m["message"] for m in messages if m["type"] == "notice"]
    assert notices == ["loading local model 'tiny': the answer starts once it is loaded"]
    models = local_models_of(tiny_worker)
    assert [key[0] for key in models._engines] == [str(tiny_model)]
    assert hub.connections == 0  # a directory is never looked for on the hub


async def test_the_provider_itself_loads_nothing_a_job_names(
    tiny_model: Path, plain_model: Path, hub: Hub
) -> None:
    """Behind the check at add (a job queued by a gateway configured otherwise): the
    provider runs only what its deployment configured."""
    models = LocalModels(max_models=1, max_batch=4)
    local = LocalProvider("local", models=models, choices={"tiny": str(tiny_model)})
    for model in [*ATTACKS.values(), str(plain_model), str(tiny_model)]:
        with pytest.raises(ProviderError) as raised:
            async for _ in local.stream([], {"model": model}):
                pass
        assert raised.value.message == (
            "settings.model must name one of the models of provider 'local': tiny"
        )
    assert (models.loads, hub.connections) == (0, 0)


async def test_a_providers_file_entry_that_pins_a_model_cannot_be_pointed_elsewhere(
    start_worker: StartWorker,
    connect: ConnectClient,
    hub: Hub,
    tiny_model: Path,
    plain_model: Path,
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(
        f'[providers.pinned]\ntype = "local"\nsettings = {{ model = "{tiny_model}", '
        "temperature = 0, max_tokens = 6 }\n"
    )
    worker = await start_worker(providers_file=providers_file)
    client = await connect(worker.ws_url)
    refused = (
        "invalid assistant template: assistant.streams[0]: provider 'pinned' runs the one "
        "model its deployment chose: settings.model cannot be set"
    )
    for model in [str(plain_model), str(tiny_model), "/etc/passwd", "gpt2"]:
        template = local_template(model=model)
        template["streams"][0]["provider"] = "pinned"
        await client.send({"type": "add", "id": "p", "query": "hi", "assistant": template})
        assert await client.recv() == {
            "type": "error",
            "code": "invalid_job",
            "message": refused,
            "ref": "p",
        }
    pinned = worker.app.state.service.runner.providers.get("pinned")
    assert isinstance(pinned, LocalProvider)
    assert pinned.models.loads == 0

    # Without a model, the job runs the pinned one, and its notice names the provider.
    template = local_template()
    template["streams"][0]["provider"] = "pinned"
    _, messages = await client.run(query="hi", assistant=template)
    assert messages[-1]["type"] == "done", messages
    notices = [m["message"] for m in messages if m["type"] == "notice"]
    assert notices == ["loading local model 'pinned': the answer starts once it is loaded"]
    assert [key[0] for key in pinned.models._engines] == [str(tiny_model)]
    assert hub.connections == 0


def test_a_providers_file_entry_of_a_local_model_must_pin_one(tmp_path: Path) -> None:
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text('[providers.open]\ntype = "local"\nsettings = { temperature = 0 }\n')
    with pytest.raises(RegistryError, match=r"a local model needs settings\.model"):
        load_providers_file(providers_file)


async def test_unconfigured_local_is_not_offered_even_with_torch_installed(
    start_worker: StartWorker, connect: ConnectClient, hub: Hub, tiny_model: Path
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    worker = await start_worker()
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        catalog = (await http.get("/v1/catalog")).json()
        document = (await http.get("/openapi.json")).text
    assert "local" not in catalog["providers"]
    assert '"local"' not in document
    client = await connect(worker.ws_url)
    for model in ["/etc/passwd", str(tiny_model), "gpt2"]:
        await client.send(
            {"type": "add", "id": "u", "query": "hi", "assistant": local_template(model=model)}
        )
        assert await client.recv() == {
            "type": "error",
            "code": "invalid_job",
            "message": "invalid assistant template: assistant.streams[0]: provider 'local' "
            "needs LOCAL_MODELS: the models it may run, as name=directory-or-hub-id",
            "ref": "u",
        }
    assert local_models_of(worker).loads == 0
    assert hub.connections == 0

    configured = await start_worker(local_models=f"tiny={tiny_model}")
    async with httpx.AsyncClient(base_url=configured.http_url) as http:
        assert "local" in (await http.get("/v1/catalog")).json()["providers"]


async def test_a_configured_model_that_cannot_be_loaded_fails_naming_no_file(
    start_worker: StartWorker,
    connect: ConnectClient,
    hub: Hub,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    sources = {"gone": tmp_path / "no-such-dir", "broken": tmp_path / "broken"}
    worker = await start_worker(
        local_models=",".join(f"{name}={source}" for name, source in sources.items()),
        local_max_models=2,
    )
    client = await connect(worker.ws_url)
    for name, source in sources.items():
        _, messages = await client.run(query="hi", assistant=local_template(model=name))
        assert messages[-1] == {
            "type": "failed",
            "job_id": messages[-1]["job_id"],
            "message": f"cannot load local model {name!r}: its files cannot be loaded "
            "(the worker's log says why)",
            "seq": messages[-1]["seq"],
        }
        assert str(tmp_path) not in str(messages)
        assert any(str(source) in r.getMessage() for r in caplog.records)
    # A missing directory is not taken for a hub id: no download is tried.
    assert hub.connections == 0


async def test_a_configured_hub_id_is_the_only_way_to_the_hub(
    start_worker: StartWorker, connect: ConnectClient, hub: Hub
) -> None:
    """The counting hub sees the one question a configured hub id asks: the checks above
    that it saw none are worth something."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    worker = await start_worker(local_models="nobody=nobody/no-such-model")
    client = await connect(worker.ws_url)
    _, messages = await client.run(query="hi", assistant=local_template(model="nobody"))
    assert messages[-1]["type"] == "failed"
    assert (
        "cannot load local model 'nobody': it is not in the hub's cache, and the hub"
        in (messages[-1]["message"])
    )
    assert hub.connections >= 1


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("/etc/passwd", "'/etc/passwd' is not name=directory-or-hub-id"),
        ("Qwen/Qwen2.5=Qwen/Qwen2.5-0.5B-Instruct", "'Qwen/Qwen2.5' is not a model name"),
        ("tiny=", "'tiny=' is not name=directory-or-hub-id"),
        ("a=/m/a,a=/m/b", "model name 'a' is given twice"),
    ],
)
def test_local_models_that_cannot_work_stop_the_start(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        Settings(_env_file=None, local_models=value)  # type: ignore[call-arg]


def test_local_is_a_real_provider_only_where_configured() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pool = ClientPool(timeout=1, connect_timeout=1, max_connections=1)

    def build(**values: str) -> Registry[Provider]:
        return build_providers(Settings(_env_file=None, **values), pool)  # type: ignore[call-arg]

    unconfigured = build()
    assert real_providers(unconfigured) == []
    not_ready = "provider 'local': not ready: needs LOCAL_MODELS: the models it may run, as "
    assert (False, not_ready + "name=directory-or-hub-id") in provider_readiness(unconfigured)
    configured = build(local_models="tiny=/models/tiny")
    assert real_providers(configured) == ["local"]
    assert (True, "provider 'local': ready") in provider_readiness(configured)


def test_local_models_are_names_for_sources() -> None:
    assert parse_local_models(" qwen=Qwen/Qwen2.5-0.5B-Instruct, tiny = /models/tiny ,") == {
        "qwen": "Qwen/Qwen2.5-0.5B-Instruct",
        "tiny": "/models/tiny",
    }
    assert parse_local_models("") == {}
