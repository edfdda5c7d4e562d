"""Named registries of providers, inserts and pipelines, extensible by a deployment.

A registry starts with the built-ins; a deployment adds its own through a
package's entry points (group ``llm_worker.providers``, ``llm_worker.inserts``
or ``llm_worker.pipelines``) or through settings such as
``EXTRA_PIPELINES="shout=mypackage.pipelines:Shout"``. A registered object that
is a class is instantiated without arguments.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from llm_worker.config import ConfigError
from llm_worker.jobs.templates import TemplateError

log = logging.getLogger(__name__)

T = TypeVar("T")


class RegistryError(ConfigError):
    """A plugin that cannot be loaded: a configuration error, found at start-up."""


def import_object(path: str) -> Any:
    """The object at ``module:attribute`` (or ``module.attribute``)."""
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise RegistryError(f"{path!r} is not an import path like 'package.module:name'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import {module_name!r} for {path!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RegistryError(f"{module_name!r} has no attribute {attribute!r}") from None
    return target


def _instantiate(obj: Any) -> Any:
    return obj() if isinstance(obj, type) else obj


class Registry(Generic[T]):
    """Objects of one kind by name; a lookup of an unknown name is a template error."""

    def __init__(self, kind: str, problem: Callable[[T], str | None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._problem = problem
        """What keeps an item from being used (say, a missing key); not listed as available."""

    def register(self, name: str, item: T) -> None:
        if name in self._items:
            log.info("%s %r replaced by %r", self.kind, name, item)
        self._items[name] = item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise TemplateError(f"unknown {self.kind} {name!r} ({self._listing()})") from None

    def _listing(self) -> str:
        names = sorted(self._items)
        problem = self._problem
        unusable = [n for n in names if problem is not None and problem(self._items[n])]
        available = ", ".join(n for n in names if n not in unusable) or "none"
        return f"available: {available}" + (
            f"; not configured: {', '.join(unusable)}" if unusable else ""
        )

    def usable(self) -> list[str]:
        """The names of the items nothing keeps from being used (a template may name
        them), sorted."""
        problem = self._problem
        return [n for n, item in self.items() if problem is None or not problem(item)]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def load_entry_points(self, group: str) -> None:
        """Register every entry point of ``group`` under its name."""
        for entry_point in entry_points(group=group):
            try:
                obj = entry_point.load()
            except Exception as exc:
                raise RegistryError(
                    f"cannot load {self.kind} {entry_point.name!r} "
                    f"from entry point {entry_point.value!r}: {exc}"
                ) from exc
            self.register(entry_point.name, _instantiate(obj))

    def load_specs(self, specs: str) -> None:
        """Register ``name=module:attribute`` items, separated by commas."""
        for spec in filter(None, (s.strip() for s in specs.split(","))):
            name, sep, path = spec.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise RegistryError(
                    f"{spec!r}: expected name=package.module:attribute for a {self.kind}"
                )
            self.register(name.strip(), _instantiate(import_object(path.strip())))
