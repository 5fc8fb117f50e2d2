"""``/api/graphs`` over HTTP: status codes, wire names (``from``), filters as
query parameters, problem+json errors, and isolation between users."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from .conftest import register

G = "/api/graphs/markets"


def _seed(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post(f"{G}/batch", headers=auth, json={
        "nodes": [{"id": "AAPL", "type": "stock", "data": {"symbol": "AAPL", "price": 255.5}},
                  {"id": "MSFT", "type": "stock", "data": {"price": 410, "div": True}},
                  {"id": "GDP", "type": "indicator", "data": {"unit": None}},
                  {"id": "TECH", "type": "sector"}],
        "edges": [{"from": "GDP", "to": "TECH", "type": "favors", "strength": 0.8},
                  {"from": "TECH", "to": "AAPL", "type": "contains", "strength": 0.7},
                  {"from": "TECH", "to": "MSFT", "type": "contains", "strength": 0.6}],
        "patterns": [{"id": "p1", "type": "REGIME_SHIFT", "confidence": 0.75,
                      "trigger_conditions": ["CPI > 4%"], "match": {"type": "stock"}}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"nodes": 4, "edges": 3, "patterns": 1, "deleted_nodes": 0,
                        "deleted_edges": 0}


def test_graph_lifecycle(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get(G, headers=auth).status_code == 404
    r = client.put(G, headers=auth, json={"description": "finance", "metadata": {"v": 1}})
    assert r.status_code == 201 and r.json()["name"] == "markets"
    r = client.put(G, headers=auth, json={"description": "again"})
    assert r.status_code == 200 and r.json()["description"] == "again"
    _seed(client, auth)
    body = client.get(G, headers=auth).json()
    assert {k: body[k] for k in ("node_count", "edge_count", "pattern_count", "node_types",
                                 "edge_types")} == {
        "node_count": 4, "edge_count": 3, "pattern_count": 1,
        "node_types": {"indicator": 1, "sector": 1, "stock": 2},
        "edge_types": {"contains": 2, "favors": 1}}
    assert set(body) == {"name", "description", "metadata", "node_count", "edge_count",
                         "pattern_count", "node_types", "edge_types", "created_at",
                         "modified_at"}
    assert [g["name"] for g in client.get("/api/graphs", headers=auth).json()["items"]] == [
        "markets"]
    assert client.delete(G, headers=auth).status_code == 204
    assert client.delete(G, headers=auth).status_code == 404
    assert client.put("/api/graphs/bad name", headers=auth, json={}).status_code == 422
    assert client.put(G, headers=auth, json={"unknown": 1}).status_code == 422


def test_nodes(client: TestClient, auth: dict[str, str]) -> None:
    r = client.put(f"{G}/nodes/TSLA", headers=auth, json={"type": "stock",
                                                          "data": {"price": 460}})
    assert r.status_code == 201 and r.json()["data"] == {"price": 460}
    created = r.json()["created_at"]
    r = client.put(f"{G}/nodes/TSLA", headers=auth, json={"type": "stock",
                                                          "data": {"price": 470, "pe": 1}})
    assert r.status_code == 200 and r.json()["created_at"] == created
    r = client.patch(f"{G}/nodes/TSLA", headers=auth, json={"data": {"pe": None, "x": "y"}})
    assert r.status_code == 200 and r.json()["data"] == {"price": 470, "x": "y"}
    assert set(r.json()) == {"id", "type", "data", "created_at", "modified_at"}
    assert client.get(f"{G}/nodes/TSLA", headers=auth).json() == r.json()
    assert client.delete(f"{G}/nodes/TSLA", headers=auth).status_code == 204
    for method in ("GET", "DELETE"):
        assert client.request(method, f"{G}/nodes/TSLA", headers=auth).status_code == 404
    assert client.patch(f"{G}/nodes/TSLA", headers=auth, json={}).status_code == 404
    r = client.put(f"{G}/nodes/T", headers=auth, json={"type": ""})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert client.put(f"{G}/nodes/T", headers=auth, json={"data": {}}).status_code == 422


def test_node_filters(client: TestClient, auth: dict[str, str]) -> None:
    _seed(client, auth)

    def ids(query: str) -> list[str]:
        r = client.get(f"{G}/nodes?{query}", headers=auth)
        assert r.status_code == 200, r.text
        return [n["id"] for n in r.json()["items"]]

    assert ids("type=stock") == ["AAPL", "MSFT"]
    assert ids("data.price=410") == ["MSFT"]
    assert ids("data.price=255.5&type=stock") == ["AAPL"]
    assert ids("data.div=true") == ["MSFT"]
    assert ids("data.unit=null") == ["GDP"]
    assert ids("data.symbol=AAPL") == ["AAPL"]
    assert ids("data.symbol=AAPL&data.price=410") == []
    page = client.get(f"{G}/nodes?limit=3", headers=auth).json()
    rest = client.get(f"{G}/nodes?cursor={page['next_cursor']}", headers=auth).json()
    assert len(page["items"]) == 3 and [n["id"] for n in rest["items"]] == ["TECH"]
    assert client.get("/api/graphs/none/nodes", headers=auth).status_code == 404


def test_edges_and_neighbourhoods(client: TestClient, auth: dict[str, str]) -> None:
    _seed(client, auth)
    r = client.put(f"{G}/edges", headers=auth,
                   json={"from": "GDP", "to": "AAPL", "type": "affects", "data": {"k": 1}})
    assert r.status_code == 201 and r.json()["from"] == "GDP" and r.json()["strength"] == 1.0
    assert set(r.json()) == {"from", "to", "type", "strength", "data", "created_at",
                             "modified_at"}
    r = client.put(f"{G}/edges", headers=auth,
                   json={"from": "GDP", "to": "AAPL", "type": "affects", "strength": 0.2})
    assert r.status_code == 200 and r.json()["data"] == {}
    r = client.put(f"{G}/edges", headers=auth, json={"from": "GDP", "to": "NOPE", "type": "x"})
    assert r.status_code == 422 and "NOPE" in r.json()["detail"]
    assert client.put("/api/graphs/none/edges", headers=auth,
                      json={"from": "a", "to": "b", "type": "x"}).status_code == 404
    items = client.get(f"{G}/edges?from=TECH", headers=auth).json()["items"]
    assert [(e["from"], e["to"]) for e in items] == [("TECH", "AAPL"), ("TECH", "MSFT")]
    items = client.get(f"{G}/edges?to=AAPL&min_strength=0.5", headers=auth).json()["items"]
    assert [e["from"] for e in items] == ["TECH"]
    r = client.get(f"{G}/nodes/TECH/neighbors?direction=both", headers=auth)
    assert [(n["node"]["id"], n["edge"]["from"]) for n in r.json()["items"]] == [
        ("GDP", "GDP"), ("AAPL", "TECH"), ("MSFT", "TECH")]
    r = client.get(f"{G}/nodes/TECH/neighbors?type=contains&limit=1", headers=auth)
    assert [n["node"]["id"] for n in r.json()["items"]] == ["AAPL"]
    assert client.get(f"{G}/nodes/TECH/neighbors?direction=up",
                      headers=auth).status_code == 422
    r = client.get(f"{G}/nodes/AAPL/influences", headers=auth)
    assert r.json() == {"items": [{"from": "TECH", "type": "contains", "strength": 0.7},
                                  {"from": "GDP", "type": "affects", "strength": 0.2}]}
    params = "from=GDP&to=AAPL&type=affects"
    assert client.delete(f"{G}/edges?{params}", headers=auth).status_code == 204
    assert client.delete(f"{G}/edges?{params}", headers=auth).status_code == 404
    assert client.delete(f"{G}/edges?from=GDP", headers=auth).status_code == 422


def test_path_and_subgraph(client: TestClient, auth: dict[str, str]) -> None:
    _seed(client, auth)
    r = client.get(f"{G}/path?from=GDP&to=MSFT", headers=auth)
    assert r.status_code == 200
    body = r.json()
    assert body["nodes"] == ["GDP", "TECH", "MSFT"] and body["length"] == 2
    assert [e["from"] for e in body["edges"]] == ["GDP", "TECH"]
    assert client.get(f"{G}/path?from=MSFT&to=GDP", headers=auth).status_code == 404
    assert client.get(f"{G}/path?from=MSFT&to=GDP&direction=both",
                      headers=auth).json()["length"] == 2
    assert client.get(f"{G}/path?from=GDP&to=MSFT&max_depth=1",
                      headers=auth).status_code == 404
    assert client.get(f"{G}/path?from=GDP&to=MSFT&max_depth=11",
                      headers=auth).status_code == 422
    r = client.get(f"{G}/nodes/TECH/subgraph?depth=1", headers=auth).json()
    assert [n["id"] for n in r["nodes"]] == ["TECH", "GDP", "AAPL", "MSFT"]
    assert len(r["edges"]) == 3 and r["truncated"] is False
    r = client.get(f"{G}/nodes/TECH/subgraph?limit=2", headers=auth).json()
    assert len(r["nodes"]) == 2 and r["truncated"] is True
    assert client.get(f"{G}/nodes/NOPE/subgraph", headers=auth).status_code == 404


def test_patterns(client: TestClient, auth: dict[str, str]) -> None:
    _seed(client, auth)
    r = client.put(f"{G}/patterns/p2", headers=auth, json={
        "type": "SIGNAL", "description": "dividend payers", "confidence": 0.5,
        "match": {"type": "stock", "data": {"div": True}}, "data": {"src": "x"}})
    assert r.status_code == 201 and r.json()["match"] == {"type": "stock",
                                                         "data": {"div": True}}
    assert client.put(f"{G}/patterns/p2", headers=auth,
                      json={"type": "SIGNAL", "match": {"type": "stock"}}).status_code == 200
    assert client.get(f"{G}/patterns/p1", headers=auth).json()["trigger_conditions"] == [
        "CPI > 4%"]
    r = client.get(f"{G}/patterns/p1/nodes?limit=1", headers=auth).json()
    assert [n["id"] for n in r["items"]] == ["AAPL"] and r["next_cursor"]
    assert [p["id"] for p in client.get(f"{G}/patterns?type=SIGNAL",
                                        headers=auth).json()["items"]] == ["p2"]
    assert client.put(f"{G}/patterns/p3", headers=auth,
                      json={"type": "X", "confidence": 1.5}).status_code == 422
    assert client.put(f"{G}/patterns/p3", headers=auth,
                      json={"type": "X", "match": {"nope": 1}}).status_code == 422
    assert client.delete(f"{G}/patterns/p2", headers=auth).status_code == 204
    for method, path in (("GET", "p2"), ("DELETE", "p2"), ("GET", "p2/nodes")):
        assert client.request(method, f"{G}/patterns/{path}", headers=auth).status_code == 404


def test_batch_all_or_nothing(client: TestClient, auth: dict[str, str]) -> None:
    _seed(client, auth)
    before = client.get(G, headers=auth).json()
    nodes_before = client.get(f"{G}/nodes", headers=auth).json()
    body: dict[str, Any] = {
        "nodes": [{"id": "NEW", "type": "t"}],
        "edges": [{"from": "NEW", "to": "AAPL", "type": "x"},
                  {"from": "NEW", "to": "GONE", "type": "x"},
                  {"from": "AAPL", "to": "NEW", "type": "x"}],
        "delete_nodes": ["MSFT"]}
    r = client.post(f"{G}/batch", headers=auth, json=body)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "edges[1].to"
    assert client.get(G, headers=auth).json() == before
    assert client.get(f"{G}/nodes", headers=auth).json() == nodes_before
    r = client.post(f"{G}/batch", headers=auth,
                    json={"nodes": [{"id": "A", "type": "t"}, {"id": "B"}]})
    assert r.status_code == 422 and "nodes.1" in r.json()["detail"]
    r = client.post(f"{G}/batch", headers=auth, json={"delete_nodes": ["x"] * 10_001})
    assert r.status_code == 422
    assert client.get(G, headers=auth).json() == before


def test_another_user_gets_404_on_every_graph_route(client: TestClient,
                                                    auth: dict[str, str]) -> None:
    _seed(client, auth)
    other = register(client, "intruder@example.com")
    routes: list[tuple[str, str, Any]] = [
        ("GET", G, None), ("DELETE", G, None),
        ("GET", f"{G}/nodes", None), ("GET", f"{G}/nodes?type=stock", None),
        ("GET", f"{G}/nodes/AAPL", None), ("PATCH", f"{G}/nodes/AAPL", {"data": {}}),
        ("DELETE", f"{G}/nodes/AAPL", None),
        ("GET", f"{G}/nodes/TECH/neighbors", None), ("GET", f"{G}/nodes/AAPL/influences", None),
        ("GET", f"{G}/nodes/TECH/subgraph", None),
        ("GET", f"{G}/edges", None), ("PUT", f"{G}/edges", {"from": "GDP", "to": "AAPL",
                                                            "type": "x"}),
        ("DELETE", f"{G}/edges?from=GDP&to=TECH&type=favors", None),
        ("GET", f"{G}/path?from=GDP&to=AAPL", None),
        ("GET", f"{G}/patterns", None), ("GET", f"{G}/patterns/p1", None),
        ("DELETE", f"{G}/patterns/p1", None), ("GET", f"{G}/patterns/p1/nodes", None),
    ]
    for method, path, body in routes:
        r = client.request(method, path, headers=other, json=body)
        assert r.status_code == 404, (method, path, r.status_code)
    assert client.get("/api/graphs", headers=other).json()["items"] == []
    # Writing under the same name makes the other user's own graph, apart from the owner's.
    assert client.put(f"{G}/nodes/AAPL", headers=other, json={"type": "x"}).status_code == 201
    assert client.get(G, headers=other).json()["node_count"] == 1
    mine = client.get(G, headers=auth).json()
    assert mine["node_count"] == 4 and mine["edge_count"] == 3 and mine["pattern_count"] == 1
    assert client.get(f"{G}/nodes/AAPL", headers=auth).json()["type"] == "stock"
