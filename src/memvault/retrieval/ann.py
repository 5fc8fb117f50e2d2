"""SQLite's vector index: derived from ``chunks``, one per collection, in step.

The database holds the truth (``chunks.embedding``, already L2-normalised);
this module keeps, per collection ``(owner_id, entity_id)`` and dimension, an
index answering cosine top-k from it. PostgreSQL answers with pgvector and
does not use this module.

Keeping in step. ``chunks.id`` is never reused and rows are never updated
(replace = delete + insert, see schema.py), and a trigger writes one
``chunk_tombstones`` row per deleted chunk. So an index is "every row with
``id <= hwm``, minus the tombstones with ``seq <= tomb_hwm``", and catching up
before a search is two indexed range queries (rows ``id > hwm``, tombstones
``seq > tomb_hwm``), read in one read transaction, so the index never shows a
state the database did not have. SQLite serialises writers and issues ids in
commit order, so whatever another process (another ``memvault serve`` worker)
committed is seen by the next search here. When nothing changed both queries
return nothing, which costs two B-tree descents.

Two engines. A collection under ``exact_below`` vectors is a float32 matrix in
memory, scored with one matrix-vector product (faster than a graph at that
size, and exact). A larger one is a usearch HNSW graph (cosine), persisted to
a file under ``directory`` so a restart does not rebuild it: on open the file
is loaded and caught up from its high-water marks; a file that is missing,
unreadable, corrupt (checksum) or inconsistent with the database (marks
beyond anything the database ever issued, or a vector count that differs
from the rows: the database was restored, or tombstones were pruned) is
rebuilt from the rows, and that is logged.

Building a graph takes minutes at 100,000 vectors, so it never happens inside
a search: the collection is loaded as a matrix at once (reading the rows takes
seconds) and answers exactly, while one background thread builds the graph
from a copy of it, catches the graph up with what was written meanwhile, saves
it, and swaps it in. Builds are queued and run one at a time (CPU and memory
stay bounded when many collections need one, and a collection never has two);
``close`` stops a build between two batches and leaves no file behind (a file
is only ever published whole, by rename). While it builds, a collection holds
its vectors twice (matrix and graph).

The file is one file, ``<sha256(owner, entity)>.<dims>.usearch``: the usearch
payload followed by a trailer (JSON: format version, dims, count, high-water
marks, payload length and CRC-32) and its length and magic. The trailer is the
"sidecar", kept inside the same file so one atomic rename publishes both:
with two files, a worker could read one worker's graph with another's marks.
Files are written to a temporary name, fsynced, renamed, and the folder
fsynced; they are saved after a catch-up that changed many vectors, after a
background build, on eviction and on close, never on every search (a stale
file only costs a longer catch-up on the next open).

Memory is bounded by an LRU of loaded collections (``memory_budget`` bytes;
the least recently used are saved and dropped). Each collection has its own
lock; searches of one collection are serialised, searches of different
collections run in parallel (numpy and usearch release the GIL).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
import structlog
from numpy.typing import NDArray
from sqlalchemy.engine import Connection

from ..backends.base import Database
from ..backends.schema import chunk_tombstones, chunks
from ..errors import Invalid

__all__ = ["VectorIndexes", "CONNECTIVITY", "EXPANSION_ADD", "EXPANSION_SEARCH"]

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
MAGIC = b"MVANNv1\n"
_TRAILER_TAIL = struct.Struct("<I8s")  # trailer JSON length, magic

#: HNSW parameters, measured on embedding-like data (384-d, 2,000 low-rank
#: clusters plus noise), 100,000 vectors, 2 build threads, a busy 2-core VM:
#: connectivity 16 / expansion_add 64 builds in 78 s with recall@10 0.988 /
#: 0.996 / 0.996 at expansion_search 64 / 128 / 192 (0.7 / 1.4 / 1.8 ms a
#: query); connectivity 32 / expansion_add 128 reaches 1.000 but takes twice as
#: long to build (154 s), during which the collection is searched exactly (in
#: the background, see above). bench/vector_search.py checks the figures at 1M.
CONNECTIVITY = 16
EXPANSION_ADD = 64
EXPANSION_SEARCH = 128

#: Rows read per batch when building or catching up (bounds transient memory).
_BATCH = 20_000
#: A file is saved once this many vectors changed since the last save, or a
#: tenth of the collection, whichever is larger.
_SAVE_MIN_CHANGES = 1_000
#: How often a loaded collection re-checks its count against the rows (which
#: notices tombstones pruned under it, or a database restored under it).
_VERIFY_INTERVAL_S = 300.0
#: Vectors added to a graph per call while building in the background: close()
#: waits for at most one batch.
_BUILD_BATCH = 1_000
#: A build that failed is not tried again for the same collection before this.
_BUILD_RETRY_S = 60.0
#: The engine switches back to exact search only well below ``exact_below``,
#: so a collection hovering at the threshold is not rebuilt back and forth.
_HYSTERESIS = 2


def _private_dir(path: Path) -> None:
    existed = path.exists()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not existed:
        os.chmod(path, 0o700)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _top(ids: NDArray[np.int64], scores: NDArray[np.float32], k: int) -> list[tuple[int, float]]:
    """The ``k`` best ``(id, score)`` pairs, best first (ties: lower id first)."""
    if k <= 0 or len(ids) == 0:
        return []
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        ids, scores = ids[part], scores[part]
    order = np.lexsort((ids, -scores))
    return [(int(ids[i]), float(scores[i])) for i in order]


class _Engine(Protocol):
    def __len__(self) -> int: ...

    def add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None: ...

    def remove(self, ids: NDArray[np.int64]) -> int: ...

    def search(self, query: NDArray[np.float32], k: int) -> list[tuple[int, float]]: ...

    def vectors_of(self, ids: NDArray[np.int64]
                   ) -> tuple[NDArray[np.int64], NDArray[np.float32]]: ...

    def nbytes(self) -> int: ...


class _Exact:
    """Ids (ascending: rows arrive in id order) and a float32 matrix; deleted rows
    are masked and compacted away once they are a quarter of the matrix."""

    def __init__(self, dims: int) -> None:
        self.dims = dims
        self.ids = np.empty(0, dtype=np.int64)
        self.vecs = np.empty((0, dims), dtype=np.float32)
        self.alive = np.empty(0, dtype=bool)
        self.n = 0
        self.dead = 0

    def __len__(self) -> int:
        return self.n - self.dead

    def add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        need = self.n + len(ids)
        if need > len(self.ids):  # grow by doubling: appends stay amortised O(1)
            cap = max(need, 2 * len(self.ids), 64)
            self.ids = np.resize(self.ids, cap)
            vecs = np.empty((cap, self.dims), dtype=np.float32)
            vecs[:self.n] = self.vecs[:self.n]
            self.vecs = vecs
            self.alive = np.resize(self.alive, cap)
        self.ids[self.n:need] = ids
        self.vecs[self.n:need] = vectors
        self.alive[self.n:need] = True
        self.n = need

    def _positions(self, ids: NDArray[np.int64]) -> NDArray[np.intp]:
        """Positions of the live rows among ``ids`` (unknown ids skipped)."""
        pos = np.searchsorted(self.ids[:self.n], ids)
        pos = pos[pos < self.n]
        return pos[np.isin(self.ids[pos], ids) & self.alive[pos]]

    def remove(self, ids: NDArray[np.int64]) -> int:
        pos = self._positions(ids)
        self.alive[pos] = False
        self.dead += len(pos)
        if self.dead and self.dead * 4 >= self.n:
            keep = self.alive[:self.n]
            live = int(keep.sum())
            self.ids[:live] = self.ids[:self.n][keep]
            self.vecs[:live] = self.vecs[:self.n][keep]
            self.alive[:live] = True
            self.n, self.dead = live, 0
        return len(pos)

    def search(self, query: NDArray[np.float32], k: int) -> list[tuple[int, float]]:
        scores = self.vecs[:self.n] @ query
        if self.dead:
            scores[~self.alive[:self.n]] = -np.inf
            k = min(k, len(self))
        return _top(self.ids[:self.n], scores, k)

    def vectors_of(self, ids: NDArray[np.int64]
                   ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        pos = self._positions(ids)
        return self.ids[pos], self.vecs[pos]

    def live(self) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        keep = self.alive[:self.n]
        return self.ids[:self.n][keep], self.vecs[:self.n][keep]

    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.vecs.nbytes + self.alive.nbytes)


def _usearch_index() -> Any:
    """usearch's ``Index``, imported on first use (``memvault serve`` starts
    without it) and always after onnxruntime: importing onnxruntime (the local
    embedder) in a process that already loaded usearch 2.26 is a segmentation
    fault, every time; the other order is fine (tests/retrieval/test_ann.py)."""
    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401
    from usearch.index import Index
    return Index


class _Hnsw:
    """A usearch HNSW graph (cosine, float32 vectors kept, so a candidate
    restriction is scored exactly from the index's own copy)."""

    def __init__(self, dims: int) -> None:
        Index = _usearch_index()  # noqa: N806 - a class

        self.dims = dims
        # Any: usearch's property setters confuse type checkers
        self.index: Any = Index(
            ndim=dims, metric="cos", dtype="f32", connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
        #: vectors removed since the graph was built (they still occupy it)
        self.removed = 0

    def __len__(self) -> int:
        return len(self.index)

    def add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32],
            threads: int | None = None) -> None:
        if len(ids):
            if threads is None:  # all cores for a large catch-up, one for a small one
                threads = 0 if len(ids) >= 1_000 else 1
            self.index.add(ids, vectors, threads=threads)

    def remove(self, ids: NDArray[np.int64]) -> int:
        present = ids[np.asarray(self.index.contains(ids), dtype=bool)]
        if len(present):
            self.index.remove(present)
            self.removed += len(present)
        return len(present)

    def search(self, query: NDArray[np.float32], k: int) -> list[tuple[int, float]]:
        count = min(k, len(self.index))
        if count <= 0:
            return []
        # usearch skips removed labels itself; the ef must cover k.
        if self.index.expansion_search < count:
            self.index.expansion_search = count
        matches = self.index.search(query, count, threads=1)
        if len(matches.keys) < count:
            # a graph thinned by removals can strand live vectors: fill k exactly
            matches = self.index.search(query, count, threads=1, exact=True)
        keys = np.asarray(matches.keys, dtype=np.int64)
        sims = (1.0 - np.asarray(matches.distances, dtype=np.float32)).astype(np.float32)
        return _top(keys, sims, count)

    def vectors_of(self, ids: NDArray[np.int64]
                   ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        present = ids[np.asarray(self.index.contains(ids), dtype=bool)]
        if not len(present):
            return present, np.empty((0, self.dims), dtype=np.float32)
        got = self.index.get(present, dtype=np.float32)
        return present, np.vstack(got).astype(np.float32, copy=False)

    def nbytes(self) -> int:
        # An estimate (vector + base-layer links + upper layers): usearch's own
        # memory_usage walks its allocations and cost as much as a search.
        return int(len(self.index) * (self.dims * 4 + CONNECTIVITY * 2 * 4 * 1.2 + 64))


@dataclass
class _Collection:
    owner_id: str
    entity_id: str
    dims: int
    path: Path
    label: str  # digest prefix, for logs (never the raw ids)
    lock: threading.Lock = field(default_factory=threading.Lock)
    engine: _Engine | None = None
    hwm: int = 0
    tomb_hwm: int = 0
    unsaved: int = 0
    verified_at: float = float("-inf")
    closed: bool = False


_Key = tuple[str, str, int]  # owner_id, entity_id, dims


class _Rebuild(Exception):
    """The loaded state does not match the database; rebuild from the rows."""


class VectorIndexes:
    """Every collection's vector index on one SQLite database."""

    def __init__(self, db: Database, directory: Path, *, exact_below: int = 20_000,
                 memory_budget: int = 1 << 30) -> None:
        """Args:
            db: the vault's database (SQLite).
            directory: where HNSW files live (created private, 0700).
            exact_below: collections with fewer vectors are searched exactly in memory.
            memory_budget: bytes of loaded indexes kept before least-recently-used
                collections are saved and dropped (the one in use is always kept).
        """
        self._db = db
        self._dir = directory
        self._exact_below = exact_below
        self._budget = memory_budget
        self._lock = threading.Lock()
        self._loaded: OrderedDict[_Key, _Collection] = OrderedDict()
        self._sizes: dict[_Key, int] = {}
        self._counts = {"rebuilds": 0, "catch_ups": 0, "saves": 0, "evictions": 0,
                        "builds": 0, "build_failures": 0}
        # Background builds: collections waiting for a graph (with why), the one
        # being built, collections dropped while built, and recent failures.
        self._queued: OrderedDict[_Key, str] = OrderedDict()
        self._building: _Key | None = None
        self._cancelled: set[_Key] = set()
        self._failed_at: dict[_Key, float] = {}
        self._builder: threading.Thread | None = None
        self._builds_done = threading.Condition(self._lock)
        self._stopping = threading.Event()
        # Leave a core to the requests (usearch releases the GIL while it adds).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        self._build_threads = max(1, cores - 1)
        _private_dir(directory)
        _remove_stale_temporaries(directory)

    # -- public ----------------------------------------------------------------

    def search(self, owner_id: str, entity_id: str, dims: int, query: NDArray[np.float32],
               k: int, candidates: Sequence[int] | None = None) -> list[tuple[int, float]]:
        """The ``k`` chunks nearest ``query`` by cosine: ``(chunks.id, similarity)``,
        best first, among the collection's vectors of ``dims`` dimensions (and
        among ``candidates`` when given). Everything committed before the call is
        searched; fewer than ``k`` results only when fewer vectors exist.

        Raises:
            Invalid: ``query`` is not a finite vector of ``dims`` numbers.
        """
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape != (dims,) or not np.all(np.isfinite(q)):
            raise Invalid(f"the query vector must have {dims} finite numbers", field="embedding")
        norm = float(np.linalg.norm(q))
        if norm == 0.0 or k <= 0:
            return []
        q = q / norm
        key = (owner_id, entity_id, dims)
        while True:
            coll = self._get(key)
            with coll.lock:
                if coll.closed:  # evicted or dropped between lookup and lock
                    continue
                engine = self._ready(coll)
                if candidates is not None:
                    cand = np.unique(np.asarray(candidates, dtype=np.int64))
                    ids, vecs = engine.vectors_of(cand)
                    found = _top(ids, vecs @ q, k)
                else:
                    found = engine.search(q, k)
                size = engine.nbytes()
            self._account(key, size)
            return found

    def drop(self, owner_id: str, entity_id: str) -> None:
        """Forget a collection (its entity was deleted): memory and files."""
        with self._lock:
            keys = [k for k in self._loaded if k[0] == owner_id and k[1] == entity_id]
            dropped = [self._loaded.pop(k) for k in keys]
            for k in keys:
                self._sizes.pop(k, None)
            for k in [k for k in self._queued if k[0] == owner_id and k[1] == entity_id]:
                del self._queued[k]
            # A build in progress must not publish its file after the unlink
            # below: it looks at this set after its rename (``_build``).
            if self._building is not None and self._building[:2] == (owner_id, entity_id):
                self._cancelled.add(self._building)
        for coll in dropped:
            with coll.lock:
                coll.closed, coll.engine = True, None
        for path in self._dir.glob(f"{_digest(owner_id, entity_id)}.*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def stats(self) -> dict[str, int]:
        """Collections loaded (``graphs`` of them answered by a graph), vectors
        held, bytes, graphs ``building`` (queued or in progress), event counters."""
        with self._lock:
            colls = list(self._loaded.values())
            out = dict(self._counts)
            out["bytes"] = sum(self._sizes.values())
            out["building"] = len(self._queued) + (self._building is not None)
        out["collections"] = len(colls)
        engines = [c.engine for c in colls]
        out["vectors"] = sum(len(e) for e in engines if e is not None)
        out["graphs"] = sum(isinstance(e, _Hnsw) for e in engines)
        return out

    def wait_for_builds(self, timeout: float | None = None) -> bool:
        """Wait until no graph is queued or being built; False on timeout."""
        with self._builds_done:
            return self._builds_done.wait_for(
                lambda: not self._queued and self._building is None, timeout)

    def close(self) -> None:
        """Stop a background build (between two batches; its graph is thrown
        away and no file is published), save every changed HNSW index and let
        go of them all."""
        self._stopping.set()
        with self._lock:
            builder = self._builder
            self._queued.clear()
        if builder is not None:
            builder.join()
        with self._lock:
            colls = list(self._loaded.values())
            self._loaded.clear()
            self._sizes.clear()
        for coll in colls:
            self._release(coll)

    # -- loading, catching up, rebuilding ----------------------------------------

    def _get(self, key: tuple[str, str, int]) -> _Collection:
        with self._lock:
            coll = self._loaded.get(key)
            if coll is None:
                digest = _digest(key[0], key[1])
                coll = _Collection(key[0], key[1], key[2],
                                   self._dir / f"{digest}.{key[2]}.usearch", digest[:12])
                self._loaded[key] = coll
                self._sizes[key] = 0
            self._loaded.move_to_end(key)
            return coll

    def _ready(self, coll: _Collection) -> _Engine:
        """The collection caught up with the database (loaded or rebuilt first)."""
        try:
            if coll.engine is None:
                self._open(coll)
            else:
                self._catch_up(coll)
        except _Rebuild as why:
            self._rebuild(coll, str(why))
        assert coll.engine is not None
        if coll.unsaved >= max(_SAVE_MIN_CHANGES, len(coll.engine) // 10):
            self._save(coll)
        return coll.engine

    def _open(self, coll: _Collection) -> None:
        try:
            loaded = self._load_file(coll)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise _Rebuild(f"index file unreadable: {exc}") from None
        if loaded is None:
            # No file: a small collection (never saved), a first open, or a
            # deleted file; only the last is worth a log line.
            self._rebuild(coll, "index file missing", quiet_if_small=True)
            return
        coll.engine, coll.hwm, coll.tomb_hwm = loaded
        coll.verified_at = float("-inf")  # check marks and count on this first catch-up
        self._catch_up(coll)

    def _catch_up(self, coll: _Collection) -> None:
        """Apply rows and tombstones newer than the marks, in one read transaction,
        checking now and then that the index and the rows still agree."""
        verify = time.monotonic() - coll.verified_at > _VERIFY_INTERVAL_S
        changed = self._apply_changes(coll, verify=verify)
        if changed:
            coll.unsaved += changed
            with self._lock:
                self._counts["catch_ups"] += 1
        self._fit_engine(coll)

    def _apply_changes(self, coll: _Collection, *, verify: bool = False) -> int:
        """Add the rows and remove the tombstones after ``coll``'s marks (one
        read transaction); how many vectors changed.

        Raises:
            _Rebuild: ``verify`` found the index out of step with the rows.
        """
        engine = coll.engine
        assert engine is not None
        changed = 0
        with self._snapshot() as conn:
            if verify:
                issued, tomb_issued = _issued(conn)
                if coll.hwm > issued or coll.tomb_hwm > tomb_issued:
                    raise _Rebuild("index is ahead of the database (restored?)")
            for ids, vecs, last in _rows_after(conn, coll, coll.hwm):
                engine.add(ids, vecs)
                changed += len(ids)
                coll.hwm = last
            gone = conn.execute(_TOMBSTONES_AFTER, {
                "owner": coll.owner_id, "entity": coll.entity_id, "after": coll.tomb_hwm}).all()
            if gone:
                changed += engine.remove(np.fromiter((r[1] for r in gone), dtype=np.int64,
                                                     count=len(gone)))
                coll.tomb_hwm = int(gone[-1][0])
            if verify:
                rows = _count(conn, coll)
                if rows != len(engine):
                    raise _Rebuild(f"index holds {len(engine)} vectors, the rows {rows}")
                coll.verified_at = time.monotonic()
        return changed

    def _fit_engine(self, coll: _Collection) -> None:
        """Ask for a graph when the collection reached the threshold, and go back
        to a matrix when a graph shrank or is mostly removed vectors."""
        engine = coll.engine
        if isinstance(engine, _Exact) and len(engine) >= self._exact_below:
            self._request_build(coll)
        elif isinstance(engine, _Hnsw) and (
                len(engine) * _HYSTERESIS < self._exact_below or engine.removed > len(engine)):
            self._rebuild(coll, "graph shrank or is mostly removed vectors")

    def _rebuild(self, coll: _Collection, reason: str, *, quiet_if_small: bool = False) -> None:
        """Load the collection's vectors from its rows (one read transaction)
        into a matrix that answers exactly at once; a collection that needs a
        graph gets one built in the background."""
        started = time.perf_counter()
        coll.engine = None
        engine, coll.hwm, coll.tomb_hwm = self._read_rows(coll)
        coll.engine = engine
        coll.verified_at = time.monotonic()
        coll.unsaved = 0
        large = len(engine) >= self._exact_below
        if large or not quiet_if_small:
            with self._lock:
                self._counts["rebuilds"] += 1
            # A missing file is also every graph's first build: info, not a warning.
            emit = log.info if quiet_if_small else log.warning
            emit("vector index rebuilt", collection=coll.label, dims=coll.dims,
                 reason=reason, vectors=len(engine), graph="building" if large else "none",
                 took_ms=round((time.perf_counter() - started) * 1000, 1))
        if large:
            self._request_build(coll, reason)
        else:
            with contextlib.suppress(FileNotFoundError):
                coll.path.unlink()  # an old graph file would only be rebuilt again

    def _read_rows(self, coll: _Collection) -> tuple[_Exact, int, int]:
        """The collection's vectors as a matrix, with its marks (one read transaction)."""
        engine = _Exact(coll.dims)
        hwm = 0
        with self._snapshot() as conn:
            for ids, vecs, last in _rows_after(conn, coll, 0):
                engine.add(ids, vecs)
                hwm = last
            tomb = conn.execute(
                sa.select(sa.func.max(chunk_tombstones.c.seq))
                .where(chunk_tombstones.c.owner_id == coll.owner_id,
                       chunk_tombstones.c.entity_id == coll.entity_id)).scalar()
        return engine, hwm, int(tomb or 0)

    # -- background builds ---------------------------------------------------------

    def _request_build(self, coll: _Collection, reason: str = "reached the threshold") -> None:
        """Queue a graph build for ``coll`` unless one is queued or running (or
        failed a moment ago), and start the builder thread if it is idle."""
        key = (coll.owner_id, coll.entity_id, coll.dims)
        with self._lock:
            if self._stopping.is_set() or key in self._queued or key == self._building:
                return
            if time.monotonic() - self._failed_at.get(key, float("-inf")) < _BUILD_RETRY_S:
                return
            self._queued[key] = reason
            if self._builder is None:
                self._builder = threading.Thread(target=self._build_queued,
                                                 name="memvault-ann-build", daemon=True)
                self._builder.start()

    def _build_queued(self) -> None:
        """The builder thread: build queued graphs one at a time, then end."""
        while True:
            with self._lock:
                if self._stopping.is_set() or not self._queued:
                    self._builder = None
                    self._queued.clear()
                    self._builds_done.notify_all()
                    return
                key, reason = self._queued.popitem(last=False)
                self._building = key
            try:
                self._build(key, reason)
            except Exception:  # logged and tried again later; searches stay exact
                log.exception("vector index build failed", dims=key[2],
                              collection=_digest(key[0], key[1])[:12])
                with self._lock:
                    self._counts["build_failures"] += 1
                    self._failed_at[key] = time.monotonic()
            finally:
                with self._lock:
                    self._building = None
                    self._cancelled.discard(key)
                    self._builds_done.notify_all()

    def _build(self, key: _Key, reason: str) -> None:
        """Build ``key``'s graph from a copy of its matrix (or from the rows, if
        it was evicted meanwhile), catch it up, save it and swap it in (into
        whichever object holds the collection then)."""
        digest = _digest(key[0], key[1])
        shadow = _Collection(key[0], key[1], key[2],
                             self._dir / f"{digest}.{key[2]}.usearch", digest[:12])
        with self._lock:
            coll = self._loaded.get(key)
        copied = None
        if coll is not None:
            with coll.lock:
                if not coll.closed:
                    if not isinstance(coll.engine, _Exact):
                        return  # it has a graph already (a file another process saved)
                    copied = coll.engine.live()  # copies
                    shadow.hwm, shadow.tomb_hwm = coll.hwm, coll.tomb_hwm
        if copied is None:  # evicted since: read the rows (in a short transaction)
            matrix, shadow.hwm, shadow.tomb_hwm = self._read_rows(shadow)
            copied = matrix.live()
            del matrix
        ids, vecs = copied
        del copied
        if len(ids) < self._exact_below:
            return
        started = time.perf_counter()
        graph = _Hnsw(shadow.dims)
        for at in range(0, len(ids), _BUILD_BATCH):
            if self._stopping.is_set():
                return
            part = slice(at, at + _BUILD_BATCH)
            # one thread for a small graph: the same graph every time
            graph.add(ids[part], vecs[part],
                      threads=self._build_threads if len(ids) >= _BUILD_BATCH else 1)
        del ids, vecs
        shadow.engine = graph
        shadow.unsaved = self._apply_changes(shadow)  # what was written meanwhile
        if self._stopping.is_set():
            return
        self._save(shadow)
        with self._lock:
            cancelled = key in self._cancelled
            current = self._loaded.get(key)
            self._counts["builds"] += 1
            self._failed_at.pop(key, None)
        if cancelled:  # the entity was deleted while its graph was built
            with contextlib.suppress(FileNotFoundError):
                shadow.path.unlink()
            return
        log.info("vector index built", collection=shadow.label, dims=shadow.dims, reason=reason,
                 vectors=len(graph), took_ms=round((time.perf_counter() - started) * 1000, 1))
        if current is None:  # evicted: the saved file serves its next search
            return
        with current.lock:
            if current.closed or not isinstance(current.engine, _Exact):
                return
            shadow.unsaved += self._apply_changes(shadow)
            current.engine, current.hwm, current.tomb_hwm = graph, shadow.hwm, shadow.tomb_hwm
            current.unsaved = shadow.unsaved

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """One read transaction: every statement sees the same committed state."""
        with self._db.read() as conn:
            conn.exec_driver_sql("BEGIN")  # pysqlite's implicit transactions are off
            try:
                yield conn
            finally:
                conn.rollback()

    # -- files -------------------------------------------------------------------

    def _load_file(self, coll: _Collection) -> tuple[_Hnsw, int, int] | None:
        """The graph saved for ``coll`` and its marks; None when there is no file.

        Raises:
            ValueError, RuntimeError, OSError: the file is corrupt or unreadable.
        """
        try:
            f = open(coll.path, "rb")  # noqa: SIM115 (closed below, after the mmap)
        except FileNotFoundError:
            return None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < _TRAILER_TAIL.size:
                raise ValueError("file too short")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                length, magic = _TRAILER_TAIL.unpack_from(mm, size - _TRAILER_TAIL.size)
                if magic != MAGIC or length > size - _TRAILER_TAIL.size:
                    raise ValueError("no trailer")
                start = size - _TRAILER_TAIL.size - length
                meta = json.loads(bytes(mm[start:start + length]))
                if not isinstance(meta, dict) or (
                        meta.get("format") != FORMAT_VERSION or meta.get("dims") != coll.dims
                        or meta.get("payload_bytes") != start):
                    raise ValueError("trailer does not describe this file")
                payload = np.frombuffer(mm, dtype=np.uint8, count=start)
                try:
                    if zlib.crc32(payload.data) != meta["payload_crc32"]:
                        raise ValueError("checksum mismatch")
                    graph = _Hnsw(coll.dims)
                    graph.index.load(payload)  # copies: the file may be replaced
                finally:
                    del payload  # the mmap cannot close while a view exists
        graph.index.expansion_add = EXPANSION_ADD
        graph.index.expansion_search = EXPANSION_SEARCH
        if graph.index.ndim != coll.dims or len(graph) != meta["count"]:
            raise ValueError("graph does not match its trailer")
        graph.removed = int(meta.get("removed", 0))
        return graph, int(meta["hwm"]), int(meta["tomb_hwm"])

    def _save(self, coll: _Collection) -> None:
        """Write the collection's graph atomically (tmp, fsync, rename, fsync dir)."""
        engine = coll.engine
        if not isinstance(engine, _Hnsw):
            coll.unsaved = 0
            return
        tmp = coll.path.with_name(f".{coll.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            engine.index.save(str(tmp))
            os.chmod(tmp, 0o600)
            with open(tmp, "r+b") as f:
                payload_bytes = os.fstat(f.fileno()).st_size
                crc = 0
                while block := f.read(1 << 24):
                    crc = zlib.crc32(block, crc)
                meta = json.dumps({
                    "format": FORMAT_VERSION, "dims": coll.dims, "count": len(engine),
                    "hwm": coll.hwm, "tomb_hwm": coll.tomb_hwm, "removed": engine.removed,
                    "payload_bytes": payload_bytes, "payload_crc32": crc,
                    "connectivity": CONNECTIVITY, "saved_at": time.time()}).encode()
                f.write(meta + _TRAILER_TAIL.pack(len(meta), MAGIC))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, coll.path)
            _fsync_dir(self._dir)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        coll.unsaved = 0
        with self._lock:
            self._counts["saves"] += 1

    # -- memory ------------------------------------------------------------------

    def _account(self, key: tuple[str, str, int], size: int) -> None:
        """Record ``key``'s size; save and drop least-recently-used collections
        while the loaded ones exceed the budget (``key`` itself stays)."""
        victims: list[_Collection] = []
        with self._lock:
            if key in self._sizes:
                self._sizes[key] = size
            total = sum(self._sizes.values())
            for other in list(self._loaded):
                if total <= self._budget:
                    break
                if other == key:
                    continue
                victims.append(self._loaded.pop(other))
                total -= self._sizes.pop(other, 0)
                self._counts["evictions"] += 1
        for coll in victims:
            self._release(coll)

    def _release(self, coll: _Collection) -> None:
        with coll.lock:
            if coll.closed:
                return
            try:
                if coll.unsaved and isinstance(coll.engine, _Hnsw):
                    self._save(coll)
            except OSError:
                log.exception("vector index not saved", collection=coll.label)
            finally:
                coll.closed, coll.engine = True, None


def _remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files a crashed save left (another process may be
    writing one right now, so only those untouched for an hour)."""
    cutoff = time.time() - 3600
    for tmp in directory.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()


def _digest(owner_id: str, entity_id: str) -> str:
    return hashlib.sha256(f"{owner_id}\0{entity_id}".encode()).hexdigest()


# The catch-up's statements, built once: each search runs them.
_TOMBSTONES_AFTER = (
    sa.select(chunk_tombstones.c.seq, chunk_tombstones.c.chunk_pk)
    .where(chunk_tombstones.c.owner_id == sa.bindparam("owner"),
           chunk_tombstones.c.entity_id == sa.bindparam("entity"),
           chunk_tombstones.c.seq > sa.bindparam("after"))
    .order_by(chunk_tombstones.c.seq))
_ROWS_AFTER = (
    sa.select(chunks.c.id, sa.case((chunks.c.dimensions == sa.bindparam("dims"),
                                    sa.type_coerce(chunks.c.embedding, sa.LargeBinary)),
                                   else_=sa.null()))
    .where(chunks.c.owner_id == sa.bindparam("owner"),
           chunks.c.entity_id == sa.bindparam("entity"), chunks.c.id > sa.bindparam("after"))
    .order_by(chunks.c.id))


def _rows_after(conn: Connection, coll: _Collection, hwm: int
                ) -> Iterator[tuple[NDArray[np.int64], NDArray[np.float32], int]]:
    """Batches ``(ids, vectors, last id)`` of the collection's rows after ``hwm``.

    Rows of other dimensions advance the mark without their vectors being read
    (after a change of embedder a collection can hold both).
    """
    result = conn.execute(_ROWS_AFTER, {"owner": coll.owner_id, "entity": coll.entity_id,
                                        "after": hwm, "dims": coll.dims})
    width = coll.dims * 4
    for part in result.partitions(_BATCH):
        keep = [(row[0], row[1]) for row in part if row[1] is not None]
        last = int(part[-1][0])
        if not keep:
            yield np.empty(0, dtype=np.int64), np.empty((0, coll.dims), np.float32), last
            continue
        blob = b"".join(bytes(v) for _, v in keep)
        if len(blob) != width * len(keep):
            raise ValueError("a stored vector does not have its recorded dimensions")
        ids = np.fromiter((i for i, _ in keep), dtype=np.int64, count=len(keep))
        vecs = np.frombuffer(blob, dtype="<f4").reshape(len(keep), coll.dims).astype(np.float32)
        yield ids, vecs, last


def _count(conn: Connection, coll: _Collection) -> int:
    return int(conn.execute(
        sa.select(sa.func.count()).select_from(chunks)
        .where(chunks.c.owner_id == coll.owner_id, chunks.c.entity_id == coll.entity_id,
               chunks.c.dimensions == coll.dims)).scalar_one())


def _issued(conn: Connection) -> tuple[int, int]:
    """The largest chunk id and tombstone seq the database ever issued
    (AUTOINCREMENT keeps them in ``sqlite_sequence`` even after deletes)."""
    rows = {str(name): int(seq) for name, seq in conn.exec_driver_sql(
        "SELECT name, seq FROM sqlite_sequence WHERE name IN ('chunks', 'chunk_tombstones')")}
    return int(rows.get("chunks", 0)), int(rows.get("chunk_tombstones", 0))
