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
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from llm_worker.ops.redaction import redact_query_names

_JOB: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "llm_worker_job", default=None
)


def about(job_id: str, tenant: str | None = None) -> dict[str, Any]:
    """``extra=`` for a log call about a job, outside the job's own work."""
    return {"job_id": job_id, "tenant": tenant}


def set_job(job_id: str, tenant: str) -> None:
    """Lines logged from here on in this task (and those it starts) are about the job."""
    _JOB.set((job_id, tenant))


# What could end a line or drive a terminal: C0 controls but the tab, DEL, C1 controls,
# and the line and paragraph separators some viewers break lines at.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r"}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``),
    so that what a client chose (a model name quoted back by a provider) can neither
    start a line of its own nor reach a terminal as a command."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _ESCAPES:
        return _ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) <= 0xFF else f"\\u{ord(char):04x}"


class RedactingFormatter(logging.Formatter):
    """Formats as asked, one line per record but for a traceback's own lines: control
    characters escaped (in exception messages too), the credentials of URLs replaced
    (:func:`~llm_worker.ops.redaction.redact_query_names`)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return redact_query_names(escape_controls(super().formatMessage(record)))

    def formatException(self, ei: Any) -> str:
        # The messages escaped, the lines of the traceback kept.
        report = traceback.TracebackException(*ei)
        for part in _chain(report):
            # _str is the message format() prints (no public way to change it).
            part._str = escape_controls(part._str)  # type: ignore[attr-defined]
            notes = getattr(part, "__notes__", None)
            if notes:
                part.__notes__ = [escape_controls(str(note)) for note in notes]
        return redact_query_names("".join(report.format()).removesuffix("\n"))


def _chain(report: traceback.TracebackException) -> list[traceback.TracebackException]:
    """Every exception a report holds: its causes, contexts and those of groups."""
    found: list[traceback.TracebackException] = []
    waiting = [report]
    while waiting:
        part = waiting.pop()
        if any(part is seen for seen in found):
            continue
        found.append(part)
        waiting += [p for p in (part.__cause__, part.__context__) if p is not None]
        waiting += getattr(part, "exceptions", None) or []
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``job_id`` and ``tenant`` on lines about a job, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_query_names(record.getMessage()),
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
            entry["exception"] = redact_query_names(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class LogSettings(Protocol):
    """What logging is configured from: the ``LOG_*`` settings (``config.Settings`` has
    them; this layer sits below the settings' own)."""

    log_level: str
    log_format: str
    log_file: Path | None
    log_stdout: bool
    log_json: bool


def configure_logging(settings: LogSettings) -> None:
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
