"""Per-request plumbing outside the routes: the request id, and refusing URLs no
backend can look up.

``RequestIdMiddleware`` takes a sane incoming ``X-Request-ID`` (a proxy's) or
makes one, binds it to the structlog context for everything logged while the
request runs (driver errors included), keeps it in ``request.state`` for the
problem handlers, and returns it as ``X-Request-ID`` on every response.

``AccessLogMiddleware`` (inside the former, so its line carries the request
id) writes one ``access`` line per request once its response has ended:
method, route template, path, status, duration in ms; ``500`` when an error
escaped the app before any response.

``NulGuardMiddleware`` refuses a path or query string holding a NUL character
with one 422 on every backend (SQLite would look it up and find nothing,
PostgreSQL refuses it), before any route or database sees it.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem, request_id

__all__ = ["RequestIdMiddleware", "AccessLogMiddleware", "NulGuardMiddleware",
           "REQUEST_ID_HEADER"]

access_log = structlog.get_logger("memvault.access")

REQUEST_ID_HEADER = "X-Request-ID"
#: What an incoming id may look like: short, printable, no spaces or quotes
#: (it ends up in log lines and response headers).
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")


def _incoming(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                return None
            return text if _SANE_ID.fullmatch(text) else None
    return None


class RequestIdMiddleware:
    """Outermost middleware: every response carries ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming(scope) or uuid.uuid4().hex
        # scope["state"] is per request (servers copy the lifespan state into it);
        # the handler of unexpected errors runs outside this middleware and finds it here.
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            await self.app(scope, receive, send_with_id)


class AccessLogMiddleware:
    """One ``access`` log line per request, written when its response ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an error escaped the app

        async def note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, note_status)
        finally:
            route = getattr(scope.get("route"), "path", None)
            access_log.info("access", method=scope["method"], route=route,
                            path=scope.get("path"), status=status,
                            duration_ms=round((time.perf_counter() - started) * 1000, 3))


class NulGuardMiddleware:
    """422 for a NUL character in the path or the query string."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            where = None
            if "\x00" in scope.get("path", ""):
                where = "path"
            elif b"%00" in scope.get("query_string", b"") or b"\x00" in scope.get(
                    "query_string", b""):
                where = "query"
            if where is not None:
                detail = f"the {where} must not contain NUL characters"
                response = problem(422, detail, "invalid",
                                   errors=[{"field": where, "message": detail}],
                                   request_id=request_id(HTTPConnection(scope)))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
