"""Retrieval against real ``memvault serve`` processes (issue 6, "Proof"):

- ``kill -9`` of the server while 50 uploads are being indexed: after a restart
  every document ends ``indexed`` or ``failed``, no chunk lacks its vector or
  full-text row, and search only ever returns whole documents (SQLite and
  PostgreSQL);
- the SQLite vector index stays in step across processes: records written
  through one server are found by the other, deletions are never returned, and
  a missing or corrupt index file is rebuilt with the same answers.

Every-format ingestion is a library test: tests/contract/test_ingest_formats.py.
"""

from __future__ import annotations

import random
import socketserver
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

import memvault
from memvault import Settings
from memvault.retrieval.fulltext import collection_token

from ..conftest import BACKENDS
from ..retrieval.test_embedders import FakeEmbeddings
from .server import Server, all_pages, login

#: Plain words for generated text.
_WORDS = ("river mountain garden kitchen window letter market winter summer engine "
         "harbour island forest village bridge castle doctor teacher farmer painter "
         "bicycle lantern compass blanket violin pencil ladder mirror basket candle "
         "orange lemon cherry walnut pepper butter honey bread cheese coffee "
         "storm cloud thunder meadow canyon desert glacier valley ocean shore "
         "silver copper marble granite velvet cotton linen paper glass timber")
VOCAB = _WORDS.split()


def _text(rng: random.Random, words: int, marker: str = "") -> str:
    """Sentences of eight words from VOCAB, ``marker`` in the first one."""
    out = []
    for i in range(0, words, 8):
        sentence = [rng.choice(VOCAB) for _ in range(8)]
        if i == 0 and marker:
            sentence[3] = marker
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


def _search(c: httpx.Client, h: dict[str, str], query: str, *, mode: str = "hybrid",
            k: int = 10, entity: str = "e") -> list[dict[str, Any]]:
    r = c.post("/api/search", headers=h, json={"entity_id": entity, "query": query,
                                                "mode": mode, "k": k})
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


# --- kill -9 while indexing ------------------------------------------------------------

DOCS = 50
#: Texts the embeddings server answers before it holds every further request.
PERMITS = 20


class GatedEmbeddings(FakeEmbeddings):
    """The suite's OpenAI-compatible embeddings server, gated: it answers the
    first ``permits`` texts, then holds each further request until ``opened``.
    So the kill lands mid-indexing, whatever the machine's speed."""

    def __init__(self, permits: int) -> None:
        self.lock = threading.Lock()
        self.permits = permits
        self.waiting = threading.Event()  # a request is being held
        self.opened = threading.Event()
        super().__init__()
        self.server.handle_error = self._handle_error  # type: ignore[method-assign]

    def _handle_error(self, request: Any, client_address: Any) -> None:
        # A request held across the kill answers a connection that is gone.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            socketserver.BaseServer.handle_error(self.server, request, client_address)

    def vector(self, text: str) -> list[float]:
        with self.lock:
            self.permits -= 1
            held = self.permits < 0
        if held and not self.opened.is_set():
            self.waiting.set()
            self.opened.wait(120)
        return super().vector(text)

    def close(self) -> None:
        self.opened.set()
        super().close()


def _assert_whole(c: httpx.Client, h: dict[str, str], hits: list[dict[str, Any]]) -> None:
    """Each document a search returned is indexed, with all of its chunks there
    (asked after the search: a document's chunks never change once indexed)."""
    for doc_id in {hit["doc_id"] for hit in hits if hit["doc_id"]}:
        doc = c.get(f"/api/entities/e/files/{doc_id}", headers=h).json()
        assert doc["status"] == "indexed", doc
        chunks = c.get("/api/entities/e/chunks", headers=h,
                       params={"doc_id": doc_id, "limit": 200}).json()["items"]
        assert [ch["position"] for ch in chunks] == list(range(doc["chunk_count"])), doc


@contextmanager
def _db(settings: Settings) -> Iterator[Any]:
    """A plain DB-API connection to the vault's database, behind memvault's back
    (opening the vault would start job workers that index what is left)."""
    if settings.database_url:
        with psycopg.connect(settings.database_url) as conn:
            yield conn
    else:
        with closing(sqlite3.connect(settings.sqlite_path)) as conn:
            yield conn


def _one(conn: Any, sql: str) -> Any:
    return conn.execute(sql).fetchone()[0]


def _statuses(settings: Settings) -> dict[str, int]:
    with _db(settings) as conn:
        return {str(k): int(v) for k, v in conn.execute(
            "SELECT status, count(*) FROM documents GROUP BY status").fetchall()}


def _check_rows(settings: Settings) -> None:
    """Every chunk has its vector and its full-text row; every document's
    ``chunk_count`` is its number of chunks."""
    with _db(settings) as conn:
        chunks = _one(conn, "SELECT count(*) FROM chunks")
        assert chunks > 0
        if settings.database_url:
            assert _one(conn, "SELECT count(*) FROM chunks WHERE embedding IS NULL "
                              "OR vector_dims(embedding) <> dimensions "
                              "OR search_tsv IS NULL OR search_tsv = ''::tsvector") == 0
        else:
            assert _one(conn, "SELECT count(*) FROM chunks WHERE embedding IS NULL "
                              "OR length(embedding) <> 4 * dimensions") == 0
            # The FTS5 index holds one row per chunk (its docsize shadow table,
            # joined on rowid) and agrees with the content table.
            assert _one(conn, "SELECT count(*) FROM chunks JOIN chunks_fts_docsize d "
                              "ON d.id = chunks.id") == chunks
            assert _one(conn, "SELECT count(*) FROM chunks_fts_docsize") == chunks
            conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        assert _one(conn, "SELECT count(DISTINCT dimensions) FROM chunks") == 1
        # Every chunk is reached through the full-text index by its collection's token.
        token = collection_token(_one(conn, "SELECT owner_id FROM chunks LIMIT 1"), "e")
        if settings.database_url:
            found = conn.execute("SELECT count(*) FROM chunks WHERE search_tsv "
                                 "@@ plainto_tsquery('english', %s)", (token,))
        else:
            found = conn.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?",
                                 (f'"{token}"',))
        assert found.fetchone()[0] == chunks
        assert conn.execute(
            "SELECT d.doc_id, d.status, d.chunk_count, count(c.id) FROM documents d "
            "LEFT JOIN chunks c ON c.doc_id = d.doc_id "
            "GROUP BY d.doc_id, d.status, d.chunk_count "
            "HAVING count(c.id) <> d.chunk_count").fetchall() == []
        assert _one(conn, "SELECT count(*) FROM documents "
                          "WHERE status = 'indexed' AND chunk_count = 0") == 0


def test_kill_9_while_indexing_50_files_resumes_and_leaves_only_whole_documents(
        settings: Settings) -> None:
    rng = random.Random(6)
    files = [(f"doc{i:02d}.txt", _text(rng, 160, marker=f"marker{i:02d}").encode(), "text/plain")
             for i in range(DOCS)]
    fake = GatedEmbeddings(PERMITS)
    # One indexing thread; small chunks, so each document has several.
    srv = Server(settings, embedder="openai", embeddings_url=fake.url, job_workers=1,
                 chunk_tokens=32, chunk_overlap=4)
    try:
        srv.start()
        with srv.client() as c:
            h = login(c, "indexing@example.com")
            assert c.post("/api/entities", headers=h, json={
                "entity_id": "e", "entity_name": "Docs"}).status_code == 201
            up = c.post("/api/entities/e/files", headers=h,
                        files=[("files", f) for f in files])
            assert up.status_code == 201, up.text
            assert {d["status"] for d in up.json()["items"]} <= {"pending", "indexing"}
            # The indexer used its permits and waits for the next answer.
            assert fake.waiting.wait(120), srv.log.read_text()[-3000:]
            # (text: a query embedding would wait at the gate too)
            _assert_whole(c, h, _search(c, h, "river garden marker01", mode="text", k=50))
        srv.kill()
        at_kill = _statuses(settings)
        # Some documents indexed, one interrupted mid-way, the rest waiting.
        assert at_kill.get("indexed", 0) >= 1 and at_kill.get("indexing") == 1, at_kill
        assert sum(at_kill.values()) == DOCS and set(at_kill) <= {
            "indexed", "indexing", "pending"}, at_kill

        fake.opened.set()
        srv.start()
        with srv.client() as c:
            h = login(c, "indexing@example.com")
            deadline = time.monotonic() + 120
            while True:
                docs = all_pages(c, "/api/entities/e/files", h)
                if all(d["status"] in ("indexed", "failed") for d in docs):
                    break
                assert time.monotonic() < deadline, [d["status"] for d in docs]
                # Mid-flight: whatever search returns is whole.
                _assert_whole(c, h, _search(c, h, "winter harbour lantern", k=10))
                time.sleep(0.05)
            assert len(docs) == DOCS
            assert [d["error"] for d in docs if d["status"] == "failed"] == []
            for i in (0, 17, 49):  # each document is found by its own word
                hits = _search(c, h, f"marker{i:02d}", mode="text")
                assert hits and hits[0]["filename"] == f"doc{i:02d}.txt"
            # Search returns whole documents only: each one's chunks are all there.
            counts = {d["doc_id"]: d["chunk_count"] for d in docs}
            held = Counter(ch["doc_id"] for ch in all_pages(c, "/api/entities/e/chunks", h))
            assert held == counts
            for query in ("river garden", "coffee bread cheese", "storm over the ocean"):
                for mode in ("vector", "text", "hybrid"):
                    hits = _search(c, h, query, mode=mode, k=100)
                    assert hits and {hit["doc_id"] for hit in hits} <= set(counts)
            _check_rows(settings)  # with the server running, then stopped
    finally:
        srv.stop()
        fake.close()
    assert _statuses(settings) == {"indexed": DOCS}
    _check_rows(settings)


# --- the SQLite vector index in step across processes -----------------------------------

#: From this many vectors a collection is an HNSW graph saved to a file.
EXACT_BELOW = 64
DIMS = 384  # the hash embedder's


def _records(rng: random.Random, start: int, count: int) -> list[dict[str, Any]]:
    """Records with their own random embeddings: similarities are then all
    distinct, so "the same answers" is exact (no ties for an index to break)."""
    vectors = np.random.default_rng(start).standard_normal((count, DIMS))
    return [{"id": f"r{i:03d}", "text": _text(rng, 16, marker=f"rec{i:03d}"),
             "metadata": {"i": i}, "embedding": [round(float(x), 6) for x in v]}
            for i, v in zip(range(start, start + count), vectors, strict=True)]


def _post(c: httpx.Client, h: dict[str, str], items: list[dict[str, Any]],
          entity: str = "e") -> None:
    r = c.post(f"/api/entities/{entity}/chunks", headers=h, json={"items": items})
    assert r.status_code == 201, r.text
    assert [x["chunk_id"] for x in r.json()["items"]] == [x["id"] for x in items]


def _nearest(c: httpx.Client, h: dict[str, str], embedding: list[float], k: int = 10,
             entity: str = "e") -> list[dict[str, Any]]:
    r = c.post("/api/search", headers=h, json={"entity_id": entity, "embedding": embedding,
                                                "mode": "vector", "k": k})
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def _answers(c: httpx.Client, h: dict[str, str], vectors: list[list[float]],
             queries: list[str]) -> list[list[tuple[str, float]]]:
    """Ranked (chunk_id, score) of each collection's vector searches by embedding,
    and of its vector and hybrid searches by text."""
    found = [_nearest(c, h, v, entity=e) for e in DAMAGE for v in vectors]
    found += [_search(c, h, q, mode=mode, entity=e) for e in DAMAGE for q in queries
              for mode in ("vector", "hybrid")]
    return [[(hit["chunk_id"], round(hit["score"], 4)) for hit in hits] for hits in found]


def _start(*servers: Server) -> None:
    """Start the servers side by side (a start is mostly imports)."""
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(Server.start, servers))


#: What happens to each collection's index file while the servers are down.
DAMAGE = {"e": "missing", "e2": "garbage", "e3": "payload"}


def _damage(path: Path, how: str, rng: random.Random) -> None:
    if how == "missing":
        path.unlink()
    elif how == "garbage":  # nothing of the file is left
        path.write_bytes(rng.randbytes(path.stat().st_size))
    else:  # "payload": bytes inside the graph changed, the trailer intact
        data = bytearray(path.read_bytes())
        middle = len(data) // 3
        data[middle:middle + 64] = rng.randbytes(64)
        path.write_bytes(bytes(data))


@pytest.mark.skipif("sqlite" not in BACKENDS, reason="the derived ANN index is SQLite's")
def test_two_servers_on_one_sqlite_file_keep_the_vector_index_in_step(tmp_path: Path) -> None:
    settings = memvault.load_settings(data_dir=tmp_path / "data", password_hash="owasp",
                                      embedder="hash")
    indexes = settings.data_dir / "indexes"
    rng = random.Random(3)
    records = _records(rng, 0, 100)
    by_id = {r["id"]: r for r in records}
    files: dict[str, Path] = {}  # entity -> its index file

    def new_file(entity: str) -> None:
        # Graphs are built in the background: the file follows shortly after.
        deadline = time.monotonic() + 60
        while not (made := set(indexes.glob("*.usearch")) - set(files.values())):
            assert time.monotonic() < deadline, "no index file was built"
            time.sleep(0.05)
        assert len(made) == 1, made
        files[entity] = made.pop()

    def all_saved() -> None:  # before a stop, which would abandon a build
        deadline = time.monotonic() + 60
        while sorted(indexes.glob("*.usearch")) != sorted(files.values()):
            assert time.monotonic() < deadline, "the index files were not built again"
            time.sleep(0.05)

    a = Server(settings, ann_exact_below=EXACT_BELOW)
    b = Server(settings, ann_exact_below=EXACT_BELOW)
    try:
        _start(a, b)
        with a.client() as on_a, b.client() as on_b:
            h = login(on_a, "instep@example.com")  # tokens live in the database
            for entity in DAMAGE:
                assert on_a.post("/api/entities", headers=h, json={
                    "entity_id": entity, "entity_name": entity}).status_code == 201
            _post(on_a, h, records)
            doc_text = _text(rng, 120, marker="documentword")
            up = on_a.post("/api/entities/e/files?wait=true", headers=h,
                           files=[("files", ("doc.txt", doc_text.encode(), "text/plain"))])
            assert up.status_code == 201, up.text
            [doc] = up.json()["items"]
            assert doc["status"] == "indexed" and doc["chunk_count"] > 0, doc

            # Written through A, found by B (whose first search builds a graph).
            for r in records[::10]:
                [top] = _nearest(on_b, h, r["embedding"], k=1)
                assert top["chunk_id"] == r["id"] and top["score"] > 0.999
            new_file("e")
            assert _search(on_b, h, "documentword", mode="text")[0]["doc_id"] == doc["doc_id"]
            assert _search(on_b, h, doc_text, mode="vector")[0]["doc_id"] == doc["doc_id"]
            # B's loaded graph catches up with what A writes next.
            more = _records(rng, 100, 20)
            _post(on_a, h, more)
            by_id.update((r["id"], r) for r in more)
            for r in more[::3]:
                assert _nearest(on_b, h, r["embedding"], k=1)[0]["chunk_id"] == r["id"]

            # Deleted through A: never returned by B, in any mode.
            gone = [f"r{i:03d}" for i in range(0, 120, 5)]  # 96 live: k=100 finds all
            for chunk_id in gone:
                assert on_a.delete(f"/api/entities/e/chunks/{chunk_id}",
                                   headers=h).status_code == 204
            assert on_a.delete(f"/api/entities/e/files/{doc['doc_id']}",
                               headers=h).status_code == 204
            live = set(by_id) - set(gone)
            for chunk_id in gone:
                hits = _nearest(on_b, h, by_id[chunk_id]["embedding"], k=100)
                assert {hit["chunk_id"] for hit in hits} == live
                for mode in ("text", "hybrid"):
                    hits = _search(on_b, h, by_id[chunk_id]["text"], mode=mode, k=100)
                    assert {hit["chunk_id"] for hit in hits} <= live
            for mode in ("vector", "text", "hybrid"):
                hits = _search(on_b, h, doc_text, mode=mode, k=100)
                assert {hit["chunk_id"] for hit in hits} <= live

            # Two more collections, each with its own index file.
            for n, entity in enumerate(("e2", "e3")):
                others = _records(rng, 200 + 100 * n, 80)
                _post(on_a, h, others, entity)
                assert _nearest(on_b, h, others[5]["embedding"], k=1,
                                entity=entity)[0]["chunk_id"] == others[5]["id"]
                new_file(entity)

            vectors = [by_id[i]["embedding"] for i in ("r000", "r001", "r050", "r105", "r119")]
            vectors.append([float(x) for x in np.random.default_rng(9).standard_normal(DIMS)])
            queries = [by_id["r002"]["text"], "river garden winter", doc_text[:80]]
            before = _answers(on_b, h, vectors, queries)
            assert _answers(on_a, h, vectors, queries) == before
            assert before[0][0][0] != "r000" and before[1][0][0] == "r001"
        a.stop()
        b.stop()

        # Each file missing, overwritten with garbage or damaged inside: rebuilt
        # from the rows, with the same answers from both servers.
        for entity, how in DAMAGE.items():
            _damage(files[entity], how, rng)
        log_at = b.log_size()
        _start(a, b)
        with a.client() as on_a, b.client() as on_b:
            assert _answers(on_b, h, vectors, queries) == before
            assert _answers(on_a, h, vectors, queries) == before
        all_saved()
        a.stop()
        b.stop()
        rebuilt = b.log.read_text()[log_at:]
        assert rebuilt.count("vector index rebuilt") == len(DAMAGE), rebuilt
        assert "checksum" in rebuilt, rebuilt
        assert sorted(indexes.glob("*.usearch")) == sorted(files.values())  # saved again
    finally:
        a.stop()
        b.stop()
