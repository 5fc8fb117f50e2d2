"""PostgreSQL backend: psycopg 3 through SQLAlchemy's connection pool.

``durability=full`` keeps ``synchronous_commit=on``; ``normal`` turns it off (a
crash of our process loses nothing; a crash of the server may lose the last
moments). The ``vector`` extension is enabled when the server offers it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from ..errors import ConfigError
from .base import Backend

__all__ = ["PostgresBackend", "normalise_url"]

# An arbitrary constant: the advisory lock that serialises migrations.
_MIGRATION_LOCK = 0x6D656D76


def normalise_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class PostgresBackend(Backend):
    name = "postgresql"
    read_options = {"isolation_level": "AUTOCOMMIT"}
    placeholder = "%s"
    skip_locked = True

    def __init__(self, url: str, durability: str) -> None:
        self.url = normalise_url(url)
        self.synchronous_commit = "on" if durability == "full" else "off"
        self.has_vector = False

    def create_engine(self) -> Engine:
        # No pre-ping (a SELECT 1 per checkout): a connection the server dropped
        # fails once, SQLAlchemy invalidates the pool, and the next call reconnects.
        engine = sa.create_engine(self.url, pool_size=10, max_overflow=20, pool_timeout=60,
                                  pool_recycle=1800)
        sync = self.synchronous_commit

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                cur.execute(f"SET synchronous_commit = {sync}")
                cur.execute("SET TIME ZONE 'UTC'")
            dbapi_conn.commit()

        return engine

    # Leases on the database's clock: replicas on several hosts share it, and a
    # host whose clock runs ahead must not expire another's streams.

    def db_now(self) -> sa.ColumnElement[datetime]:
        return sa.func.now()

    def lease_until(self, seconds: float) -> sa.ColumnElement[datetime]:
        return sa.func.now() + sa.literal(timedelta(seconds=seconds), sa.Interval())

    def lease_param_expr(self) -> sa.ColumnElement[datetime]:
        return sa.func.now() + sa.bindparam("b_lease", type_=sa.Interval())

    def lease_param(self, seconds: float) -> Any:
        return timedelta(seconds=seconds)

    def _raw_lease_until(self, seconds: float) -> tuple[str, Any]:
        return "now() + %s * interval '1 second'", float(seconds)

    def require_vector(self, feature: str) -> None:
        if not self.has_vector:
            raise ConfigError(f"{feature} needs the PostgreSQL 'vector' extension (pgvector), "
                              "which this server does not offer; install pgvector or use "
                              "the embedded SQLite backend")

    def upsert(self, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str],
               set_: Mapping[str, Any]) -> sa.Executable:
        stmt = pg_insert(table).values(**values)
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=dict(set_))

    def insert_ignore(self, table: sa.Table, keys: Sequence[str]) -> sa.Executable:
        return pg_insert(table).on_conflict_do_nothing(index_elements=list(keys))

    @contextlib.contextmanager
    def migration_lock(self, engine: Engine) -> Iterator[None]:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                conn.commit()

    def after_migrate(self, engine: Engine) -> dict[str, Any]:
        with engine.connect() as conn:
            available = conn.execute(sa.text(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first()
            if available:
                try:
                    conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
                    conn.commit()
                    self.has_vector = True
                except sa.exc.DBAPIError:
                    conn.rollback()
                    self.has_vector = bool(conn.execute(sa.text(
                        "SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first())
        return {"pgvector": self.has_vector}

    def estimate_rows(self, conn: Connection, table: sa.Table) -> int:
        # The statistics collector's live-tuple count, else the planner's estimate
        # (-1 before the first ANALYZE): both read one catalog row.
        found = conn.execute(sa.text(
            "SELECT COALESCE(s.n_live_tup, 0), c.reltuples FROM pg_class c "
            "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
            "WHERE c.oid = to_regclass(:name)"), {"name": table.name}).first()
        if found is None:
            return 0
        live, planned = found
        return int(max(live, planned, 0))

    def integrity_check(self, conn: Connection) -> list[str]:
        conn.execute(sa.text("SELECT 1"))
        return []
