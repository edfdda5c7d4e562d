"""Logging as ``LOG_LEVEL``, ``LOG_FORMAT``, ``LOG_FILE`` and ``LOG_STDOUT`` say."""

from __future__ import annotations

import logging
import re
import sys

from llm_worker.config import Settings

# Keys given in a URL (``?access_token=...``), which uvicorn logs with each request.
_ACCESS_TOKEN = re.compile(r"(access_token=)[^&\s\"']+")


class RedactingFormatter(logging.Formatter):
    """Formats as asked, with keys passed in URLs replaced."""

    def format(self, record: logging.LogRecord) -> str:
        return _ACCESS_TOKEN.sub(r"\1[redacted]", super().format(record))


def configure_logging(settings: Settings) -> None:
    handlers: list[logging.Handler] = []
    if settings.log_stdout:
        handlers.append(logging.StreamHandler(sys.stdout))
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(settings.log_file, encoding="utf-8"))
    if not handlers:
        handlers.append(logging.NullHandler())
    formatter = RedactingFormatter(settings.log_format)
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
