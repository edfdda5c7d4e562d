"""``llm-worker submit | listen | status | cancel`` run as a user runs them, in processes
of their own, against a real worker."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llm_worker.cli import _parser
from llm_worker.client import Client, TextDelta
from llm_worker.client.commands import UsageError, submit_request
from llm_worker.testing.openai_server import OpenAIServer, Reply
from llm_worker.testing.processes import clean_env
from tests.conftest import RunningWorker, StartWorker
from tests.support.histories import Echo
from tests.support.wsclient import assistant

ECHO = Echo(tokens=60)
COMMAND = [sys.executable, "-m", "llm_worker"]


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str


def cli_env(worker: RunningWorker) -> dict[str, str]:
    env = clean_env(LLM_WORKER_URL=worker.ws_url)
    env.pop("LLM_WORKER_API_KEY", None)
    return env


async def start(worker: RunningWorker, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        env=cli_env(worker),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process, stdin: str | None = None) -> Finished:
    stdout, stderr = await asyncio.wait_for(
        process.communicate(stdin.encode() if stdin is not None else None), 60
    )
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())


async def cli(worker: RunningWorker, *args: str, stdin: str | None = None) -> Finished:
    return await finish(await start(worker, *args), stdin if stdin is not None else "")


async def job_id_from_stderr(process: asyncio.subprocess.Process) -> str:
    """The id a text-mode ``submit`` says first on stderr."""
    assert process.stderr is not None
    line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
    match = re.fullmatch(r"job (\S+)\n", line)
    assert match, line
    return match.group(1)


async def test_submit_with_a_model_prints_the_answer(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    result = await cli(
        worker, "submit", "How tall is it?", "--model", "gpt-test", "--system", "Be brief."
    )
    assert result.code == 0, result
    assert result.stdout == "Echo: How tall is it?\n"
    assert re.fullmatch(r"job [0-9a-f-]{36}\n", result.stderr), result.stderr
    request = upstream.chat_requests[-1].body
    assert request["model"] == "gpt-test"
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How tall is it?"},
    ]


async def test_submit_with_a_template_history_and_variables(
    worker: RunningWorker, upstream: OpenAIServer, tmp_path: Path
) -> None:
    template = assistant(
        {"role": "system", "content": "Answer in {language}."},
        {"insert": "history"},
        {"role": "user", "content": "{query}"},
    )
    (tmp_path / "assistant.json").write_text(json.dumps(template))
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    (tmp_path / "history.json").write_text(json.dumps(history))
    result = await cli(
        worker,
        "submit",
        "Bonjour ?",
        "--assistant",
        str(tmp_path / "assistant.json"),
        "--history",
        str(tmp_path / "history.json"),
        "--var",
        "language=French",
    )
    assert (result.code, result.stdout) == (0, "Echo: Bonjour ?\n"), result
    sent = [m["content"] for m in upstream.chat_requests[-1].body["messages"]]
    assert sent == ["Answer in French.", "Hi", "Hello", "Bonjour ?"]


async def test_submit_reads_the_query_from_stdin(worker: RunningWorker) -> None:
    result = await cli(worker, "submit", "--model", "m", stdin="from stdin\n")
    assert (result.code, result.stdout) == (0, "Echo: from stdin\n"), result
    dash = await cli(worker, "submit", "-", "--model", "m", stdin="with a dash")
    assert (dash.code, dash.stdout) == (0, "Echo: with a dash\n"), dash


async def test_submit_json_prints_each_event_as_a_line(worker: RunningWorker) -> None:
    result = await cli(worker, "submit", "Hello there", "--model", "m", "--json")
    assert result.code == 0, result
    assert result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["type"] == "submitted" and len(lines[0]["job_id"]) == 36
    assert lines[1] == {"type": "started", "seq": 1}
    assert "".join(line["text"] for line in lines if line["type"] == "text") == "Echo: Hello there"
    assert {line["type"] for line in lines[2:-1]} == {"text"}
    done = lines[-1]
    assert (done["type"], done["seq"]) == ("done", lines[-2]["seq"] + 1)
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == 3  # "Echo:", " Hello", " there"


async def test_listen_after_a_seq_prints_the_rest(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = ECHO.replies(0)
    async with Client(worker.ws_url) as client:
        job = await client.submit("listen", assistant())
        head = ""
        async for event in job:
            if isinstance(event, TextDelta):
                head += event.text
            if job.last_seq >= 10:
                break
        after = job.last_seq
        assert await job.text() == ECHO.text("listen")
    rest = await cli(worker, "listen", job.id, "--after", str(after))
    assert rest.code == 0, rest
    assert head + rest.stdout == ECHO.text("listen") + "\n"
    replay = await cli(worker, "listen", job.id, "--json")
    lines = [json.loads(line) for line in replay.stdout.splitlines()]
    assert lines[0] == {"type": "started", "seq": 1}
    assert "".join(line.get("text", "") for line in lines) == ECHO.text("listen")
    assert lines[-1]["type"] == "done"


async def test_status_prints_json(worker: RunningWorker) -> None:
    async with Client(worker.ws_url) as client:
        job = await client.submit("status", assistant())
        await job.text()
    result = await cli(worker, "status", job.id)
    assert result.code == 0, result
    status = json.loads(result.stdout)
    usage = status.pop("usage")
    assert usage["completion_tokens"] == 2  # "Echo:", " status"
    # The finished message, as the client's status has it (llm-worker.v3).
    assert status.pop("message") == {"role": "assistant", "content": "Echo: status"}
    assert status == {
        "job_id": job.id,
        "state": "done",
        "position": None,
        "output": "Echo: status",
        "error": None,
        "finish_reason": "stop",
        "providers": ["openai"],
    }


async def test_cancel_ends_the_listening_submit_with_status_3(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = ECHO.replies(0.1)
    submit = await start(worker, "submit", "long", "--model", "m")
    job_id = await job_id_from_stderr(submit)
    cancel = await cli(worker, "cancel", job_id)
    assert cancel.code == 0, cancel
    result = await finish(submit)
    assert result.code == 3, result
    assert "job cancelled" in result.stderr
    assert ECHO.text("long").startswith(result.stdout.rstrip("\n"))
    again = await cli(worker, "cancel", job_id)
    assert again.code == 0, again  # cancelled already: acknowledged again
    async with Client(worker.ws_url) as client:
        assert (await client.status(job_id)).state == "cancelled"


async def test_a_failed_job_exits_1(worker: RunningWorker, upstream: OpenAIServer) -> None:
    upstream.handler = lambda body: Reply(status=400, error="no such model")
    result = await cli(worker, "submit", "x", "--model", "nope")
    assert result.code == 1, result
    assert "job failed:" in result.stderr and "no such model" in result.stderr


async def test_refused_requests_exit_2(worker: RunningWorker, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps(assistant(provider="opena1")))
    refused = await cli(worker, "submit", "x", "--assistant", str(tmp_path / "bad.json"))
    assert refused.code == 2, refused
    assert "unknown provider 'opena1'" in refused.stderr
    unknown = await cli(worker, "listen", "no-such-job")
    assert unknown.code == 2, unknown
    assert "unknown job_id 'no-such-job'" in unknown.stderr
    async with Client(worker.ws_url) as client:
        job = await client.submit("x", assistant())
        await job.text()
    ended = await cli(worker, "cancel", job.id)
    assert ended.code == 2 and "already ended" in ended.stderr, ended


def submit_args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["submit", *argv])


def test_submit_command_lines_make_requests() -> None:
    args = submit_args("--model", "m", "--provider", "local", "--var", "a=b=c")
    made = submit_request(args, io.StringIO("q\n"))
    assert made == {
        "assistant": {
            "streams": [
                {
                    "provider": "local",
                    "settings": {"model": "m"},
                    "messages": [{"insert": "history"}, {"role": "user", "content": "{query}"}],
                }
            ]
        },
        "variables": {"a": "b=c"},
        "query": "q",  # from stdin, without the newline that ends it
    }


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["x", "--model", "m", "--var", "novalue"], "expected NAME=VALUE"),
        (["x", "--assistant", "/no/such/file.json"], "/no/such/file.json"),
        (["x", "--assistant", "/dev/null", "--system", "s"], "--system go with --model"),
        (["x", "--model", "m", "--history", "/dev/null"], "not valid JSON"),
    ],
)
def test_bad_submit_command_lines_are_usage_errors(argv: list[str], complaint: str) -> None:
    with pytest.raises(UsageError, match=re.escape(complaint)):
        submit_request(submit_args(*argv), io.StringIO())


def test_submit_needs_a_template_and_the_help_names_the_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        submit_args("x")
    assert exited.value.code == 2
    assert "one of the arguments --assistant --model is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(["listen", "--help"])
    assert exited.value.code == 0
    assert "--after N" in capsys.readouterr().out


async def test_no_service_exits_4(worker: RunningWorker) -> None:
    result = await cli(worker, "status", "some-job", "--url", "ws://127.0.0.1:9/ws/")
    assert result.code == 4, result
    assert "cannot connect to ws://127.0.0.1:9/ws/" in result.stderr


async def test_ctrl_c_leaves_the_job_running_and_says_how_to_listen_again(
    worker: RunningWorker, upstream: OpenAIServer
) -> None:
    upstream.handler = ECHO.replies(0.1)
    submit = await start(worker, "submit", "interrupted", "--model", "m")
    job_id = await job_id_from_stderr(submit)
    assert submit.stdout is not None
    head = (await asyncio.wait_for(submit.stdout.read(1), 60)).decode()
    submit.send_signal(signal.SIGINT)
    result = await finish(submit)
    assert result.code == 130, result
    head += result.stdout
    hint = re.search(rf"the job goes on: llm-worker listen {job_id} --after (\d+)\n", result.stderr)
    assert hint, result.stderr
    assert "Traceback" not in result.stderr
    rest = await cli(worker, "listen", job_id, "--after", hint.group(1))
    assert rest.code == 0, rest
    assert head + rest.stdout == ECHO.text("interrupted") + "\n"
    status = await cli(worker, "status", job_id)
    assert json.loads(status.stdout)["state"] == "done"


def test_the_service_commands_still_parse() -> None:
    args: Any = _parser().parse_args(["new-key", "alice"])
    assert args.command == "new-key"
    args = _parser().parse_args(["serve", "--port", "0"])
    assert (args.command, args.port) == ("serve", 0)


async def test_a_notice_goes_to_stderr_or_is_a_json_line(
    start_worker: StartWorker, request: pytest.FixtureRequest
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    models = [request.getfixturevalue(name) for name in ("tiny_model", "plain_model")]
    worker = await start_worker(local_models=f"tiny={models[0]},plain={models[1]}")
    # Each model is loaded for the first time: each job waits for it, and says so.
    plain = await cli(worker, "submit", "hi", "--provider", "local", "--model", "tiny")
    assert plain.code == 0, plain
    loading = "loading local model 'tiny': the answer starts once it is loaded"
    assert plain.stderr.splitlines()[1] == f"notice: {loading}"
    assert "loading" not in plain.stdout
    as_json = await cli(worker, "submit", "hi", "--provider", "local", "--model", "plain", "--json")
    assert as_json.code == 0, as_json
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert lines[1] == {"type": "started", "seq": 1}
    assert lines[2]["type"] == "notice"
    assert lines[2]["seq"] == 2
    assert lines[2]["message"].startswith("loading local model 'plain'")
    assert lines[-1]["type"] == "done"
