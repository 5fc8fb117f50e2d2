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
    client.post("/api/entities/mine/chunks", headers=auth,
                json={"items": [{"id": "rec", "text": "a private record"}]})
    xid = client.post(f"/api/documents/{did}/extractions", headers=auth,
                      json={"schema": "s", "data": {"secret": 1}}).json()["id"]
    aid = client.post(f"/api/documents/{did}/annotations", headers=auth,
                      json={"label": "private", "start": 0, "end": 6}).json()["id"]
    client.post("/api/graphs/kg/batch", headers=auth, json={
        "nodes": [{"id": "a", "type": "t"}, {"id": "b", "type": "t"}],
        "edges": [{"from": "a", "to": "b", "type": "e"}], "patterns": [{"id": "p", "type": "T"}]})
    sid = client.post("/api/graphs/kg/snapshots", headers=auth, json={"label": "v1"}).json()["id"]
    agent_id = client.post("/api/agents", headers=auth, json={"name": "mine"}).json()["id"]
    run_id = client.post("/api/runs", headers=auth, json={"workflow": "wf"}).json()["id"]
    client.post(f"/api/runs/{run_id}/steps", headers=auth, json={"action": "private"})

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
        ("GET", "/api/entities/mine/chunks", None),
        ("GET", "/api/entities/mine/chunks/rec", None),
        ("DELETE", "/api/entities/mine/chunks/rec", None),
        ("POST", "/api/entities/mine/chunks", {"items": [{"text": "planted"}]}),
        ("POST", "/api/search", {"entity_id": "mine", "query": "private"}),
        ("GET", f"/api/documents/{did}", None),
        ("GET", f"/api/documents/{did}/extractions", None),
        ("POST", f"/api/documents/{did}/extractions", {"schema": "s", "data": {}}),
        ("GET", f"/api/extractions/{xid}", None),
        ("DELETE", f"/api/extractions/{xid}", None),
        ("GET", f"/api/documents/{did}/annotations", None),
        ("POST", f"/api/documents/{did}/annotations", {"label": "planted"}),
        ("GET", f"/api/annotations/{aid}", None),
        ("PATCH", f"/api/annotations/{aid}", {"label": "z"}),
        ("DELETE", f"/api/annotations/{aid}", None),
        ("POST", "/api/chat", {"session_id": cid, "message": "tell me"}),
        ("POST", "/api/chat", {"session_id": cid, "message": "tell me", "stream": True}),
        ("GET", "/api/graphs/kg", None), ("DELETE", "/api/graphs/kg", None),
        ("GET", "/api/graphs/kg/nodes", None), ("GET", "/api/graphs/kg/nodes/a", None),
        ("PATCH", "/api/graphs/kg/nodes/a", {"data": {}}),
        ("DELETE", "/api/graphs/kg/nodes/a", None),
        ("GET", "/api/graphs/kg/nodes/a/neighbors", None),
        ("GET", "/api/graphs/kg/nodes/b/influences", None),
        ("GET", "/api/graphs/kg/nodes/a/subgraph", None),
        ("GET", "/api/graphs/kg/edges", None),
        ("PUT", "/api/graphs/kg/edges", {"from": "a", "to": "b", "type": "e"}),
        ("DELETE", "/api/graphs/kg/edges?from=a&to=b&type=e", None),
        ("GET", "/api/graphs/kg/path?from=a&to=b", None),
        ("GET", "/api/graphs/kg/patterns", None), ("GET", "/api/graphs/kg/patterns/p", None),
        ("DELETE", "/api/graphs/kg/patterns/p", None),
        ("GET", "/api/graphs/kg/patterns/p/nodes", None),
        ("GET", "/api/graphs/kg/export", None),
        ("POST", "/api/graphs/kg/snapshots", {}), ("GET", "/api/graphs/kg/snapshots", None),
        ("POST", f"/api/graphs/kg/snapshots/{sid}/restore", None),
        ("DELETE", f"/api/graphs/kg/snapshots/{sid}", None),
        ("GET", f"/api/agents/{agent_id}", None),
        ("PATCH", f"/api/agents/{agent_id}", {"name": "z"}),
        ("DELETE", f"/api/agents/{agent_id}", None),
        ("GET", f"/api/runs/{run_id}", None),
        ("POST", f"/api/runs/{run_id}/steps", {"action": "z"}),
        ("POST", f"/api/runs/{run_id}/heartbeat", None),
        ("POST", f"/api/runs/{run_id}/complete", {"status": "cancelled"}),
        ("DELETE", f"/api/runs/{run_id}", None),
    ]
    for method, path, body in routes:
        r = client.request(method, path, headers=other, json=body)
        assert r.status_code == 404, (method, path, r.status_code)
    r = client.post("/api/entities/mine/files", headers=other,
                    files=[("files", ("b.txt", b"b", "text/plain"))])
    assert r.status_code == 404
    assert client.get("/api/entities", headers=other).json()["items"] == []
    assert client.get("/api/conversations", headers=other).json()["items"] == []
    assert client.get("/api/graphs", headers=other).json()["items"] == []
    assert client.get("/api/agents", headers=other).json()["items"] == []
    assert client.get("/api/runs", headers=other).json()["items"] == []
    run = client.get(f"/api/runs/{run_id}", headers=auth).json()
    assert (run["status"], run["step_count"]) == ("running", 1)
    assert client.get("/api/graphs/kg", headers=auth).json()["edge_count"] == 1
    assert [s["id"] for s in client.get("/api/graphs/kg/snapshots", headers=auth)
            .json()["items"]] == [sid]
    # Untouched for the owner.
    assert client.get("/api/entities/mine", headers=auth).json()["document_count"] == 1
    full = client.get(f"/api/conversations/{cid}?include=messages", headers=auth).json()
    assert full["message_count"] == 2 and full["title"] is None
    assert client.get(f"/api/messages/{mid}", headers=auth).json()["content"] == "x"
    doc = client.get(f"/api/documents/{did}", headers=auth).json()
    assert (doc["extraction_count"], doc["annotation_count"]) == (1, 1)
    assert client.get(f"/api/annotations/{aid}", headers=auth).json()["label"] == "private"
    records = client.get("/api/entities/mine/chunks", headers=auth).json()["items"]
    assert [r["chunk_id"] for r in records if r["doc_id"] is None] == ["rec"]
