"""A Python client of the worker: submit jobs, follow them, and ride out dropped connections.

::

    from llm_worker.client import Client, TextDelta

    assistant = {"streams": [{"provider": "openai", "settings": {"model": "gpt-4o-mini"},
                              "messages": [{"role": "user", "content": "{query}"}]}]}

    async with Client("ws://127.0.0.1:8001/ws/", api_key="lw-...") as client:
        job = await client.submit("How tall is the Eiffel tower?", assistant)
        async for event in job:
            if isinstance(event, TextDelta):
                print(event.text, end="", flush=True)

    # In a script or a notebook, without async:
    with SyncClient("http://127.0.0.1:8001") as client:
        print(client.submit("Bonjour ?", assistant).text())

It speaks the full protocol (docs/protocol.md) over one WebSocket that carries
every job of the client: ``llm-worker.v3`` where the service does, whose typed
events (:class:`Reasoning`, :class:`ToolCallDelta`, :class:`Refusal`) come beside
the text and whose :class:`Done` carries the finished assistant message; else
``llm-worker.v2``, text only. A job puts its events together into that message as
they are read (:attr:`Job.message`, :attr:`Job.tool_calls`, ``await job.result()``),
ready to append to the history of the next turn. When the connection drops, the
client reconnects on its own and resumes each job it follows with ``listen``
and ``after`` = the last ``seq`` it got, so a consumer sees every event once,
in order, whatever happened to the connection. What it cannot make safe it
reports instead: an ``add`` or a ``cancel`` in flight when the connection
drops raises :class:`ConnectionLost` (sending it again could run the job
twice), and a job that runs again after its worker died yields :class:`Reset`.
What it holds for a job is bounded (``max_buffered_events``), however fast the
job and slow its consumer, and the consumer still sees every event once.

Its parts, as python-websockets cuts its own: :mod:`~llm_worker.client.session`
holds every rule of the protocol with no socket (frames in, frames out, testable
without a network), and :mod:`~llm_worker.client.results` what a job's events
come to; :mod:`~llm_worker.client.asyncio` (:class:`Client`) and
:mod:`~llm_worker.client.sync` (:class:`SyncClient`) are I/O shells around it;
:mod:`~llm_worker.client.events` and :mod:`~llm_worker.client.errors` hold what
they yield and raise; :mod:`~llm_worker.client.commands` is the command line's
``submit``, ``listen``, ``status`` and ``cancel``. It needs nothing of the server.
"""

from llm_worker.client.asyncio import Client, Job, websocket_url
from llm_worker.client.errors import (
    ClientError,
    ConnectionLost,
    JobCancelled,
    JobExpired,
    JobFailed,
    JobNotFound,
    RequestRefused,
)
from llm_worker.client.events import (
    Cancelled,
    Done,
    Event,
    EventFilter,
    Failed,
    Notice,
    Pending,
    Reasoning,
    Refusal,
    Reset,
    Started,
    Status,
    TextDelta,
    ToolCallDelta,
    decode_event,
)
from llm_worker.client.results import Result
from llm_worker.client.session import Session
from llm_worker.client.sync import SyncClient, SyncJob

__all__ = [
    "Cancelled",
    "Client",
    "ClientError",
    "ConnectionLost",
    "Done",
    "Event",
    "EventFilter",
    "Failed",
    "Job",
    "JobCancelled",
    "JobExpired",
    "JobFailed",
    "JobNotFound",
    "Notice",
    "Pending",
    "Reasoning",
    "Refusal",
    "RequestRefused",
    "Reset",
    "Result",
    "Session",
    "Started",
    "Status",
    "SyncClient",
    "SyncJob",
    "TextDelta",
    "ToolCallDelta",
    "decode_event",
    "websocket_url",
]
