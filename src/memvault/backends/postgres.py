"""PostgreSQL backend: psycopg 3 through SQLAlchemy's connection pool.

``durability=full`` keeps ``synchronous_commit=on``; ``normal`` turns it off (a
crash of our process loses nothing; a crash of the server may lose the last
moments). The ``vector`` extension is enabled when the server offers it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from ..errors import ConfigError
from ..retrieval.fulltext import TS_CONFIG, QueryTerms
from .base import Backend
from .schema import chunks

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["PostgresBackend", "normalise_url"]

log = structlog.get_logger(__name__)
#: pgvector's HNSW indexes a ``vector`` of at most this many dimensions; a
#: collection of wider vectors is searched exactly.
HNSW_MAX_DIMENSIONS = 2000
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
#: ``hnsw.ef_search`` is at least this, and at least twice the results asked for.
HNSW_EF_SEARCH = 100

#: Where a pooled connection records the ``hnsw.ef_search`` its session holds.
_HNSW_EF_KEY = "memvault.hnsw_ef_search"
_SET_HNSW = sa.text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', :local), "
                    "set_config('hnsw.ef_search', :ef, :local)")

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
        self._vector_indexes: set[int] = set()

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

    # -- search: tsvector + GIN, pgvector HNSW -------------------------------------

    def json_equals(self, column: sa.ColumnElement[Any], key: str,
                    value: Any) -> sa.ColumnElement[bool]:
        # jsonb containment: numbers compare by value (1 = 1.0), like SQLite's.
        return column.op("@>")(sa.cast(sa.literal({key: value}, JSONB), JSONB))

    def text_search(self, conn: Connection, scope: sa.ColumnElement[bool],
                    conditions: Sequence[sa.ColumnElement[bool]], terms: QueryTerms,
                    token: str, limit: int) -> list[tuple[int, float]]:
        config: sa.ColumnElement[str] = sa.literal_column(f"'{TS_CONFIG}'")
        # plainto/phraseto take their argument as text, never as query syntax.
        parts = [sa.func.plainto_tsquery(config, w) for w in terms.words]
        parts += [sa.func.phraseto_tsquery(config, " ".join(p)) for p in terms.phrases]
        tsquery: sa.ColumnElement[Any] = parts[0]
        for part in parts[1:]:
            tsquery = tsquery.op("||")(part)
        # The stored tsvector of search_text, GIN-indexed (migration 0006).
        document: sa.ColumnElement[Any] = sa.literal_column("chunks.search_tsv")
        score = sa.func.ts_rank(document, tsquery, 1).label("score")
        query = (sa.select(chunks.c.id, score)
                 .where(scope, *conditions, document.op("@@")(tsquery))
                 .order_by(sa.desc("score"), chunks.c.id).limit(limit))
        return [(int(pk), float(s)) for pk, s in conn.execute(query)]

    def ensure_vector_index(self, engine: Engine, dims: int) -> None:
        """Create the HNSW index for ``dims``-dimension vectors unless it exists:
        a partial index over ``embedding::vector(dims)``, so one table holds
        collections of every dimension, each searched by its own index."""
        if dims in self._vector_indexes or not self.has_vector:
            return
        if dims > HNSW_MAX_DIMENSIONS:
            log.info("vectors too wide for an HNSW index; searched exactly", dimensions=dims)
            self._vector_indexes.add(dims)
            return
        name = f"ix_chunks_vec_{int(dims)}"
        ddl = (f"CREATE INDEX IF NOT EXISTS {name} ON chunks USING hnsw "
               f"((embedding::vector({int(dims)})) vector_cosine_ops) "
               f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) "
               f"WHERE dimensions = {int(dims)}")
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(ddl))
        except sa.exc.DBAPIError:  # another process created it at the same moment
            with engine.connect() as conn:
                exists = conn.execute(sa.text("SELECT 1 FROM pg_indexes WHERE indexname = :n"),
                                      {"n": name}).first()
            if exists is None:
                raise
        self._vector_indexes.add(dims)

    def vector_ranking(self, scope: sa.ColumnElement[bool],
                       conditions: Sequence[sa.ColumnElement[bool]], dims: int) -> sa.Subquery:
        from pgvector.sqlalchemy import VECTOR

        # Literal dimensions: the partial index's predicate must be provable
        # from the query text, also under a generic plan. The ORDER BY is the
        # indexed expression itself, so the planner can walk the HNSW graph;
        # iterative scans return rows in relaxed order: the caller sorts them.
        as_vector = sa.cast(chunks.c.embedding, VECTOR(dims))
        distance = as_vector.op("<=>", return_type=sa.Float)(
            sa.bindparam("q", type_=VECTOR(dims))).label("distance")
        return (sa.select(chunks.c.id, distance)
                .where(scope, chunks.c.dimensions == sa.literal_column(str(dims)), *conditions)
                .order_by(sa.literal_column("distance"))
                .limit(sa.bindparam("k", type_=sa.Integer)).subquery("ranked"))

    def vector_params(self, conn: Connection, vector: NDArray[np.float32],
                      k: int) -> dict[str, Any]:
        self._hnsw_settings(conn, max(HNSW_EF_SEARCH, 2 * k))
        return {"q": vector, "k": k}

    @staticmethod
    def _hnsw_settings(conn: Connection, ef_search: int) -> None:
        """Iterative scans (a filtered query still finds ``limit`` rows, pgvector
        0.8; relaxed order is re-sorted by the caller) and ``ef_search``.

        On an autocommit connection (every read) they are session settings,
        sent only when the pooled connection does not hold them yet: the
        statement was a round trip to the server per search, as costly as the
        search itself on a busy host. In a transaction they are local to it
        (a rollback would undo a session setting without our knowing)."""
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        if autocommit and conn.info.get(_HNSW_EF_KEY) == ef_search:
            return
        conn.execute(_SET_HNSW, {"ef": str(ef_search), "local": not autocommit})
        if autocommit:  # the info dict lives as long as the server connection
            conn.info[_HNSW_EF_KEY] = ef_search

    def upsert(self, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str],
               set_: Mapping[str, Any]) -> sa.Executable:
        stmt = pg_insert(table).values(**values)
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=dict(set_))

    def insert_ignore(self, table: sa.Table, keys: Sequence[str]) -> sa.Executable:
        return pg_insert(table).on_conflict_do_nothing(index_elements=list(keys))

    def begin_snapshot(self, conn: Connection) -> Connection:
        conn = conn.execution_options(isolation_level="REPEATABLE READ",
                                      postgresql_readonly=True)
        conn.begin()
        conn.execute(sa.text("SELECT 1"))  # the snapshot is taken by the first statement
        return conn

    def reset_identity(self, conn: Connection, table: sa.Table) -> None:
        column = table.autoincrement_column
        if column is None:
            return
        seq = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, :c)"),
                           {"t": table.name, "c": column.name}).scalar()
        top = conn.execute(sa.select(sa.func.max(column))).scalar()
        if seq is None or top is None:
            return
        last = conn.execute(sa.text("SELECT pg_sequence_last_value(CAST(:s AS regclass))"),
                            {"s": seq}).scalar()
        conn.execute(sa.text("SELECT setval(CAST(:s AS regclass), :v)"),
                     {"s": seq, "v": max(int(top), int(last or 0))})

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
