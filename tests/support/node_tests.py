"""Running JavaScript tests (Node's test runner, ``node --test``) from pytest, against a
worker they start themselves with this interpreter (``PYTHON``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_node_tests(target: str, env: dict[str, str] | None = None) -> str:
    """Runs ``node --test target`` at the repository's root and returns its output;
    skips when node is missing, fails showing the output when a test failed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not on PATH: the JavaScript tests ({target}) need it")
    result = subprocess.run(
        [node, "--test", target],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (
        f"node --test {target} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    return result.stdout
