"""OpenAI's Responses API on the worker's port, each response a job:

    POST   /v1/responses                      create (``stream``, ``background``)
    GET    /v1/responses/{id}                 the Response as it stands; with
                                              ``stream=true&starting_after=N`` its events after N
    POST   /v1/responses/{id}/cancel          cancel the job (a cancelled one: returned as it is)
    DELETE /v1/responses/{id}                 cancelled if it runs, then forgotten by the store
    GET    /v1/responses/{id}/input_items     its input, as items

A response's id is ``resp_`` and its job's id. Its events come from the job's log
(:mod:`llm_worker.wire.openai.responses_events`), numbered by the log alone, which is
what lets a stream resume at any ``sequence_number`` while the job is kept.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llm_worker.aio.streams import with_idle_ticks
from llm_worker.jobs.model import JobRecord, JobSpec, JobState
from llm_worker.jobs.templates import Assistant
from llm_worker.running.catalog import pinned_to
from llm_worker.server.access import Principal
from llm_worker.server.openai_api.bodies import read_json
from llm_worker.server.openai_api.errors import answered
from llm_worker.server.refusals import Refused
from llm_worker.server.sse import KEEPALIVE, ClientGone, JobStream, unless_gone
from llm_worker.store import JobStore, StoreError, UnknownJob
from llm_worker.wire.openai import InvalidParam
from llm_worker.wire.openai import responses as requests
from llm_worker.wire.openai.assistants import assistant_job, refuse_settings, template_for
from llm_worker.wire.openai.chat_request import resolve_model
from llm_worker.wire.openai.response_request import ResponseRequest
from llm_worker.wire.openai.responses_events import ResponseLog

if TYPE_CHECKING:
    from llm_worker.server.gateway import Gateway

PREFIX = "resp_"
# Request fields a Response echoes back.
_ECHOED = ("instructions", "metadata", "temperature", "top_p", "max_output_tokens", "tools")
_ECHOED_MORE = ("tool_choice", "parallel_tool_calls", "previous_response_id", "reasoning", "text")
# What an assistant template's own streams fix (previous_response_id only adds history).
ASSISTANT_REFUSED = requests.PASSED_ON - {"previous_response_id"}


class ResponsesAPI:
    """The ``/v1/responses`` routes."""

    def __init__(
        self,
        gateway: Gateway,
        default_provider: str = "openai",
        assistants: Mapping[str, Assistant] | None = None,
    ) -> None:
        self.gateway = gateway
        self.default_provider = default_provider
        self.assistants = assistants or {}

    def routes(self) -> list[Route]:
        return [
            Route("/v1/responses", answered(self.create), methods=["POST"]),
            Route("/v1/responses/{id}", answered(self.one), methods=["GET", "DELETE"]),
            Route("/v1/responses/{id}/cancel", answered(self.cancel), methods=["POST"]),
            Route("/v1/responses/{id}/input_items", answered(self.input_items), methods=["GET"]),
        ]

    # -- create -------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        principal = self.gateway.authenticate(request)
        body = requests.check_fields(await read_json(self.gateway, request))
        items = requests.input_items(body["input"])
        earlier = await self._earlier(principal, body.get("previous_response_id"))
        history = earlier + requests.history(body.get("instructions"), items)
        base = _base(body, time.time())
        kept = ResponseRequest(base, bool(body.get("background")), items, history)
        record, _ = await self.gateway.add_job(principal, self._job_spec(body, kept))
        background = kept.background
        if body.get("stream"):
            log = _new_log(record.id, kept)
            return ResponseStream(self.gateway, principal, record.id, log, -1, not background)
        log = ResponseLog(PREFIX + record.id, base, background)
        if background:
            log.status = "queued"
            return JSONResponse(log.response())
        try:
            await unless_gone(self._read_to_end(record.id, log), request.receive)
        except ClientGone:  # as a stream left: its job is cancelled, its model stopped
            with contextlib.suppress(Refused, StoreError):
                await self.gateway.cancel_job(principal, record.id)
            return Response(status_code=499)
        return JSONResponse(log.response())

    def _job_spec(self, body: dict[str, Any], kept: ResponseRequest) -> JobSpec:
        """The job answering ``body``: the template its ``assistant:NAME`` names, or one
        stream on the provider its model names."""
        store = kept.base["store"]
        template = template_for(body["model"], self.assistants)
        if template is not None:
            refuse_settings(body["model"], [n for n in body if n in ASSISTANT_REFUSED])
            return assistant_job(template, kept.history, kept.request(), "input", store)
        providers = self.gateway.runner.providers
        provider, model = resolve_model(body["model"], providers, self.default_provider)
        pinned = provider in providers and pinned_to(providers.get(provider), model)
        settings = {**({} if pinned else {"model": model}), **requests.settings(body)}
        stream = {"provider": provider, "settings": settings, "messages": [{"insert": "history"}]}
        return JobSpec.model_validate(
            {
                "assistant": {"streams": [stream], "openai_request": kept.request()},
                "query": "",
                "history": kept.history,
                "keep_request": store,
            }
        )

    async def _earlier(self, principal: Principal, previous: Any) -> list[dict[str, Any]]:
        """The conversation a ``previous_response_id`` continues: that response's
        history and its output message."""
        if previous is None:
            return []
        if not isinstance(previous, str):
            raise InvalidParam(
                "previous_response_id must be a response's id", "previous_response_id"
            )
        job_id = await self._job_id(principal, previous)
        kept = await self._kept(job_id)
        log = await self._log_of(job_id, kept)
        if kept is None or log.message is None:
            raise InvalidParam(
                f"response {previous!r} has no stored conversation to continue (not finished, "
                "or created with store false)",
                "previous_response_id",
            )
        return [*kept.history, _without_reasoning(log.message)]

    # -- read ---------------------------------------------------------------------

    async def one(self, request: Request) -> Response:
        principal = self.gateway.authenticate(request)
        job_id = await self._job_id(principal, request.path_params["id"])
        if request.method == "DELETE":
            return await self._delete(principal, job_id)
        query = request.query_params
        stream = _choice(query, "stream", ("false", "true", "0", "1")) in ("true", "1")
        after = -1  # before the first event: all of them
        if query.get("starting_after", "-1") != "-1":
            after = _whole(query, "starting_after", 0, 10**18)
        kept = await self._kept(job_id)
        if stream:
            return ResponseStream(self.gateway, principal, job_id, _new_log(job_id, kept), after)
        log = await self._log_of(job_id, kept)
        if not log.ended:
            record = await self.gateway.visible(principal, job_id)
            log.status = "queued" if record.state is JobState.PENDING else "in_progress"
        return JSONResponse(log.response())

    async def input_items(self, request: Request) -> Response:
        principal = self.gateway.authenticate(request)
        job_id = await self._job_id(principal, request.path_params["id"])
        query = request.query_params
        order = _choice(query, "order", ("desc", "asc"))
        limit = _whole(query, "limit", 1, 100) if "limit" in query else 20
        kept = await self._kept(job_id)
        if kept is None:  # as OpenAI answers for a response it did not store
            raise InvalidParam(
                f"the input of {PREFIX}{job_id} is not kept (made with store false)",
                code="not_found",
                status=404,
            )
        items = [
            requests.listed_item(item, f"in_{job_id}_{n}") for n, item in enumerate(kept.items)
        ]
        return JSONResponse(requests.items_page(items, order, query.get("after"), limit))

    # -- cancel and delete -------------------------------------------------------

    async def cancel(self, request: Request) -> Response:
        principal = self.gateway.authenticate(request)
        job_id = await self._job_id(principal, request.path_params["id"])
        record = await self.gateway.cancel_job(principal, job_id)
        log = await self._log_of(job_id, await self._kept(job_id))
        if record.state is JobState.CANCELLED:
            log.status = "cancelled"
        return JSONResponse(log.response())

    async def _delete(self, principal: Principal, job_id: str) -> Response:
        """Cancel the job (a no-op once it ended; refused to a listen-only key): the store
        has written its end when that returns. Then the store forgets it, for every
        gateway on it and after a restart. A job whose end cannot be shown yet: 409."""
        await self.gateway.cancel_job(principal, job_id)
        if not await self.gateway.store.forget(job_id):
            await self.gateway.visible(principal, job_id)  # deleted meanwhile: a 404
            raise InvalidParam(
                f"{PREFIX}{job_id} has not ended yet; try again", code="conflict", status=409
            )
        return JSONResponse({"id": PREFIX + job_id, "object": "response", "deleted": True})

    # -- the log --------------------------------------------------------------------

    async def _job_id(self, principal: Principal, response_id: str) -> str:
        """The job of ``response_id``, if ``principal`` may see it (a deleted one is gone)."""
        job_id = response_id.removeprefix(PREFIX)
        if not response_id.startswith(PREFIX):
            raise UnknownJob(response_id)
        record: JobRecord = await self.gateway.visible(principal, job_id)
        return record.id

    async def _kept(self, job_id: str) -> ResponseRequest | None:
        """What the store keeps of the response's request (``None``: created with
        ``store`` false, or not through this door)."""
        spec = await self.gateway.store.request(job_id)
        return None if spec is None else ResponseRequest.of(spec)

    async def _log_of(self, job_id: str, kept: ResponseRequest | None) -> ResponseLog:
        """The job's Response as its log so far makes it."""
        log = _new_log(job_id, kept)
        log.opening()
        for event in await self.gateway.store.read(job_id):
            log.feed(event)
        return log

    async def _read_to_end(self, job_id: str, log: ResponseLog) -> None:
        async for _ in _events(self.gateway.store, job_id, log):
            pass


class ResponseStream(JobStream):
    """A response's events after ``after`` as Server-Sent Events, live."""

    def __init__(
        self,
        gateway: Gateway,
        principal: Principal,
        job_id: str,
        log: ResponseLog,
        after: int,
        cancel_when_gone: bool = False,
    ) -> None:
        super().__init__(gateway, principal, job_id)
        self.log = log
        self.after = after
        self.cancel_when_gone = cancel_when_gone

    async def chunks(self) -> AsyncIterator[bytes]:
        after, log = self.after, self.log
        events = _events(self.gateway.store, self.job_id, log)
        idle = self.gateway.limits.sse_keepalive_seconds
        async for event in with_idle_ticks(events, idle):
            if event is None:
                yield KEEPALIVE
            elif event["sequence_number"] > after:
                yield _sse(event)

    async def client_gone(self) -> None:
        """A client that started the response and left before its end cancels it (its
        model stops); one that came back to read it does not."""
        if self.cancel_when_gone and not self.log.ended:
            with contextlib.suppress(Refused, StoreError):
                await self.gateway.cancel_job(self.principal, self.job_id)


async def _events(store: JobStore, job_id: str, log: ResponseLog) -> AsyncIterator[dict[str, Any]]:
    """The response's events from the first, until its end."""
    for event in log.opening():
        yield event
    async for batch in store.follow(job_id, 0):
        for entry in batch:
            for event in log.feed(entry):
                yield event
        if log.ended:
            return


def _new_log(job_id: str, kept: ResponseRequest | None) -> ResponseLog:
    if kept is None:
        return ResponseLog(PREFIX + job_id, {"model": "", "created_at": 0}, False)
    return ResponseLog(PREFIX + job_id, kept.base, kept.background)


def _base(body: dict[str, Any], created_at: float) -> dict[str, Any]:
    base: dict[str, Any] = {"created_at": int(created_at), "model": body["model"]}
    for name in (*_ECHOED, *_ECHOED_MORE):
        base[name] = body.get(name)
    base["tools"] = [{"strict": None, **tool} for tool in base["tools"] or ()]
    base["tool_choice"] = base["tool_choice"] or "auto"
    base["parallel_tool_calls"] = base["parallel_tool_calls"] is not False
    base["metadata"] = base["metadata"] or {}
    base["text"] = base["text"] or {"format": {"type": "text"}}
    base["background"] = bool(body.get("background"))
    base["store"] = body.get("store") is not False
    return base


def _without_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    """A finished message as the next turn sends it back (its reasoning is the model's)."""
    return {k: v for k, v in message.items() if k not in ("reasoning", "reasoning_details")}


def _choice(query: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """Query parameter ``name``: one of ``choices`` (the first when not given)."""
    value = query.get(name, choices[0])
    if value not in choices:
        raise InvalidParam(f"{name} must be one of {', '.join(choices)}, not {value[:40]!r}", name)
    return value


def _whole(query: Mapping[str, str], name: str, low: int, high: int) -> int:
    """Query parameter ``name``: a whole number from ``low`` to ``high``."""
    value = query[name]
    if not (value.isascii() and value.isdigit() and low <= int(value[:20]) <= high):
        raise InvalidParam(f"{name} must be a whole number from {low} to {high}", name)
    return int(value)


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
