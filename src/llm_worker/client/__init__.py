"""The client: submit jobs to a worker, follow them, and ride out dropped connections.

:mod:`llm_worker.client.library` is the library (:class:`Client`, :class:`SyncClient`
and the events they yield); :mod:`llm_worker.client.commands` the command line's
``submit``, ``listen``, ``status`` and ``cancel``. It needs nothing of the server.
"""

from llm_worker.client.library import (
    Cancelled,
    Client,
    ClientError,
    ConnectionLost,
    Done,
    Event,
    EventFilter,
    Failed,
    Job,
    JobCancelled,
    JobFailed,
    JobNotFound,
    Notice,
    Pending,
    RequestRefused,
    Reset,
    Started,
    Status,
    SyncClient,
    SyncJob,
    TextDelta,
    decode_event,
    websocket_url,
)

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
    "JobFailed",
    "JobNotFound",
    "Notice",
    "Pending",
    "RequestRefused",
    "Reset",
    "Started",
    "Status",
    "SyncClient",
    "SyncJob",
    "TextDelta",
    "decode_event",
    "websocket_url",
]
