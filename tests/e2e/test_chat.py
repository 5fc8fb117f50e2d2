"""``POST /api/chat`` against a real ``memvault serve``: a client that disconnects
mid-reply does not stop the reply, which completes and can be resumed through
``GET /api/messages/{id}/stream``. The model is the suite's fake server,
streaming slowly enough for the client to leave in the middle."""

from __future__ import annotations

import json
import time
from typing import Any

from memvault import Settings

from ..fake_llm import FakeLLM
from .server import Server, login

TOKENS = [f"token{i} " for i in range(60)]


def _first_event(lines: Any) -> dict[str, Any]:
    kind = None
    for line in lines:
        if line.startswith("event:"):
            kind = line.partition(":")[2].strip()
        elif line.startswith("data:") and kind == "message":
            data: dict[str, Any] = json.loads(line.partition(":")[2])
            return data
    raise AssertionError("no message event")


def test_a_disconnected_clients_reply_completes(settings: Settings) -> None:
    with FakeLLM() as fake:
        fake.tokens, fake.delay_s = TOKENS, 0.03  # ~2 s in all
        with Server(settings, embedder="hash", responder="openai",
                    llm_base_url=fake.url) as server, server.client() as c:
            auth = login(c, "chat@example.com")
            sid = c.post("/api/chat/sessions", headers=auth, json={
                "entity_id": c.post("/api/entities", headers=auth,
                                    json={"entity_name": "E"}).json()["entity_id"]}
                         ).json()["session_id"]
            with c.stream("POST", "/api/chat", headers=auth,
                          json={"session_id": sid, "message": "talk", "stream": True}) as r:
                assert r.status_code == 200
                head = _first_event(r.iter_lines())
            # The connection is closed: the client is gone after the first event.
            mid = head["message_id"]
            assert c.get(f"/api/messages/{mid}", headers=auth).json()["status"] == "streaming"
            deadline = time.monotonic() + 30
            while (msg := c.get(f"/api/messages/{mid}", headers=auth).json())["status"] \
                    == "streaming":
                assert time.monotonic() < deadline, msg
                time.sleep(0.1)
            assert (msg["status"], msg["content"]) == ("complete", "".join(TOKENS))
            # Resumed from the reply's own stream, it gives the same text.
            body = c.get(f"/api/messages/{mid}/stream", headers=auth, timeout=30).text
            chunks = [json.loads(line[5:]) for line in body.splitlines()
                      if line.startswith("data:") and '"seq"' in line and '"text"' in line]
            assert "".join(ch["text"] for ch in chunks) == msg["content"]
            user = c.get(f"/api/messages/{head['user_message_id']}", headers=auth).json()
            assert (user["role"], user["content"]) == ("user", "talk")

