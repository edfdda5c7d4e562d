"""The package's layers import only downward, and no modules import each other in a
circle. The layer order is written once, here; a module's layer is its folder.

Imports under ``if TYPE_CHECKING:`` count: a type a module names is a dependency
of its design, even if not of its run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "llm_worker"

LAYERS = (
    "aio",  # asyncio helpers: tasks owned by whoever starts them
    "jobs",  # the job model, templates, usage: pure
    "wire",  # the protocol's messages, dialects, error codes: pure
    "ops",  # logs, metrics, redaction, background tasks
    "config",  # settings
    "providers",  # the provider seam and its implementations
    "store",  # the store seam: memory, SQLite, Redis
    "running",  # runner, worker, inserts, pipelines, registries, add-time checks
    "server",  # the app: WebSocket, HTTP, access, origins, OpenAPI, uvicorn
    "client",  # the client library and its commands: aio, jobs and wire only (see below)
    "cli",  # the command line, on top of everything
    "testing",  # what tests and benchmarks start: servers, processes
)
# The client installs and runs without the server: it may use these layers only.
CLIENT_MAY_USE = frozenset({"aio", "jobs", "wire", "client"})


def layer_of(module: str) -> str:
    """``llm_worker.store.redis.layout`` -> ``store``; ``llm_worker.config`` -> ``config``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    return parts[1]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The modules of the package that ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return _imports_of(path.read_text(), name, package, known)


def _imports_of(source: str, name: str, package: str, known: dict[str, Path]) -> Iterator[str]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("llm_worker.") and target != name:
                yield target
                break


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imports(name, path, known)) for name, path in known.items()}


def test_every_module_is_in_a_layer() -> None:
    for name in modules():
        assert layer_of(name) in (*LAYERS, "package", "__main__"), name


def upward_edges(edges: dict[str, set[str]]) -> list[str]:
    """The imports that run up the layers (or out of what the client may use)."""
    rank = {layer: index for index, layer in enumerate(LAYERS)}
    upward = []
    for module, targets in sorted(edges.items()):
        here = layer_of(module)
        if here in ("package", "__main__"):
            continue
        for target in sorted(targets):
            there = layer_of(target)
            if there == "package":
                continue  # the version
            if here == "client" and there not in CLIENT_MAY_USE:
                upward.append(f"{module} -> {target} (the client uses aio, jobs and wire only)")
            elif rank[there] > rank[here]:
                upward.append(f"{module} -> {target}")
    return upward


def circles(edges: dict[str, set[str]]) -> list[str]:
    """The import circles, each as the path that closes it."""
    found = []
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                found.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    return found


def test_imports_run_only_down_the_layers() -> None:
    assert upward_edges(graph()) == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert circles(graph()) == []


def test_the_checks_find_an_upward_edge_and_a_circle() -> None:
    edges = {
        "llm_worker.jobs.model": {"llm_worker.server.app"},
        "llm_worker.server.app": {"llm_worker.server.gateway"},
        "llm_worker.server.gateway": {"llm_worker.server.app"},
        "llm_worker.client.library": {"llm_worker.store.base"},
    }
    assert upward_edges(edges) == [
        "llm_worker.client.library -> llm_worker.store.base (the client uses aio, jobs and "
        "wire only)",
        "llm_worker.jobs.model -> llm_worker.server.app",
    ]
    assert circles(edges) == [
        "llm_worker.server.app -> llm_worker.server.gateway -> llm_worker.server.app"
    ]


def test_type_checking_imports_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llm_worker.jobs import x\n"
    )
    path = PACKAGE.parent / "_probe_does_not_exist.py"
    known = {"llm_worker.jobs": path, "llm_worker.store.base": path}
    tree_targets = list(_imports_of(source, "llm_worker.store.base", "llm_worker.store", known))
    assert tree_targets == ["llm_worker.jobs"]
