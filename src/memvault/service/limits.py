"""Request body limits, enforced before a handler reads the body.

Uploads (``POST …/files``, ``POST /api/graphs/{graph}/import``) may be
``MAX_UPLOAD_MB`` (plus room for multipart framing; the exact check is in the
route or store); vector records (``POST /api/entities/{id}/chunks``) may be
``CHUNKS_BODY`` (or ``MAX_BODY_KB`` if that is larger); every other body is
held to ``MAX_BODY_KB``. A declared ``Content-Length`` over the limit is refused
at once; a body that grows past it while streaming is cut off, and whatever the
app would have answered is replaced by the 413.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem

__all__ = ["BodyLimitMiddleware", "CHUNKS_BODY"]

MULTIPART_SLACK = 1 << 20
#: 1,000 vector records with 1,536-dimension embeddings must fit: a float in
#: JSON takes up to ~25 bytes with its separator (``-1.2345678901234567e-05, ``),
#: so 1,000 × 1,536 × 25 ≈ 38 MB, leaving ~28 KB per record for text and metadata.
CHUNKS_BODY = 64 << 20
# Only the entity collection's route: ``/api/messages/{id}/chunks`` is a
# stream's chunks, held to the ordinary limit.
_CHUNKS_PATH = re.compile(r"/api/entities/[^/]+/chunks/?")
# A knowledge graph's import (seed 002's graph.json) is an upload too.
_GRAPH_IMPORT_PATH = re.compile(r"/api/graphs/[^/]+/import/?")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_upload: int, max_body: int,
                 max_chunks: int = CHUNKS_BODY) -> None:
        self.app = app
        self.max_upload = max_upload + MULTIPART_SLACK
        self.max_body = max_body
        self.max_chunks = max(max_chunks, max_body)

    def limit_for(self, scope: Scope) -> int:
        if scope["method"] == "POST":
            path = scope["path"]
            if path.rstrip("/").endswith("/files") or _GRAPH_IMPORT_PATH.fullmatch(path):
                return self.max_upload
            if _CHUNKS_PATH.fullmatch(path):
                return self.max_chunks
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await self._reject(scope, receive, send, limit)
                    return
        state: dict[str, Any] = {"seen": 0, "over": False, "sent": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                if not state["sent"]:
                    state["sent"] = True
                    await self._reject(scope, receive, send, limit, drain=False)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["sent"]:
            await self._reject(scope, receive, send, limit, drain=False)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int,
                      drain: bool = True) -> None:
        response = problem(413, f"request body is over the limit of {limit} bytes", "too_large",
                           headers={"Connection": "close"})
        await response(scope, receive, send)
