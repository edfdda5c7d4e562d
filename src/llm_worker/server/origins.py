"""Which names and browser pages may use the worker: the ``Host`` check, the
``Origin`` check, and CORS.

A request must name the worker by a name it serves (``ALLOWED_HOSTS``), or by an
address (an IP literal, ``localhost``), which a DNS rebinding attack cannot: a
page of ``attacker.example`` whose name is re-pointed at the worker's address
sends ``Host: attacker.example`` with every request, and is refused 400 on every
path, the WebSocket upgrade included. A request without ``Host`` (HTTP/1.0) is
not a browser's: it passes.

A browser tells which page a request comes from in ``Origin``; a page from an
origin not allowed (``ALLOWED_ORIGINS``, besides the worker's own) is refused
403 on every route, the WebSocket upgrade included, whatever key it presents.
Requests without ``Origin`` come from servers and scripts, not pages: they
pass. Allowed cross-origin pages get CORS headers on the HTTP routes. A request
no route serves (a path or a method) does nothing whoever asks: the router
answers it 404 or 405, as the API's document says.
"""

from __future__ import annotations

import ipaddress

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from llm_worker.server.access import Access
from llm_worker.server.refusals import error_response
from llm_worker.wire import errors

# The methods the routes serve that a page may not send without asking (HEAD needs no
# preflight).
CORS_METHODS = ["GET", "POST"]


class TrustedHosts:
    """The names a request may call the worker by, as ``ALLOWED_HOSTS`` lists them
    (comma-separated; ``*.example.com`` for its subdomains; ``*`` for any), besides
    addresses and ``localhost``, which are never another site's."""

    def __init__(self, setting: str) -> None:
        listed = {name.strip().lower().rstrip(".") for name in setting.split(",")}
        listed.discard("")
        self.any = "*" in listed
        self.names = frozenset(name for name in listed if not name.startswith("*."))
        self.suffixes = tuple(name[1:] for name in listed if name.startswith("*."))

    def allowed(self, host: str | None) -> bool:
        """Whether a ``Host`` header (with its port or not) names the worker."""
        if host is None or self.any:
            return True
        name = _host_name(host)
        if name is None:
            return False
        return (
            name in self.names
            or name.endswith(self.suffixes)
            or name == "localhost"
            or name.endswith(".localhost")
            or _is_address(name)
        )


def _host_name(host: str) -> str | None:
    """The name in a ``Host`` header, lower-case, without its port; ``None`` if it is
    not shaped like one."""
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        address, bracket, port = host[1:].partition("]")
        if not bracket or (port and not (port[:1] == ":" and port[1:].isdigit())):
            return None
        return address
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class OriginGuard:
    """Refuses a request naming the worker by a name not allowed (400), and a browser
    page's from an origin not allowed (403).

    The worker's own origin, the console's (``/console``, which uses the API), is
    the origin whose host and port are those of ``Host``: safe to take from the
    request because ``Host`` is checked first, so it is a name the worker serves,
    not one an attacker chose."""

    def __init__(self, app: ASGIApp, access: Access, hosts: TrustedHosts) -> None:
        self.app = app
        self.access = access
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = Headers(scope=scope)
            host = headers.get("host")
            if not self.hosts.allowed(host):
                shown = (host or "")[:100]
                await _refuse(
                    scope,
                    receive,
                    send,
                    error_response(
                        errors.HOST_NOT_ALLOWED,
                        f"this worker does not serve the name {shown!r} (ALLOWED_HOSTS)",
                    ),
                )
                return
        if scope["type"] in ("http", "websocket") and _served(scope):
            origin = headers.get("origin")
            if not self.access.origin_allowed(origin, host):
                refused = error_response(
                    errors.ORIGIN_NOT_ALLOWED,
                    f"pages from {origin} may not use this worker (ALLOWED_ORIGINS)",
                )
                await _refuse(scope, receive, send, refused)
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, refused: Response) -> None:
    if scope["type"] == "websocket":
        await WebSocket(scope, receive, send).send_denial_response(refused)
    else:
        await refused(scope, receive, send)


def _served(scope: Scope) -> bool:
    """Whether a route of the app serves the request (its path, with its method)."""
    app = scope.get("app")
    routes = getattr(getattr(app, "router", None), "routes", None)
    if routes is None:
        return True  # not under a Starlette app: guard everything
    return any(route.matches(scope)[0] is Match.FULL for route in routes)


def origin_middleware(access: Access, allowed_hosts: str = "") -> list[Middleware]:
    """The guard, and CORS for the origins it lets through."""
    middleware = [Middleware(OriginGuard, access=access, hosts=TrustedHosts(allowed_hosts))]
    if access.origins is None or access.origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=["*"] if access.origins is None else sorted(access.origins),
                allow_methods=CORS_METHODS,
                allow_headers=["authorization", "content-type", "last-event-id"],
            )
        )
    return middleware
