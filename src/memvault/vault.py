"""``open()``: choose the backend by URL, migrate, and wire blobs, live fan-out,
the chunk writer and the background components into one ``Vault``."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog

from .backends import backend_for
from .backends.base import Database
from .backends.migrate import upgrade
from .background import Background, ComponentStats
from .blobs import BlobStore, open_blob_store
from .cache.core import Cache, Caches, CacheStats, make_tier
from .cache.database import DatabaseTier
from .errors import MemvaultError, Unavailable
from .fanout import close_fanout, open_fanout
from .jobs import JobQueue
from .kinds import kinds
from .live import LocalHub
from .retrieval.embed_cache import CachedEmbedder, EmbeddingCache
from .retrieval.embedders import make_embedder
from .retrieval.ingest import Ingestor
from .retrieval.reindex import ReindexReport, reindex
from .scope import Scope
from .settings import Settings, load_settings, revalidate
from .stores._context import StoreContext
from .stores.files import collect_garbage
from .stores.runs import RunKeeper
from .stores.streaming import (
    ChunkWriter,
    interrupt_message,
    release_writer,
    sweep_interrupted,
    writer_identity,
)
from .stores.users import UserStore

if TYPE_CHECKING:
    from .retrieval.ann import VectorIndexes

__all__ = ["Vault", "open"]

log = structlog.get_logger(__name__)
BLOB_COLLECT_INTERVAL_S = 300.0
#: How often the cache's shared tier drops expired entries and lapsed claims.
CACHE_SWEEP_INTERVAL_S = 60.0
#: The cache namespace of embedding vectors (application-wide).
EMBEDDINGS_NAMESPACE = "embeddings"
#: How often the embedding cache's size is checked (free unless past the bound).
EMBED_CACHE_CHECK_INTERVAL_S = 5.0
#: How often documents whose indexing job died for good are looked for.
INGEST_RECONCILE_INTERVAL_S = 60.0


def _make_private_dir(path: Path) -> None:
    existed = path.exists()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not existed:
        os.chmod(path, 0o700)


class Vault:
    """Everything memvault keeps. Reach a user's records through ``for_user``."""

    def __init__(self, settings: Settings, *, sweep: bool = True) -> None:
        """Open the vault described by ``settings``.

        Args:
            sweep: run the background components (stream sweeper, …) until
                ``close()``; one-shot tools such as the CLI pass ``False`` and
                get one pass of each start-up task only.
        """
        self.settings = settings
        _make_private_dir(settings.data_dir)
        backend = backend_for(settings)
        engine = backend.create_engine()
        self.db = Database(engine, backend)
        try:
            # A migration backs up first (SQLite) or needs a recent backup
            # (PostgreSQL): ops/backup.py.
            from .ops.backup import guard_migration

            guard_migration(settings, self.db)
            # upgrade() says "cannot reach the database" only when it could not;
            # a failed migration is a MigrationFailed naming its revision.
            before, after = upgrade(self.db)
            self.facts: dict[str, Any] = backend.after_migrate(engine)
        except sa.exc.OperationalError as exc:  # after_migrate's connection
            self.db.close()
            raise Unavailable(f"cannot reach the database: {exc.orig}") from exc
        except BaseException:
            self.db.close()
            raise
        if before != after:
            log.info("schema migrated", before=before, after=after)
        try:
            self.blobs: BlobStore = open_blob_store(settings, self.db)
        except BaseException:
            self.db.close()
            raise
        self.users = UserStore(self.db, settings)
        self.hub = LocalHub()
        # Other servers on this database hear of our chunks (LISTEN/NOTIFY or
        # Redis); threads and connections start only when first needed.
        self.fanout = open_fanout(settings, self.db, self.hub)
        self.writer_id = writer_identity()
        self.chunk_writer = ChunkWriter(self.db, self.hub, settings, self.writer_id)
        self.run_keeper = RunKeeper(self.db, settings, self.writer_id)
        # Vectors: pgvector indexes them in PostgreSQL; on SQLite each
        # collection's index is derived from the rows (retrieval/ann.py).
        self.vectors: VectorIndexes | None = None
        if not backend.has_vector and backend.name == "sqlite":
            from .retrieval.ann import VectorIndexes
            self.vectors = VectorIndexes(self.db, settings.data_dir / "indexes",
                                         exact_below=settings.ann_exact_below)
        self.ctx = StoreContext(db=self.db, blobs=self.blobs, hub=self.hub, settings=settings,
                                writer_id=self.writer_id, streams=self.chunk_writer,
                                embedder=lambda: self.embedder, vectors=self.vectors,
                                run_keeper=self.run_keeper)
        self.background = Background()
        self.background.register(
            "stream-sweeper", max(0.2, min(settings.stream_lease_s / 3, 10.0)),
            lambda: self.sweep(check_dead_writers=True))
        self.background.register("stream-keeper", self.chunk_writer.housekeeping_interval_s,
                                 self.chunk_writer.housekeeping)
        # Runs, as streams: abandoned ones end interrupted; open library runs
        # keep their lease while this process lives.
        self.background.register("run-sweeper", self.run_keeper.sweep_interval_s,
                                 self.run_keeper.sweep)
        self.background.register("run-keeper", self.run_keeper.renew_interval_s,
                                 self.run_keeper.renew_leases)
        # What a crash left behind: refcount-0 blobs and stale temp files,
        # collected now and then every few minutes (a full scan of the store for
        # bytes no row references is `verify`'s job, not a periodic one).
        self.background.register("blob-collector", BLOB_COLLECT_INTERVAL_S, self.collect_blobs)
        # The durable job queue: runners ("job-runner", …) and "job-keeper" are
        # background components; features register handlers on ``self.jobs``.
        self.jobs = JobQueue(self.db, settings, self.writer_id, self.background)
        # Uploads are indexed for search by "ingest" jobs, in any process.
        ingestor = Ingestor(self.ctx)
        ingestor.register(self.jobs)
        self.background.register("ingest-reconciler", INGEST_RECONCILE_INTERVAL_S,
                                 ingestor.reconcile)
        # The embedding cache is a table shared by every process; each keeps it
        # within MEMVAULT_EMBED_CACHE_MB. The embedder itself is built on first
        # use (``self.embedder``): loading a model must not slow the start.
        # The caches (``cache()``, ``scope.cache()``): an in-process LRU in front
        # of the shared tier MEMVAULT_CACHE_URL names (unset: this database).
        self.caches = Caches(settings, make_tier(settings, self.db))
        # The embedding cache is the ``embeddings`` namespace of these caches in
        # front of its own bounded table (which, with the default database tier,
        # is that namespace's shared tier already).
        self.embed_cache = EmbeddingCache(
            self.db, settings.embed_cache_mb * 1024 * 1024,
            front=(None if isinstance(self.caches.tier, DatabaseTier)
                   else self.caches.view("", EMBEDDINGS_NAMESPACE)))
        self._embedder: CachedEmbedder | None = None
        self._embedder_lock = threading.Lock()
        self.background.register("embed-cache-eviction", EMBED_CACHE_CHECK_INTERVAL_S,
                                 self.embed_cache.maintain)
        if self.caches.tier is not None:
            self.background.register("cache-sweeper", CACHE_SWEEP_INTERVAL_S, self.caches.sweep)
        self.background.run_now("blob-collector")
        self.background.run_now("stream-sweeper")
        self.background.run_now("run-sweeper")
        if sweep:
            self.background.start()

    @property
    def backend(self) -> str:
        return self.db.backend.name

    @property
    def embedder(self) -> CachedEmbedder:
        """The vault's embedder (``MEMVAULT_EMBEDDER``) behind the embedding
        cache, built on first use.

        Raises:
            ConfigError: the embedder cannot be built (e.g. the local model is missing).
        """
        embedder = self._embedder
        if embedder is None:
            with self._embedder_lock:
                if self._embedder is None:
                    self._embedder = CachedEmbedder(make_embedder(self.settings),
                                                    self.embed_cache)
                embedder = self._embedder
        return embedder

    def require_vector(self, feature: str) -> None:
        """Refuse, with a clear message, a feature that needs pgvector on a
        PostgreSQL server without it (SQLite keeps vectors itself)."""
        self.db.backend.require_vector(feature)

    def for_user(self, user_id: str) -> Scope:
        """The owner-scoped stores: ``.entities``, ``.files``, ``.conversations``."""
        return Scope(self.ctx, user_id, self.caches)

    def cache(self, namespace: str) -> Cache:
        """The application-wide cache namespace ``namespace`` (see ``cache/core.py``).

        Raises:
            Invalid: a namespace that is not 1-200 letters, digits, ``_ - . :``.
        """
        return self.caches.view("", namespace)

    def cache_stats(self) -> dict[str, CacheStats]:
        """This process's cache counters per namespace (summed over owners)."""
        return self.caches.stats()

    def reindex(self, entity_id: str | None = None,
                progress: Callable[[int, int], None] | None = None) -> ReindexReport:
        """Re-embed, with the current embedder, every chunk another model
        embedded (of the entities with id ``entity_id`` only, if given)."""
        return reindex(self.ctx, entity_id, progress)

    def sweep(self, check_dead_writers: bool = False) -> int:
        """Mark abandoned streaming messages ``interrupted`` now."""
        def announce(message_id: str) -> None:
            self.hub.publish(message_id, {"type": "done", "status": "interrupted"})
        return sweep_interrupted(self.db, check_dead_writers, announce)

    def collect_blobs(self, full: bool = False) -> int:
        """Remove unreferenced blobs and stale temp files (``full``: also bytes
        no row references, scanning the whole blob store); returns blobs removed.
        Safe at any time, from every replica (a background component)."""
        return collect_garbage(self.db, self.blobs, full=full)

    def counts(self, exact: bool = True) -> dict[str, int]:
        """Records per kind (see ``kinds.py``).

        Args:
            exact: count every row (O(rows): for ``memvault stats``); ``False``
                reads the database's cheap estimates (start-up log, metrics).
        """
        backend = self.db.backend
        with self.db.read() as conn:
            if exact:
                return {k.name: int(conn.execute(sa.select(sa.func.count())
                                                 .select_from(k.table)).scalar_one())
                        for k in kinds()}
            return {k.name: backend.estimate_rows(conn, k.table) for k in kinds()}

    def component_stats(self) -> dict[str, ComponentStats]:
        """Runs, failures and the last error of each background component."""
        return self.background.stats()

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
        self.jobs.close()
        self.background.stop()
        self.caches.close()
        for reply in self.chunk_writer.active():
            with contextlib.suppress(MemvaultError):
                reply.flush()
            interrupt_message(self.db, reply.owner_id, reply.message_id)
            self.hub.publish(reply.message_id, {"type": "done", "status": "interrupted"})
        self.chunk_writer.close()
        self.run_keeper.close()
        close_fanout(self.fanout, self.hub)
        if self._embedder is not None:  # an HTTP embedder holds a connection pool
            close = getattr(self._embedder.embedder, "close", None)
            if callable(close):
                close()
        try:
            release_writer(self.db, self.writer_id)
        except MemvaultError:
            log.warning("could not release stream claims", exc_info=True)
        if self.vectors is not None:
            self.vectors.close()
        self.blobs.close()
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
