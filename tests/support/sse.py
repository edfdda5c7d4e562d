"""A job's event stream read as a browser reads it (``httpx``, line by line)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


async def events(
    http: httpx.AsyncClient, job_id: str, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[dict[str, Any]]:
    """The stream's events as ``{"id", "event", "data"}`` (``data`` parsed), ``params``
    its query (``after``, ``events``)."""
    async with http.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers=headers, params=params
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if not line:
                if "data" in fields:
                    fields["data"] = json.loads(fields["data"])
                    yield fields
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value


async def all_events(http: httpx.AsyncClient, job_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [event async for event in events(http, job_id, **kwargs)]
