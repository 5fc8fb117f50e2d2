"""``open()``: choose the backend by URL, migrate, and wire blobs, live fan-out,
the chunk writer and the stream sweeper into one ``Vault``."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog

from .backends import backend_for
from .backends.base import Database
from .backends.migrate import upgrade
from .backends.schema import conversations, documents, entities, message_chunks, messages, users
from .blobs import BlobStore
from .errors import MemvaultError, Unavailable
from .live import LocalHub
from .scope import Scope
from .settings import Settings, load_settings, revalidate
from .stores._context import StoreContext
from .stores.streaming import (
    ChunkWriter,
    interrupt_message,
    release_writer,
    sweep_interrupted,
    writer_identity,
)
from .stores.users import UserStore

__all__ = ["Vault", "open"]

log = structlog.get_logger(__name__)
_COUNTED = {"users": users, "entities": entities, "documents": documents,
            "conversations": conversations, "messages": messages, "chunks": message_chunks}


def _make_private_dir(path: Path) -> None:
    existed = path.exists()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not existed:
        os.chmod(path, 0o700)


class Vault:
    """Everything memvault keeps. Reach a user's records through ``for_user``."""

    def __init__(self, settings: Settings, *, sweep: bool = True) -> None:
        self.settings = settings
        _make_private_dir(settings.data_dir)
        backend = backend_for(settings)
        engine = backend.create_engine()
        self.db = Database(engine, backend)
        try:
            before, after = upgrade(self.db)
        except sa.exc.OperationalError as exc:
            self.db.close()
            raise Unavailable(f"cannot reach the database: {exc.orig}") from exc
        self.facts: dict[str, Any] = backend.after_migrate(engine)
        if before != after:
            log.info("schema migrated", before=before, after=after)
        self.blobs = BlobStore(settings.data_dir / "blobs", fsync=settings.durability == "full")
        self.blobs.clean_tmp()
        self.users = UserStore(self.db, settings.token_ttl_hours, settings.password_hash)
        self.hub = LocalHub()
        self.writer_id = writer_identity()
        self.chunk_writer = ChunkWriter(self.db, self.hub, settings)
        self.ctx = StoreContext(db=self.db, blobs=self.blobs, hub=self.hub, settings=settings,
                                writer_id=self.writer_id, streams=self.chunk_writer)
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.sweep(check_dead_writers=True)
        if sweep:
            self._sweeper = threading.Thread(target=self._sweep_loop, name="memvault-sweeper",
                                             daemon=True)
            self._sweeper.start()

    @property
    def backend(self) -> str:
        return self.db.backend.name

    def require_vector(self, feature: str) -> None:
        """Refuse, with a clear message, a feature that needs pgvector on a
        PostgreSQL server without it (SQLite keeps vectors itself)."""
        self.db.backend.require_vector(feature)

    def for_user(self, user_id: str) -> Scope:
        """The owner-scoped stores: ``.entities``, ``.files``, ``.conversations``."""
        return Scope(self.ctx, user_id)

    def sweep(self, check_dead_writers: bool = False) -> int:
        """Mark abandoned streaming messages ``interrupted`` now."""
        def announce(message_id: str) -> None:
            self.hub.publish(message_id, {"type": "done", "status": "interrupted"})
        return sweep_interrupted(self.db, check_dead_writers, announce)

    def _sweep_loop(self) -> None:
        every = max(0.2, min(self.settings.stream_lease_s / 3, 10.0))
        while not self._stop.wait(every):
            try:
                self.sweep(check_dead_writers=True)
            except MemvaultError:
                log.warning("stream sweep failed; will retry", exc_info=True)

    def counts(self) -> dict[str, int]:
        with self.db.read() as conn:
            return {name: int(conn.execute(sa.select(sa.func.count()).select_from(table))
                              .scalar_one()) for name, table in _COUNTED.items()}

    def ping(self) -> None:
        """Raise ``Unavailable`` unless the database answers."""
        with self.db.read() as conn:
            conn.execute(sa.text("SELECT 1"))

    def integrity_check(self) -> list[str]:
        with self.db.read() as conn:
            return self.db.backend.integrity_check(conn)

    def describe(self) -> str:
        return self.db.backend.describe(self.db.engine)

    def close(self) -> None:
        """Stop background work; streams still open in this process end ``interrupted``."""
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join()
        for reply in self.chunk_writer.active():
            with contextlib.suppress(MemvaultError):
                reply.flush()
            interrupt_message(self.db, reply.owner_id, reply.message_id)
            self.hub.publish(reply.message_id, {"type": "done", "status": "interrupted"})
        self.chunk_writer.close()
        try:
            release_writer(self.db, self.writer_id)
        except MemvaultError:
            log.warning("could not release stream claims", exc_info=True)
        self.db.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(source: str | Path | Settings | None = None, **overrides: Any) -> Vault:  # noqa: A001
    """Open (and create or migrate) a vault.

    Args:
        source: a ``Settings``, a database URL (``postgresql://…``, ``sqlite:///…``)
            or a data directory. ``None`` reads ``MEMVAULT_*`` (default ``./data``).
        **overrides: any ``Settings`` field.
    """
    if isinstance(source, Settings):
        # Re-validated, never model_copy(update=…), which would take any value as given.
        settings = revalidate(source, **overrides) if overrides else source
    else:
        if isinstance(source, str) and "://" in source:
            overrides.setdefault("database_url", source)
        elif source is not None:
            overrides.setdefault("data_dir", Path(source))
        settings = load_settings(**overrides)
    return Vault(settings)
