"""The official ``openai`` npm package, unchanged, against a real worker's OpenAI doors.

tests/js/openai-sdk/doors.mjs (Node's test runner) starts the worker itself
(tests/js/serve_for_js.py, with this interpreter). The package is pinned by
tests/js/openai-sdk/package-lock.json; when its node_modules lacks it (a clean clone),
``npm ci`` installs it there first, from npm's registry.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.node_tests import ROOT, run_node_tests

SDK_TESTS = ROOT / "tests" / "js" / "openai-sdk"


def installed_sdk() -> None:
    """Installs the pinned package with ``npm ci`` unless it is there already."""
    if (SDK_TESTS / "node_modules" / "openai" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is not on PATH: tests/js/openai-sdk/ needs it to install the pinned "
            "openai package (npm ci --prefix tests/js/openai-sdk); install Node.js with npm"
        )
    done = subprocess.run(
        [npm, "ci", "--prefix", str(SDK_TESTS), "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"npm ci in {SDK_TESTS} failed:\n{done.stdout}\n{done.stderr}"


def test_the_openai_npm_package_against_the_worker() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH: the openai npm package's tests need it")
    installed_sdk()
    output = run_node_tests("tests/js/openai-sdk/doors.mjs")
    assert "# pass 8" in output, output
