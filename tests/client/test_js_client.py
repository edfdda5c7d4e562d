"""The JavaScript client's tests (tests/js/, Node's test runner) against a real worker.

They start the worker themselves (tests/js/serve_for_js.py, with this interpreter);
this test runs them and shows their output when they fail. With torch installed, it
configures the tiny local model for them (``LOCAL_MODELS=tiny=...``, which the worker
they start reads from the environment) for the test of a model loading.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.support.node_tests import run_node_tests


def test_js_client(request: pytest.FixtureRequest) -> None:
    env = {}
    if all(importlib.util.find_spec(name) for name in ("torch", "transformers")):
        env["LOCAL_MODELS"] = f"tiny={request.getfixturevalue('tiny_model')}"
    run_node_tests("tests/js/", env)
