"""Conversations, messages, chunks and SSE over HTTP, plus seed 000's session paths."""

from __future__ import annotations

import json
from datetime import datetime

from fastapi.testclient import TestClient

from .conftest import register


def _sse(text: str) -> list[tuple[str | None, str, dict]]:  # type: ignore[type-arg]
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.lstrip(" ")
        if "event" in fields:
            events.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return events


def test_conversation_crud_and_messages(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/api/conversations", headers=auth,
                    json={"title": "Plan", "participants": ["researcher", "critic"],
                          "metadata": {"x": 1}})
    assert r.status_code == 201
    conv = r.json()
    for field in ("id", "entity_id", "title", "participants", "metadata", "created_at",
                  "updated_at", "message_count", "last_message_at"):
        assert field in conv
    cid = conv["id"]
    for i, role in enumerate(["user", "assistant", "system", "tool"]):
        r = client.post(f"/api/conversations/{cid}/messages", headers=auth,
                        json={"role": role, "content": f"m{i}", "author": "a", "metadata": {}})
        assert r.status_code == 201 and r.json()["status"] == "complete"
    page = client.get(f"/api/conversations/{cid}/messages?limit=3", headers=auth).json()
    assert [m["content"] for m in page["items"]] == ["m0", "m1", "m2"]
    rest = client.get(f"/api/conversations/{cid}/messages",
                      params={"cursor": page["next_cursor"]}, headers=auth).json()
    assert [m["content"] for m in rest["items"]] == ["m3"] and rest["next_cursor"] is None
    first = page["items"][0]["id"]
    after = client.get(f"/api/conversations/{cid}/messages", params={"after": first},
                       headers=auth).json()
    assert [m["content"] for m in after["items"]] == ["m1", "m2", "m3"]
    full = client.get(f"/api/conversations/{cid}?include=messages", headers=auth).json()
    assert full["message_count"] == 4 and len(full["messages"]) == 4
    r = client.patch(f"/api/conversations/{cid}", headers=auth, json={"title": "New"})
    assert r.json()["title"] == "New" and r.json()["participants"] == ["researcher", "critic"]
    listed = client.get("/api/conversations", headers=auth).json()
    assert [c["id"] for c in listed["items"]] == [cid]
    assert client.delete(f"/api/conversations/{cid}", headers=auth).status_code == 204
    assert client.get(f"/api/conversations/{cid}", headers=auth).status_code == 404


def test_streaming_over_http(client: TestClient, auth: dict[str, str]) -> None:
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    r = client.post(f"/api/conversations/{cid}/messages", headers=auth,
                    json={"role": "assistant", "status": "streaming", "author": "researcher"})
    assert r.status_code == 201 and r.json()["status"] == "streaming"
    mid = r.json()["id"]
    assert client.post(f"/api/messages/{mid}/chunks", headers=auth,
                       json={"seq": 1, "text": "Hello"}).status_code == 200
    r = client.post(f"/api/messages/{mid}/chunks", headers=auth,
                    json={"chunks": [{"seq": 1, "text": "Hello"}, {"seq": 2, "text": ", "}]})
    assert r.status_code == 200 and r.json()["last_seq"] == 2
    assert client.post(f"/api/messages/{mid}/chunks", headers=auth,
                       json={"seq": 2, "text": "!!"}).status_code == 409
    assert client.post(f"/api/messages/{mid}/chunks", headers=auth,
                       json={"seq": 4, "text": "gap"}).status_code == 409
    so_far = client.get(f"/api/messages/{mid}", headers=auth).json()
    assert so_far["content"] == "Hello, " and so_far["status"] == "streaming"
    client.post(f"/api/messages/{mid}/chunks", headers=auth, json={"seq": 3, "text": "world"})
    done = client.post(f"/api/messages/{mid}/complete", headers=auth)
    assert done.status_code == 200 and done.json()["content"] == "Hello, world"
    assert client.post(f"/api/messages/{mid}/chunks", headers=auth,
                       json={"seq": 4, "text": "late"}).status_code == 409
    events = _sse(client.get(f"/api/messages/{mid}/stream", headers=auth).text)
    assert [(e[0], e[1]) for e in events] == [("1", "chunk"), ("2", "chunk"), ("3", "chunk"),
                                              (None, "done")]
    assert "".join(e[2]["text"] for e in events if e[1] == "chunk") == "Hello, world"
    assert events[-1][2]["status"] == "complete"
    resumed = _sse(client.get(f"/api/messages/{mid}/stream", headers={**auth,
                              "Last-Event-ID": "2"}).text)
    assert [e[2].get("text") for e in resumed] == ["world", None]
    by_query = _sse(client.get(f"/api/messages/{mid}/stream?after_seq=1", headers=auth).text)
    assert [e[2].get("seq") for e in by_query if e[1] == "chunk"] == [2, 3]


def test_failed_completion(client: TestClient, auth: dict[str, str]) -> None:
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    mid = client.post(f"/api/conversations/{cid}/messages", headers=auth,
                      json={"role": "assistant", "status": "streaming"}).json()["id"]
    client.post(f"/api/messages/{mid}/chunks", headers=auth, json={"seq": 1, "text": "half"})
    r = client.post(f"/api/messages/{mid}/complete", headers=auth, json={"status": "failed"})
    assert r.json()["status"] == "failed" and r.json()["content"] == "half"
    assert client.post(f"/api/messages/{mid}/complete", headers=auth).status_code == 409


def test_seed_000_chat_session_paths(client: TestClient, auth: dict[str, str]) -> None:
    client.post("/api/entities", headers=auth, json={"entity_id": "test_001", "entity_name": "T"})
    r = client.post("/api/chat/sessions", headers=auth, json={"entity_id": "test_001",
                                                              "title": "chat"})
    assert r.status_code == 201
    sid = r.json()["session_id"]
    assert r.json()["entity_id"] == "test_001"
    client.post(f"/api/conversations/{sid}/messages", headers=auth,
                json={"role": "user", "content": "hi"})
    got = client.get(f"/api/chat/sessions/{sid}", headers=auth).json()
    assert got["session_id"] == sid and [m["content"] for m in got["messages"]] == ["hi"]
    msgs = client.get(f"/api/chat/sessions/{sid}/messages", headers=auth).json()
    assert [m["content"] for m in msgs["items"]] == ["hi"]
    sessions = client.get("/api/entities/test_001/sessions", headers=auth).json()
    assert [s["session_id"] for s in sessions["items"]] == [sid]
    by_entity = client.get("/api/conversations?entity_id=test_001", headers=auth).json()
    assert [c["id"] for c in by_entity["items"]] == [sid]
    assert client.post("/api/chat/sessions", headers=auth,
                       json={"entity_id": "missing"}).status_code == 404
    assert client.get("/api/entities/missing/sessions", headers=auth).status_code == 404
    assert client.delete(f"/api/chat/sessions/{sid}", headers=auth).status_code == 204
    assert client.get(f"/api/chat/sessions/{sid}", headers=auth).status_code == 404


def test_deleting_an_entity_deletes_its_conversations(client: TestClient,
                                                      auth: dict[str, str]) -> None:
    client.post("/api/entities", headers=auth, json={"entity_id": "e", "entity_name": "E"})
    sid = client.post("/api/chat/sessions", headers=auth, json={"entity_id": "e"}).json()["id"]
    client.delete("/api/entities/e", headers=auth)
    assert client.get(f"/api/conversations/{sid}", headers=auth).status_code == 404


def test_heartbeat_keeps_an_http_stream_alive(client: TestClient, auth: dict[str, str]) -> None:
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    mid = client.post(f"/api/conversations/{cid}/messages", headers=auth,
                      json={"role": "assistant", "status": "streaming"}).json()["id"]
    r = client.post(f"/api/messages/{mid}/heartbeat", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message_id"] == mid and body["status"] == "streaming"
    first = datetime.fromisoformat(body["lease_expires_at"])
    assert first.tzinfo is not None
    again = client.post(f"/api/messages/{mid}/heartbeat", headers=auth).json()
    assert datetime.fromisoformat(again["lease_expires_at"]) >= first
    other = register(client, "heartbeat-other@example.com")
    r = client.post(f"/api/messages/{mid}/heartbeat", headers=other)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert client.post("/api/messages/nope/heartbeat", headers=auth).status_code == 404
    assert client.post(f"/api/messages/{mid}/heartbeat").status_code == 401
    client.post(f"/api/messages/{mid}/complete", headers=auth)
    r = client.post(f"/api/messages/{mid}/heartbeat", headers=auth)
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
