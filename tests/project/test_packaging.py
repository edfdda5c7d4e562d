"""What the scripts install is what the code imports: a fresh clone's ``./run.sh`` and
``./run_bench.sh`` must not stop at a ``ModuleNotFoundError``."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_with(extras: set[str]) -> set[str]:
    """The distributions ``pip install 'llm-worker[extras]'`` brings, transitively."""
    wanted: list[tuple[str, set[str]]] = [("llm-worker", extras)]
    seen: set[str] = set()
    while wanted:
        name, its_extras = wanted.pop()
        if _normal(name) in seen:
            continue
        seen.add(_normal(name))
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # a requirement whose marker excludes this platform
        for text in requires:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in its_extras | {""}]
            marker = requirement.marker
            if marker is None or any(marker.evaluate(env) for env in environments):
                wanted.append((requirement.name, set(requirement.extras)))
    return seen


def imported_modules(path: Path) -> set[str]:
    """The top-level modules a source file imports, wherever in the file."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.partition(".")[0])
    return modules


def missing_imports(files: list[Path], extras: set[str]) -> dict[str, list[str]]:
    """Third-party modules the files import that the extras do not install, by file."""
    available = installed_with(extras)
    providers = metadata.packages_distributions()
    # Scripts (bench/) import their siblings by name; a package's modules cannot be, so
    # providers/anthropic.py does not hide the SDK of the same name.
    local = {path.stem for path in files if not (path.parent / "__init__.py").exists()}
    local |= {"llm_worker", "tests"}
    missing: dict[str, list[str]] = {}
    for path in files:
        for module in sorted(imported_modules(path)):
            if module in sys.stdlib_module_names or module in local or module == "__future__":
                continue
            if not any(_normal(d) in available for d in providers.get(module, [])):
                missing.setdefault(path.name, []).append(module)
    return missing


def test_run_bench_installs_what_the_benchmarks_import() -> None:
    # ./run_bench.sh installs EXTRAS=bench,local.
    assert missing_imports(sorted((ROOT / "bench").glob("*.py")), {"bench", "local"}) == {}


def test_the_package_imports_only_what_it_requires() -> None:
    # The `local`, `yaml` and `anthropic` extras are imported when first used, and only then.
    files = sorted((ROOT / "src" / "llm_worker").rglob("*.py"))
    missing = missing_imports(files, {"local", "yaml", "anthropic"})
    assert missing == {}
    optional = missing_imports(files, set())
    assert set().union(*optional.values()) <= {
        "torch",
        "transformers",
        "huggingface_hub",
        "tokenizers",
        "yaml",
        "anthropic",
    }
    assert optional["anthropic.py"] == ["anthropic"]


def test_the_check_finds_what_is_missing() -> None:
    # httpx is a test dependency only: a benchmark importing it would break run_bench.sh.
    assert "httpx" not in installed_with({"bench", "local"})
    test_cli = ROOT / "tests" / "system" / "test_cli.py"
    assert "httpx" in missing_imports([test_cli], {"bench"})["test_cli.py"]
