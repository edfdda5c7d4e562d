"""The browser client's modules, at ``/client/{name}.js``: what ``/client.js``
imports, fetched as a browser resolves them. Each file of ``static/client/`` is
served as it is, public and with the headers of ``/client.js``; nothing else is,
whatever the name (``..``, an unknown module, a file of ``static/`` outside the
folder), over a real connection that sends the path as written."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from llm_worker.server.app import CLIENT_JS, STATIC
from llm_worker.wire import errors
from tests.conftest import RunningWorker, StartWorker
from tests.support.client_js import download_client, relative_imports

MODULES = sorted((STATIC / "client").glob("*.js"))
KEY = "key-of-a-tenant-0123456789"


@pytest.fixture
async def keyed_worker(start_worker: StartWorker) -> RunningWorker:
    # With keys on: the client and its modules are public all the same.
    return await start_worker(api_keys=KEY)


def test_the_client_is_split_into_modules_it_imports() -> None:
    assert len(MODULES) >= 5, MODULES
    assert all(len(path.read_text().splitlines()) <= 500 for path in [CLIENT_JS, *MODULES])
    assert relative_imports(CLIENT_JS.read_text()), "client.js imports its modules"


async def test_a_page_gets_the_client_and_every_module_it_imports(
    keyed_worker: RunningWorker, tmp_path: Path
) -> None:
    fetched = await asyncio.to_thread(download_client, keyed_worker.http_url, tmp_path)
    # Every module of the folder is imported by some module, and each comes as it is.
    expected = {"client.js", *(f"client/{path.name}" for path in MODULES)}
    assert set(fetched) == expected
    assert all(fetched[name] == (STATIC / name).read_bytes() for name in fetched)


async def test_each_module_has_the_headers_of_client_js(keyed_worker: RunningWorker) -> None:
    async with httpx.AsyncClient(base_url=keyed_worker.http_url) as http:
        entry = await http.get("/client.js")
        assert entry.status_code == 200
        assert entry.headers["content-type"] == "text/javascript; charset=utf-8"
        for path in MODULES:
            module = await http.get(f"/client/{path.name}")
            assert module.status_code == 200, path.name
            assert module.headers["content-type"] == entry.headers["content-type"]
            # Cacheable as the entry point is: its validators, no header of its own.
            assert {"etag", "last-modified"} <= set(module.headers)
            assert set(module.headers) == set(entry.headers)
            assert int(module.headers["content-length"]) == path.stat().st_size


async def raw_get(worker: RunningWorker, target: str) -> tuple[int, bytes]:
    """``GET target`` sent as written (no client normalizes its dots); status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{worker.port}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "/client/nope.js",  # no such module
        "/client/...js",  # the name ".."
        "/client/%2E%2E.js",  # the same, encoded
        "/client/console.js",  # a file of static/, not of static/client/
        "/client/../console.js",
        "/client/..%2Fconsole.js",
        "/client/..%2F..%2Fapp.js",
        "/client/%2E%2E%2F%2E%2E%2Fapp.js",
        "/client/../../app.py",
        "/client/sub/errors.js",
        "/client/errors.py",
        "/client/.js",
    ],
)
async def test_nothing_else_is_served(worker: RunningWorker, target: str) -> None:
    status, body = await raw_get(worker, target)
    assert status == 404, (target, body[:200])
    assert json.loads(body)["code"] == errors.NOT_FOUND


async def test_the_modules_route_serves_what_exists(worker: RunningWorker) -> None:
    """The refusals above are the route's, not a route that serves nothing."""
    status, body = await raw_get(worker, "/client/errors.js")
    assert status == 200
    assert body == (STATIC / "client" / "errors.js").read_bytes()
