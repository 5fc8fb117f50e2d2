"""SQLite backend: WAL, foreign keys, busy timeout, ``BEGIN IMMEDIATE`` writes.

Several processes may share the file (API workers, a CLI beside the server).
Writers take the lock at ``BEGIN IMMEDIATE`` so a transaction can never fail
half-way with "database is locked" (the deferred-upgrade deadlock); the begin
itself waits out ``busy_timeout`` and is retried until a deadline, as diskcache
does, so no lock error reaches a caller under ordinary contention.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from ..errors import MigrationFailed, Unavailable
from ..retrieval.fulltext import QueryTerms, fts5_match
from .base import Backend
from .schema import chunks

__all__ = ["SQLiteBackend"]

BUSY_TIMEOUT_MS = 10_000
LOCK_DEADLINE_S = 120.0


def _json_loads(text: str) -> Any:
    # Most metadata is empty; skip the decoder for it (a page reads one per row).
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return json.loads(text)


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path, durability: str) -> None:
        self.path = path
        self.synchronous = "FULL" if durability == "full" else "NORMAL"

    def create_engine(self) -> Engine:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            # Create the file private before SQLite opens it (umask may be lax).
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
        engine = sa.create_engine(
            f"sqlite+pysqlite:///{self.path}",
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
            pool_size=8, max_overflow=32, pool_timeout=60, json_deserializer=_json_loads,
        )
        synchronous = self.synchronous

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            # We issue BEGIN ourselves; pysqlite's implicit transactions are off.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute(f"PRAGMA synchronous = {synchronous}")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA cache_size = -16000")
            cur.close()

        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)
        return engine

    def timestamp_param(self, value: datetime) -> Any:
        # The text layout of schema._SQLiteUTC, so raw and Core writes agree.
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    def begin_write(self, conn: Connection) -> None:
        deadline = time.monotonic() + LOCK_DEADLINE_S
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except sa.exc.OperationalError as exc:
                conn.rollback()
                if not self.is_busy(exc) or time.monotonic() > deadline:
                    raise Unavailable("database is busy; try again") from exc
                time.sleep(0.005)

    def is_busy(self, error: BaseException) -> bool:
        text = str(getattr(error, "orig", error)).lower()
        return "locked" in text or "busy" in text

    # -- search: FTS5 over chunks.search_text (vectors: retrieval/ann.py) -------

    def json_equals(self, column: sa.ColumnElement[Any], key: str,
                    value: Any) -> sa.ColumnElement[bool]:
        # json_each, not a JSON path: any key works, whatever characters it holds.
        each = sa.func.json_each(column).table_valued("key", "value", "type").alias("m")
        if value is None:
            match = each.c.type == "null"
        elif isinstance(value, bool):
            match = each.c.type == ("true" if value else "false")
        elif isinstance(value, int | float):
            match = sa.and_(each.c.type.in_(("integer", "real")), each.c.value == value)
        else:
            match = sa.and_(each.c.type == "text", each.c.value == value)
        return sa.exists(sa.select(1).select_from(each).where(each.c.key == key, match))

    def text_search(self, conn: Connection, scope: sa.ColumnElement[bool],
                    conditions: Sequence[sa.ColumnElement[bool]], terms: QueryTerms,
                    token: str, limit: int) -> list[tuple[int, float]]:
        fts = sa.table("chunks_fts", sa.column("rowid"), sa.column("rank"))
        match = sa.literal_column("chunks_fts").op("MATCH")(fts5_match(token, terms))
        if not conditions:
            # The collection token in the MATCH already keeps to one collection:
            # let FTS5 rank and cut (its own ``rank``, bm25, sorted inside the
            # virtual table: twice as fast as bm25() sorted outside), then check
            # the owner on the few rows left.
            ranked = (sa.select(fts.c.rowid, fts.c.rank).where(match)
                      .order_by(fts.c.rank).limit(limit).subquery())
            query = (sa.select(chunks.c.id, ranked.c.rank)
                     .select_from(ranked.join(chunks, chunks.c.id == ranked.c.rowid))
                     .where(scope).order_by(ranked.c.rank, chunks.c.id))
        else:  # filters apply before the cut
            query = (sa.select(chunks.c.id, fts.c.rank)
                     .select_from(fts.join(chunks, chunks.c.id == fts.c.rowid))
                     .where(match, scope, *conditions)
                     .order_by(fts.c.rank, chunks.c.id).limit(limit))
        # bm25 is lower for better matches; scores here are higher-is-better.
        return [(int(pk), -float(r)) for pk, r in conn.execute(query)]

    def upsert(self, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str],
               set_: Mapping[str, Any]) -> sa.Executable:
        stmt = sqlite_insert(table).values(**values)
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=dict(set_))

    def insert_ignore(self, table: sa.Table, keys: Sequence[str]) -> sa.Executable:
        return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(keys))

    def begin_snapshot(self, conn: Connection) -> Connection:
        # A deferred BEGIN (pysqlite's implicit transactions are off); the first
        # read pins the snapshot (WAL: writers go on, this reader does not see them).
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
        return conn

    # reset_identity: AUTOINCREMENT keeps sqlite_sequence at the largest id
    # inserted, explicit ones included.

    @contextlib.contextmanager
    def migration_lock(self, engine: Engine) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".migrate.lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def estimate_rows(self, conn: Connection, table: sa.Table) -> int:
        # The largest rowid is one B-tree descent; deleted rows make it an
        # over-estimate, which is what an estimate may be.
        found = conn.exec_driver_sql(f'SELECT max(rowid) FROM "{table.name}"').scalar()
        return int(found or 0)

    @contextlib.contextmanager
    def migration_transaction(self, conn: Connection) -> Iterator[None]:
        # Alembic's batch mode rebuilds a table (copy into a new one, DROP the
        # old, rename): with foreign keys on, the DROP deletes every child row
        # through ON DELETE CASCADE (rebuilding ``messages`` emptied
        # ``message_chunks``). So keys are off while migrating and checked with
        # ``foreign_key_check`` before commit. The pragma is a no-op inside a
        # transaction: it is set before BEGIN on this very connection, and
        # restored after, whatever happened, before the connection goes back
        # to the pool.
        conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
        conn.commit()  # ends SQLAlchemy's bookkeeping; pysqlite emitted no BEGIN
        try:
            self.begin_write(conn)
            try:
                yield
                violations = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if violations:
                    pairs = sorted({f"{row[0]} → {row[2]}" for row in violations})
                    raise MigrationFailed(
                        f"foreign key check found {len(violations)} row(s) referencing "
                        f"missing rows ({', '.join(pairs)})")
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            try:
                conn.exec_driver_sql("PRAGMA foreign_keys = ON")
                conn.commit()
            except BaseException:
                conn.invalidate()  # never pool a connection with keys off
                raise

    def integrity_check(self, conn: Connection) -> list[str]:
        rows = conn.exec_driver_sql("PRAGMA integrity_check").scalars().all()
        problems = [str(r) for r in rows if r != "ok"]
        fk = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        problems += [f"foreign key violation: {tuple(r)}" for r in fk]
        return problems

    def describe(self, engine: Engine) -> str:
        return f"sqlite:///{self.path}"
