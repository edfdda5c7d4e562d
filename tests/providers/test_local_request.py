"""What the local provider and its engine exchange, without torch: requests, outputs,
and their delivery."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from llm_worker.providers.local_request import LocalRequest, Output, deliver


def request(received: list[Output], *, fails: bool = False) -> LocalRequest:
    def on_output(output: Output) -> None:
        if fails:
            raise RuntimeError("the listener broke")
        received.append(output)

    return LocalRequest(
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        top_p=1,
        seed=None,
        stop=[],
        on_output=on_output,
    )


def test_a_failing_callback_is_logged_and_the_other_outputs_still_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[Output] = []
    good, bad = request(received), request([], fails=True)
    outputs = [Output(good, "a"), Output(bad, "b"), Output(good, "c", finished=True)]
    with caplog.at_level(logging.ERROR, logger="llm_worker.providers.local_request"):
        deliver(outputs)
    assert received == [outputs[0], outputs[2]]
    [record] = caplog.records
    assert record.exc_info is not None
    assert "the listener broke" in caplog.text  # with its traceback


def test_the_provider_module_imports_no_torch() -> None:
    code = (
        "import sys, llm_worker.providers.local\n"
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
