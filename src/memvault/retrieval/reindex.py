"""``memvault reindex``: rebuild the vectors of collections after the vault's
embedder changed.

Every chunk the vault embedded (``model_id`` set) with a model other than the
current one is embedded again and replaced — deleted and re-inserted with the
same ``chunk_id``, place, text and metadata, since chunks are never updated in
place (the derived indexes catch up on replacements). Records whose vectors the
client gave are left alone. Works in batches, each its own transaction, so an
interrupted reindex resumes where it stopped when run again; search of a
collection answers 409 until none of its chunks has the old model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from ..backends.schema import chunks
from ..stores._context import StoreContext
from ..stores.collections import ChunkRow, insert_chunks

__all__ = ["reindex", "ReindexReport", "stale_chunks"]

BATCH = 256


@dataclass(frozen=True)
class ReindexReport:
    collections: int
    chunks: int
    model_id: str


def _stale(model_id: str, entity_id: str | None) -> sa.ColumnElement[bool]:
    condition = sa.and_(chunks.c.model_id.is_not(None), chunks.c.model_id != model_id)
    if entity_id is not None:
        condition = sa.and_(condition, chunks.c.entity_id == entity_id)
    return condition


def stale_chunks(ctx: StoreContext, entity_id: str | None = None) -> int:
    """How many vault-embedded chunks another model made."""
    assert ctx.embedder is not None
    model_id = ctx.embedder().model_id
    with ctx.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(chunks)
                                .where(_stale(model_id, entity_id))).scalar_one())


def reindex(ctx: StoreContext, entity_id: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> ReindexReport:
    """Re-embed the stale chunks of every collection (or of the entities with
    id ``entity_id``, whoever owns them); ``progress(done, total)`` after each batch."""
    assert ctx.embedder is not None
    embedder = ctx.embedder()
    model_id = embedder.model_id
    total = stale_chunks(ctx, entity_id)
    done = 0
    touched: set[tuple[str, str]] = set()
    if progress:
        progress(0, total)
    while True:
        with ctx.db.read() as conn:
            batch = conn.execute(sa.select(
                chunks.c.id, chunks.c.owner_id, chunks.c.entity_id, chunks.c.chunk_id,
                chunks.c.doc_id, chunks.c.position, chunks.c.char_start, chunks.c.char_end,
                chunks.c.page, chunks.c.text, chunks.c.metadata)
                .where(_stale(model_id, entity_id)).order_by(chunks.c.id).limit(BATCH)).all()
        if not batch:
            break
        vectors = embedder.embed([row.text for row in batch])
        ensure = getattr(ctx.db.backend, "ensure_vector_index", None)
        if ensure is not None:
            ensure(ctx.db.engine, int(vectors.shape[1]))
        groups: dict[tuple[str, str], list[tuple[int, ChunkRow]]] = {}
        for row, vector in zip(batch, vectors, strict=True):
            groups.setdefault((row.owner_id, row.entity_id), []).append((row.id, ChunkRow(
                row.chunk_id, row.text, np.asarray(vector, dtype=np.float32),
                model_id=model_id, doc_id=row.doc_id, position=row.position,
                start=row.char_start, end=row.char_end, page=row.page,
                metadata=row.metadata)))
        with ctx.db.write() as conn:
            for (owner_id, entity), items in groups.items():
                # Only rows still as read: one deleted or replaced meanwhile stays so.
                gone = conn.execute(chunks.delete().where(
                    chunks.c.id.in_([pk for pk, _ in items]), _stale(model_id, None))
                    .returning(chunks.c.id)).scalars().all()
                kept = set(gone)
                insert_chunks(ctx, conn, owner_id, entity,
                              [r for pk, r in items if pk in kept])
                touched.add((owner_id, entity))
        done += len(batch)
        if progress:
            progress(min(done, total), max(total, done))
    return ReindexReport(collections=len(touched), chunks=done, model_id=model_id)
