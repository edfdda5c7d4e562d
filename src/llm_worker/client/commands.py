"""The client commands of ``llm-worker``: ``submit``, ``listen``, ``status``, ``cancel``.

They speak to a running service through :mod:`llm_worker.client`, so they ride
out dropped connections as any client of it does. The exit status says how the
job ended, for scripts: 0 done, 1 failed, 3 cancelled, 2 a bad command line or a
request the service refused, 4 no connection, 130 interrupted (Ctrl-C leaves the
job running, and says how to listen to it again), 141 stdout closed (``| head``).

With ``--json``, stdout gets one JSON object per line: ``submitted`` first (for
``submit``), then each event (``started``, ``text``, ``reasoning``, ``tool_call``,
``refusal``, ``pending``, ``reset``, ``notice``, and the end: ``done``, with the
finished ``message`` from a service that sends it, ``failed`` or ``cancelled``).
Without it, stdout gets the answer's text alone, as it comes; everything else goes
to stderr: the model's reasoning as it comes, after ``reasoning:`` (dimmed on a
terminal), a refusal after ``the model refused:``, and each tool call once the
answer is done, as ``tool call get_weather({"city": "Paris"})``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from llm_worker.client.asyncio import Client, Job
from llm_worker.client.errors import ClientError, ConnectionLost, RequestRefused
from llm_worker.client.events import (
    Cancelled,
    Done,
    Event,
    Failed,
    Notice,
    Pending,
    Reasoning,
    Refusal,
    Reset,
    Started,
    TextDelta,
    ToolCallDelta,
)

DEFAULT_URL = "ws://127.0.0.1:8001/ws/"
COMMANDS = frozenset({"submit", "listen", "status", "cancel"})

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_NO_CONNECTION = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command killed by it


class UsageError(Exception):
    """A command line that cannot be carried out; the message says why."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to the ``llm-worker`` parser's subcommands."""
    service = argparse.ArgumentParser(add_help=False)
    service.add_argument(
        "--url",
        help="the service: ws://HOST:PORT/ws/ or http://HOST:PORT "
        f"(default: $LLM_WORKER_URL, else {DEFAULT_URL})",
    )
    service.add_argument("--api-key", help="the API key (default: $LLM_WORKER_API_KEY)")

    submit = commands.add_parser(
        "submit", parents=[service], help="run a job and print its answer as it comes"
    )
    submit.add_argument("query", nargs="?", help="the query; from stdin when absent or '-'")
    template = submit.add_mutually_exclusive_group(required=True)
    template.add_argument("--assistant", type=Path, metavar="FILE", help="a JSON template file")
    template.add_argument("--model", help="one stream to this model (instead of --assistant)")
    submit.add_argument("--provider", help="the provider of --model (default: openai)")
    submit.add_argument("--system", metavar="TEXT", help="a system message before the query")
    submit.add_argument(
        "--history", type=Path, metavar="FILE", help="a JSON list of {role, content} messages"
    )
    submit.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a template variable (repeatable)",
    )
    submit.add_argument("--json", action="store_true", help="print events as JSON lines")

    listen = commands.add_parser(
        "listen", parents=[service], help="follow a job, from the start or after a seq"
    )
    listen.add_argument("job_id")
    listen.add_argument(
        "--after", type=int, default=0, metavar="N", help="only the events after seq N"
    )
    listen.add_argument("--json", action="store_true", help="print events as JSON lines")

    status = commands.add_parser("status", parents=[service], help="print a job's status as JSON")
    status.add_argument("job_id")
    cancel = commands.add_parser("cancel", parents=[service], help="stop a queued or running job")
    cancel.add_argument("job_id")


@dataclass
class _Progress:
    """How far a command got, for what to say when it is interrupted."""

    job: Job | None = None
    sent: bool = False
    """Whether an ``add`` went out."""


def run(args: argparse.Namespace) -> int:
    """Run a client command; its exit status."""
    progress = _Progress()
    command = _COMMANDS[args.command]
    try:
        return asyncio.run(_guarded(command(args, progress)))
    except UsageError as exc:
        print(f"llm-worker {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _interrupted(args, progress)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): the job goes on; nothing to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


async def _guarded(command: Awaitable[int]) -> int:
    """The command's exit status, its client errors said on stderr."""
    try:
        return await command
    except RequestRefused as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionLost as exc:
        print(f"no connection: {exc.message}", file=sys.stderr)
        return EXIT_NO_CONNECTION
    except ClientError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_NO_CONNECTION


def _interrupted(args: argparse.Namespace, progress: _Progress) -> None:
    job = progress.job
    if job is not None and not job.ended:
        hint = f"llm-worker listen {job.id} --after {job.last_seq}"
        if args.url:
            hint += f" --url {args.url}"
        print(f"\nthe job goes on: {hint}", file=sys.stderr)
    elif job is None and progress.sent:
        print(
            "\ninterrupted before the service answered: the job may or may not have been queued",
            file=sys.stderr,
        )


def _client(args: argparse.Namespace) -> Client:
    url = args.url or os.environ.get("LLM_WORKER_URL") or DEFAULT_URL
    api_key = args.api_key or os.environ.get("LLM_WORKER_API_KEY") or None
    try:
        return Client(url, api_key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# -- commands -----------------------------------------------------------------


async def _submit(args: argparse.Namespace, progress: _Progress) -> int:
    request = submit_request(args, sys.stdin)
    output = EventPrinter(args.json)
    async with _client(args) as client:
        progress.sent = True
        job = await client.submit(**request)
        progress.job = job
        output.submitted(job)
        return await _follow(job, output)


async def _listen(args: argparse.Namespace, progress: _Progress) -> int:
    if args.after < 0:
        raise UsageError("--after must be 0 or more")
    output = EventPrinter(args.json)
    async with _client(args) as client:
        job = client.job(args.job_id, after=args.after)
        progress.job = job
        return await _follow(job, output)


async def _status(args: argparse.Namespace, progress: _Progress) -> int:
    async with _client(args) as client:
        status = await client.status(args.job_id)
    record = {
        "job_id": args.job_id,
        "state": status.state,
        "position": status.position,
        "output": status.output,
        "error": status.error,
        "usage": status.usage,
        "finish_reason": status.finish_reason,
        "providers": status.providers,
    }
    if status.message is not None:
        record["message"] = status.message
    print(orjson.dumps(record).decode())
    return EXIT_DONE


async def _cancel(args: argparse.Namespace, progress: _Progress) -> int:
    async with _client(args) as client:
        await client.cancel(args.job_id)
    print(f"job {args.job_id} cancelled", file=sys.stderr)
    return EXIT_DONE


_COMMANDS: dict[str, Callable[[argparse.Namespace, _Progress], Awaitable[int]]] = {
    "submit": _submit,
    "listen": _listen,
    "status": _status,
    "cancel": _cancel,
}


async def _follow(job: Job, output: EventPrinter) -> int:
    """Print the job's events to its end; the exit status its end says."""
    code = EXIT_NO_CONNECTION
    async for event in job:
        output.event(event)
        if isinstance(event, Done):
            output.tool_calls(job.tool_calls)
            code = EXIT_DONE
        elif isinstance(event, Failed):
            code = EXIT_FAILED
        elif isinstance(event, Cancelled):
            code = EXIT_CANCELLED
    return code


# -- the request --------------------------------------------------------------


def submit_request(args: argparse.Namespace, stdin: TextIO) -> dict[str, Any]:
    """The arguments of :meth:`Client.submit` a ``submit`` command line asks for."""
    if args.model is None and (args.provider is not None or args.system is not None):
        raise UsageError("--provider and --system go with --model, not --assistant")
    if args.model is not None:
        assistant = one_stream_assistant(args.model, args.provider or "openai", args.system)
    else:
        assistant = _json_file(args.assistant, "--assistant")
        if not isinstance(assistant, dict):
            raise UsageError(f"--assistant {args.assistant}: a template is a JSON object")
    request: dict[str, Any] = {"assistant": assistant}
    if args.history is not None:
        history = _json_file(args.history, "--history")
        if not isinstance(history, list):
            raise UsageError(f"--history {args.history}: not a JSON list of messages")
        request["history"] = history
    if args.var:
        request["variables"] = _variables(args.var)
    query = args.query
    if query is None or query == "-":
        query = stdin.read()
        # `echo question | llm-worker submit`: the newline ends the input, not the query.
        query = query.removesuffix("\n").removesuffix("\r")
    request["query"] = query
    return request


def one_stream_assistant(model: str, provider: str, system: str | None) -> dict[str, Any]:
    """The template of ``--model``: an optional system message, the history, the query."""
    messages: list[dict[str, str]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages += [{"insert": "history"}, {"role": "user", "content": "{query}"}]
    return {"streams": [{"provider": provider, "settings": {"model": model}, "messages": messages}]}


def _json_file(path: Path, option: str) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{option} {path}: not valid JSON: {exc}") from None


def _variables(items: list[str]) -> dict[str, str]:
    variables = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise UsageError(f"--var {item!r}: expected NAME=VALUE")
        variables[name] = value
    return variables


# -- output -------------------------------------------------------------------


def event_record(event: Event) -> dict[str, Any]:
    """An event as a ``--json`` line shows it."""
    match event:
        case Started(seq):
            return {"type": "started", "seq": seq}
        case TextDelta(text, seq):
            return {"type": "text", "text": text, "seq": seq}
        case Reasoning(text, seq):
            return {"type": "reasoning", "text": text, "seq": seq}
        case ToolCallDelta(index, call_id, name, arguments, seq):
            record: dict[str, Any] = {"type": "tool_call", "index": index}
            if call_id is not None:
                record["id"] = call_id
            if name is not None:
                record["name"] = name
            return record | {"arguments": arguments, "seq": seq}
        case Refusal(text, seq):
            return {"type": "refusal", "text": text, "seq": seq}
        case Pending(position):
            return {"type": "pending", "position": position}
        case Reset(attempt, seq):
            return {"type": "reset", "attempt": attempt, "seq": seq}
        case Done(seq, usage, finish_reason, providers, message):
            record = {"type": "done", "seq": seq, "usage": usage,
                      "finish_reason": finish_reason, "providers": providers}  # fmt: skip
            return record if message is None else record | {"message": message}
        case Failed(message, seq):
            return {"type": "failed", "message": message, "seq": seq}
        case Cancelled(seq):
            return {"type": "cancelled", "seq": seq}
        case Notice(message, None):
            return {"type": "notice", "message": message}
        case Notice(message, seq):
            return {"type": "notice", "message": message, "seq": seq}
    raise TypeError(f"not an event: {event!r}")


# What plain mode writes before a block of reasoning or of a refusal, on stderr.
SIDE_LABELS = {Reasoning: "reasoning: ", Refusal: "the model refused: "}
_DIM, _PLAIN = "\x1b[2m", "\x1b[0m"


class EventPrinter:
    """Prints a job's events: the text to stdout as it comes, the rest to stderr; or
    every event as a JSON line to stdout.

    On stderr, reasoning and refusals are blocks of their own, each after its label
    (:data:`SIDE_LABELS`) and ended by the next event of another kind; reasoning is
    dimmed when stderr is a terminal (and ``NO_COLOR`` is not set).
    """

    def __init__(self, as_json: bool, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.as_json = as_json
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.dim = self.err.isatty() and not os.environ.get("NO_COLOR")
        self._line_open = False
        """Whether text was printed and its line not ended."""
        self._side: type[Reasoning] | type[Refusal] | None = None
        """The kind of the block open on stderr, if any."""
        self._side_line_open = False

    def submitted(self, job: Job) -> None:
        if self.as_json:
            record: dict[str, Any] = {"type": "submitted", "job_id": job.id}
            if job.listen_token is not None:
                record["listen_token"] = job.listen_token
            self._json(record)
        else:
            self._note(f"job {job.id}")

    def event(self, event: Event) -> None:
        if self.as_json:
            self._json(event_record(event))
            return
        if isinstance(event, Reasoning | Refusal):
            self._side_text(event)
            return
        if not isinstance(event, ToolCallDelta):
            self._end_side()  # the fragments of a call come between a block's deltas
        if isinstance(event, TextDelta):
            self.out.write(event.text)
            self.out.flush()
            self._line_open = not event.text.endswith("\n")
        elif isinstance(event, Pending):
            self._note(f"waiting in the queue: position {event.position}")
        elif isinstance(event, Reset):
            self._end_line()
            self._note(
                f"the job restarted (attempt {event.attempt}) after its worker stopped: "
                "its text so far is void; the new attempt follows"
            )
        elif isinstance(event, Notice):
            self._note(f"notice: {event.message}")
        elif isinstance(event, Done):
            self._end_line()
        elif isinstance(event, Failed):
            self._end_line()
            self._note(f"job failed: {event.message}")
        elif isinstance(event, Cancelled):
            self._end_line()
            self._note("job cancelled")

    def tool_calls(self, calls: list[dict[str, Any]]) -> None:
        """Say the tool calls of a finished answer, one line each: ``tool call
        name(arguments)``, the arguments as the model wrote them."""
        if self.as_json:
            return  # the tool_call lines and done's message say them
        for call in calls:
            function = call.get("function") or {}
            self._note(f"tool call {function.get('name')}({function.get('arguments', '')})")

    def _side_text(self, event: Reasoning | Refusal) -> None:
        kind = type(event)
        if self._side is not kind:
            self._end_side()
            self._side = kind
            self.err.write(SIDE_LABELS[kind])
        dim = self.dim and kind is Reasoning
        self.err.write(f"{_DIM}{event.text}{_PLAIN}" if dim else event.text)
        self.err.flush()
        self._side_line_open = not event.text.endswith("\n")

    def _end_side(self) -> None:
        if self._side is not None and self._side_line_open:
            self.err.write("\n")
            self.err.flush()
        self._side = None
        self._side_line_open = False

    def _json(self, record: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(record).decode() + "\n")
        self.out.flush()

    def _note(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()

    def _end_line(self) -> None:
        if self._line_open:
            self.out.write("\n")
            self.out.flush()
            self._line_open = False
