"""Graph export, import (JSON body and multipart part ``file``) and snapshots
over HTTP, on every backend."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

_GRAPH = {"nodes": {"A": {"id": "A", "type": "stock", "data": {"p": 1.5},
                          "created_at": "2025-01-06T09:00:00+00:00"},
                    "B": {"id": "B", "type": "sector", "data": {},
                          "created_at": "2025-01-06T09:00:00+00:00"}},
          "edges": [{"from": "B", "to": "A", "type": "contains", "strength": 0.7,
                     "created_at": "2025-01-06T09:00:00+00:00"}],
          "patterns": {"p1": {"type": "T", "description": "d", "trigger_conditions": ["x"],
                              "confidence": 0.5}},
          "metadata": {"created": "2025-01-06T09:00:00+00:00",
                       "modified": "2025-01-07T09:00:00+00:00",
                       "stats": {"nodes": 2, "edges": 1}}}


def _content(doc: dict[str, object]) -> dict[str, object]:
    return {k: doc[k] for k in ("nodes", "edges", "patterns")}


def test_import_json_and_multipart_then_export(client: TestClient,
                                               auth: dict[str, str]) -> None:
    r = client.post("/api/graphs/g1/import?mode=replace", headers=auth, json=_GRAPH)
    assert r.status_code == 200, r.text
    assert r.json() == {"mode": "replace", "nodes": 2, "edges": 1, "patterns": 1}
    out = client.get("/api/graphs/g1/export", headers=auth)
    assert out.status_code == 200 and out.headers["content-type"] == "application/json"
    assert _content(out.json()) == _content(_GRAPH)
    assert out.json()["metadata"]["created"] == _GRAPH["metadata"]["created"]  # type: ignore[index]
    r = client.post("/api/graphs/g2/import", headers=auth,
                    files={"file": ("graph.json", out.content, "application/json")})
    assert r.status_code == 200, r.text
    assert _content(client.get("/api/graphs/g2/export", headers=auth).json()) == _content(_GRAPH)
    bad = client.post("/api/graphs/g2/import", headers=auth, content=b"{nope")
    assert bad.status_code == 422
    missing = client.post("/api/graphs/g2/import", headers=auth,
                          files={"other": ("x.json", b"{}", "application/json")})
    assert missing.status_code == 422
    assert client.get("/api/graphs/nope/export", headers=auth).status_code == 404


def test_snapshot_restore_delete(client: TestClient, auth: dict[str, str]) -> None:
    client.post("/api/graphs/g/import", headers=auth, json=_GRAPH)
    snap = client.post("/api/graphs/g/snapshots", headers=auth, json={"label": "v1"})
    assert snap.status_code == 201, snap.text
    body = snap.json()
    assert (body["label"], body["node_count"], body["edge_count"]) == ("v1", 2, 1)
    before = client.get("/api/graphs/g/export", headers=auth).json()
    client.delete("/api/graphs/g/nodes/A", headers=auth)
    r = client.post(f"/api/graphs/g/snapshots/{body['id']}/restore", headers=auth)
    assert r.status_code == 200 and r.json()["node_count"] == 2
    assert _content(client.get("/api/graphs/g/export", headers=auth).json()) == _content(before)
    assert client.post("/api/graphs/g/snapshots", headers=auth).status_code == 201
    listed = client.get("/api/graphs/g/snapshots", headers=auth).json()["items"]
    assert len(listed) == 2 and listed[1]["id"] == body["id"]
    assert client.delete(f"/api/graphs/g/snapshots/{body['id']}",
                         headers=auth).status_code == 204
    assert client.delete(f"/api/graphs/g/snapshots/{body['id']}",
                         headers=auth).status_code == 404
    assert client.post("/api/graphs/g/snapshots", headers=auth,
                       json={"label": 5}).status_code == 422
    assert json.loads(json.dumps(listed))  # plain JSON
