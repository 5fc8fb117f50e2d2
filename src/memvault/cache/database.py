"""The database tier: cache entries in the vault's own database.

The shared tier when ``MEMVAULT_CACHE_URL`` is unset, on SQLite and PostgreSQL
alike: one ``cache_entries`` row per entry (so entries survive a restart) and
one ``cache_locks`` row per key being fetched (single-flight across every
process on the database). Upserts and insert-if-absent are the backend's hooks
(``Backend.upsert`` / ``insert_ignore``); the SQL here is portable Core.

Times are seconds since the epoch on this host's clock (``time.time()``), as
the other tiers keep them. Expired entries are invisible at once and deleted by
``sweep()`` (the vault's background component ``cache-sweeper``), in batches
so that a large sweep never holds SQLite's write lock for long.

The database being unreachable (``Unavailable``) never fails a cache call, as
for the network tiers: reads are misses, writes are dropped, a claim is granted
(the caller fetches for itself), and one warning is logged per outage.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import sqlalchemy as sa
import structlog

from ..backends.base import Database
from ..backends.schema import cache_entries as entries
from ..backends.schema import cache_locks as locks
from ..errors import Unavailable
from .tiers import CacheKey, Claim, Entry

__all__ = ["DatabaseTier"]

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: Keys per ``IN (…)`` list: well under every driver's parameter limit.
IN_CHUNK = 500
#: Rows deleted per sweep transaction.
SWEEP_BATCH = 1000
#: How long a failed fetch's error stays visible to the processes waiting for it.
ERROR_HOLD_S = 5.0


def _pk(table: sa.Table, key: CacheKey) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.owner_id == key.owner, table.c.namespace == key.namespace,
                   table.c.key == key.key)


class DatabaseTier:
    """``SharedTier`` on the vault's database (see ``tiers.py``). Thread-safe."""

    name = "database"

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._down = False
        self._down_lock = threading.Lock()
        backend = db.backend
        b = sa.bindparam
        # Built once, executed with a list of rows (rows sorted by key, so two
        # writers of the same keys lock them in the same order: no deadlock).
        self._upsert = backend.upsert(
            entries,
            {"owner_id": b("b_owner"), "namespace": b("b_namespace"), "key": b("b_key"),
             "value": b("b_value"), "size": b("b_size"), "expires_at": b("b_expires"),
             "updated_at": b("b_updated")},
            ["owner_id", "namespace", "key"],
            {"value": b("b_value"), "size": b("b_size"), "expires_at": b("b_expires"),
             "updated_at": b("b_updated")})
        self._claim_insert = backend.insert_ignore(locks, ["owner_id", "namespace", "key"])

    # -- entries --------------------------------------------------------------------

    def get_many(self, keys: Sequence[CacheKey]) -> dict[CacheKey, Entry]:
        return self._guard(lambda: self._get_many(keys), {})

    def _get_many(self, keys: Sequence[CacheKey]) -> dict[CacheKey, Entry]:
        now = self.clock()
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for k in keys:
            groups[(k.owner, k.namespace)].append(k.key)
        c = entries.c
        found: dict[CacheKey, Entry] = {}
        with self.db.read() as conn:
            for (owner, namespace), names in groups.items():
                for i in range(0, len(names), IN_CHUNK):
                    rows = conn.execute(
                        sa.select(c.key, c.value, c.expires_at).where(
                            c.owner_id == owner, c.namespace == namespace,
                            c.key.in_(names[i:i + IN_CHUNK]),
                            sa.or_(c.expires_at.is_(None), c.expires_at > now)))
                    for key, value, expires_at in rows:
                        found[CacheKey(owner, namespace, key)] = Entry(bytes(value), expires_at)
        return found

    def set_many(self, items: Mapping[CacheKey, Entry]) -> None:
        if items:
            self._guard(lambda: self._set_many(items), None)

    def _set_many(self, items: Mapping[CacheKey, Entry]) -> None:
        now = self.clock()
        rows = [{"b_owner": k.owner, "b_namespace": k.namespace, "b_key": k.key,
                 "b_value": e.value, "b_size": len(e.value), "b_expires": e.expires_at,
                 "b_updated": now}
                for k, e in sorted(items.items(), key=lambda kv: (kv[0].owner, kv[0].namespace,
                                                                 kv[0].key))]
        with self.db.write() as conn:
            for i in range(0, len(rows), IN_CHUNK):
                conn.execute(self._upsert, rows[i:i + IN_CHUNK])

    def delete(self, key: CacheKey) -> bool:
        def run() -> bool:
            with self.db.write() as conn:
                return bool(conn.execute(entries.delete().where(_pk(entries, key))).rowcount)
        return self._guard(run, False)

    def clear(self, owner: str, namespace: str) -> None:
        def run() -> None:
            c = entries.c
            with self.db.write() as conn:
                conn.execute(entries.delete().where(c.owner_id == owner,
                                                    c.namespace == namespace))
        self._guard(run, None)

    # -- claims (single-flight across processes) -------------------------------------

    def claim(self, key: CacheKey, holder: str, ttl_s: float) -> bool:
        def run() -> bool:
            now = self.clock()
            row = {"owner_id": key.owner, "namespace": key.namespace, "key": key.key,
                   "holder": holder, "expires_at": now + ttl_s, "error": None}
            with self.db.write() as conn:
                # Read back rather than trust the insert's rowcount (psycopg
                # reports -1 for INSERT … ON CONFLICT DO NOTHING here).
                conn.execute(self._claim_insert, row)
                current = conn.execute(sa.select(locks.c.holder).where(_pk(locks, key)))
                if current.scalar() == holder:  # holders are unique per fetch
                    return True
                # Taken: ours only if the holder's claim has lapsed (it died).
                taken = conn.execute(
                    locks.update().where(_pk(locks, key), locks.c.expires_at <= now)
                    .values(holder=holder, expires_at=now + ttl_s, error=None))
                return bool(taken.rowcount)
        # Unreachable database: fetch without a claim rather than wait for one.
        return self._guard(run, True)

    def claim_state(self, key: CacheKey) -> Claim | None:
        def run() -> Claim | None:
            c = locks.c
            with self.db.read() as conn:
                row = conn.execute(sa.select(c.holder, c.error).where(
                    _pk(locks, key), c.expires_at > self.clock())).first()
            return None if row is None else Claim(row.holder, row.error)
        return self._guard(run, None)

    def release(self, key: CacheKey, holder: str, error: str | None = None) -> None:
        def run() -> None:
            mine = sa.and_(_pk(locks, key), locks.c.holder == holder)
            with self.db.write() as conn:
                if error is None:
                    conn.execute(locks.delete().where(mine))
                else:  # left for the waiters to read, then lapses
                    conn.execute(locks.update().where(mine).values(
                        error=error, expires_at=self.clock() + ERROR_HOLD_S))
        self._guard(run, None)

    # -- housekeeping -------------------------------------------------------------------

    def sweep(self) -> int:
        """Delete expired entries (in batches) and lapsed claims."""
        now = self.clock()
        c = entries.c
        removed = 0
        while True:
            batch = (sa.select(c.owner_id, c.namespace, c.key)
                     .where(c.expires_at <= now).limit(SWEEP_BATCH))
            with self.db.write() as conn:
                n = conn.execute(entries.delete().where(
                    sa.tuple_(c.owner_id, c.namespace, c.key).in_(batch))).rowcount
            removed += n
            if n < SWEEP_BATCH:
                break
        with self.db.write() as conn:
            removed += conn.execute(locks.delete().where(locks.c.expires_at <= now)).rowcount
        return removed

    def close(self) -> None:
        """Nothing to close: the vault owns the database."""

    # -- outages --------------------------------------------------------------------------

    def _guard(self, run: Callable[[], T], fallback: T) -> T:
        try:
            result = run()
        except Unavailable as exc:
            with self._down_lock:
                first, self._down = not self._down, True
            if first:
                log.warning("cache tier unavailable; reads miss and writes are dropped "
                            "until it returns", tier=self.name, error=str(exc))
            return fallback
        if self._down:
            with self._down_lock:
                back, self._down = self._down, False
            if back:
                log.info("cache tier available again", tier=self.name)
        return result
