"""The narrow context every store is built from.

A store gets this frozen bundle (database, blob store, live hub, stream writer,
clock and settings) plus the owner id, and nothing else: no store reaches the
vault or the scope, so a new store is a new module that needs only this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from ..backends.base import Database
from ..ids import utcnow
from ..live import LocalHub
from ..settings import Settings

if TYPE_CHECKING:
    from ..blobs import BlobStore
    from ..retrieval.ann import VectorIndexes
    from ..retrieval.embedders import Embedder
    from .runs import RunKeeper
    from .streaming import ChunkWriter

__all__ = ["StoreContext"]


@dataclass(frozen=True, slots=True)
class StoreContext:
    db: Database
    blobs: BlobStore
    hub: LocalHub
    settings: Settings
    #: This process's identity as a stream writer (``host:pid``).
    writer_id: str
    #: The group-commit writer shared by every library stream of the vault.
    streams: ChunkWriter
    clock: Callable[[], datetime] = field(default=utcnow)
    #: The vault's embedder (behind the embedding cache), built on first call.
    embedder: Callable[[], Embedder] | None = None
    #: The derived vector indexes of backends without native vectors (SQLite).
    vectors: VectorIndexes | None = None
    #: Renews the leases of this process's open library runs (``runs.py``).
    run_keeper: RunKeeper | None = None
