"""The database handle stores use, and the hooks each backend implements.

``Database.write()`` is the only way to write: it opens a transaction that takes
the write lock up front (``BEGIN IMMEDIATE`` on SQLite), commits on success and
translates driver errors once, here, keeping the cause. Stores speak portable
SQLAlchemy Core; what truly differs between databases is a ``Backend`` hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from ..errors import Conflict, Invalid, Unavailable

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

    def begin_write(self, conn: Connection) -> None:
        """Start a write transaction on ``conn``."""
        conn.begin()

    def upsert(self, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str],
               set_: Mapping[str, Any]) -> sa.Executable:
        """``INSERT … ON CONFLICT (keys) DO UPDATE SET set_``."""
        raise NotImplementedError

    @contextlib.contextmanager
    def migration_lock(self, engine: Engine) -> Iterator[None]:
        """Serialise migrations across processes starting at once."""
        yield

    def after_migrate(self, engine: Engine) -> dict[str, Any]:
        """Backend work after the schema is current; returns facts for the log."""
        return {}

    def integrity_check(self, conn: Connection) -> list[str]:
        """Problems the database itself reports; empty when healthy."""
        return []

    def is_busy(self, error: BaseException) -> bool:
        return False

    def describe(self, engine: Engine) -> str:
        return engine.url.render_as_string(hide_password=True)


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
        except sa_exc.OperationalError as exc:
            raise Unavailable(f"database unavailable: {exc.orig}") from exc

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
            raise Conflict(f"constraint violated: {exc.orig}") from exc
        except sa_exc.DataError as exc:
            # e.g. a NUL character, which PostgreSQL text and jsonb cannot hold
            raise Invalid(f"a value cannot be stored: {exc.orig}") from exc
        except sa_exc.OperationalError as exc:
            raise Unavailable(f"database unavailable: {exc.orig}") from exc
        for callback in callbacks:
            try:
                callback()
            except Exception:  # the write is committed; the effect is retried by its owner
                log.exception("after-commit callback failed")

    def close(self) -> None:
        self.engine.dispose()
