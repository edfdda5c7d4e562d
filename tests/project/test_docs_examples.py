"""Every example of the README and of docs/ runs as pasted, against a live worker.

Python blocks run as scripts, shell blocks with bash, ``console`` blocks command
by command with their printed output compared, JavaScript blocks under Node
(beside a copy of the ``/client.js`` the worker serves, with the modules it
imports). The worker is a real ``llm-worker serve`` with the ``echo`` provider on
and the ``openai`` provider pointed at the loopback model server, so that examples
naming either answer.
The only change made to an example is the port: the docs say the default,
8001, and the tests' worker takes a free one.

A block that cannot run here says why, on the line before it:
``<!-- not run: why -->``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_worker.testing.processes import clean_env
from tests.support.client_js import download_client

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"python", "bash", "sh", "console", "js"}
NOT_RUN = re.compile(r"^<!-- not run: (.+) -->$")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DEFAULT_PORT = "8001"


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    code: str
    not_run: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}:{self.language}"


def blocks(path: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown file, with their ``not run`` reasons."""
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("```") or line == "```":
            index += 1
            continue
        language = line[3:].split()[0] if line[3:].strip() else ""
        reason = NOT_RUN.match(lines[index - 1]) if index else None
        end = lines.index("```", index + 1)
        code = "\n".join(lines[index + 1 : end]) + "\n"
        yield Block(path, index + 1, language, code, reason.group(1) if reason else None)
        index = end + 1


def runnable() -> list[Block]:
    return [
        block
        for path in DOCS
        for block in blocks(path)
        if block.language in RUNNABLE and block.not_run is None
    ]


def test_the_examples_are_found() -> None:
    found = {block.language for block in runnable()}
    assert {"python", "bash", "console", "js"} <= found
    pages = {str(block.path.relative_to(ROOT)) for block in runnable()}
    assert {"README.md", "docs/http-api.md", "docs/providers.md"} <= pages


def test_every_example_not_run_says_why() -> None:
    for path in DOCS:
        for block in blocks(path):
            if block.not_run is not None:
                assert len(block.not_run) > 10, block.name
                assert block.language in RUNNABLE, f"{block.name}: only programs are run"


@dataclass
class LiveWorker:
    port: int
    env: dict[str, str]
    workdir: Path


def _start(
    command: list[str], env: dict[str, str], ready: re.Pattern[str]
) -> tuple[subprocess.Popen[str], re.Match[str]]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if match := ready.search(line):
            return process, match
    process.wait()
    raise AssertionError(f"{command} did not start:\n{''.join(seen)}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveWorker]:
    workdir = tmp_path_factory.mktemp("examples")
    # The examples name .venv/bin/... as run from a checkout.
    (workdir / ".venv").symlink_to(Path(sys.executable).parent.parent)
    model, found = _start(
        [sys.executable, "-m", "llm_worker.testing.openai_server", "--port", "0"],
        clean_env(),
        re.compile(r"server at (http://\S+)"),
    )
    assistants = workdir / "assistants"
    assistants.mkdir()
    (assistants / "notes-then-answer.json").write_text(docs_assistant())
    env = clean_env(
        ASSISTANTS=str(assistants),
        LISTEN_PORT="0",
        STORE_URL="memory://",
        ECHO_PROVIDER="on",
        ECHO_DELAY_SECONDS="0.001",
        OPENAI_BASE_URL=found.group(1),
        OPENAI_API_KEY="test",
    )
    worker, listening = _start(
        [sys.executable, "-m", "llm_worker", "serve"],
        env,
        re.compile(r"listening on ws://[\d.]+:(\d+)/ws/"),
    )
    port = int(listening.group(1))
    client_env = clean_env(LLM_WORKER_URL=f"ws://127.0.0.1:{port}/ws/")
    try:
        yield LiveWorker(port, client_env, workdir)
    finally:
        for process in (worker, model):
            process.terminate()
            process.wait(timeout=30)


def docs_assistant() -> str:
    """The template docs/openai-api.md shows as ``assistants/notes-then-answer.json``:
    the worker's (``ASSISTANTS``), so that its ``assistant:NAME`` example runs as pasted."""
    shown = [b.code for b in blocks(ROOT / "docs" / "openai-api.md") if b.language == "json"]
    return next(code for code in shown if '"streams"' in code)


def _on(live: LiveWorker, code: str) -> str:
    return code.replace(f":{DEFAULT_PORT}", f":{live.port}")


def _run(live: LiveWorker, command: list[str], input_text: str | None = None) -> str:
    done = subprocess.run(
        command,
        cwd=live.workdir,
        env=live.env,
        input=input_text,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", runnable(), ids=lambda block: block.name)
def test_example_runs_as_pasted(block: Block, live: LiveWorker) -> None:
    code = _on(live, block.code)
    if block.language == "python":
        script = live.workdir / "example.py"
        script.write_text(code)
        printed = _run(live, [sys.executable, str(script)])
        # An example that defines what a plugin is (no print) runs to show it imports.
        assert printed.strip() or "print(" not in code
    elif block.language in ("bash", "sh"):
        output = _run(live, ["bash", "-euo", "pipefail", "-c", code])
        assert '"type":"error"' not in output, output
    elif block.language == "console":
        check_console(live, code)
    elif block.language == "js":
        node = shutil.which("node")
        assert node is not None, "Node.js runs the JavaScript examples"
        download_client(f"http://127.0.0.1:{live.port}", live.workdir)
        script = live.workdir / "example.mjs"
        script.write_text(code)
        assert _run(live, [node, str(script)]).strip()


def check_console(live: LiveWorker, session: str) -> None:
    """Each ``$ command`` runs, and prints what the block shows after it (job ids aside)."""
    commands: list[tuple[str, list[str]]] = []
    for line in session.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            assert commands, f"output before any command: {line!r}"
            commands[-1][1].append(line)
    assert commands
    for command, expected in commands:
        printed = _run(live, ["bash", "-euo", "pipefail", "-c", command])
        assert UUID.sub("ID", printed).splitlines() == [UUID.sub("ID", e) for e in expected], (
            command
        )


def test_a_console_block_checks_what_it_prints(live: LiveWorker) -> None:
    """The comparison is real: a block showing another answer fails."""
    wrong = '$ .venv/bin/llm-worker submit --provider echo --model echo "a b"\nb a\n'
    with pytest.raises(AssertionError):
        check_console(live, wrong)
    check_console(live, '$ .venv/bin/llm-worker submit --provider echo --model echo "a b"\na b\n')


def test_node_is_there() -> None:
    assert os.access(shutil.which("node") or "", os.X_OK)
