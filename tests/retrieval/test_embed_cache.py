"""The embedding cache, on both backends: hits and misses counted, a cached text
never embedded again (also by another vault on the same database), model ids
kept apart, vectors returned bit for bit, and least-recently-used eviction
within the bound."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from numpy.typing import NDArray

import memvault
from memvault import Settings, Vault
from memvault.backends.schema import embedding_cache
from memvault.retrieval.embed_cache import ROW_OVERHEAD, CachedEmbedder, EmbeddingCache
from memvault.retrieval.embedders import Embedder, HashEmbedder

ROW = 384 * 4 + ROW_OVERHEAD  # size_bytes of one cached hash-v1-384 vector


class Counting:
    """An embedder that records every call it gets (and may claim another model id)."""

    def __init__(self, inner: Embedder, model_id: str | None = None) -> None:
        self.inner = inner
        self.model_id = model_id or inner.model_id
        self.calls: list[list[str]] = []

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.calls.append(list(texts))
        return self.inner.embed(texts)


class Awkward:
    """Vectors with every awkward float32 bit pattern a database could mangle:
    negative zero, subnormals, extremes, values with no short decimal form."""

    model_id = "awkward-v1"
    dimensions = 16

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dimensions)
            out[i, :6] = [-0.0, 1e-45, -1.4e-45, 3.4028235e38, np.float32(1 / 3), 1e-38]
        return out


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


def rows(vault: Vault) -> int:
    with vault.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(embedding_cache))
                   .scalar_one())


def test_a_cached_text_is_never_embedded_again(vault: Vault) -> None:
    inner = Counting(HashEmbedder())
    cached = CachedEmbedder(inner, EmbeddingCache(vault.db, 1 << 20))
    _: Embedder = cached
    assert (cached.model_id, cached.dimensions) == ("hash-v1-384", 384)

    first = cached.embed(["alpha", "beta", "alpha"])
    assert inner.calls == [["alpha", "beta"]]  # a repeated text is embedded once
    stats = cached.stats()
    assert (stats.hits, stats.misses) == (1, 2)
    assert first.dtype == np.float32 and first.shape == (3, 384)
    assert first.tobytes() == HashEmbedder().embed(["alpha", "beta", "alpha"]).tobytes()

    again = cached.embed(["beta", "alpha"])
    assert inner.calls == [["alpha", "beta"]]  # no second embed call
    assert again.tobytes() == first[[1, 0]].tobytes()
    mixed = cached.embed(["gamma", "alpha"])
    assert inner.calls[1:] == [["gamma"]]
    assert mixed.tobytes() == HashEmbedder().embed(["gamma", "alpha"]).tobytes()
    stats = cached.stats()
    assert (stats.hits, stats.misses, stats.evictions) == (4, 3, 0)
    assert rows(vault) == 3

    assert cached.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        cached.embed("alpha")


def test_vectors_round_trip_bit_for_bit(vault: Vault) -> None:
    texts = [f"text {i}" for i in range(1200)]  # more than one IN list (500)
    expected = Awkward().embed(texts)
    CachedEmbedder(Awkward(), EmbeddingCache(vault.db, 1 << 24)).embed(texts)
    # A fresh cache object (as in another process): everything comes from the table.
    inner = Counting(Awkward())
    cached = CachedEmbedder(inner, EmbeddingCache(vault.db, 1 << 24))
    got = cached.embed(texts)
    assert inner.calls == []
    assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()
    assert cached.stats().hits == 1200


def test_two_vaults_on_one_database_share_entries(settings: Settings) -> None:
    with memvault.open(settings, embedder="hash") as one, \
            memvault.open(settings, embedder="hash") as two:
        assert one._embedder is None  # built on first use, not at open
        assert "embed-cache-eviction" in one.component_stats()
        vectors = one.embedder.embed(["shared by everyone", "another text"])
        assert one.embedder.stats().misses == 2

        inner = Counting(HashEmbedder())
        got = CachedEmbedder(inner, two.embed_cache).embed(["another text",
                                                            "shared by everyone"])
        assert inner.calls == []
        assert got.tobytes() == vectors[[1, 0]].tobytes()
        assert two.embed_cache.stats().hits == 2


def test_model_id_keeps_entries_apart(vault: Vault) -> None:
    cache = EmbeddingCache(vault.db, 1 << 20)
    first = Counting(HashEmbedder(), model_id="model-a")
    CachedEmbedder(first, cache).embed(["same text"])
    other = Counting(HashEmbedder(), model_id="model-b")
    CachedEmbedder(other, cache).embed(["same text"])
    assert other.calls == [["same text"]]
    CachedEmbedder(first, cache).embed(["same text"])
    assert first.calls == [["same text"]]
    assert rows(vault) == 2


def test_a_changed_dimension_under_one_model_id_is_embedded_again(vault: Vault) -> None:
    cache = EmbeddingCache(vault.db, 1 << 20)
    CachedEmbedder(Counting(HashEmbedder(8), model_id="endpoint"), cache).embed(["old"])
    wider = Counting(HashEmbedder(16), model_id="endpoint")
    out = CachedEmbedder(wider, cache).embed(["old", "new"])
    assert out.shape == (2, 16)
    assert out.tobytes() == HashEmbedder(16).embed(["old", "new"]).tobytes()
    again = Counting(HashEmbedder(16), model_id="endpoint")
    CachedEmbedder(again, cache).embed(["old", "new"])
    assert again.calls == []  # the 8-dimension row was replaced


def test_concurrent_inserts_of_one_key_are_ignored(vault: Vault) -> None:
    one, two = EmbeddingCache(vault.db, 1 << 20), EmbeddingCache(vault.db, 1 << 20)
    vector = HashEmbedder().embed(["raced"])[0].astype("<f4").tobytes()
    # Both looked it up and missed; both insert it.
    assert one.lookup("hash-v1-384", ["k"]) == {} == two.lookup("hash-v1-384", ["k"])
    one.store("hash-v1-384", {"k": vector}, 384)
    two.store("hash-v1-384", {"k": vector}, 384)
    assert rows(vault) == 1


def test_eviction_keeps_the_bound_and_drops_least_recently_used_first(vault: Vault) -> None:
    clock = Clock()
    cache = EmbeddingCache(vault.db, 10 * ROW, clock=clock, touch_after_s=60)
    inner = Counting(HashEmbedder())
    cached = CachedEmbedder(inner, cache)
    for i in range(10):
        cached.embed([f"t{i}"])
        clock.advance(2)
    assert cache.evict() == 0 and cache.total_bytes() == 10 * ROW
    cached.embed(["t0"])  # t0 is used again: now the most recent of the ten
    clock.advance(2)
    cached.embed([f"t{i}" for i in range(10, 15)])
    assert cache.total_bytes() == 15 * ROW > cache.max_bytes

    # Down to 90% of the bound (9 rows), oldest first, sparing t0.
    assert cache.evict() == 6
    assert cache.total_bytes() == 9 * ROW <= cache.max_bytes
    assert cache.stats().evictions == 6
    inner.calls.clear()
    cached.embed(["t0", *(f"t{i}" for i in range(7, 15))])
    assert inner.calls == []
    cached.embed([f"t{i}" for i in range(1, 7)])
    assert inner.calls == [[f"t{i}" for i in range(1, 7)]]  # evicted, so embedded again

    # The periodic check: nothing to do within the bound, eviction once past it
    # (by the running estimate, without waiting for the exact sum).
    assert cache.total_bytes() == 15 * ROW
    assert cache.evict() == 6
    assert cache.maintain() == 0
    cached.embed([f"u{i}" for i in range(5)])
    assert cache.stats().bytes == 14 * ROW
    assert cache.maintain() == 5
    assert cache.total_bytes() <= cache.max_bytes


def test_a_hit_refreshes_recency_only_when_it_is_stale(vault: Vault) -> None:
    clock = Clock()
    cache = EmbeddingCache(vault.db, 1 << 20, clock=clock, touch_after_s=60)
    cached = CachedEmbedder(HashEmbedder(), cache)

    def last_used() -> datetime:
        with vault.db.read() as conn:
            return conn.execute(sa.select(embedding_cache.c.last_used_at)).scalar_one()

    cached.embed(["hot"])
    stored = clock.now
    clock.advance(0.5)
    cached.embed(["hot"])
    assert last_used() == stored  # within a minute: no write
    clock.advance(1)
    cached.embed(["hot"])
    assert last_used() == clock.now


def test_a_zero_bound_keeps_nothing(vault: Vault) -> None:
    inner = Counting(HashEmbedder())
    cached = CachedEmbedder(inner, EmbeddingCache(vault.db, 0))
    cached.embed(["a"])
    cached.embed(["a"])
    assert len(inner.calls) == 2 and rows(vault) == 0
    assert cached.stats().misses == 2


def test_the_embedding_cache_is_the_caches_embeddings_namespace(
        tmp_path: Path, redis_server: Any) -> None:
    """With a shared cache tier (Redis here), vectors go to the ``embeddings``
    namespace too: a vault on another database finds them there and never
    calls its model (seed 003's embedding cache in Memcached)."""
    texts = ["first passage", "second passage"]
    opened = [memvault.open(data_dir=tmp_path / name, embedder="hash", password_hash="owasp",
                            cache_url=redis_server.url) for name in ("a", "b")]
    try:
        a, b = opened
        inner_a, inner_b = Counting(HashEmbedder()), Counting(HashEmbedder())
        first = CachedEmbedder(inner_a, a.embed_cache).embed(texts)
        again = CachedEmbedder(inner_b, b.embed_cache).embed(texts)
        assert inner_a.calls == [texts] and inner_b.calls == []
        assert again.tobytes() == first.tobytes()
        assert rows(b) == 0  # found in the namespace, not in b's own table
        stats = b.cache_stats()["embeddings"]
        assert stats.hits.get("redis") == 2 and stats.misses == 0
    finally:
        for v in opened:
            v.close()


def test_with_the_database_tier_the_table_is_the_namespace(vault: Vault) -> None:
    # The default shared tier is the vault's database: vectors are kept once,
    # in the bounded embedding table, not a second time as cache entries.
    assert vault.embed_cache.front is None
    vault.embedder.embed(["only in the table"])
    assert rows(vault) == 1
    assert "embeddings" not in vault.cache_stats()
