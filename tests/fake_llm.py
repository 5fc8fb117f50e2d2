"""A small OpenAI-compatible chat completions server of the test suite's own.

A real HTTP server on 127.0.0.1 (a thread of the test process, so a
``memvault serve`` subprocess can reach it too) that streams
``/v1/chat/completions`` as Server-Sent Events and, on demand, is slow,
stalls, fails at once, reports an error mid-stream or cuts the stream. Every
request body it gets is kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Behaviour = Literal["stream", "fail", "stall", "error_event", "cut"]

DEFAULT_TOKENS = ["The ", "documents ", "say ", "so ", "[1]", "."]


class FakeLLM:
    """Configure, then point ``MEMVAULT_LLM_BASE_URL`` at ``url``.

    Attributes:
        behaviour: ``stream`` (all tokens, then ``[DONE]``); ``fail`` (a 500
            with an OpenAI-style error body, no token); ``stall`` (``stall_after``
            tokens, then nothing until ``stop``, sending keep-alive comments
            every ``keepalive_s`` if set); ``error_event`` (``stall_after``
            tokens, then an ``error`` event); ``cut`` (``stall_after`` tokens,
            then the connection closes without ``[DONE]``).
        tokens: the content deltas to send.
        delay_s: pause before each token.
    """

    def __init__(self) -> None:
        self.behaviour: Behaviour = "stream"
        self.tokens: list[str] = list(DEFAULT_TOKENS)
        self.delay_s = 0.0
        self.stall_after = 2
        self.keepalive_s: float | None = None
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._released = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.headers.append(dict(self.headers))
                if not self.path.endswith("/chat/completions"):
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if fake.behaviour == "fail":
                    self._send_json(500, {"error": {"message": "the model is on fire",
                                                    "type": "server_error"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for line in fake._events():
                        self.wfile.write(line.encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send_json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-llm",
                                        daemon=True)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        event = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(event)}\n\n"

    def _events(self) -> Iterator[str]:
        yield self._chunk({"role": "assistant", "content": ""})
        limit = len(self.tokens) if self.behaviour == "stream" else self.stall_after
        for token in self.tokens[:limit]:
            if self.delay_s:
                time.sleep(self.delay_s)
            yield self._chunk({"content": token})
        if self.behaviour == "stream":
            yield self._chunk({}, "stop")
            yield "data: [DONE]\n\n"
        elif self.behaviour == "error_event":
            yield f"data: {json.dumps({'error': {'message': 'rate limited mid-stream'}})}\n\n"
        elif self.behaviour == "stall":
            while not self._released.wait(self.keepalive_s or 3600):
                yield ": keep-alive\n\n"
        # "cut": return, and the connection closes with no [DONE]

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
