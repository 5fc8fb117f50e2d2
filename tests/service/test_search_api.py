"""``POST /api/search`` and indexing on upload (``?wait=true``) over HTTP.

Mostly with the hash embedder (fast; it matches shared words, which is enough
to check modes, filters and shapes); one test uses the local model, where
meaning matters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

import memvault
from memvault import Settings
from memvault.service import create_app
from memvault.settings import revalidate

from .conftest import register
from .test_chunks_api import DIMS, add, make_entity, vector

HIT_FIELDS = {"chunk_id", "doc_id", "filename", "text", "score", "position", "start", "end",
              "page", "metadata"}
ANIMALS = [
    {"id": "zebra", "text": "zebra stripes on the savanna grassland", "metadata": {"lang": "en"}},
    {"id": "whale", "text": "blue whale songs in the deep ocean", "metadata": {"lang": "en"}},
    {"id": "hund", "text": "der Hund bellt laut im Garten", "metadata": {"lang": "de"}},
    {"id": "chat", "text": "le chat dort sur le canapé", "metadata": {"lang": "fr", "n": 2}},
    {"id": "owl", "text": "an owl hunts mice at night in the forest",
     "metadata": {"lang": "en", "n": 2}},
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return revalidate(settings, embedder="hash")


def search(client: TestClient, auth: dict[str, str], status: int = 200, **body: Any
           ) -> dict[str, Any]:
    r = client.post("/api/search", headers=auth, json=body)
    assert r.status_code == status, (body, r.text)
    answer: dict[str, Any] = r.json()
    return answer


def ids(answer: dict[str, Any]) -> list[str]:
    return [hit["chunk_id"] for hit in answer["results"]]


def upload(client: TestClient, auth: dict[str, str], entity_id: str,
           *files: tuple[str, bytes, str]) -> list[dict[str, Any]]:
    r = client.post(f"/api/entities/{entity_id}/files?wait=true", headers=auth,
                    files=[("files", f) for f in files])
    assert r.status_code == 201, r.text
    docs: list[dict[str, Any]] = r.json()["items"]
    return docs


def test_modes_and_shape(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    add(client, auth, eid, ANIMALS)
    for mode in ("hybrid", "vector", "text"):
        answer = search(client, auth, entity_id=eid, query="zebra savanna", mode=mode)
        assert set(answer) == {"results", "mode", "took_ms"}
        assert answer["mode"] == mode and answer["took_ms"] >= 0
        assert answer["results"] and ids(answer)[0] == "zebra", (mode, answer)
        first = answer["results"][0]
        assert set(first) == HIT_FIELDS
        assert first["doc_id"] is None and first["filename"] is None
        assert first["metadata"] == {"lang": "en"}
        assert first["text"] == ANIMALS[0]["text"]
        scores = [hit["score"] for hit in answer["results"]]
        assert scores == sorted(scores, reverse=True)
    assert search(client, auth, entity_id=eid, query="zebra")["mode"] == "hybrid"  # the default
    # Text search matches only records holding a query word.
    assert ids(search(client, auth, entity_id=eid, query="owl", mode="text")) == ["owl"]
    # Punctuation and operators are text, not query syntax.
    for odd in ('"AND (', "NEAR", "owl*", "-", "a OR b) NOT", "中文 Größe"):
        for mode in ("hybrid", "text", "vector"):
            search(client, auth, entity_id=eid, query=odd, mode=mode)


def test_search_by_embedding(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    add(client, auth, eid, [{"id": f"v{i}", "text": f"vector {i}", "embedding": vector(i)}
                            for i in range(20)])
    answer = search(client, auth, entity_id=eid, embedding=vector(7), mode="vector", k=3)
    assert ids(answer)[0] == "v7" and len(answer["results"]) == 3
    assert answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    # Not normalised by the client: stored and compared as cosine all the same.
    scaled = [x * 5 for x in vector(7)]
    assert ids(search(client, auth, entity_id=eid, embedding=scaled, mode="vector"))[0] == "v7"
    search(client, auth, 422, entity_id=eid, embedding=vector(7, DIMS - 1), mode="vector")


def test_k_bounds_and_bad_requests(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    add(client, auth, eid, [{"text": f"common word number {i}"} for i in range(120)])
    assert len(search(client, auth, entity_id=eid, query="common word")["results"]) == 10
    for k in (1, 7, 100):
        for mode in ("hybrid", "vector", "text"):
            answer = search(client, auth, entity_id=eid, query="common word", k=k, mode=mode)
            assert len(answer["results"]) == k, (k, mode)
            assert len(set(ids(answer))) == k
    bad: list[dict[str, Any]] = [
        {"entity_id": eid}, {"query": "x"},
        {"entity_id": eid, "query": "x", "embedding": vector(1), "mode": "vector"},
        {"entity_id": eid, "embedding": vector(1)},  # hybrid by default
        {"entity_id": eid, "embedding": vector(1), "mode": "text"},
        {"entity_id": eid, "query": "x", "k": 0}, {"entity_id": eid, "query": "x", "k": 101},
        {"entity_id": eid, "query": "x", "k": 1.5}, {"entity_id": eid, "query": "x", "k": "5"},
        {"entity_id": eid, "query": "x", "mode": "fuzzy"},
        {"entity_id": eid, "query": 5}, {"entity_id": 5, "query": "x"},
        {"entity_id": eid, "query": ""}, {"entity_id": eid, "query": "   "},
        {"entity_id": eid, "query": "x", "top_k": 5},  # unknown fields are refused
        {"entity_id": eid, "query": "x", "filter": {"doc": "d"}},
        {"entity_id": eid, "query": "x", "filter": {"doc_id": 5}},
        {"entity_id": eid, "query": "x", "filter": {"metadata": [1]}},
        {"entity_id": eid, "query": "x", "weights": {"vector": -1}},
        {"entity_id": eid, "query": "x", "weights": {"graph": 1}},
        {"entity_id": eid, "query": "x", "rrf_k": -1},
        {"entity_id": eid, "query": "x", "rrf_k": "60"},
    ]
    for body in bad:
        r = client.post("/api/search", headers=auth, json=body)
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    # The fusion knobs are accepted.
    answer = search(client, auth, entity_id=eid, query="common word", rrf_k=10,
                    weights={"vector": 0.5, "text": 2})
    assert len(answer["results"]) == 10
    search(client, auth, entity_id=eid, query="common word", weights={"text": 0})


def test_filters(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    docs = upload(client, auth, eid,
                  ("alpha.txt", b"Alpha report about shared topics and quarterly numbers.",
                   "text/plain"),
                  ("beta.md", b"# Beta\n\nBeta notes about shared topics and the roadmap.",
                   "text/markdown"),
                  ("gamma.txt", b"Gamma memo about shared topics and hiring.", "text/plain"))
    assert [d["status"] for d in docs] == ["indexed"] * 3, docs
    add(client, auth, eid, ANIMALS)
    a, b, c = (d["doc_id"] for d in docs)
    for mode in ("hybrid", "vector", "text"):
        hits = search(client, auth, entity_id=eid, query="shared topics", mode=mode,
                      filter={"doc_id": a})["results"]
        assert hits and {h["doc_id"] for h in hits} == {a}, mode
        assert {h["filename"] for h in hits} == {"alpha.txt"}
        hits = search(client, auth, entity_id=eid, query="shared topics", mode=mode, k=50,
                      filter={"doc_id": [b, c]})["results"]
        assert {h["doc_id"] for h in hits} == {b, c}, mode
        hits = search(client, auth, entity_id=eid, query="the night forest savanna", mode=mode,
                      k=50, filter={"metadata": {"lang": "en"}})["results"]
        assert hits and {h["metadata"]["lang"] for h in hits} == {"en"}, mode
        hits = search(client, auth, entity_id=eid, query="chat owl", mode=mode, k=50,
                      filter={"metadata": {"lang": "fr", "n": 2}})["results"]
        assert ids({"results": hits}) == ["chat"], mode
        assert search(client, auth, entity_id=eid, query="shared topics", mode=mode,
                      filter={"doc_id": "no-such-doc"})["results"] == []
    hits = search(client, auth, entity_id=eid, embedding=vector(3), mode="vector", k=50,
                  filter={"metadata": {"lang": "de"}})["results"]
    assert ids({"results": hits}) == ["hund"]


def test_empty_entity_and_isolation(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    for mode in ("hybrid", "vector", "text"):
        assert search(client, auth, entity_id=eid, query="anything", mode=mode) == {
            "results": [], "mode": mode, "took_ms": pytest.approx(0, abs=10_000)}
    assert search(client, auth, entity_id=eid, embedding=vector(1),
                  mode="vector")["results"] == []
    search(client, auth, 404, entity_id="no-such-entity", query="x")
    add(client, auth, eid, ANIMALS)
    other = register(client, "intruder@example.com")
    r = client.post("/api/search", headers=other, json={"entity_id": eid, "query": "zebra"})
    assert r.status_code == 404 and "zebra" not in r.text
    r = client.post("/api/search", headers=other, json={
        "entity_id": eid, "embedding": vector(1), "mode": "vector"})
    assert r.status_code == 404
    assert client.post("/api/search", json={"entity_id": eid, "query": "x"}).status_code == 401


def test_upload_wait_indexes_and_fails_clearly(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    docs = upload(client, auth, eid,
                  ("guide.md", b"# Lighthouse keeping\n\nThe keeper trims the lamp wick at "
                   b"dusk and logs passing ships.\n\nStorms are recorded hourly.",
                   "text/markdown"),
                  ("page.html", b"<html><head><script>var hidden = 'javascript';</script>"
                   b"</head><body><p>Visible paragraph on tidal charts.</p></body></html>",
                   "text/html"),
                  ("image.png", png, "image/png"))
    md, html, image = docs
    for doc in (md, html):
        assert doc["status"] == "indexed" and doc["chunk_count"] > 0 and doc["error"] is None
    assert image["status"] == "failed" and image["chunk_count"] == 0 and image["error"]
    # The failed file is kept and downloadable; its status shows everywhere.
    r = client.get(f"/api/entities/{eid}/files/{image['doc_id']}/content", headers=auth)
    assert r.status_code == 200 and r.content == png
    got = client.get(f"/api/entities/{eid}/files/{image['doc_id']}", headers=auth).json()
    assert got["status"] == "failed" and got["error"] == image["error"]
    listed = client.get(f"/api/entities/{eid}/files", headers=auth).json()["items"]
    assert {d["doc_id"]: d["status"] for d in listed} == {
        md["doc_id"]: "indexed", html["doc_id"]: "indexed", image["doc_id"]: "failed"}

    for mode in ("hybrid", "vector", "text"):
        hits = search(client, auth, entity_id=eid, query="lamp wick keeper", mode=mode)["results"]
        assert hits[0]["doc_id"] == md["doc_id"] and hits[0]["filename"] == "guide.md", mode
        assert hits[0]["position"] == 0 and hits[0]["start"] >= 0 and hits[0]["page"] is None
    text_hits = search(client, auth, entity_id=eid, query="javascript", mode="text")["results"]
    assert text_hits == []  # script text is not visible text
    hits = search(client, auth, entity_id=eid, query="tidal charts", mode="text")["results"]
    assert [h["doc_id"] for h in hits] == [html["doc_id"]]

    # Deleting the document takes its chunks out of search.
    assert client.delete(f"/api/entities/{eid}/files/{md['doc_id']}",
                         headers=auth).status_code == 204
    for mode in ("hybrid", "vector", "text"):
        hits = search(client, auth, entity_id=eid, query="lamp wick keeper", mode=mode)["results"]
        assert md["doc_id"] not in {h["doc_id"] for h in hits}, mode


def test_upload_without_wait_answers_at_once(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    r = client.post(f"/api/entities/{eid}/files", headers=auth,
                    files=[("files", ("a.txt", b"some words", "text/plain"))])
    assert r.status_code == 201
    assert r.json()["items"][0]["status"] in ("pending", "indexing", "indexed")
    assert client.post(f"/api/entities/{eid}/files?wait=maybe", headers=auth,
                       files=[("files", ("a.txt", b"x", "text/plain"))]).status_code == 422


def test_upload_wait_is_bounded(settings: Settings) -> None:
    """With nobody indexing (no job runners), ``?wait=true`` gives up after
    ``MEMVAULT_INGEST_WAIT_S`` and shows the documents as they are."""
    with memvault.Vault(revalidate(settings, ingest_wait_s=0.5), sweep=False) as vault, \
            TestClient(create_app(vault=vault)) as client:
        auth = register(client, "waiter@example.com")
        eid = make_entity(client, auth)
        started = time.monotonic()
        docs = upload(client, auth, eid, ("a.txt", b"some words", "text/plain"))
        assert 0.5 <= time.monotonic() - started < 10
        assert docs[0]["status"] == "pending" and docs[0]["chunk_count"] == 0


def test_deleted_record_never_found(client: TestClient, auth: dict[str, str]) -> None:
    eid = make_entity(client, auth)
    add(client, auth, eid, ANIMALS)
    assert client.delete(f"/api/entities/{eid}/chunks/zebra", headers=auth).status_code == 204
    for mode in ("hybrid", "vector", "text"):
        assert "zebra" not in ids(search(client, auth, entity_id=eid, query="zebra savanna",
                                         mode=mode, k=100)), mode


@pytest.fixture
def local_client(settings: Settings) -> Iterator[TestClient]:
    """A vault with the default (local) embedder, where meaning matters."""
    with memvault.open(revalidate(settings, embedder="local")) as vault, \
            TestClient(create_app(vault=vault)) as client:
        yield client


def test_local_model_finds_meaning(local_client: TestClient) -> None:
    client = local_client
    auth = register(client, "local@example.com")
    eid = make_entity(client, auth)
    made = add(client, auth, eid, [
        {"id": "cat", "text": "A small cat is sleeping on the sofa."},
        {"id": "market", "text": "Stock prices fell sharply after the earnings report."},
        {"id": "rain", "text": "Heavy rain and thunderstorms are expected tomorrow."},
        {"id": "code", "text": "The function returns a list of integers."},
    ])
    assert made[0]["dimensions"] == DIMS and made[0]["model_id"]
    # No word in common with the passage it should find.
    for query, expected in (("kitten napping on a couch", "cat"),
                            ("equities dropped on the exchange", "market"),
                            ("weather forecast: storms", "rain")):
        assert ids(search(client, auth, entity_id=eid, query=query, mode="vector"))[0] == \
            expected, query
        assert ids(search(client, auth, entity_id=eid, query=query))[0] == expected, query
