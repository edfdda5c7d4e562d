"""Logging as ``LOG_LEVEL``, ``LOG_FORMAT``, ``LOG_JSON``, ``LOG_FILE`` and ``LOG_STDOUT`` say.

A line about a job carries its ``job_id`` and ``tenant`` as fields (in JSON) when
it is logged inside the job's work (a worker's job task, a listener's follower:
:func:`set_job`) or names them itself (``extra=about(job_id, tenant)``).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from llm_worker.config import Settings

_JOB: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "llm_worker_job", default=None
)


def about(job_id: str, tenant: str | None = None) -> dict[str, Any]:
    """``extra=`` for a log call about a job, outside the job's own work."""
    return {"job_id": job_id, "tenant": tenant}


def set_job(job_id: str, tenant: str) -> None:
    """Lines logged from here on in this task (and those it starts) are about the job."""
    _JOB.set((job_id, tenant))


# Keys given in a URL (``?access_token=...``), which uvicorn logs with each request.
_ACCESS_TOKEN = re.compile(r"(access_token=)[^&\s\"']+")


class RedactingFormatter(logging.Formatter):
    """Formats as asked, with keys passed in URLs replaced."""

    def format(self, record: logging.LogRecord) -> str:
        return _ACCESS_TOKEN.sub(r"\1[redacted]", super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``job_id`` and ``tenant`` on lines about a job, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _ACCESS_TOKEN.sub(r"\1[redacted]", record.getMessage()),
        }
        job_id = getattr(record, "job_id", None)
        tenant = getattr(record, "tenant", None)
        if job_id is None and (job := _JOB.get()) is not None:
            job_id, tenant = job
        if job_id is not None:
            entry["job_id"] = job_id
            if tenant is not None:
                entry["tenant"] = tenant
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(settings: Settings) -> None:
    handlers: list[logging.Handler] = []
    if settings.log_stdout:
        handlers.append(logging.StreamHandler(sys.stdout))
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(settings.log_file, encoding="utf-8"))
    if not handlers:
        handlers.append(logging.NullHandler())
    formatter: logging.Formatter = (
        JsonFormatter() if settings.log_json else RedactingFormatter(settings.log_format)
    )
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=settings.log_level, handlers=handlers, force=True)
    # uvicorn's loggers propagate to ours instead of keeping handlers of their own.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # The HTTP client logs a line per provider request at INFO; the worker's own
    # job lines say more. Keep them for DEBUG.
    if settings.log_level != "DEBUG":
        for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
            logging.getLogger(name).setLevel(logging.WARNING)
