"""Checks of the settings providers share, with the messages clients get."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

from llm_worker.jobs.templates import TemplateError


def check_number(
    settings: Mapping[str, Any], key: str, *, low: float | None = None, high: float | None = None
) -> None:
    """``settings[key]``, when present, is a number within [low, high]."""
    value = settings.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TemplateError(f"settings.{key} must be a number, not {value!r}")
    _check_range(key, value, low, high)


# What every integer setting fits in (JSON's integers, as most APIs read them).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_integer(settings: Mapping[str, Any], key: str, *, low: int | None = None) -> None:
    """``settings[key]``, when present, is a whole number of at least ``low`` (and
    within 64 bits)."""
    value = settings.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TemplateError(f"settings.{key} must be an integer, not {value!r}")
    _check_range(key, value, low, None)
    if not INT64_MIN <= value <= INT64_MAX:
        raise TemplateError(f"settings.{key} must fit in 64 bits, not {value!r}")


def _check_range(key: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and high is not None and not low <= value <= high:
        raise TemplateError(f"settings.{key} must be between {low} and {high}, not {value!r}")
    if low is not None and value < low:
        raise TemplateError(f"settings.{key} must be at least {low}, not {value!r}")
    if high is not None and value > high:
        raise TemplateError(f"settings.{key} must be at most {high}, not {value!r}")


def number_schema(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    """The JSON Schema of what :func:`check_number` accepts."""
    schema: dict[str, Any] = {"type": ["number", "null"]}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    return schema


def integer_schema(low: int | None = None) -> dict[str, Any]:
    """The JSON Schema of what :func:`check_integer` accepts."""
    return {
        "type": ["integer", "null"],
        "minimum": INT64_MIN if low is None else low,
        "maximum": INT64_MAX,
    }


STOP_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]
}
"""The JSON Schema of what :func:`check_stop` accepts."""
MODEL_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1}


def settings_schema(
    properties: dict[str, Any], defaults: Mapping[str, Any], *, closed: bool
) -> dict[str, Any]:
    """Settings with ``properties``, ``model`` required unless ``defaults`` names one,
    others refused when ``closed``."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    model = defaults.get("model")
    if "model" in properties and not (isinstance(model, str) and model):
        schema["required"] = ["model"]
    if closed:
        schema["additionalProperties"] = False
    return schema


def check_stop(settings: Mapping[str, Any]) -> None:
    """``settings["stop"]``, when present, is a string or a list of strings."""
    stop = settings.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise TemplateError(f"settings.stop must be a string or a list of strings, not {stop!r}")
