"""The isolation matrix: another user's ids are 404 on every route, never 403,
and nothing of theirs changes."""

from __future__ import annotations

from fastapi.testclient import TestClient

from .conftest import register


def test_second_user_gets_404_everywhere(client: TestClient, auth: dict[str, str]) -> None:
    client.post("/api/entities", headers=auth, json={"entity_id": "mine", "entity_name": "M"})
    doc = client.post("/api/entities/mine/files", headers=auth,
                      files=[("files", ("a.txt", b"secret", "text/plain"))]).json()["items"][0]
    did = doc["doc_id"]
    cid = client.post("/api/conversations", headers=auth, json={"entity_id": "mine"}).json()["id"]
    client.post(f"/api/conversations/{cid}/messages", headers=auth,
                json={"role": "user", "content": "private"})
    mid = client.post(f"/api/conversations/{cid}/messages", headers=auth,
                      json={"role": "assistant", "status": "streaming"}).json()["id"]
    client.post(f"/api/messages/{mid}/chunks", headers=auth, json={"seq": 1, "text": "x"})

    other = register(client, "intruder@example.com")
    routes = [
        ("GET", "/api/entities/mine", None), ("PATCH", "/api/entities/mine", {"entity_name": "z"}),
        ("DELETE", "/api/entities/mine", None),
        ("GET", "/api/entities/mine/files", None),
        ("GET", f"/api/entities/mine/files/{did}", None),
        ("GET", f"/api/entities/mine/files/{did}/content", None),
        ("DELETE", f"/api/entities/mine/files/{did}", None),
        ("GET", "/api/entities/mine/sessions", None),
        ("GET", f"/api/conversations/{cid}", None),
        ("GET", f"/api/conversations/{cid}?include=messages", None),
        ("PATCH", f"/api/conversations/{cid}", {"title": "z"}),
        ("DELETE", f"/api/conversations/{cid}", None),
        ("GET", f"/api/conversations/{cid}/messages", None),
        ("POST", f"/api/conversations/{cid}/messages", {"role": "user", "content": "z"}),
        ("POST", "/api/conversations", {"entity_id": "mine"}),
        ("GET", f"/api/messages/{mid}", None),
        ("POST", f"/api/messages/{mid}/chunks", {"seq": 2, "text": "z"}),
        ("POST", f"/api/messages/{mid}/heartbeat", None),
        ("POST", f"/api/messages/{mid}/complete", None),
        ("GET", f"/api/messages/{mid}/stream", None),
        ("GET", f"/api/chat/sessions/{cid}", None),
        ("GET", f"/api/chat/sessions/{cid}/messages", None),
        ("DELETE", f"/api/chat/sessions/{cid}", None),
        ("POST", "/api/chat/sessions", {"entity_id": "mine"}),
    ]
    for method, path, body in routes:
        r = client.request(method, path, headers=other, json=body)
        assert r.status_code == 404, (method, path, r.status_code)
    r = client.post("/api/entities/mine/files", headers=other,
                    files=[("files", ("b.txt", b"b", "text/plain"))])
    assert r.status_code == 404
    assert client.get("/api/entities", headers=other).json()["items"] == []
    assert client.get("/api/conversations", headers=other).json()["items"] == []
    # Untouched for the owner.
    assert client.get("/api/entities/mine", headers=auth).json()["document_count"] == 1
    full = client.get(f"/api/conversations/{cid}?include=messages", headers=auth).json()
    assert full["message_count"] == 2 and full["title"] is None
    assert client.get(f"/api/messages/{mid}", headers=auth).json()["content"] == "x"
