"""The embedding cache: vectors kept in the database, keyed by ``(model_id, sha256(text))``.

One table (``embedding_cache``) shared by every user and entity: a row holds a
model's vector for a text's sha256, never the text nor who asked for it. The
cache is bounded by ``MEMVAULT_EMBED_CACHE_MB``: past it, the least recently
used rows are evicted in batches by the vault's background component
``embed-cache-eviction`` (so the table may exceed the bound for a few seconds).

- :class:`EmbeddingCache` is the table: look-ups, inserts, recency, eviction,
  and this process's hit/miss/eviction counters.
- :class:`CachedEmbedder` wraps any :class:`~memvault.retrieval.embedders.Embedder`
  with it and is one too: a text is embedded only when its vector is not cached.

Recency is cheap rather than exact: a hit moves ``last_used_at`` only when it is
older than ``touch_after_s`` (a minute), so a hot text costs no write per hit
and eviction order is least recently used to that granularity. The size of the
table is kept as a running estimate (this process's inserts) corrected by an
exact sum at least every ``exact_every_s``, so the periodic check is free in
between. Several processes (workers, replicas) share the table: a concurrent
insert of the same key is ignored, and each process's eviction works on the
shared total.

A cache failure (the database unavailable) never fails an embedding: the call
is answered by the embedder and the failure logged. ``embed`` opens its own
short write transaction: do not call it while holding a write transaction
(on SQLite that would wait for the write lock it holds).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
import structlog

from ..backends.base import Database
from ..backends.schema import embedding_cache as table
from ..errors import Unavailable
from ..ids import utcnow

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ..cache import Cache
    from .embedders import Embedder

__all__ = ["EmbeddingCache", "CachedEmbedder", "CacheStats", "text_key"]

log = structlog.get_logger(__name__)

#: Keys per ``IN (…)`` list: well under every driver's parameter limit.
IN_CHUNK = 500
#: Rows examined per eviction transaction.
EVICT_BATCH = 500
#: Eviction brings the total down to this share of the bound, so that it runs
#: in batches now and then rather than a few rows after every insert.
LOW_WATER = 0.9
#: Bytes a row takes besides its vector (keys, timestamps, row and index
#: overhead): an estimate, counted so that tiny vectors still have a cost.
ROW_OVERHEAD = 160
#: Search queries whose vectors each process keeps (see ``embed_query``).
RECENT_QUERIES = 2048


def text_key(text: str) -> str:
    """The cache key of ``text``: the hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _chunks(items: Sequence[str], size: int = IN_CHUNK) -> list[Sequence[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@dataclass(frozen=True)
class CacheStats:
    """This process's counters, and the cache's size as last known.

    ``hits`` counts texts answered without embedding them (from the table, or a
    duplicate of a text earlier in the same call); ``misses`` counts the texts
    embedded; so ``hits + misses`` is every text asked for.
    """

    hits: int
    misses: int
    evictions: int
    #: The table's total size (``size_bytes``) as estimated; ``None`` before the
    #: first exact sum.
    bytes: int | None
    max_bytes: int


class EmbeddingCache:
    """The ``embedding_cache`` table, bounded by ``max_bytes``. Thread-safe.

    Args:
        db: the vault's database.
        max_bytes: the bound of the table's total ``size_bytes``; ``0`` keeps
            nothing (every call embeds).
        clock: the current time (aware UTC); tests pass their own.
        touch_after_s: a hit refreshes ``last_used_at`` only when it is older.
        exact_every_s: the longest ``maintain()`` trusts the running estimate.
    """

    def __init__(self, db: Database, max_bytes: int, *,
                 clock: Callable[[], datetime] = utcnow, touch_after_s: float = 60.0,
                 exact_every_s: float = 60.0, front: Cache | None = None) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.db = db
        #: The vault cache's ``embeddings`` namespace, asked before the table and
        #: filled from it: its in-process tier, and the Redis/Memcached servers
        #: every replica shares when ``MEMVAULT_CACHE_URL`` names them (seed
        #: 003's embedding cache). ``None`` when the cache's shared tier is this
        #: database: the table is that tier already, and bounded.
        self.front = front
        self.max_bytes = max_bytes
        self.clock = clock
        self.touch_after = timedelta(seconds=touch_after_s)
        self.exact_every_s = exact_every_s
        self._lock = threading.Lock()
        self._evict_lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._estimate: int | None = None
        self._checked_at = float("-inf")

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    # -- counters --------------------------------------------------------------------

    def count(self, *, hits: int = 0, misses: int = 0) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, self._estimate,
                              self.max_bytes)

    # -- rows ------------------------------------------------------------------------

    def lookup(self, model_id: str, keys: Sequence[str]) -> dict[str, tuple[bytes, int]]:
        """The cached ``(vector bytes, dimensions)`` of each of ``keys`` that is
        cached for ``model_id``, and refresh the recency of those gone stale.
        A row whose vector does not have ``dimensions`` float32 values is left out."""
        found: dict[str, tuple[bytes, int]] = {}
        front = self.front
        if front is not None:
            names = {f"{model_id}/{key}": key for key in keys}
            for name, data in front.get_many(names).items():
                if isinstance(data, bytes) and data and len(data) % 4 == 0:
                    found[names[name]] = (data, len(data) // 4)
            keys = [key for key in keys if key not in found]
            if not keys:
                return found
        from_table: dict[str, bytes] = {}
        stale: list[str] = []
        horizon = self.clock() - self.touch_after
        c = table.c
        with self.db.read() as conn:
            for part in _chunks(keys):
                rows = conn.execute(
                    sa.select(c.text_sha256, c.vector, c.dimensions, c.last_used_at)
                    .where(c.model_id == model_id, c.text_sha256.in_(part)))
                for key, vector, dims, last_used in rows:
                    data = bytes(vector)
                    if len(data) != 4 * dims:  # pragma: no cover - a damaged row
                        continue
                    found[key] = (data, dims)
                    from_table[key] = data
                    if last_used < horizon:
                        stale.append(key)
        if front is not None and from_table:
            front.set_many({f"{model_id}/{key}": data for key, data in from_table.items()})
        if stale:
            try:
                self._touch(model_id, stale)
            except Unavailable:  # recency is a hint; the vectors found stand
                log.warning("embedding cache: could not refresh recency", exc_info=True)
        return found

    def _touch(self, model_id: str, keys: Sequence[str]) -> None:
        now = self.clock()
        horizon = now - self.touch_after
        c = table.c
        with self.db.write() as conn:
            for part in _chunks(keys):
                conn.execute(table.update()
                             .where(c.model_id == model_id, c.text_sha256.in_(part),
                                    c.last_used_at < horizon)
                             .values(last_used_at=now))

    def store(self, model_id: str, vectors: dict[str, bytes], dims: int, *,
              replace: bool = False) -> None:
        """Insert ``vectors`` (key → float32 little-endian bytes) for ``model_id``.

        A key another writer inserted meanwhile is left as it is (the same text
        gives the same vector); with ``replace`` existing rows are replaced (a
        cached vector whose dimension no longer matches the model's)."""
        if not vectors:
            return
        now = self.clock()
        rows: list[dict[str, object]] = [
            {"model_id": model_id, "text_sha256": key, "dimensions": dims, "vector": data,
             "size_bytes": len(data) + ROW_OVERHEAD, "last_used_at": now, "created_at": now}
            for key, data in vectors.items()]
        c = table.c
        with self.db.write() as conn:
            if replace:
                for part in _chunks(list(vectors)):
                    conn.execute(table.delete().where(c.model_id == model_id,
                                                      c.text_sha256.in_(part)))
            stmt = self.db.backend.insert_ignore(table, ("model_id", "text_sha256"))
            for i in range(0, len(rows), IN_CHUNK):
                conn.execute(stmt, rows[i:i + IN_CHUNK])
        if self.front is not None:
            self.front.set_many({f"{model_id}/{key}": data for key, data in vectors.items()})
        added = sum(len(data) + ROW_OVERHEAD for data in vectors.values())
        with self._lock:
            if self._estimate is not None:
                self._estimate += added

    # -- size and eviction -----------------------------------------------------------

    def total_bytes(self) -> int:
        """The table's exact total ``size_bytes`` (a scan of the table)."""
        with self.db.read() as conn:
            total = int(conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(table.c.size_bytes), 0))).scalar_one())
        with self._lock:
            self._estimate = total
        self._checked_at = time.monotonic()
        return total

    def maintain(self) -> int:
        """The periodic check (the ``embed-cache-eviction`` component): evict
        when the estimate passes the bound, or when it has not been checked
        exactly for ``exact_every_s``. Returns the rows evicted."""
        estimate = self.stats().bytes
        if (estimate is None or estimate > self.max_bytes
                or time.monotonic() - self._checked_at >= self.exact_every_s):
            return self.evict()
        return 0

    def evict(self) -> int:
        """Evict least recently used rows until the total is within the bound
        (down to ``LOW_WATER`` of it, when it was past). Returns rows evicted."""
        with self._evict_lock:
            total = self.total_bytes()
            if total <= self.max_bytes:
                return 0
            excess = total - int(self.max_bytes * LOW_WATER)
            evicted = 0
            c = table.c
            while excess > 0:
                with self.db.write() as conn:
                    rows = conn.execute(
                        sa.select(c.model_id, c.text_sha256, c.size_bytes)
                        .order_by(c.last_used_at)  # the index; ties in any order
                        .limit(EVICT_BATCH)).all()
                    if not rows:
                        break
                    victims: dict[str, list[str]] = {}
                    for model_id, key, size in rows:
                        if excess <= 0:
                            break
                        victims.setdefault(model_id, []).append(key)
                        excess -= size
                    for model_id, keys in victims.items():
                        for part in _chunks(keys):
                            result = conn.execute(table.delete().where(
                                c.model_id == model_id, c.text_sha256.in_(part)))
                            evicted += max(result.rowcount, 0)
            with self._lock:
                self._evictions += evicted
            if evicted:
                log.info("embedding cache evicted", rows=evicted, bytes_before=total,
                         max_bytes=self.max_bytes)
            self.total_bytes()
            return evicted


class CachedEmbedder:
    """An :class:`Embedder` that asks ``embedder`` only for texts not in ``cache``.

    Each call looks every distinct text up in one query (per 500), embeds the
    misses in one ``embedder.embed`` call, stores their vectors, and returns the
    vectors in order; a text repeated within a call is embedded once. Cached
    vectors come back bit for bit as the embedder gave them.
    """

    def __init__(self, embedder: Embedder, cache: EmbeddingCache) -> None:
        self.embedder = embedder
        self.cache = cache
        self._queries: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._queries_lock = threading.Lock()

    def embed_query(self, text: str) -> NDArray[np.float32]:
        """One search query's vector: from an in-process LRU of recent queries,
        else the shared cache (read only), else the embedder. A query's vector
        is not written to the shared cache: that would put a durable write
        (an fsync) into every search, for texts that rarely come back."""
        import numpy as np

        key = text_key(text)
        with self._queries_lock:
            recent = self._queries.get(key)
            if recent is not None:
                self._queries.move_to_end(key)
        if recent is not None:
            self.cache.count(hits=1)
            return recent
        vector: NDArray[np.float32] | None = None
        if self.cache.enabled:
            try:
                found = self.cache.lookup(self.embedder.model_id, [key])
            except Unavailable:
                found = {}
            if key in found:
                data, dims = found[key]
                vector = np.frombuffer(data, dtype="<f4").reshape(dims).astype(np.float32)
                self.cache.count(hits=1)
        if vector is None:
            vector = np.asarray(self.embedder.embed([text])[0], dtype=np.float32)
            self.cache.count(misses=1)
        with self._queries_lock:
            self._queries[key] = vector
            while len(self._queries) > RECENT_QUERIES:
                self._queries.popitem(last=False)
        return vector

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def dimensions(self) -> int:
        return self.embedder.dimensions

    def count_tokens(self, text: str) -> int:
        return self.embedder.count_tokens(text)

    def stats(self) -> CacheStats:
        return self.cache.stats()

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import numpy as np

        if isinstance(texts, str):  # it is a Sequence[str], and would go letter by letter
            raise TypeError("embed() takes a sequence of texts, not one string")
        items = list(texts)
        if not items or not self.cache.enabled:
            plain = self.embedder.embed(items)
            self.cache.count(misses=len(items))
            return plain
        model_id = self.embedder.model_id
        keys = [text_key(t) for t in items]
        first: dict[str, int] = {}  # key → index of its first text
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        try:
            found = self.cache.lookup(model_id, list(first))
        except Unavailable:
            log.warning("embedding cache unavailable; embedding without it", exc_info=True)
            found = {}
        missing = [key for key in first if key not in found]
        fresh: dict[str, bytes] = {}
        dims_seen = {dims for _data, dims in found.values()}
        if missing:
            vectors = self.embedder.embed([items[first[k]] for k in missing])
            dims_seen.add(int(vectors.shape[1]))
            fresh = {k: np.ascontiguousarray(v, dtype="<f4").tobytes()
                     for k, v in zip(missing, vectors, strict=True)}
        replace = False
        if len(dims_seen) > 1:
            # Cached vectors of another dimension than the model gives now (an
            # endpoint's model changed under the same name): embed every text
            # of the call again and replace their rows.
            vectors = self.embedder.embed([items[first[k]] for k in first])
            fresh = {k: np.ascontiguousarray(v, dtype="<f4").tobytes()
                     for k, v in zip(first, vectors, strict=True)}
            missing, found, replace = list(first), {}, True
            dims_seen = {int(vectors.shape[1])}
        dims = dims_seen.pop()
        if fresh:
            try:
                self.cache.store(model_id, fresh, dims, replace=replace)
            except Unavailable:
                log.warning("embedding cache unavailable; vectors not kept", exc_info=True)
        data = b"".join(fresh[k] if k in fresh else found[k][0] for k in keys)
        out: NDArray[np.float32] = (np.frombuffer(data, dtype="<f4")
                                    .reshape(len(items), dims).astype(np.float32))
        self.cache.count(hits=len(items) - len(missing), misses=len(missing))
        return out


if TYPE_CHECKING:  # mypy proves a CachedEmbedder is an Embedder
    def _conforms(e: CachedEmbedder) -> Embedder:
        return e
