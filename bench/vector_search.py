"""Vector search over 100,000 (or 1,000,000) embedding-like vectors of 384 dimensions:
build time, per-query p50/p99 for k=10 and recall@10 against exact search, for

- ``numpy exact``: one matrix-vector product and ``argpartition`` per query (the
  ground truth, and the floor an index must beat on latency);
- bare ``usearch`` HNSW (metric ``cos``) and, if installed (``pip install
  '.[bench]'``), ``faiss-cpu`` HNSW (inner product on the normalised vectors);
- PostgreSQL + pgvector HNSW (``vector(384)``, ``vector_cosine_ops``, m=16) on the
  embedded server, queried through psycopg with ``SET hnsw.ef_search``;
- memvault itself: ``scope.collections.add`` in batches of 1,000 records with their
  embeddings, then ``scope.collections.search(..., embedding=q, k=10, mode="vector")``.

Run alone::

    python bench/vector_search.py --n 100000 --backend sqlite|postgres [--methods ...]

or as the ``vectors`` section of ``bench/run.py`` (20k with ``--quick``, else 100k).

The vectors are not i.i.d. noise (on which every HNSW index's recall collapses and
no neighbour means anything): a few thousand cluster centres drawn from a rank-64
Gaussian with a decaying spectrum, embedded in 384 dimensions, cluster sizes
log-normal, each point its centre plus noise inside the low-rank subspace and a
little isotropic noise, L2-normalised. Nearest neighbours sit at cosine ≈ 0.65-0.7,
random pairs at ≈ 0 (sentence-embedding models give similar pictures). Queries are
held-out points of the same distribution. Everything is seeded; the arrays are
cached under ``$MEMVAULT_BENCH_CACHE`` (default: a folder in the temp dir).

One core: BLAS and faiss are limited to one thread, usearch builds and searches
with ``threads=1`` and pgvector builds without parallel workers, because the
machine this runs on is shared (2 cores). Latency is one query at a time.
"""

from __future__ import annotations

import os

# Before numpy loads its BLAS (only effective when this file is the entry point).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

if __package__ in (None, ""):  # run as `python bench/vector_search.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

from bench.common import (  # noqa: E402
    Env,
    PostgresServer,
    Result,
    Stats,
    fmt_ms,
    measure,
    open_env,
    settle,
    verdict,
)

SECTION = "vectors"
DIM = 384
RANK = 64
K = 10
SEED = 6
QUERIES = 1_000
TARGET_RECALL = 0.95
TARGET_P50_NS = 5_000_000   # ARCHITECTURE.md: recall@10 >= 0.95 with p50 < 5 ms at 1M
ADD_BATCH = 1_000           # collections.add takes at most 1,000 records per call

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]


# -- data -------------------------------------------------------------------------

def _generate(n: int, queries: int, seed: int) -> tuple[F32, F32]:
    rng = np.random.default_rng(seed)
    centres = max(100, min(5_000, n // 30))
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, RANK)))
    rows = basis.T.astype(np.float32)                       # RANK x DIM, orthonormal
    spectrum = (1.0 / np.sqrt(np.arange(1, RANK + 1))).astype(np.float32)
    c = (rng.standard_normal((centres, RANK)).astype(np.float32) * spectrum) @ rows
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 1.0, centres)
    assign = rng.choice(centres, size=n + queries, p=weights / weights.sum())
    # Within-cluster spread: mostly along the same low-rank directions, plus a
    # little isotropic noise, so neighbours share structure as real embeddings do.
    lat = np.float32(0.35 * np.sqrt(RANK) / np.linalg.norm(spectrum))
    iso = np.float32(0.25 / np.sqrt(DIM))
    out = np.empty((n + queries, DIM), np.float32)
    for s in range(0, n + queries, 100_000):
        e = min(n + queries, s + 100_000)
        x = c[assign[s:e]]
        x += (rng.standard_normal((e - s, RANK)).astype(np.float32) * spectrum * lat) @ rows
        x += rng.standard_normal((e - s, DIM)).astype(np.float32) * iso
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x
    # The queries are the last rows: held out from the indexed set.
    return out[:n], out[n:]


def cache_dir() -> Path:
    d = os.environ.get("MEMVAULT_BENCH_CACHE")
    path = Path(d) if d else Path(tempfile.gettempdir()) / "memvault-bench-vectors"
    path.mkdir(parents=True, exist_ok=True)
    return path


def exact_topk(x: F32, q: F32, k: int = K) -> I64:
    """Exact top-k by inner product (cosine on normalised vectors), in blocks."""
    out = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), 100):
        sims = q[s:s + 100] @ x.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
        out[s:s + 100] = np.take_along_axis(part, order, axis=1)
    return out


def dataset(n: int, queries: int = QUERIES, seed: int = SEED) -> tuple[F32, F32, I64]:
    """(vectors, queries, exact top-10 of each query), cached as .npy files."""
    base = cache_dir() / f"v{DIM}_r{RANK}_n{n}_q{queries}_s{seed}"
    files = [base.with_suffix(f".{part}.npy") for part in ("x", "q", "gt")]
    if all(f.exists() for f in files):
        x, q, gt = (np.load(f) for f in files)
        return x, q, gt
    x, q = _generate(n, queries, seed)
    gt = exact_topk(x, q)
    for f, arr in zip(files, (x, q, gt), strict=True):
        tmp = f.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(f)
    return x, q, gt


def recall_at_k(found: list[list[int]], truth: I64) -> float:
    hits = sum(len(set(f[:K]) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (K * len(truth))


# -- measured methods -------------------------------------------------------------

@dataclass
class Measured:
    method: str
    build_s: float | None
    stats: Stats
    recall: float
    note: str = ""


def _time_queries(search: Callable[[F32], list[int]], q: F32,
                  timed: int) -> tuple[Stats, list[list[int]]]:
    """Per-query latency over the first ``timed`` queries (each asked once after a
    warm-up of 20); recall over the same queries."""
    found: list[list[int]] = [[] for _ in range(timed)]

    def one(i: int) -> None:
        if i < 0:  # warm-up
            search(q[(-i) % len(q)])
            return
        found[i] = search(q[i])

    return measure(one, timed), found


def bench_numpy(x: F32, q: F32, gt: I64, timed: int) -> list[Measured]:
    def search(v: F32) -> list[int]:
        sims = x @ v
        part = np.argpartition(-sims, K)[:K]
        return [int(i) for i in part[np.argsort(-sims[part])]]

    s, found = _time_queries(search, q, timed)
    return [Measured("numpy exact (matmul + argpartition)", None, s,
                     recall_at_k(found, gt[:timed]))]


def bench_usearch(x: F32, q: F32, gt: I64, timed: int, connectivity: int,
                  expansion_add: int, efs: tuple[int, ...]) -> list[Measured]:
    from usearch.index import Index

    index = Index(ndim=DIM, metric="cos", dtype="f32", connectivity=connectivity,
                  expansion_add=expansion_add)
    t0 = time.perf_counter()
    index.add(np.arange(len(x), dtype=np.uint64), x, threads=1)
    build = time.perf_counter() - t0
    out = []
    for ef in efs:
        index.expansion_search = ef

        def search(v: F32) -> list[int]:
            return [int(k) for k in index.search(v, K, threads=1).keys]

        s, found = _time_queries(search, q, timed)
        out.append(Measured(f"usearch HNSW M={connectivity} ef_c={expansion_add} ef={ef}",
                            build, s, recall_at_k(found, gt[:timed]),
                            note="f32, threads=1"))
    return out


def bench_faiss(x: F32, q: F32, gt: I64, timed: int, m: int, ef_construction: int,
                efs: tuple[int, ...]) -> list[Measured]:
    try:
        import faiss
    except ImportError:
        return []
    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    t0 = time.perf_counter()
    index.add(x)
    build = time.perf_counter() - t0
    out = []
    for ef in efs:
        index.hnsw.efSearch = ef

        def search(v: F32) -> list[int]:
            _, ids = index.search(v.reshape(1, -1), K)
            return [int(i) for i in ids[0]]

        s, found = _time_queries(search, q, timed)
        out.append(Measured(f"faiss HNSWFlat M={m} ef_c={ef_construction} ef={ef}", build, s,
                            recall_at_k(found, gt[:timed]), note="inner product, 1 thread"))
    return out


def bench_pgvector(pg: PostgresServer, x: F32, q: F32, gt: I64, timed: int,
                   ef_constructions: tuple[int, ...], efs: tuple[int, ...],
                   m: int = 16) -> list[Measured]:
    import psycopg
    from pgvector.psycopg import register_vector

    url = pg.database()
    out: list[Measured] = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            conn.execute(f"CREATE TABLE items (id integer PRIMARY KEY, embedding vector({DIM}))")
            t0 = time.perf_counter()
            with conn.cursor() as cur, cur.copy(
                    "COPY items (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "vector"])
                for i, v in enumerate(x):
                    copy.write_row((i, v))
            conn.execute("VACUUM ANALYZE items")
            load = time.perf_counter() - t0
            # The graph must fit maintenance_work_mem or the build slows down many
            # times over; one process, like the other indexes here.
            mem_mb = max(256, int(len(x) * (DIM * 4 + 16 * m * 2 * 8) * 1.3 / 2**20))
            conn.execute(f"SET maintenance_work_mem = '{mem_mb}MB'")
            conn.execute("SET max_parallel_maintenance_workers = 0")
            for ef_c in ef_constructions:
                conn.execute("DROP INDEX IF EXISTS items_hnsw")
                t0 = time.perf_counter()
                conn.execute(f"CREATE INDEX items_hnsw ON items USING hnsw "
                             f"(embedding vector_cosine_ops) WITH (m = {m}, "
                             f"ef_construction = {ef_c})")
                build = time.perf_counter() - t0
                size = conn.execute(
                    "SELECT pg_size_pretty(pg_relation_size('items_hnsw'))").fetchone()
                for ef in efs:
                    conn.execute(f"SET hnsw.ef_search = {ef}")
                    sql = "SELECT id FROM items ORDER BY embedding <=> %s LIMIT 10"

                    def search(v: F32, sql: str = sql) -> list[int]:
                        rows = conn.execute(sql, (v,), prepare=True).fetchall()
                        return [int(r[0]) for r in rows]

                    s, found = _time_queries(search, q, timed)
                    out.append(Measured(
                        f"pgvector HNSW m={m} ef_c={ef_c} ef_search={ef}", build, s,
                        recall_at_k(found, gt[:timed]),
                        note=f"COPY {load:.0f}s; index {size[0] if size else '?'}; psycopg"))
    finally:
        pg.drop(url)
    return out


def _collections_ready() -> bool:
    return (Path(__file__).resolve().parent.parent / "src/memvault/stores/collections.py").exists()


def bench_memvault(env: Env, x: F32, q: F32, gt: I64, timed: int) -> list[Measured]:
    if not _collections_ready():
        return []
    with env.vault(durability="normal", embedder="hash") as vault:
        owner = env.user(vault)
        scope = vault.for_user(owner)
        entity = scope.entities.create("vector bench").entity_id
        t0 = time.perf_counter()
        for s in range(0, len(x), ADD_BATCH):
            items = [{"id": str(i), "text": f"record {i}", "embedding": x[i].tolist()}
                     for i in range(s, min(len(x), s + ADD_BATCH))]
            scope.collections.add(entity, items)
        add_s = time.perf_counter() - t0
        settle(vault)  # PostgreSQL: ANALYZE, as autovacuum would soon after a bulk add
        # The first search builds (SQLite) or warms (PostgreSQL) the index.
        t0 = time.perf_counter()
        scope.collections.search(entity, embedding=q[0].tolist(), k=K, mode="vector")
        first_s = time.perf_counter() - t0

        def search(v: F32) -> list[int]:
            got = scope.collections.search(entity, embedding=v.tolist(), k=K, mode="vector")
            return [int(h.chunk_id) for h in got.results]

        s, found = _time_queries(search, q, timed)
        return [Measured(f"memvault collections.search (mode=vector, {env.backend})",
                         add_s + first_s, s, recall_at_k(found, gt[:timed]),
                         note=f"add {add_s:.0f}s ({len(x) / add_s:,.0f} records/s) + first "
                              f"search {first_s:.1f}s; durability=normal")]


# -- orchestration ----------------------------------------------------------------

ALL_METHODS = ("numpy", "usearch", "faiss", "pgvector", "memvault")
_REFERENCE_CACHE: dict[tuple[int, int, tuple[str, ...]], list[Measured]] = {}


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def measure_all(n: int, methods: tuple[str, ...], env: Env, timed: int | None = None,
                log: Callable[[str], None] = print) -> list[Measured]:
    t0 = time.perf_counter()
    x, q, gt = dataset(n)
    log(f"  data: {n:,} x {DIM} (+{len(q)} queries) ready in {time.perf_counter() - t0:.1f}s")
    timed = timed or len(q)
    out: list[Measured] = []
    # Backend-independent references are measured once per process (run.py runs
    # each section once per backend).
    refs = tuple(m for m in methods if m in ("numpy", "usearch", "faiss"))
    key = (n, timed, refs)
    if refs and key not in _REFERENCE_CACHE:
        got: list[Measured] = []
        if "numpy" in refs:
            # Exact search costs ~N*384*4 bytes of memory traffic per query.
            got += bench_numpy(x, q, gt, min(timed, max(50, 20_000_000 // n)))
            log(f"  numpy done ({time.perf_counter() - t0:.0f}s, {_load()})")
        if "usearch" in refs:
            for conn in (16, 32):
                got += bench_usearch(x, q, gt, timed, conn, 128, (64, 128))
                log(f"  usearch M={conn} done ({time.perf_counter() - t0:.0f}s, {_load()})")
        if "faiss" in refs:
            got += bench_faiss(x, q, gt, timed, 16, 128, (64, 128))
            log(f"  faiss done ({time.perf_counter() - t0:.0f}s, {_load()})")
        _REFERENCE_CACHE[key] = got
    out += _REFERENCE_CACHE.get(key, [])
    if "pgvector" in methods and env.pg is not None:
        out += bench_pgvector(env.pg, x, q, gt, timed, (64, 128), (40, 64, 128))
        log(f"  pgvector done ({time.perf_counter() - t0:.0f}s, {_load()})")
    if "memvault" in methods:
        got = bench_memvault(env, x, q, gt, timed)
        out += got
        log(f"  memvault {'done' if got else 'skipped (no collections store yet)'} "
            f"({time.perf_counter() - t0:.0f}s, {_load()})")
    return out


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def to_results(n: int, measured: list[Measured]) -> list[Result]:
    exact = next((m for m in measured if m.method.startswith("numpy")), None)
    out = []
    for m in measured:
        ok = m.recall >= TARGET_RECALL and m.stats.p50_ns < TARGET_P50_NS
        speed = (f"; {exact.stats.p50_ns / m.stats.p50_ns:.0f}x faster than exact"
                 if exact is not None and m is not exact else "")
        build = f"build {m.build_s:.1f}s; " if m.build_s is not None else ""
        out.append(Result(SECTION, f"{m.method} @ {_label(n)}", m.stats,
                          throughput=f"recall {m.recall:.3f}",
                          target="recall>=0.95, p50<5ms" if n >= 1_000_000 else "—",
                          verdict=verdict(ok) if n >= 1_000_000 else "",
                          note=f"{build}{m.note}{speed}".strip("; ")))
    return out


def run(env: Env) -> list[Result]:
    """The ``vectors`` section of bench/run.py."""
    n = 20_000 if env.config.quick else 100_000
    methods = ("numpy", "usearch", "faiss", "memvault")
    if env.backend == "postgresql":
        methods += ("pgvector",)
    return to_results(n, measure_all(n, methods, env, log=lambda s: print(s, flush=True)))


def table(n: int, measured: list[Measured]) -> str:
    exact = next((m for m in measured if m.method.startswith("numpy")), None)
    head = ["method", "build", "queries", "p50", "p99", f"recall@{K}", "p50 vs exact", "notes"]
    rows = [head]
    for m in measured:
        ratio = (f"{exact.stats.p50_ns / m.stats.p50_ns:.1f}x" if exact is not None else "")
        rows.append([m.method, f"{m.build_s:.1f} s" if m.build_s is not None else "—",
                     f"{m.stats.n:,}", fmt_ms(m.stats.p50_ns), fmt_ms(m.stats.p99_ns),
                     f"{m.recall:.3f}", ratio, m.note])
    lines = [f"N = {n:,}, dim {DIM}, k = {K}, one query at a time, one core; "
             f"1-min load average at the end {os.getloadavg()[0]:.1f}", ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|--:|--:|--:|--:|--:|--:|---|")
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append",
                        help="vectors indexed (repeatable; default 100000)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "postgresql"],
                        default="sqlite",
                        help="store for memvault's own search (postgres also runs pgvector)")
    parser.add_argument("--methods", default=",".join(ALL_METHODS),
                        help="comma-separated subset of: " + ", ".join(ALL_METHODS))
    parser.add_argument("--queries", type=int, default=None,
                        help=f"timed queries per row (default all {QUERIES})")
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        parser.error(f"unknown methods: {', '.join(unknown)}")
    backend = "postgresql" if args.backend.startswith("postgres") else "sqlite"

    from memvault.logs import configure_logging
    from memvault.settings import load_settings
    configure_logging(load_settings(log_level="WARNING"))
    with open_env(backend) as env:
        for n in args.n or [100_000]:
            print(f"N = {n:,} ({backend}) …", flush=True)
            measured = measure_all(n, methods, env, args.queries,
                                   log=lambda s: print(s, flush=True))
            print(table(n, measured), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
