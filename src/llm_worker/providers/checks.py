"""Checks of the settings providers share, with the messages clients get."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

from llm_worker.templates import TemplateError


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


def check_integer(settings: Mapping[str, Any], key: str, *, low: int | None = None) -> None:
    """``settings[key]``, when present, is a whole number of at least ``low``."""
    value = settings.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TemplateError(f"settings.{key} must be an integer, not {value!r}")
    _check_range(key, value, low, None)


def _check_range(key: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and high is not None and not low <= value <= high:
        raise TemplateError(f"settings.{key} must be between {low} and {high}, not {value!r}")
    if low is not None and value < low:
        raise TemplateError(f"settings.{key} must be at least {low}, not {value!r}")
    if high is not None and value > high:
        raise TemplateError(f"settings.{key} must be at most {high}, not {value!r}")


def check_stop(settings: Mapping[str, Any]) -> None:
    """``settings["stop"]``, when present, is a string or a list of strings."""
    stop = settings.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise TemplateError(f"settings.stop must be a string or a list of strings, not {stop!r}")
