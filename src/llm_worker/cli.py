"""The ``llm-worker`` command."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llm_worker import __version__
from llm_worker.client import commands as cli_client
from llm_worker.config import ROLES

# What serving needs is imported when serving: the client commands start in a
# third of the time without the server's modules (uvicorn, the app, the providers).
if TYPE_CHECKING:
    import uvicorn

    from llm_worker.config import Settings
    from llm_worker.server.app import Service

log = logging.getLogger("llm_worker")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-worker",
        description="Runs LLM jobs from assistant templates and streams them over WebSockets.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the service")
    serve.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="all: gateway and worker in one process (default); gateway: WebSocket and "
        "HTTP only; worker: runs jobs only. Split roles share a redis:// STORE_URL.",
    )
    serve.add_argument("--host", help="interface to bind (LISTEN_ADDRESS)")
    serve.add_argument("--port", type=int, help="TCP port, 0 for any free one (LISTEN_PORT)")
    serve.add_argument(
        "--echo-when-unconfigured",
        action="store_true",
        help="offer the echo provider while no real provider is configured, unless "
        "ECHO_PROVIDER says otherwise (./run.sh passes this, so that a first run answers)",
    )
    serve.add_argument(
        "--env-file",
        type=Path,
        help="settings file (default: ./.env if there is one); a file named here must exist",
    )
    new_key = commands.add_parser(
        "new-key", help="make an API key, and the lines that give it to a tenant in API_KEYS_FILE"
    )
    new_key.add_argument("tenant", help="the tenant the key is for")
    cli_client.add_commands(commands)
    return parser


def print_new_key(tenant: str) -> int:
    """A new key for ``tenant``: the key to hand over, and what the keys file keeps."""
    from llm_worker.server.access import key_hash

    key = f"lw-{secrets.token_urlsafe(32)}"
    print(f"key (give it to {tenant}; it is not kept anywhere): {key}")
    print("\nin API_KEYS_FILE:\n")
    print(f'[tenants.{json.dumps(tenant)}]\nkeys = ["sha256:{key_hash(key)}"]')
    return 0


def serve(args: argparse.Namespace) -> int:
    """``llm-worker serve``: settings read and checked, the port checked, then the role's
    parts built and served until a stop. 2 for settings that cannot work."""
    from llm_worker.config import ConfigError
    from llm_worker.ops.logs import configure_logging
    from llm_worker.server.access import open_to_all_warning
    from llm_worker.server.app import create_app
    from llm_worker.server.serving import check_can_listen, make_server
    from llm_worker.store import StoreError

    loaded = _load_settings(args)
    if isinstance(loaded, int):
        return loaded
    settings, env_file, own_variables = loaded
    configure_logging(settings)
    for warning in unknown_variables_of_environment():
        log.warning("%s", warning)
    try:
        if args.role == "worker":
            return _serve_worker(settings)
        # The port first: one that cannot be had stops here, before a database exists.
        check_can_listen(
            settings.listen_address,
            settings.listen_port,
            host_setting="--host" if args.host is not None else "LISTEN_ADDRESS",
            port_setting="--port" if args.port is not None else "LISTEN_PORT",
        )
        app = create_app(settings, args.role)
    except (ConfigError, StoreError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    service = app.state.service
    if (warning := open_to_all_warning(service.access, settings.listen_address)) is not None:
        log.warning("%s", warning)

    def ready(server: uvicorn.Server) -> None:
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, _reload_keys, service, env_file, own_variables
        )
        _say_listening(server, args.role)

    server = make_server(app, on_ready=ready)
    _freeze_startup_objects()
    server.run()
    return 0


def _load_settings(
    args: argparse.Namespace,
) -> tuple[Settings, Path | None, frozenset[str]] | int:
    """The settings (from the environment, the env file and the command line), the env
    file read, and the variables the process was given apart from the file's; or the
    exit status 2, having said which setting is wrong."""
    from dotenv import load_dotenv
    from pydantic import ValidationError

    from llm_worker.config import Settings

    env_file: Path | None = args.env_file
    if env_file is not None and not env_file.is_file():
        print(f"llm-worker: --env-file {env_file}: no such file", file=sys.stderr)
        return 2
    if env_file is None and Path(".env").is_file():
        env_file = Path(".env")
    # Until it can reload keys, a SIGHUP (a closed terminal, a reload asked early) must
    # not stop the start.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # What the process was given, apart from what the file adds: a reload reads the
    # file again for what is not among them.
    own_variables = frozenset(name.upper() for name in os.environ)
    # Export the file's values so that everything reading the environment sees
    # them (the key variables named in PROVIDERS_FILE, the openai SDK).
    if env_file is not None:
        load_dotenv(env_file, override=False)
    try:
        settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            name = "_".join(str(p) for p in error["loc"]).upper()
            said = error["msg"].removeprefix("Value error, ")
            print(f"llm-worker: bad setting {name}: {said}", file=sys.stderr)
        return 2
    overrides = {}
    if args.host is not None:
        overrides["listen_address"] = args.host
    if args.port is not None:
        overrides["listen_port"] = args.port
    if args.echo_when_unconfigured and "ECHO_PROVIDER" not in {n.upper() for n in os.environ}:
        overrides["echo_provider"] = "auto"  # the environment and the file are in os.environ
    return settings.model_copy(update=overrides), env_file, own_variables


def unknown_variables_of_environment() -> list[str]:
    """Warnings about this process's variables that look meant for it but are ignored."""
    from llm_worker.config import unknown_variables

    return unknown_variables(os.environ)


def _say_listening(server: uvicorn.Server, role: str) -> None:
    """The line clients wait for, said once the socket accepts connections, and where
    the console is."""
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    log.info(
        "llm-worker %s (%s) listening on ws://%s:%d/ws/ (pid %d)",
        __version__,
        role,
        _url_host(host),
        port,
        os.getpid(),
    )
    log.info("console: http://%s:%d/console", _url_host(host), port)


def _reload_keys(service: Service, env_file: Path | None, own_variables: frozenset[str]) -> None:
    """On SIGHUP: the keys and tenants of ``API_KEYS_FILE`` read again, and ``API_KEYS``
    and ``ADMIN_KEYS`` from the settings file unless the process's own environment
    sets them (that cannot change). Nothing else changes; a reload that fails
    keeps the keys there were, and says why."""
    from dotenv import dotenv_values
    from pydantic import SecretStr

    from llm_worker.config import ConfigError
    from llm_worker.server.access import reload_keys

    try:
        in_file = {
            name.upper(): value or ""
            for name, value in (dotenv_values(env_file) if env_file is not None else {}).items()
        }
        update: dict[str, object] = {}
        if "API_KEYS" not in own_variables:
            update["api_keys"] = SecretStr(in_file.get("API_KEYS", ""))
        if "ADMIN_KEYS" not in own_variables:
            update["admin_keys"] = in_file.get("ADMIN_KEYS", "")
        held = reload_keys(service.access, service.settings.model_copy(update=update))
    except (ConfigError, OSError) as exc:
        log.error("SIGHUP: keys not reloaded, those there were stay: %s", exc)
        return
    log.info("SIGHUP: keys reloaded: %s", held)


def _url_host(host: str) -> str:
    """How a URL names the address a socket is bound to (the wildcard as loopback)."""
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    return f"[{host}]" if ":" in host else host


def _freeze_startup_objects() -> None:
    """Keep what start-up built (modules, the app, the registries) out of garbage collections.

    They live as long as the process; left in the collected heap, every full
    collection walks them all, which stalled the event loop for 30-40 ms at a
    time under load (bench/gc_pauses.py).
    """
    gc.collect()
    gc.freeze()


def _serve_worker(settings: Settings) -> int:
    """Runs jobs until SIGINT or SIGTERM, then stops as gracefully as a gateway does."""
    from llm_worker.config import ConfigError
    from llm_worker.server.app import run_worker
    from llm_worker.server.serving import check_can_listen, event_loop_name, stop_at_once
    from llm_worker.store import StoreError

    # Its port first, as a gateway's: one that cannot be had stops the start here.
    if settings.metrics_port is not None:
        check_can_listen(
            settings.listen_address,
            settings.metrics_port,
            host_setting="LISTEN_ADDRESS",
            port_setting="METRICS_PORT",
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if stop.is_set():  # a second one: no more waiting
                stop_at_once(signum)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(
            signal.SIGHUP, log.info, "SIGHUP: a worker holds no keys; nothing to reload"
        )
        await run_worker(settings, stop)

    log.info("llm-worker %s (worker) starting (pid %d)", __version__, os.getpid())
    _freeze_startup_objects()
    try:
        if event_loop_name() == "uvloop":
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
    except (ConfigError, StoreError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "new-key":
        return print_new_key(args.tenant)
    if args.command in cli_client.COMMANDS:
        return cli_client.run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
