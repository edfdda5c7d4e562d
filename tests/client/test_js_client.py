"""The JavaScript client's tests (tests/js/, Node's test runner) against a real worker.

They start the worker themselves (tests/js/serve_for_js.py, with this interpreter);
this test runs them and shows their output when they fail. With torch installed, it
configures the tiny local model for them (``LOCAL_MODELS=tiny=...``, which the worker
they start reads from the environment) for the test of a model loading.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_js_client(request: pytest.FixtureRequest) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: the JavaScript client's tests (tests/js/) need it")
    env = {**os.environ, "PYTHON": sys.executable}
    if all(importlib.util.find_spec(name) for name in ("torch", "transformers")):
        env["LOCAL_MODELS"] = f"tiny={request.getfixturevalue('tiny_model')}"
    result = subprocess.run(
        [node, "--test", "tests/js/"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (
        f"node --test tests/js/ exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
