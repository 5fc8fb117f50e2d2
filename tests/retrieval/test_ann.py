"""SQLite's derived vector index (retrieval/ann.py) kept in step with ``chunks``:
exact and HNSW agree, rows committed by another process are found, deleted
rows never come back, a missing, corrupt or out-of-date index file is rebuilt
with the same answers, candidates and dimensions restrict, threads are safe.
Graphs are built in the background while the collection answers exactly; a
build is never run twice at once for a collection and stops when closed.

``exact_below`` is set low so a few hundred vectors exercise the HNSW path.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from numpy.typing import NDArray

import memvault
from memvault import Vault
from memvault.backends.base import Database
from memvault.backends.schema import chunk_tombstones, chunks
from memvault.errors import Invalid
from memvault.ids import utcnow
from memvault.retrieval import ann
from memvault.retrieval.ann import VectorIndexes, _digest

DIMS = 32
HNSW = 50  # exact_below that makes a few hundred vectors an HNSW graph
EXACT = 10**9  # exact_below that keeps everything exact
MODES = [pytest.param(EXACT, id="exact"), pytest.param(HNSW, id="hnsw")]


@pytest.fixture
def backend() -> str:
    """This module is SQLite's: PostgreSQL answers with pgvector instead."""
    return "sqlite"


def clustered(n: int, dims: int = DIMS, seed: int = 0) -> NDArray[np.float32]:
    """Unit vectors around a dozen centres: structure like embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dims))
    x = centres[rng.integers(0, 12, n)] + 0.4 * rng.standard_normal((n, dims))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def add_rows(db: Database, owner: str, entity: str, vecs: NDArray[np.float32]) -> list[int]:
    """Insert one chunk per vector (as the collections store would); their ids."""
    rows = [{"owner_id": owner, "entity_id": entity, "chunk_id": uuid.uuid4().hex,
             "doc_id": None, "position": i, "text": f"t{i}", "search_text": f"t{i}",
             "metadata": {}, "model_id": None, "dimensions": len(v), "embedding": v,
             "created_at": utcnow()} for i, v in enumerate(vecs)]
    with db.write() as conn:
        result = conn.execute(chunks.insert().returning(chunks.c.id, sort_by_parameter_order=True),
                              rows)
        return [int(i) for i in result.scalars()]


def delete_rows(db: Database, ids: list[int]) -> None:
    with db.write() as conn:
        conn.execute(chunks.delete().where(chunks.c.id.in_(ids)))


def brute(db: Database, owner: str, entity: str, q: NDArray[np.float32], k: int,
          dims: int = DIMS) -> list[int]:
    """The truth: top ``k`` ids by cosine, straight from the rows."""
    with db.read() as conn:
        rows = conn.execute(sa.select(chunks.c.id, chunks.c.embedding).where(
            chunks.c.owner_id == owner, chunks.c.entity_id == entity,
            chunks.c.dimensions == dims)).all()
    scored = sorted(((-float(v @ q), int(i)) for i, v in rows))
    return [i for _, i in scored[:k]]


@pytest.fixture
def owner(vault: Vault, user_id: str) -> str:
    for entity in ("e1", "e2", "e3"):
        vault.for_user(user_id).entities.create(entity, entity_id=entity)
    return user_id


@pytest.fixture
def indexes(vault: Vault, tmp_path: Path, request: pytest.FixtureRequest
            ) -> Iterator[VectorIndexes]:
    exact_below = getattr(request, "param", HNSW)
    ix = VectorIndexes(vault.db, tmp_path / "ix", exact_below=exact_below)
    try:
        yield ix
    finally:
        ix.close()


def ids_of(found: list[tuple[int, float]]) -> list[int]:
    return [i for i, _ in found]


def built(ix: VectorIndexes, owner: str, entity: str = "e1", dims: int = DIMS) -> None:
    """Load the collection and wait for its graph, built in the background."""
    ix.search(owner, entity, dims, clustered(1, dims)[0], 1)
    assert ix.wait_for_builds(60), "the background build did not finish"


def test_exact_and_hnsw_agree_with_the_rows(vault: Vault, owner: str, tmp_path: Path) -> None:
    ids = add_rows(vault.db, owner, "e1", clustered(600))
    exact = VectorIndexes(vault.db, tmp_path / "a", exact_below=EXACT)
    graph = VectorIndexes(vault.db, tmp_path / "b", exact_below=HNSW)
    try:
        built(graph, owner)
        assert graph.stats()["graphs"] == 1 and exact.stats()["graphs"] == 0
        overlap = []
        for q in clustered(30, seed=7):
            truth = brute(vault.db, owner, "e1", q, 10)
            got_exact = exact.search(owner, "e1", DIMS, q, 10)
            got_graph = graph.search(owner, "e1", DIMS, q, 10)
            assert ids_of(got_exact) == truth
            assert got_exact[0][1] == pytest.approx(float(q @ clustered(600)[ids.index(truth[0])]),
                                                    abs=1e-5)
            assert [s for _, s in got_exact] == sorted((s for _, s in got_exact), reverse=True)
            overlap.append(len(set(ids_of(got_graph)) & set(truth)) / 10)
            assert ids_of(got_graph)[0] == truth[0]
            assert dict(got_graph)[truth[0]] == pytest.approx(got_exact[0][1], abs=1e-4)
        assert np.mean(overlap) >= 0.95
        assert list((tmp_path / "b").glob("*.usearch")), "the graph is saved to a file"
        assert not list((tmp_path / "a").glob("*.usearch")), "small collections stay in memory"
        assert (tmp_path / "b").stat().st_mode & 0o777 == 0o700
        for f in (tmp_path / "b").glob("*.usearch"):
            assert f.stat().st_mode & 0o777 == 0o600
            # Named by a digest, never by the ids ("e1" may occur in hex by chance).
            digest = hashlib.sha256(f"{owner}\0e1".encode()).hexdigest()
            assert f.name == f"{digest}.32.usearch" and owner not in f.name
    finally:
        exact.close()
        graph.close()


@pytest.mark.parametrize("indexes", MODES, indirect=True)
def test_rows_committed_by_another_process_are_found(vault: Vault, owner: str,
                                                     indexes: VectorIndexes) -> None:
    add_rows(vault.db, owner, "e1", clustered(200))
    q = clustered(1, seed=99)[0]
    assert len(indexes.search(owner, "e1", DIMS, q, 5)) == 5  # loaded, caught up
    assert indexes.wait_for_builds(60)
    script = (
        "import sqlite3, sys, numpy as np\n"
        "db = sqlite3.connect(sys.argv[1]); v = np.frombuffer(bytes.fromhex(sys.argv[3]), '<f4')\n"
        "db.execute('INSERT INTO chunks (owner_id, entity_id, chunk_id, text, search_text, "
        "metadata, dimensions, embedding, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)', "
        "(sys.argv[2], 'e1', 'other-process', 'x', 'x', '{}', len(v), v.tobytes(), "
        "'2026-01-01 00:00:00.000000'))\n"
        "db.commit()\n")
    db_path = vault.settings.sqlite_path
    assert db_path.exists()
    subprocess.run([sys.executable, "-c", script, str(db_path), owner,
                    q.astype("<f4").tobytes().hex()], check=True)
    with vault.db.read() as conn:
        new_id = conn.execute(sa.select(chunks.c.id).where(
            chunks.c.chunk_id == "other-process")).scalar_one()
    found = indexes.search(owner, "e1", DIMS, q, 5)
    assert found[0] == (new_id, pytest.approx(1.0, abs=1e-5))


@pytest.mark.parametrize("indexes", MODES, indirect=True)
def test_deleted_rows_are_never_returned(vault: Vault, owner: str,
                                         indexes: VectorIndexes) -> None:
    ids = add_rows(vault.db, owner, "e1", clustered(300))
    built(indexes, owner)
    queries = clustered(10, seed=3)
    deleted: set[int] = set()
    for q in queries:
        top = ids_of(indexes.search(owner, "e1", DIMS, q, 10))
        delete_rows(vault.db, top[:5])
        deleted |= set(top[:5])
        for q2 in queries:
            found = ids_of(indexes.search(owner, "e1", DIMS, q2, 10))
            assert len(found) == 10, "k is still filled"
            assert not deleted & set(found)
        assert not deleted & set(ids_of(indexes.search(owner, "e1", DIMS, q, 10,
                                                       candidates=sorted(deleted))))
    remaining = len(ids) - len(deleted)
    assert len(indexes.search(owner, "e1", DIMS, queries[0], 10_000)) == remaining


def _graph_answers(ix: VectorIndexes, owner: str) -> list[list[int]]:
    return [ids_of(ix.search(owner, "e1", DIMS, q, 10)) for q in clustered(15, seed=5)]


@pytest.mark.parametrize("damage", ["none", "deleted", "garbage", "truncated", "flipped",
                                    "trailer"])
def test_missing_or_corrupt_index_file_is_rebuilt(vault: Vault, owner: str, tmp_path: Path,
                                                  damage: str) -> None:
    add_rows(vault.db, owner, "e1", clustered(400))
    first = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    built(first, owner)
    before = _graph_answers(first, owner)
    first.close()
    (path,) = (tmp_path / "ix").glob("*.usearch")
    data = path.read_bytes()
    if damage == "deleted":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 1000)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":  # a bit flipped inside the graph: only a checksum sees it
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 0x40]) + data[1001:])
    elif damage == "trailer":
        path.write_bytes(data[:-40] + b"\xff" * 40)
    again = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    try:
        for q, found in zip(clustered(15, seed=5), _graph_answers(again, owner), strict=True):
            assert found[0] == brute(vault.db, owner, "e1", q, 1)[0]  # exact until built
        assert again.stats()["rebuilds"] == (0 if damage == "none" else 1)
        assert again.wait_for_builds(60)
        assert _graph_answers(again, owner) == before
        assert again.stats()["graphs"] == 1
        assert path.exists(), "the rebuilt graph is saved again"
    finally:
        again.close()


def test_index_file_older_than_the_rows_catches_up(vault: Vault, owner: str,
                                                   tmp_path: Path) -> None:
    ids = add_rows(vault.db, owner, "e1", clustered(300))
    first = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    built(first, owner)
    first.close()
    delete_rows(vault.db, ids[:100])
    new = add_rows(vault.db, owner, "e1", clustered(50, seed=11))
    again = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    try:
        for q in clustered(10, seed=11):
            found = ids_of(again.search(owner, "e1", DIMS, q, 10))
            assert not set(ids[:100]) & set(found)
            assert found[0] == brute(vault.db, owner, "e1", q, 1)[0]
        assert set(new) <= set(ids_of(again.search(owner, "e1", DIMS, clustered(1)[0], 1000)))
        assert again.stats()["rebuilds"] == 0
    finally:
        again.close()


def test_restored_database_rebuilds_the_index(tmp_path: Path) -> None:
    """An index file ahead of the database (restored from a backup) is rebuilt."""
    data_dir, backup = tmp_path / "data", tmp_path / "backup.db"
    vault = memvault.open(data_dir, password_hash="owasp")
    uid = vault.users.register("restore@example.com", "password-1").id
    vault.for_user(uid).entities.create("e1", entity_id="e1")
    kept = add_rows(vault.db, uid, "e1", clustered(200))
    db_path = vault.settings.sqlite_path
    src, dst = sqlite3.connect(db_path), sqlite3.connect(backup)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    later = add_rows(vault.db, uid, "e1", clustered(200, seed=1))
    ix = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    built(ix, uid)
    ix.close()
    vault.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, db_path)
    with memvault.open(data_dir, password_hash="owasp") as vault:
        ix = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
        try:
            found = ids_of(ix.search(uid, "e1", DIMS, clustered(1)[0], 1000))
            assert sorted(found) == kept and not set(later) & set(found)
            assert ix.stats()["rebuilds"] == 1
            # new rows reuse the ids the lost rows had: they must be found
            again = add_rows(vault.db, uid, "e1", clustered(5, seed=2))
            assert set(again) & set(later)
            q = clustered(5, seed=2)[0]
            assert ids_of(ix.search(uid, "e1", DIMS, q, 1)) == [again[0]]
        finally:
            ix.close()


def test_pruned_tombstones_rebuild_the_index(vault: Vault, owner: str, tmp_path: Path) -> None:
    """Deletions whose tombstones are gone are noticed by the count check."""
    ids = add_rows(vault.db, owner, "e1", clustered(300))
    first = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    built(first, owner)
    first.close()
    delete_rows(vault.db, ids[:30])
    with vault.db.write() as conn:
        conn.execute(chunk_tombstones.delete())
    again = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    try:
        found = ids_of(again.search(owner, "e1", DIMS, clustered(1)[0], 1000))
        assert sorted(found) == ids[30:]
        assert again.stats()["rebuilds"] == 1
    finally:
        again.close()


@pytest.mark.parametrize("indexes", MODES, indirect=True)
def test_candidates_restrict_the_search(vault: Vault, owner: str,
                                        indexes: VectorIndexes) -> None:
    vecs = clustered(300)
    ids = add_rows(vault.db, owner, "e1", vecs)
    other = add_rows(vault.db, owner, "e2", clustered(20))
    built(indexes, owner)
    rng = np.random.default_rng(1)
    allowed = sorted(int(i) for i in rng.choice(ids, 40, replace=False))
    q = clustered(1, seed=9)[0]
    found = indexes.search(owner, "e1", DIMS, q, 5, candidates=allowed + other + [10**9])
    by_id = dict(zip(ids, vecs, strict=True))
    truth = sorted(allowed, key=lambda i: -float(by_id[i] @ q))[:5]
    assert ids_of(found) == truth
    assert [s for _, s in found] == pytest.approx([float(by_id[i] @ q) for i in truth], abs=1e-5)
    assert ids_of(indexes.search(owner, "e1", DIMS, q, 100, candidates=allowed[:3])) == sorted(
        allowed[:3], key=lambda i: -float(by_id[i] @ q))
    assert indexes.search(owner, "e1", DIMS, q, 5, candidates=[]) == []


@pytest.mark.parametrize("indexes", MODES, indirect=True)
def test_only_vectors_of_the_asked_dimensions(vault: Vault, owner: str,
                                              indexes: VectorIndexes) -> None:
    small = add_rows(vault.db, owner, "e1", clustered(120, dims=16))
    large = add_rows(vault.db, owner, "e1", clustered(80, dims=DIMS))
    more_small = add_rows(vault.db, owner, "e1", clustered(10, dims=16, seed=4))
    found = ids_of(indexes.search(owner, "e1", DIMS, clustered(1)[0], 1000))
    assert sorted(found) == large
    found16 = ids_of(indexes.search(owner, "e1", 16, clustered(1, dims=16)[0], 1000))
    assert sorted(found16) == small + more_small
    with pytest.raises(Invalid):
        indexes.search(owner, "e1", DIMS, clustered(1, dims=16)[0], 5)
    assert indexes.search(owner, "e1", DIMS, np.zeros(DIMS, np.float32), 5) == []


def test_collections_and_owners_are_apart_and_drop_forgets(vault: Vault, owner: str,
                                                           indexes: VectorIndexes,
                                                           tmp_path: Path) -> None:
    other = vault.users.register("other@example.com", "password-1").id
    vault.for_user(other).entities.create("e1", entity_id="e1")
    mine = add_rows(vault.db, owner, "e1", clustered(100))
    theirs = add_rows(vault.db, other, "e1", clustered(100))
    q = clustered(1)[0]
    assert sorted(ids_of(indexes.search(owner, "e1", DIMS, q, 1000))) == mine
    assert sorted(ids_of(indexes.search(other, "e1", DIMS, q, 1000))) == theirs
    assert indexes.search(owner, "e2", DIMS, q, 10) == []
    assert indexes.wait_for_builds(60)
    assert len(list((tmp_path / "ix").glob("*.usearch"))) == 2
    vault.for_user(owner).entities.delete("e1")
    indexes.drop(owner, "e1")
    assert len(list((tmp_path / "ix").glob("*.usearch"))) == 1
    assert indexes.search(owner, "e1", DIMS, q, 10) == []
    assert len(indexes.search(other, "e1", DIMS, q, 1000)) == 100


def test_threads_search_while_rows_come_and_go(vault: Vault, owner: str, tmp_path: Path) -> None:
    # A budget of one byte keeps evicting every other collection: loads, saves
    # and evictions race with searches and catch-ups.
    ix = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW, memory_budget=1)
    entities = ["e1", "e2", "e3"]
    alive: dict[str, set[int]] = {e: set(add_rows(vault.db, owner, e, clustered(120, seed=j)))
                                  for j, e in enumerate(entities)}
    gone: set[int] = set()
    errors: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer() -> None:
        rng = np.random.default_rng(0)
        try:
            for step in range(40):
                e = entities[step % 3]
                new = add_rows(vault.db, owner, e, clustered(10, seed=100 + step))
                with lock:
                    victims = [int(i) for i in rng.choice(sorted(alive[e]), 5, replace=False)]
                delete_rows(vault.db, victims)
                with lock:
                    alive[e] |= set(new)
                    alive[e] -= set(victims)
                    gone.update(victims)
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)
        finally:
            stop.set()

    def reader(seed: int) -> None:
        qs = clustered(20, seed=seed)
        try:
            n = 0
            while not stop.is_set() or n < 20:
                e = entities[n % 3]
                with lock:
                    dead = set(gone)
                found = ids_of(ix.search(owner, e, DIMS, qs[n % 20], 10))
                assert len(found) == 10
                assert not dead & set(found), "a deleted chunk was returned"
                n += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        q = clustered(1)[0]
        for e in entities:
            assert set(ids_of(ix.search(owner, e, DIMS, q, 10_000))) == alive[e]
        assert ix.stats()["evictions"] > 0
    finally:
        ix.close()


def test_the_local_embedder_loads_after_an_hnsw_graph_was_built() -> None:
    """usearch imported before onnxruntime crashed the process (segfault) when
    the local embedder loaded; a fresh interpreter proves the import order."""
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from memvault.retrieval.ann import _Hnsw\n"
            "g = _Hnsw(8)\n"
            "g.add(np.arange(50, dtype=np.int64), np.random.rand(50, 8).astype(np.float32))\n"
            "from memvault.retrieval.embedders import LocalEmbedder\n"
            "print(LocalEmbedder().embed(['a cat']).shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1, 384)" in done.stdout


# -- graphs built in the background -------------------------------------------------------

class SlowBuilds:
    """Holds each batch the builder thread adds to a graph until ``release()``
    (searches keep going meanwhile) and records how many builds ran at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.lock = threading.Lock()
        self.running: dict[tuple[str, str, int], int] = {}
        self.most_at_once = 0
        add, build = ann._Hnsw.add, VectorIndexes._build

        def slow_add(graph: ann._Hnsw, *args: object, **kwargs: object) -> None:
            if threading.current_thread().name == "memvault-ann-build":
                self.started.set()
                self.gate.wait(30)
            add(graph, *args, **kwargs)  # type: ignore[arg-type]

        def counted_build(ix: VectorIndexes, key: tuple[str, str, int], reason: str) -> None:
            with self.lock:
                self.running[key] = self.running.get(key, 0) + 1
                self.most_at_once = max(self.most_at_once, sum(self.running.values()))
            try:
                build(ix, key, reason)
            finally:
                with self.lock:
                    self.running[key] -= 1

        monkeypatch.setattr(ann._Hnsw, "add", slow_add)
        monkeypatch.setattr(VectorIndexes, "_build", counted_build)

    def release(self) -> None:
        self.gate.set()


def test_a_missing_file_is_built_in_the_background_while_searches_answer_exactly(
        vault: Vault, owner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = add_rows(vault.db, owner, "e1", clustered(400))
    first = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    built(first, owner)
    first.close()
    (path,) = (tmp_path / "ix").glob("*.usearch")
    path.unlink()  # e.g. deleted, or never built before a bulk load
    slow = SlowBuilds(monkeypatch)
    ix = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    try:
        queries = clustered(10, seed=8)
        for q in queries:  # answered at once, exactly, while the graph is being built
            assert ids_of(ix.search(owner, "e1", DIMS, q, 10)) == brute(vault.db, owner, "e1",
                                                                        q, 10)
        assert slow.started.wait(30)
        stats = ix.stats()
        assert (stats["building"], stats["graphs"], stats["rebuilds"]) == (1, 0, 1)
        # Written while the graph is built: found now, and by the graph once swapped in.
        new = add_rows(vault.db, owner, "e1", clustered(20, seed=21))
        delete_rows(vault.db, ids[:50])
        for q in clustered(5, seed=21):
            assert ids_of(ix.search(owner, "e1", DIMS, q, 10)) == brute(vault.db, owner, "e1",
                                                                        q, 10)
        slow.release()
        assert ix.wait_for_builds(60)
        assert path.exists()
        found = ids_of(ix.search(owner, "e1", DIMS, clustered(1, seed=21)[0], 1000))
        assert ix.stats()["graphs"] == 1 and ix.stats()["builds"] == 1
        assert sorted(found) == sorted(ids[50:] + new)
    finally:
        ix.close()
    again = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    try:  # the file built in the background is the one used next time
        q = clustered(1, seed=22)[0]
        assert ids_of(again.search(owner, "e1", DIMS, q, 1)) == brute(vault.db, owner, "e1", q, 1)
        stats = again.stats()
        assert (stats["graphs"], stats["rebuilds"], stats["building"]) == (1, 0, 0)
    finally:
        again.close()


def test_one_build_per_collection_at_a_time(vault: Vault, owner: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for j, entity in enumerate(("e1", "e2")):
        add_rows(vault.db, owner, entity, clustered(200, seed=j))
    slow = SlowBuilds(monkeypatch)
    # A budget of one byte evicts the other collection at every search: each
    # reload finds no file yet and asks for a graph again.
    ix = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW, memory_budget=1)
    errors: list[BaseException] = []

    def searcher(seed: int) -> None:
        try:
            for n, q in enumerate(clustered(30, seed=seed)):
                entity = ("e1", "e2")[n % 2]
                assert len(ix.search(owner, entity, DIMS, q, 5)) == 5
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    try:
        threads = [threading.Thread(target=searcher, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert slow.started.wait(30)
        assert ix.stats()["building"] == 2  # one running, the other queued
        slow.release()
        assert ix.wait_for_builds(60)
        assert slow.most_at_once == 1
        assert len(list((tmp_path / "ix").glob("*.usearch"))) == 2
    finally:
        slow.release()
        ix.close()


def test_close_stops_a_build_and_publishes_no_file(vault: Vault, owner: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    add_rows(vault.db, owner, "e1", clustered(400))
    monkeypatch.setattr(ann, "_BUILD_BATCH", 10)  # forty batches: close() comes mid-build
    slow = SlowBuilds(monkeypatch)
    ix = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    assert len(ix.search(owner, "e1", DIMS, clustered(1)[0], 5)) == 5
    assert slow.started.wait(30)
    closer = threading.Thread(target=ix.close)
    closer.start()
    deadline = time.monotonic() + 30
    while not ix._stopping.is_set():  # close() has begun: it waits for this batch only
        assert time.monotonic() < deadline
        time.sleep(0.005)
    slow.release()
    closer.join(30)
    assert not closer.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "memvault-ann-build"]
    assert ix.stats()["builds"] == 0
    assert not list((tmp_path / "ix").iterdir()), "no file, not even a temporary one"
    # A temporary file a crashed save left behind is never taken for an index.
    (tmp_path / "ix" / f".{_digest(owner, 'e1')}.32.usearch.1.dead.tmp").write_bytes(b"x" * 64)
    again = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    try:
        built(again, owner)
        assert again.stats()["graphs"] == 1 and again.stats()["builds"] == 1
    finally:
        again.close()


def test_a_collection_dropped_while_its_graph_is_built_leaves_no_file(
        vault: Vault, owner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_rows(vault.db, owner, "e1", clustered(200))
    slow = SlowBuilds(monkeypatch)
    ix = VectorIndexes(vault.db, tmp_path / "ix", exact_below=HNSW)
    try:
        ix.search(owner, "e1", DIMS, clustered(1)[0], 5)
        assert slow.started.wait(30)
        vault.for_user(owner).entities.delete("e1")
        ix.drop(owner, "e1")
        slow.release()
        assert ix.wait_for_builds(60)
        assert not list((tmp_path / "ix").glob("*.usearch"))
        assert ix.search(owner, "e1", DIMS, clustered(1)[0], 5) == []
    finally:
        slow.release()
        ix.close()
