"""The deployment's named assistant templates (``ASSISTANTS``), loaded and checked at
start so that a template that could not run stops the start, not a request.

``ASSISTANTS`` is a JSON file of templates by name (``{"NAME": {"streams": ...}}``),
or a directory of ``NAME.json`` files, one template each, in the format jobs send
(:class:`~llm_worker.jobs.templates.Assistant`). OpenAI's API serves each as the
model ``assistant:NAME`` (docs/openai-api.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from llm_worker.config import ConfigError, validation_problems
from llm_worker.jobs.model import JobSpec
from llm_worker.jobs.templates import Assistant, TemplateError
from llm_worker.running.runner import Runner

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def load_assistants(path: Path | None, runner: Runner) -> dict[str, Assistant]:
    """The templates ``path`` names, by name, each checked as a job's would be at add
    (its providers, inserts, pipelines and placeholders); :class:`ConfigError` naming
    the file and the template for the first that is wrong. ``None``: no templates."""
    if path is None:
        return {}
    templates = {}
    for name, value, source in _entries(path):
        if not NAME.match(name):
            raise ConfigError(
                f"ASSISTANTS {source}: {name!r} is not a template name (letters, digits, "
                "'_', '.', '-'; at most 64)"
            )
        templates[name] = _checked(name, value, source, runner)
    return templates


def _entries(path: Path) -> Iterator[tuple[str, Any, Path]]:
    """Each template's name, its JSON and the file it is in."""
    if path.is_dir():
        for file in sorted(path.glob("*.json")):
            yield file.stem, _read(file), file
        return
    document = _read(path)
    if not isinstance(document, dict):
        raise ConfigError(f"ASSISTANTS {path}: must be a JSON object of templates by name")
    for name, value in document.items():
        yield name, value, path


def _read(file: Path) -> Any:
    try:
        return orjson.loads(file.read_bytes())
    except OSError as exc:
        raise ConfigError(f"ASSISTANTS {file}: cannot be read: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"ASSISTANTS {file}: not JSON: {exc}") from None


def _checked(name: str, value: Any, source: Path, runner: Runner) -> Assistant:
    where = f"ASSISTANTS {source}: template {name!r}"
    try:
        template = Assistant.model_validate(value)
        runner.check(JobSpec(assistant=template, query=""))
    except ValidationError as exc:
        raise ConfigError(f"{where}: {validation_problems(exc)}") from None
    except TemplateError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return template
