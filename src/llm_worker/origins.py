"""Which browser pages may use the worker: the ``Origin`` check, and CORS.

A browser tells which page a request comes from in ``Origin``; a page from an
origin not allowed (``ALLOWED_ORIGINS``, besides the worker's own) is refused
403 on every route, the WebSocket upgrade included, whatever key it presents.
Requests without ``Origin`` come from servers and scripts, not pages: they
pass. Allowed cross-origin pages get CORS headers on the HTTP routes. A request
no route serves (a path or a method) does nothing whoever asks: the router
answers it 404 or 405, as the API's document says.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from llm_worker import errors
from llm_worker.access import Access
from llm_worker.refusals import error_response

# The methods the routes serve that a page may not send without asking (HEAD needs no
# preflight).
CORS_METHODS = ["GET", "POST"]


class OriginGuard:
    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _served(scope):
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if not self.access.origin_allowed(origin, headers.get("host")):
                refused = error_response(
                    errors.ORIGIN_NOT_ALLOWED,
                    f"pages from {origin} may not use this worker (ALLOWED_ORIGINS)",
                )
                if scope["type"] == "websocket":
                    await WebSocket(scope, receive, send).send_denial_response(refused)
                else:
                    await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _served(scope: Scope) -> bool:
    """Whether a route of the app serves the request (its path, with its method)."""
    app = scope.get("app")
    routes = getattr(getattr(app, "router", None), "routes", None)
    if routes is None:
        return True  # not under a Starlette app: guard everything
    return any(route.matches(scope)[0] is Match.FULL for route in routes)


def origin_middleware(access: Access) -> list[Middleware]:
    """The guard, and CORS for the origins it lets through."""
    middleware = [Middleware(OriginGuard, access=access)]
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
