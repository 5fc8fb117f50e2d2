"""Issue 7's restart proof: a knowledge graph (nodes, edges, patterns, counts,
traversal answers, snapshots) is identical after ``memvault serve`` stops and
starts again."""

from __future__ import annotations

from typing import Any

import httpx

from memvault import Settings

from .server import Server, login


def _state(c: httpx.Client, h: dict[str, str]) -> dict[str, Any]:
    get = lambda path: c.get(path, headers=h).json()  # noqa: E731
    return {"info": get("/api/graphs/kg"), "export": get("/api/graphs/kg/export"),
            "nodes": get("/api/graphs/kg/nodes?limit=200"),
            "edges": get("/api/graphs/kg/edges?limit=200"),
            "patterns": get("/api/graphs/kg/patterns"),
            "neighbors": get("/api/graphs/kg/nodes/n0/neighbors?direction=both"),
            "influences": get("/api/graphs/kg/nodes/n5/influences"),
            "path": get("/api/graphs/kg/path?from=n0&to=n4&direction=both"),
            "subgraph": get("/api/graphs/kg/nodes/n0/subgraph?depth=3"),
            "snapshots": get("/api/graphs/kg/snapshots")}


def test_restart_keeps_graph_identical(settings: Settings) -> None:
    with Server(settings) as srv, srv.client() as c:
        h = login(c, "graph@example.com")
        r = c.post("/api/graphs/kg/batch", headers=h, json={
            "nodes": [{"id": f"n{i}", "type": "even" if i % 2 == 0 else "odd",
                       "data": {"i": i, "name": f"nöde {i}"}} for i in range(10)],
            "edges": [{"from": f"n{i}", "to": f"n{(i * 3 + 1) % 10}", "type": "next",
                       "strength": i / 10} for i in range(10)],
            "patterns": [{"id": "p", "type": "T", "match": {"type": "even"}}]})
        assert r.status_code == 200, r.text
        assert c.post("/api/graphs/kg/snapshots", headers=h,
                      json={"label": "v1"}).status_code == 201
        c.patch("/api/graphs/kg/nodes/n1", headers=h, json={"data": {"i": None}})
        before = _state(c, h)
        assert before["path"]["length"] >= 1
    with Server(settings) as srv, srv.client() as c:
        h = login(c, "graph@example.com")
        assert _state(c, h) == before
        # The snapshot taken before the restart still restores.
        sid = before["snapshots"]["items"][0]["id"]
        assert c.post(f"/api/graphs/kg/snapshots/{sid}/restore",
                      headers=h).status_code == 200
        assert c.get("/api/graphs/kg/nodes/n1", headers=h).json()["data"]["i"] == 1
