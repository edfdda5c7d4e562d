"""Every HTTP error the server answers is JSON, ``{"type": "error", "code", "message"}``,
whichever layer refuses: the routes, the router, the origin check, the WebSocket
upgrade, the connection limits below the app. Over real connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
import websockets

from llm_worker.wire import errors
from tests.conftest import StartWorker
from tests.support.wsclient import WSClient

FOREIGN = "https://elsewhere.example"


def assert_error(status: int, content_type: str, body: bytes | str, code: str) -> dict[str, Any]:
    assert content_type.startswith("application/json"), content_type
    error = json.loads(body)
    assert error["type"] == "error" and error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert errors.CODES[code] == status
    return error


def check(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return assert_error(status, response.headers["content-type"], response.content, code)


def test_every_code_has_a_status_and_a_stable_snake_case_name() -> None:
    assert all(name.isidentifier() and name.islower() for name in errors.CODES)
    assert all(400 <= status < 600 for status in errors.CODES.values())
    body = json.loads(errors.error_body(errors.JOB_NOT_FOUND, "unknown job_id 'x'"))
    assert body == {"type": "error", "code": "job_not_found", "message": "unknown job_id 'x'"}
    with pytest.raises(AssertionError):
        errors.error_body("no_such_code", "x")


async def test_a_foreign_origin_is_a_json_403_over_http_and_the_websocket_upgrade(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        for method, path in [
            ("GET", "/v1/jobs/x"),
            ("GET", "/v1/jobs/x/events"),
            ("POST", "/v1/jobs"),
            ("POST", "/v1/jobs/x/cancel"),
            ("GET", "/v1/catalog"),
            ("GET", "/healthz"),
        ]:
            refused = await http.request(method, path, headers={"origin": FOREIGN})
            error = check(refused, 403, errors.ORIGIN_NOT_ALLOWED)
            assert FOREIGN in error["message"]
        # A request no route serves does nothing, whoever asks: the router answers it.
        check(await http.put("/v1/jobs", headers={"origin": FOREIGN}), 405, "method_not_allowed")
    with pytest.raises(websockets.InvalidStatus) as denied:
        await websockets.connect(worker.ws_url, origin=FOREIGN)
    response = denied.value.response
    assert_error(
        response.status_code,
        response.headers["content-type"],
        response.body,
        errors.ORIGIN_NOT_ALLOWED,
    )


async def test_the_websocket_upgrade_s_other_denials_are_json(start_worker: StartWorker) -> None:
    worker = await start_worker(api_keys="a-key")
    with pytest.raises(websockets.InvalidStatus) as unauthorized:
        await websockets.connect(worker.ws_url)
    response = unauthorized.value.response
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(401, response.headers["content-type"], response.body, errors.UNAUTHORIZED)
    with pytest.raises(websockets.InvalidStatus) as unknown:
        await websockets.connect(
            worker.ws_url + "?protocol=nope", additional_headers={"authorization": "Bearer a-key"}
        )
    response = unknown.value.response
    assert_error(400, response.headers["content-type"], response.body, errors.UNKNOWN_PROTOCOL)


async def test_unknown_routes_and_methods_are_json_and_405_lists_every_method(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        error = check(await http.get("/v1/nothing-here"), 404, errors.NOT_FOUND)
        assert "/v1/nothing-here" in error["message"]
        for path, methods in [
            ("/v1/jobs", {"GET", "HEAD", "POST"}),
            ("/v1/jobs/x", {"GET", "HEAD"}),
            ("/v1/jobs/x/cancel", {"POST"}),
        ]:
            for method in ("DELETE", "PUT", "PATCH", "OPTIONS"):
                refused = await http.request(method, path)
                check(refused, 405, errors.METHOD_NOT_ALLOWED)
                allowed = {m.strip() for m in refused.headers["allow"].split(",")}
                assert allowed == methods, (path, allowed)
        # HEAD is served wherever GET is: headers, no body.
        head = await http.head("/v1/catalog")
        assert head.status_code == 200 and head.content == b""
        assert (await http.get("/v1/jobs")).status_code == 200  # GET and POST share a path


async def test_the_cors_preflight_offers_only_the_methods_routes_serve(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker(allowed_origins="https://chat.example.com")
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        headers = {"origin": "https://chat.example.com", "access-control-request-method": "POST"}
        preflight = await http.options("/v1/jobs", headers=headers)
        assert preflight.status_code == 200
        offered = {m.strip() for m in preflight.headers["access-control-allow-methods"].split(",")}
        assert "DELETE" not in offered and {"GET", "POST"} <= offered
        asks_delete = {**headers, "access-control-request-method": "DELETE"}
        assert (await http.options("/v1/jobs", headers=asks_delete)).status_code == 400


async def test_the_connection_cap_is_a_json_503_with_retry_after(start_worker: StartWorker) -> None:
    worker = await start_worker(max_connections=2)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(WSClient(worker.ws_url))
        reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
        writer.write(b"GET /v1/catalog HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["retry-after"] == "1"
    assert int(headers["content-length"]) == len(body)
    assert_error(503, headers["content-type"], body, errors.TOO_MANY_CONNECTIONS)


async def test_a_request_too_slow_to_arrive_is_a_json_408(start_worker: StartWorker) -> None:
    worker = await start_worker(handshake_timeout_seconds=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(b"GET /v1/catalog HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 408 Request Timeout"
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert_error(408, headers["content-type"], body, errors.REQUEST_TIMEOUT)


async def test_an_unhealthy_healthz_is_a_json_error_with_its_status(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    worker.app.state.gateway.draining = True
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:
        error = check(await http.get("/healthz"), 503, errors.SHUTTING_DOWN)
        assert error["status"] == "shutting down"
        job = {"query": "q", "assistant": {"streams": [{"pipeline": "echo"}]}}
        check(await http.post("/v1/jobs", json=job), 503, errors.SHUTTING_DOWN)
