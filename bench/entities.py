"""Entity create / get / update latency with 1k and with 100k (10k with --quick)
entities already stored for one user.

Each level is its own vault (so the table really holds that many rows); both are
open at once and measured in alternating rounds, so a noisy neighbour hits both
levels alike and "flat as the count grows" is a fair comparison.

Two reference rows frame the figures: the bare driver (sqlite3 / psycopg) doing
one INSERT+COMMIT and one keyed SELECT on the same store, interleaved with the
library calls (the floor any library could reach on this disk at that moment),
and the create repeated with ``durability=normal`` (no fsync per commit), whose
difference to the full-durability figure is the disk's share.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from .common import (
    Env,
    Result,
    Timer,
    fill_entities,
    fmt_ms,
    measure,
    measure_interleaved,
    verdict,
)

SECTION = "entities"
TARGET_NS = 300_000  # create/update p50 < 0.3 ms with 100,000 stored


def _label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


@contextlib.contextmanager
def _raw_driver(vault: Any) -> Iterator[tuple[Callable[[int], Any], Callable[[int], Any]]]:
    """(insert+commit, select-by-key) through the bare driver on ``vault``'s store,
    into a scratch table of the same shape as a minimal keyed row."""
    body = "x" * 200
    keys: list[str] = []
    if vault.backend == "sqlite":
        conn = sqlite3.connect(vault.db.backend.path, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE bench_floor (id TEXT PRIMARY KEY, body TEXT NOT NULL)")

        def insert(i: int) -> None:
            key = uuid.uuid4().hex
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO bench_floor VALUES (?, ?)", (key, body))
            conn.execute("COMMIT")
            keys.append(key)

        def select(i: int) -> Any:
            return conn.execute("SELECT * FROM bench_floor WHERE id = ?",
                                (keys[i % len(keys)],)).fetchone()
        try:
            yield insert, select
        finally:
            conn.close()
        return
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(vault.settings.database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as pg:
        pg.execute("SET synchronous_commit = on")
        pg.execute("CREATE TABLE bench_floor (id TEXT PRIMARY KEY, body TEXT NOT NULL)")

        def pg_insert(i: int) -> None:
            key = uuid.uuid4().hex
            with pg.transaction():
                pg.execute("INSERT INTO bench_floor VALUES (%s, %s)", (key, body))
            keys.append(key)

        def pg_select(i: int) -> Any:
            return pg.execute("SELECT * FROM bench_floor WHERE id = %s",
                              (keys[i % len(keys)],)).fetchone()
        yield pg_insert, pg_select


def run(env: Env) -> list[Result]:
    cfg = env.config
    rng = random.Random(1)
    out: list[Result] = []
    levels = cfg.entity_levels
    with contextlib.ExitStack() as stack:
        stores: dict[int, Any] = {}
        ids: dict[int, list[str]] = {}
        notes: dict[int, str] = {}
        vaults = {}
        for level in levels:
            vault = stack.enter_context(env.vault())
            owner = env.user(vault)
            with Timer() as fill:
                ids[level] = fill_entities(vault, owner, level)
            vaults[level] = (vault, owner)
            stores[level] = vault.for_user(owner).entities
            notes[level] = f"{stores[level].count():,} stored; fill {fill.s:.1f}s"

        def creator(level: int):
            ents, bucket = stores[level], ids[level]
            return lambda i: bucket.append(
                ents.create("bench entity", metadata={"k": i}).entity_id)

        top_vault = vaults[levels[-1]][0]
        raw = stack.enter_context(_raw_driver(top_vault))
        creates = measure_interleaved({**{_label(lv): creator(lv) for lv in levels},
                                       "raw": raw[0]}, cfg.entity_ops)

        def getter(level: int):
            ents = stores[level]
            picks = [rng.choice(ids[level]) for _ in range(cfg.entity_gets + 20)]
            return lambda i: ents.get(picks[i])

        gets = measure_interleaved({**{_label(lv): getter(lv) for lv in levels},
                                    "raw": raw[1]}, cfg.entity_gets)

        def updater(level: int):
            ents = stores[level]
            picks = [rng.choice(ids[level]) for _ in range(cfg.entity_ops + 20)]
            return lambda i: ents.update(picks[i], entity_name=f"renamed {i}")

        updates = measure_interleaved({_label(lv): updater(lv) for lv in levels},
                                      cfg.entity_ops)

        for level in levels:
            tag = _label(level)
            s = creates[tag]
            out.append(Result(SECTION, f"entity create @ {tag}", s, target="p50 < 0.3 ms",
                              verdict=verdict(s.p50_ns < TARGET_NS), note=notes[level]))
            out.append(Result(SECTION, f"entity get @ {tag}", gets[tag], target="—"))
            s = updates[tag]
            out.append(Result(SECTION, f"entity update @ {tag}", s, target="p50 < 0.3 ms",
                              verdict=verdict(s.p50_ns < TARGET_NS)))

        lo, hi = _label(levels[0]), _label(levels[-1])
        driver = "sqlite3, WAL, sync=FULL" if env.backend == "sqlite" else \
            "psycopg, synchronous_commit=on"
        out.insert(0, Result(SECTION, f"(floor) bare driver INSERT+COMMIT @ {hi}",
                             creates["raw"], target="—",
                             note=f"{driver}; same store, interleaved with the creates"))
        out.insert(1, Result(SECTION, f"(floor) bare driver SELECT by key @ {hi}", gets["raw"],
                             target="—", note="same store, interleaved with the gets"))
        ratio = creates[hi].p50_ns / creates[lo].p50_ns if creates[lo].p50_ns else 0.0
        out.append(Result(SECTION, f"create p50 growth {lo} → {hi}", target="flat",
                          verdict=verdict(ratio < 1.5), throughput=f"x{ratio:.2f}",
                          note=f"{fmt_ms(creates[lo].p50_ns)} → {fmt_ms(creates[hi].p50_ns)} "
                               "(interleaved rounds)"))

        vault, owner = vaults[levels[-1]]
        with env.reopen(vault, durability="normal") as relaxed:
            ents = relaxed.for_user(owner).entities
            s = measure(lambda i: ents.create("bench entity", metadata={"k": i}),
                        cfg.entity_ops)
        out.append(Result(SECTION, f"(ref) entity create @ {hi}, durability=normal", s,
                          target="—", note="no fsync per commit: library + database CPU cost"))
    return out
