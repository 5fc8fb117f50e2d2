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

from ..errors import MemvaultError

__all__ = ["problem", "install_handlers", "PROBLEM_JSON"]

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger(__name__)


def problem(status: int, detail: str, code: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    title = HTTPStatus(status).phrase
    code = code or title.lower().replace(" ", "_")
    body = {"type": f"urn:memvault:problem:{code}", "title": title, "status": status,
            "detail": detail, "code": code, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts) or "body"


async def _memvault_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MemvaultError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    extra: dict[str, Any] = {}
    if exc.field:
        extra["errors"] = [{"field": exc.field, "message": exc.detail}]
    if exc.status >= 500:
        log.error("service error", code=exc.code, detail=exc.detail)
    return problem(exc.status, exc.detail, exc.code, headers, **extra)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": "body" if e.get("type") == "json_invalid" else _field(e.get("loc", ())),
               "message": e.get("msg", "invalid")} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return problem(422, detail, "invalid", errors=errors)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", path=request.url.path, method=request.method)
    return problem(500, "an internal error occurred; it has been logged", "internal")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MemvaultError, _memvault_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
