"""Vector records over HTTP (``/api/entities/{id}/chunks``, seed 003's store).

The hash embedder keeps these fast: they are about the HTTP layer (shapes,
limits, status codes); ranking quality is tested with the local model elsewhere.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from fastapi.testclient import TestClient

from memvault import Settings, Vault
from memvault.retrieval.embed_cache import CachedEmbedder
from memvault.retrieval.embedders import HashEmbedder
from memvault.service.limits import CHUNKS_BODY
from memvault.settings import revalidate

from .conftest import register

DIMS = 384  # the hash embedder's (and the local model's)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return revalidate(settings, embedder="hash")


def make_entity(client: TestClient, auth: dict[str, str], entity_id: str = "e") -> str:
    r = client.post("/api/entities", headers=auth,
                    json={"entity_id": entity_id, "entity_name": entity_id})
    assert r.status_code == 201, r.text
    return entity_id


def add(client: TestClient, auth: dict[str, str], entity_id: str,
        items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = client.post(f"/api/entities/{entity_id}/chunks", headers=auth, json={"items": items})
    assert r.status_code == 201, r.text
    made: list[dict[str, Any]] = r.json()["items"]
    return made


def list_all(client: TestClient, auth: dict[str, str], entity_id: str, limit: int = 200,
             **params: str) -> list[dict[str, Any]]:
    """Every record, page by page (checking that pages neither repeat nor skip)."""
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {"limit": limit, **params}
        if cursor:
            query["cursor"] = cursor
        r = client.get(f"/api/entities/{entity_id}/chunks", headers=auth, params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        seen += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return seen


def vector(seed: int, dims: int = DIMS) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(-1, 1) for _ in range(dims)]


def test_create_get_replace_delete(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    made = add(client, auth, eid, [
        {"id": "a", "text": "apples are red", "metadata": {"kind": "fruit", "n": 1}},
        {"text": "the sky is blue"},
        {"id": "given", "text": "own vector", "embedding": vector(1)},
    ])
    assert [m["chunk_id"] for m in made][::2] == ["a", "given"]
    generated = made[1]["chunk_id"]
    assert generated and generated not in ("a", "given")
    first = made[0]
    assert {"chunk_id", "entity_id", "doc_id", "position", "start", "end", "page", "text",
            "metadata", "model_id", "dimensions", "created_at"} <= set(first)
    assert first["entity_id"] == eid and first["doc_id"] is None
    assert first["metadata"] == {"kind": "fruit", "n": 1} and first["dimensions"] == DIMS
    assert first["model_id"] and made[2]["model_id"] is None  # the client's own embedding
    assert made[1]["metadata"] == {}

    r = client.get(f"/api/entities/{eid}/chunks/a", headers=auth)
    assert r.status_code == 200 and r.json() == first

    # The same id again replaces the record: still one "a", with the new text.
    again = add(client, auth, eid, [{"id": "a", "text": "apples are green"}])
    assert again[0]["chunk_id"] == "a" and again[0]["metadata"] == {}
    assert client.get(f"/api/entities/{eid}/chunks/a", headers=auth).json()["text"] == \
        "apples are green"
    listed = list_all(client, auth, eid)
    assert sorted(m["chunk_id"] for m in listed) == sorted(["a", generated, "given"])

    assert client.delete(f"/api/entities/{eid}/chunks/a", headers=auth).status_code == 204
    assert client.get(f"/api/entities/{eid}/chunks/a", headers=auth).status_code == 404
    assert client.delete(f"/api/entities/{eid}/chunks/a", headers=auth).status_code == 404
    assert client.get(f"/api/entities/{eid}/chunks/nope", headers=auth).status_code == 404
    assert {m["chunk_id"] for m in list_all(client, auth, eid)} == {generated, "given"}
    # A missing entity is 404 on every route.
    for method, path in (("GET", "/api/entities/none/chunks"),
                         ("GET", "/api/entities/none/chunks/a"),
                         ("DELETE", "/api/entities/none/chunks/a")):
        assert client.request(method, path, headers=auth).status_code == 404, path
    r = client.post("/api/entities/none/chunks", headers=auth, json={"items": [{"text": "x"}]})
    assert r.status_code == 404


def test_list_doc_filter_and_paging(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    text = "\n\n".join(f"Paragraph {i} talks about topic number {i} at some length. " * 8
                       for i in range(12))
    r = client.post(f"/api/entities/{eid}/files?wait=true", headers=auth,
                    files=[("files", ("notes.txt", text.encode(), "text/plain"))])
    assert r.status_code == 201, r.text
    doc = r.json()["items"][0]
    assert doc["status"] == "indexed" and doc["chunk_count"] >= 1, doc
    own = add(client, auth, eid, [{"id": f"r{i}", "text": f"record {i}"} for i in range(5)])

    of_doc = list_all(client, auth, eid, doc_id=doc["doc_id"])
    assert len(of_doc) == doc["chunk_count"]
    assert all(c["doc_id"] == doc["doc_id"] for c in of_doc)
    assert [c["position"] for c in of_doc] == list(range(len(of_doc)))
    assert all(0 <= c["start"] < c["end"] for c in of_doc)
    assert list_all(client, auth, eid, doc_id="no-such-doc") == []

    everything = list_all(client, auth, eid)
    paged = list_all(client, auth, eid, limit=2)
    assert [c["chunk_id"] for c in paged] == [c["chunk_id"] for c in everything]
    assert len(everything) == doc["chunk_count"] + len(own)
    assert {c["chunk_id"] for c in everything} >= {c["chunk_id"] for c in own}

    for bad in ("limit=0", "limit=201", "cursor=%25%25%25"):
        r = client.get(f"/api/entities/{eid}/chunks?{bad}", headers=auth)
        assert r.status_code == 422, bad


def test_thousand_records_per_call(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    items = [{"id": f"r{i}", "text": f"record number {i}"} for i in range(1001)]
    r = client.post(f"/api/entities/{eid}/chunks", headers=auth, json={"items": items})
    assert r.status_code in (413, 422), r.text
    assert list_all(client, auth, eid) == []
    made = add(client, auth, eid, items[:1000])
    assert len(made) == 1000
    assert len(list_all(client, auth, eid)) == 1000


def test_embedding_dimensions(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    for bad in (vector(1, 10), vector(1, DIMS + 1), []):
        r = client.post(f"/api/entities/{eid}/chunks", headers=auth, json={"items": [
            {"id": "ok", "text": "fine"}, {"id": "bad", "text": "x", "embedding": bad}]})
        assert r.status_code == 422, (len(bad), r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert list_all(client, auth, eid) == []  # nothing of the call was stored
    made = add(client, auth, eid, [{"id": "ok", "text": "fine", "embedding": vector(2)}])
    assert made[0]["dimensions"] == DIMS and made[0]["model_id"] is None


def test_bad_bodies(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    bodies: list[Any] = [
        {}, {"items": []}, {"items": "x"}, {"items": [{}]}, {"items": [{"text": 5}]},
        {"items": [{"text": "x", "embedding": ["a"] * DIMS}]},
        {"items": [{"text": "x", "embedding": [True] * DIMS}]},
        {"items": [{"text": "x", "metadata": [1]}]},
        {"items": [{"text": "x", "id": 7}]},
        {"items": [{"text": "x", "vector": vector(1)}]},  # unknown field: refused, not ignored
        {"items": [{"text": "x"}], "extra": 1},
        {"items": [{"text": ""}]}, {"items": [{"text": "x", "id": ""}]},
    ]
    for body in bodies:
        r = client.post(f"/api/entities/{eid}/chunks", headers=auth, json=body)
        assert r.status_code == 422, (body, r.status_code)
    r = client.post(f"/api/entities/{eid}/chunks", headers={**auth, "Content-Type":
                    "application/json"}, content=b'{"items": [{"text": "x", "embedding": '
                    + json.dumps([1.0] * (DIMS - 1)).encode()[:-1] + b', NaN]}]}')
    assert r.status_code == 422
    assert list_all(client, auth, eid) == []


def test_body_limit_admits_1000_records_of_1536_dims(client: TestClient,
                                                     auth: dict[str, str]) -> None:
    """The records route's own limit admits the issue's largest call (this vault
    is 384-d, so the body gets past the limit and is then refused for its
    dimensions, with nothing stored); other routes keep the ordinary limit."""
    eid = make_entity(client, auth)
    rng = random.Random(7)
    items = [{"id": f"r{i}", "text": f"record {i} " * 20,
              "embedding": [rng.uniform(-1, 1) for _ in range(1536)]} for i in range(1000)]
    body = json.dumps({"items": items}).encode()  # ~30 MB, over MAX_BODY_KB
    assert 4096 << 10 < len(body) < CHUNKS_BODY
    r = client.post(f"/api/entities/{eid}/chunks", headers={
        **auth, "Content-Type": "application/json"}, content=body)
    assert r.status_code == 422, r.text[:300]
    assert "embedding" in r.json()["detail"]
    assert list_all(client, auth, eid) == []
    # Past the records limit: 413 before the body is read.
    r = client.post(f"/api/entities/{eid}/chunks", headers={
        **auth, "Content-Type": "application/json"}, content=b" " * (CHUNKS_BODY + 1))
    assert r.status_code == 413
    # A stream's chunks (same last path segment) keep the ordinary limit.
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    mid = client.post(f"/api/conversations/{cid}/messages", headers=auth,
                      json={"role": "assistant", "status": "streaming"}).json()["id"]
    r = client.post(f"/api/messages/{mid}/chunks", headers={
        **auth, "Content-Type": "application/json"}, content=b" " * ((4096 << 10) + 1))
    assert r.status_code == 413


def test_1000_records_of_1536_dims_are_stored(vault: Vault, client: TestClient,
                                               auth: dict[str, str]) -> None:
    """On a vault whose embedder has 1,536 dimensions (as OpenAI's small model),
    the issue's largest call is stored whole and searchable."""
    # Set before the embedder's first use: no setting picks a 1,536-d hash embedder.
    vault._embedder = CachedEmbedder(HashEmbedder(1536), vault.embed_cache)
    eid = make_entity(client, auth)
    items = [{"id": f"r{i}", "text": f"record {i}", "embedding": vector(i, 1536)}
             for i in range(1000)]
    body = json.dumps({"items": items}).encode()
    assert len(body) > 4096 << 10
    r = client.post(f"/api/entities/{eid}/chunks", headers={
        **auth, "Content-Type": "application/json"}, content=body)
    assert r.status_code == 201, r.text[:300]
    assert {m["dimensions"] for m in r.json()["items"]} == {1536}
    assert len(list_all(client, auth, eid)) == 1000
    r = client.post("/api/search", headers=auth, json={
        "entity_id": eid, "embedding": vector(123, 1536), "mode": "vector", "k": 3})
    assert r.status_code == 200 and r.json()["results"][0]["chunk_id"] == "r123"
    r = client.post("/api/search", headers=auth, json={"entity_id": eid, "query": "record 5"})
    assert r.status_code == 200 and r.json()["results"]


def test_other_users_records_are_404(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth, "mine")
    add(client, auth, eid, [{"id": "secret", "text": "private words"}])
    other = register(client, "intruder@example.com")
    for method, path, body in (
            ("GET", "/api/entities/mine/chunks", None),
            ("GET", "/api/entities/mine/chunks/secret", None),
            ("DELETE", "/api/entities/mine/chunks/secret", None),
            ("POST", "/api/entities/mine/chunks", {"items": [{"id": "secret", "text": "x"}]}),
            ("POST", "/api/search", {"entity_id": "mine", "query": "private"})):
        r = client.request(method, path, headers=other, json=body)
        assert r.status_code == 404, (method, path, r.status_code)
    # The intruder's own entity of the same id is a different collection.
    make_entity(client, other, "mine")
    assert list_all(client, other, "mine") == []
    assert client.get("/api/entities/mine/chunks/secret", headers=other).status_code == 404
    assert client.get("/api/entities/mine/chunks/secret", headers=auth).json()["text"] == \
        "private words"
