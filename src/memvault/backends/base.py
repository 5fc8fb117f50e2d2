"""The database handle stores use, and the hooks each backend implements.

``Database.write()`` is the only way to write: it opens a transaction that takes
the write lock up front (``BEGIN IMMEDIATE`` on SQLite), commits on success and
translates driver errors once, here, keeping the cause. Stores speak portable
SQLAlchemy Core; what truly differs between databases is a ``Backend`` hook.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from ..errors import Conflict, Invalid, Unavailable
from ..ids import utcnow
from .schema import UTCDateTime, message_chunks, messages

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ..retrieval.fulltext import QueryTerms

__all__ = ["Backend", "Database", "after_commit"]

log = structlog.get_logger(__name__)
_AFTER_COMMIT = "memvault_after_commit"


def after_commit(conn: Connection, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the write transaction on ``conn`` has committed.

    The one way to make a side effect outside the database (unlinking a blob,
    writing an index file, notifying listeners): it happens only when the change
    that justifies it is durable, and not at all when the transaction rolls back.
    A callback that fails is logged; the committed write stands.
    """
    conn.info.setdefault(_AFTER_COMMIT, []).append(callback)


def _logged(exc: sa_exc.DBAPIError, level: str = "warning") -> sa_exc.DBAPIError:
    """Log a driver error (with the request id bound to the log context) and
    return it, to chain as the cause of the generic error the caller sees: the
    driver's text never reaches a response."""
    getattr(log, level)("database error", error=type(exc.orig).__name__,
                        driver_detail=str(exc.orig))
    return exc


@functools.lru_cache(maxsize=256)
def _insert_chunks_sql(mark: str, rows: int) -> str:
    row = f"({mark}, {mark}, {mark}, {mark}, {mark})"
    return (f"INSERT INTO {message_chunks.name} (owner_id, message_id, seq, text, created_at) "
            f"VALUES {', '.join([row] * rows)}")


@functools.lru_cache(maxsize=256)
def _advance_streams_sql(mark: str, rows: int, lease: str) -> str:
    """Set each message's last chunk seq and renew its lease, in one statement,
    if it still streams and is still ``writer``'s; returns the keys it advanced.
    ``column1…`` are the names SQLite and PostgreSQL both give VALUES columns."""
    m = messages.name
    values = ", ".join([f"({mark}, {mark}, {mark})"] * rows)
    return (f"UPDATE {m} SET last_chunk_seq = v.column3, lease_expires_at = {lease} "
            f"FROM (VALUES {values}) AS v "
            f"WHERE {m}.owner_id = v.column1 AND {m}.id = v.column2 "
            f"AND {m}.status = 'streaming' AND {m}.writer = {mark} "
            f"RETURNING {m}.owner_id, {m}.id")


class Backend:
    """Capability flags and hooks of one database kind."""

    name: str = "abstract"
    #: Capabilities, named, so code outside ``backends`` never tests the name.
    #: ``has_vector``: a native vector type and ANN index (pgvector).
    has_vector: bool = False
    #: ``returning``: ``INSERT/UPDATE/DELETE … RETURNING``.
    returning: bool = True
    #: ``skip_locked``: ``SELECT … FOR UPDATE SKIP LOCKED`` (job queues).
    skip_locked: bool = False
    #: Execution options of read connections (PostgreSQL reads in autocommit:
    #: no BEGIN/ROLLBACK round trips around a single SELECT).
    read_options: dict[str, Any] = {}
    #: The driver's positional parameter marker, for the few raw executemany
    #: statements on hot paths.
    placeholder: str = "?"

    def create_engine(self) -> Engine:
        """A pooled engine with this backend's connection set-up."""
        raise NotImplementedError

    def require_vector(self, feature: str) -> None:
        """Refuse ``feature`` clearly when vectors cannot be kept (SQLite keeps
        them itself; PostgreSQL needs pgvector)."""

    def timestamp_param(self, value: datetime) -> Any:
        """An aware UTC datetime as the driver takes it for a timestamp column."""
        return value

    # -- search (issue 6): the SQL each database answers it with ---------------

    def json_equals(self, column: sa.ColumnElement[Any], key: str,
                    value: Any) -> sa.ColumnElement[bool]:
        """``column[key] == value`` for a JSON object column (scalar ``value``)."""
        raise NotImplementedError

    def text_search(self, conn: Connection, scope: sa.ColumnElement[bool],
                    conditions: Sequence[sa.ColumnElement[bool]], terms: QueryTerms,
                    token: str, limit: int) -> list[tuple[int, float]]:
        """Full-text ranked ``(chunks.id, score)``, best first, higher is better,
        among the chunks matching ``scope`` and ``conditions``."""
        raise NotImplementedError

    def vector_ranking(self, scope: sa.ColumnElement[bool],
                       conditions: Sequence[sa.ColumnElement[bool]], dims: int) -> sa.Subquery:
        """The chunks nearest a query vector by the database's own vector index
        (``has_vector`` backends only), among the ``dims``-dimension chunks
        matching ``scope`` and ``conditions``: a subquery of ``id`` and cosine
        ``distance``, at most ``k`` rows, in no guaranteed order. The vector and
        ``k`` are bound at execution (``vector_params``), so a caller can build
        the statement once and join the rows it needs to it."""
        raise NotImplementedError

    def vector_params(self, conn: Connection, vector: NDArray[np.float32],
                      k: int) -> dict[str, Any]:
        """The parameters of a ``vector_ranking`` statement; makes ``conn``
        ready to run it (session settings)."""
        raise NotImplementedError

    def vector_search(self, conn: Connection, scope: sa.ColumnElement[bool],
                      conditions: Sequence[sa.ColumnElement[bool]],
                      vector: NDArray[np.float32], limit: int) -> list[tuple[int, float]]:
        """Nearest ``(chunks.id, cosine similarity)``, best first (ties: lower
        id first), by the database's own vector index (``has_vector`` backends only)."""
        ranked = self.vector_ranking(scope, conditions, int(vector.size))
        rows = conn.execute(sa.select(ranked.c.id, ranked.c.distance),
                            self.vector_params(conn, vector, limit))
        found = [(int(pk), 1.0 - float(d)) for pk, d in rows]
        found.sort(key=lambda item: (-item[1], item[0]))
        return found

    def begin_write(self, conn: Connection) -> None:
        """Start a write transaction on ``conn``."""
        conn.begin()

    def begin_snapshot(self, conn: Connection) -> Connection:
        """Start a read-only transaction on ``conn`` (fresh from the engine, not
        in a transaction) in which every statement sees one consistent snapshot
        while writers continue (export, backup); returns the connection to use.
        The caller ends it with ``rollback()``."""
        raise NotImplementedError

    def reset_identity(self, conn: Connection, table: sa.Table) -> None:
        """After rows were inserted into ``table`` with explicit values of its
        generated integer key: make the next generated value follow every value
        used (never lower: ids such as ``chunks.id`` are never reused)."""

    # -- stream leases and the group commit of chunks --------------------------
    # A lease is compared with the clock of whoever set it. Where several hosts
    # share the database (PostgreSQL) that must be the database's clock, not each
    # host's; SQLite is one machine, so the host clock (the default here) is it.

    def db_now(self) -> sa.ColumnElement[datetime]:
        """The current time, as a SQL expression on the clock leases use."""
        return sa.literal(utcnow(), UTCDateTime())

    def lease_until(self, seconds: float) -> sa.ColumnElement[datetime]:
        """When a lease of ``seconds`` taken now ends, as a SQL expression."""
        return sa.literal(utcnow() + timedelta(seconds=seconds), UTCDateTime())

    def lease_param_expr(self) -> sa.ColumnElement[datetime]:
        """``lease_until`` with the lease as the bound parameter ``b_lease``:
        statements built once with it are reused (see ``lease_param``)."""
        return sa.bindparam("b_lease", type_=UTCDateTime())

    def lease_param(self, seconds: float) -> Any:
        """The value of ``b_lease`` for a lease of ``seconds`` taken now."""
        return utcnow() + timedelta(seconds=seconds)

    def _raw_lease_until(self, seconds: float) -> tuple[str, Any]:
        """``lease_until`` for raw driver SQL: (fragment with one marker, its value)."""
        return self.placeholder, self.timestamp_param(utcnow() + timedelta(seconds=seconds))

    def group_commit_chunks(self, conn: Connection, chunks: Sequence[tuple[str, str, int, str]],
                            writer: str, lease_s: float) -> set[tuple[str, str]]:
        """Store the chunks ``(owner_id, message_id, seq, text)`` of several streams.

        Each message advances (last chunk seq, lease renewed) only while it is
        still ``streaming`` and written by ``writer``; chunks are inserted only for
        the messages that advanced, which are returned as ``(owner_id, message_id)``.
        Two multi-row statements whatever the batch size: SQLAlchemy's per-row
        parameter processing, and a driver step (and GIL hand-back) per row, cost
        more than the rows themselves when a hundred streams share a commit.
        """
        last: dict[tuple[str, str], int] = {}
        for owner, mid, seq, _text in chunks:
            last[(owner, mid)] = max(seq, last.get((owner, mid), 0))
        lease_sql, lease_param = self._raw_lease_until(lease_s)
        params: list[Any] = [lease_param]
        for (owner, mid), seq in last.items():
            params += (owner, mid, seq)
        params.append(writer)
        advanced = _returned_pairs(
            conn, _advance_streams_sql(self.placeholder, len(last), lease_sql), tuple(params))
        rows = [c for c in chunks if (c[0], c[1]) in advanced]
        if rows:
            created = self.timestamp_param(utcnow())
            values: list[Any] = []
            for owner, mid, seq, text in rows:
                values += (owner, mid, seq, text, created)
            conn.exec_driver_sql(_insert_chunks_sql(self.placeholder, len(rows)), tuple(values))
        return advanced

    def upsert(self, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str],
               set_: Mapping[str, Any]) -> sa.Executable:
        """``INSERT … ON CONFLICT (keys) DO UPDATE SET set_``."""
        raise NotImplementedError

    def insert_ignore(self, table: sa.Table, keys: Sequence[str]) -> sa.Executable:
        """``INSERT … ON CONFLICT (keys) DO NOTHING``, to execute with a list of
        rows: a row whose key another writer inserted first is skipped."""
        raise NotImplementedError

    @contextlib.contextmanager
    def migration_lock(self, engine: Engine) -> Iterator[None]:
        """Serialise migrations across processes starting at once."""
        yield

    @contextlib.contextmanager
    def migration_transaction(self, conn: Connection) -> Iterator[None]:
        """One transaction around a whole upgrade (every pending revision).

        Committed when the block exits cleanly, rolled back otherwise, so a
        revision failing half-way leaves the schema at its previous revision.
        ``conn`` must not be in a transaction yet.
        """
        self.begin_write(conn)
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def after_migrate(self, engine: Engine) -> dict[str, Any]:
        """Backend work after the schema is current; returns facts for the log."""
        return {}

    def estimate_rows(self, conn: Connection, table: sa.Table) -> int:
        """A cheap estimate of ``table``'s row count (no scan)."""
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    def integrity_check(self, conn: Connection) -> list[str]:
        """Problems the database itself reports; empty when healthy."""
        return []

    def is_busy(self, error: BaseException) -> bool:
        return False

    def describe(self, engine: Engine) -> str:
        return engine.url.render_as_string(hide_password=True)


def _returned_pairs(conn: Connection, sql: str, params: tuple[Any, ...]) -> set[tuple[str, str]]:
    """Run ``sql`` (… RETURNING two columns) on the driver's own cursor, inside
    ``conn``'s transaction. SQLAlchemy's result set-up for RETURNING cost as much
    as the statement itself on the per-chunk path; driver errors are translated
    as SQLAlchemy would, so ``Database.write`` still maps them."""
    dbapi = conn.dialect.loaded_dbapi
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        return {(str(a), str(b)) for a, b in cursor.fetchall()}
    except dbapi.Error as exc:
        raise sa_exc.DBAPIError.instance(sql, params, exc, dbapi.Error) from exc
    finally:
        cursor.close()


class Database:
    """A pooled engine plus its backend's hooks."""

    def __init__(self, engine: Engine, backend: Backend) -> None:
        self.engine = engine
        self.backend = backend

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads (each statement sees committed data)."""
        try:
            with self.engine.connect() as conn:
                if self.backend.read_options:
                    conn = conn.execution_options(**self.backend.read_options)
                yield conn
        except sa_exc.DataError as exc:  # e.g. a NUL in a looked-up id, on PostgreSQL
            raise Invalid("a value cannot be used in a query") from _logged(exc)
        except sa_exc.OperationalError as exc:
            raise Unavailable("database unavailable") from _logged(exc)

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed when the block exits without error.

        Raises:
            Conflict: a uniqueness or reference constraint refused the write.
            Unavailable: the database could not be reached or stayed locked.
        """
        callbacks: list[Callable[[], None]] = []
        try:
            with self.engine.connect() as conn:
                self.backend.begin_write(conn)
                try:
                    yield conn
                except BaseException:
                    conn.rollback()
                    raise
                finally:  # the pooled connection's info outlives this checkout
                    callbacks = conn.info.pop(_AFTER_COMMIT, [])
                conn.commit()
        except sa_exc.IntegrityError as exc:
            # expected (a taken id): stores turn it into their own message
            raise Conflict("constraint violated") from _logged(exc, "info")
        except sa_exc.DataError as exc:
            # e.g. a number out of the column's range; stores refuse what they can first
            raise Invalid("a value cannot be stored") from _logged(exc)
        except sa_exc.OperationalError as exc:
            raise Unavailable("database unavailable") from _logged(exc)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # the write is committed; the effect is retried by its owner
                log.exception("after-commit callback failed")

    def close(self) -> None:
        self.engine.dispose()
