"""Request body limits, enforced before a handler reads the body.

Uploads (``POST …/files``) may be ``MAX_UPLOAD_MB`` (plus room for multipart
framing; the exact per-file check is in the files store); every other body is
held to ``MAX_BODY_KB``. A declared ``Content-Length`` over the limit is refused
at once; a body that grows past it while streaming is cut off, and whatever the
app would have answered is replaced by the 413.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem

__all__ = ["BodyLimitMiddleware"]

MULTIPART_SLACK = 1 << 20


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_upload: int, max_body: int) -> None:
        self.app = app
        self.max_upload = max_upload + MULTIPART_SLACK
        self.max_body = max_body

    def limit_for(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/files"):
            return self.max_upload
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
