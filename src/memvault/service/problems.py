"""RFC 9457 problem+json responses and the exception handlers that produce them.

Every ``MemvaultError`` carries its status and code; validation errors name the
field; anything unexpected is a bare 500 with the traceback only in the log.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from ..errors import MemvaultError

__all__ = ["problem", "install_handlers", "request_id", "PROBLEM_JSON"]

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger(__name__)


def request_id(conn: HTTPConnection) -> str | None:
    """The id ``RequestIdMiddleware`` gave this request (None outside it)."""
    rid = conn.scope.get("state", {}).get("request_id")
    return rid if isinstance(rid, str) else None


def problem(status: int, detail: str, code: str | None = None,
            headers: dict[str, str] | None = None, request_id: str | None = None,
            **extra: Any) -> JSONResponse:
    """A problem+json response; with ``request_id``, the body names it and the
    ``X-Request-ID`` header carries it (500s are answered outside the request-id
    middleware, so they set the header here)."""
    title = HTTPStatus(status).phrase
    code = code or title.lower().replace(" ", "_")
    body = {"type": f"urn:memvault:problem:{code}", "title": title, "status": status,
            "detail": detail, "code": code, **extra}
    if request_id is not None:
        body["request_id"] = request_id
        headers = {**(headers or {}), "X-Request-ID": request_id}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts) or "body"


async def _memvault_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MemvaultError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    extra: dict[str, Any] = {}
    if exc.field:
        extra["errors"] = [{"field": exc.field, "message": exc.detail}]
    if exc.status >= 500:
        log.error("service error", code=exc.code, detail=exc.detail)
    return problem(exc.status, exc.detail, exc.code, headers or None,
                   request_id(request), **extra)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": "body" if e.get("type") == "json_invalid" else _field(e.get("loc", ())),
               "message": e.get("msg", "invalid")} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return problem(422, detail, "invalid", request_id=request_id(request), errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None),
                   request_id=request_id(request))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id(request)  # the log context was unbound when the error left the app
    log.exception("unhandled error", path=request.url.path, method=request.method,
                  request_id=rid)
    return problem(500, "an internal error occurred; it has been logged", "internal",
                   request_id=rid)


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MemvaultError, _memvault_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
