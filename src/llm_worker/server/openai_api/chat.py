"""``POST /v1/chat/completions``: OpenAI's Chat Completions API, each request a job.

The request is read into a job (:mod:`llm_worker.wire.openai.chat_request`) and
queued as any other (keys, tenants, limits, metrics); its log is rendered as the
reply (:mod:`llm_worker.wire.openai.chat_render`): the ``chat.completion`` once the
job ends, or, with ``stream: true``, its ``chat.completion.chunk`` objects as
Server-Sent Events ending with ``data: [DONE]``. Every reply says its job in
``x-llm-worker-job-id``: the job can be followed, read and cancelled through
``/v1/jobs`` like the others.

A client that goes away before the reply ends cancels the job (the model stops),
unless the request said ``x-llm-worker-keep-running: true``: then the job runs on,
its answer kept in the store for ``/v1/jobs/{id}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llm_worker.aio.streams import with_idle_ticks
from llm_worker.jobs.model import Event, EventKind, JobSpec
from llm_worker.jobs.templates import Assistant
from llm_worker.providers.base import Provider
from llm_worker.running.catalog import pinned_to
from llm_worker.server.access import Principal
from llm_worker.server.openai_api.bodies import read_json
from llm_worker.server.openai_api.errors import answered, openai_error, openai_error_body
from llm_worker.server.refusals import Refused
from llm_worker.server.sse import KEEPALIVE, ClientGone, JobStream, unless_gone
from llm_worker.store import StoreError
from llm_worker.wire.openai.assistants import assistant_job, refuse_settings, template_for
from llm_worker.wire.openai.chat_render import ChunkRenderer, completion, done_summary
from llm_worker.wire.openai.chat_request import ChatRequest, read_chat_request

if TYPE_CHECKING:
    from llm_worker.server.gateway import Gateway

log = logging.getLogger(__name__)

JOB_HEADER = "x-llm-worker-job-id"
KEEP_RUNNING_HEADER = "x-llm-worker-keep-running"


def routes(
    gateway: Gateway, default_provider: str, assistants: Mapping[str, Assistant]
) -> list[Route]:
    door = ChatCompletions(gateway, default_provider, assistants)
    return [Route("/v1/chat/completions", answered(door.create), methods=["POST"])]


class ChatCompletions:
    """The door: a request in, a job queued, its reply out."""

    def __init__(
        self, gateway: Gateway, default_provider: str, assistants: Mapping[str, Assistant]
    ) -> None:
        self.gateway = gateway
        self.default_provider = default_provider
        self.assistants = assistants

    async def create(self, request: Request) -> Response:
        principal = self.gateway.authenticate(request)
        body = await read_json(self.gateway, request)
        chat = read_chat_request(body, self.gateway.runner.providers, self.default_provider)
        created = int(time.time())
        record, _ = await self.gateway.add_job(principal, self._job_spec(chat, created))
        keep_running = request.headers.get(KEEP_RUNNING_HEADER, "").lower() == "true"
        job = _Job(self.gateway, principal, record.id, keep_running)
        renderer = ChunkRenderer(record.id, chat.model, created, chat.include_usage)
        if chat.stream:
            return ChatStream(job, renderer)
        return await _completion(job, request, chat.model, created)

    def _job_spec(self, chat: ChatRequest, created: int) -> JobSpec:
        """The job answering ``chat``: the template its ``assistant:NAME`` names, or one
        stream on the provider its model names."""
        template = template_for(chat.model, self.assistants)
        if template is not None:
            refuse_settings(chat.model, chat.settings)
            return assistant_job(template, chat.messages, chat.openai_request(created), "messages")
        providers = self.gateway.runner.providers
        if chat.provider in providers:
            chat = _fitted(chat, providers.get(chat.provider))
        return chat.job_spec(created)


def _fitted(chat: ChatRequest, provider: Provider) -> ChatRequest:
    """``chat`` as ``provider`` takes it: no model for one pinned to the model asked,
    ``max_completion_tokens`` sent as ``max_tokens`` to one that takes only that
    (Anthropic's)."""
    if pinned_to(provider, chat.upstream_model):
        chat = dataclasses.replace(chat, upstream_model="")
    properties = provider.settings_schema().get("properties") or {}
    settings = chat.settings
    if (
        "max_completion_tokens" in settings
        and "max_completion_tokens" not in properties
        and "max_tokens" in properties
    ):
        settings = dict(settings)
        settings["max_tokens"] = settings.pop("max_completion_tokens")
        return dataclasses.replace(chat, settings=settings)
    return chat


class _Job:
    """The job a request started, and what its client's going away does to it."""

    def __init__(self, gateway: Gateway, principal: Principal, job_id: str, keep: bool) -> None:
        self.gateway = gateway
        self.principal = principal
        self.id = job_id
        self.keep_running = keep

    @property
    def headers(self) -> dict[str, str]:
        return {JOB_HEADER: self.id}

    async def events(self) -> Any:
        """The job's log, batch by batch, from its start."""
        async for batch in self.gateway.store.follow(self.id, 0):
            yield batch

    async def client_gone(self) -> None:
        """The client left before its reply ended: the job is cancelled, unless it was
        asked to keep running."""
        if self.keep_running:
            log.info("client gone; job %s keeps running as asked", self.id)
            return
        with contextlib.suppress(Refused, StoreError):
            await self.gateway.cancel_job(self.principal, self.id)
            log.info("client gone; job %s cancelled", self.id)


async def _completion(job: _Job, request: Request, model: str, created: int) -> Response:
    """The ``chat.completion`` once the job ends (an error in OpenAI's shape if it did
    not end done), or the job cancelled if the client leaves first."""
    try:
        last = await unless_gone(_last_event(job), request.receive)
    except ClientGone:
        await job.client_gone()
        return Response(status_code=499, headers=job.headers)
    if last.kind is EventKind.DONE:
        body = completion(job.id, model, created, done_summary(last))
        return JSONResponse(body, headers=job.headers)
    if last.kind is EventKind.CANCELLED:
        return openai_error(
            409, f"job {job.id} was cancelled", code="job_cancelled", headers=job.headers
        )
    return openai_error(
        500, last.message or f"job {job.id} failed", code="job_failed", headers=job.headers
    )


async def _last_event(job: _Job) -> Event:
    async for batch in job.events():
        for event in batch:
            if event.kind.terminal:
                return event
    raise StoreError(f"the log of job {job.id} ended without its end")


class ChatStream(JobStream):
    """A job's reply as ``chat.completion.chunk`` Server-Sent Events, live."""

    def __init__(self, job: _Job, renderer: ChunkRenderer) -> None:
        super().__init__(job.gateway, job.principal, job.id, job.headers)
        self.job = job
        self.renderer = renderer

    async def client_gone(self) -> None:
        await self.job.client_gone()

    async def chunks(self) -> AsyncIterator[bytes]:
        renderer = self.renderer
        metrics, since = self.gateway.metrics, time.perf_counter()
        yield _data(renderer.start())
        sent_text = False
        keepalive = self.gateway.limits.sse_keepalive_seconds
        async for batch in with_idle_ticks(self.job.events(), keepalive):
            if batch is None:
                yield KEEPALIVE
                continue
            chunks = renderer.chunks(batch)
            if chunks:
                yield b"".join(_data(chunk) for chunk in chunks)
                if not sent_text:
                    sent_text = True
                    metrics.first_frame_sent(self.job_id, since, time.perf_counter())
            if renderer.finished:
                break
        if renderer.error is not None:
            message, code = renderer.error
            yield b"data: " + openai_error_body(500, message, None, code) + b"\n\n"
        else:
            yield b"data: [DONE]\n\n"


def _data(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"
