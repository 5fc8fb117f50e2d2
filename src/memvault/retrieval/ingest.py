"""Indexing an uploaded document: the handler of ``ingest`` jobs.

An upload commits its document row (``pending``) and an ``ingest`` job together
(``stores/files.py``); any process of the vault then claims the job
(``jobs.py``) and runs ``Ingestor.handle``:

1. mark the document ``indexing``;
2. reuse: if the same entity already holds an indexed document with the same
   bytes (sha256), copy its chunks and vectors — no extraction, no embedding;
3. otherwise extract the text (``extract.py``), cut it into chunks counted in
   the embedder's tokens (``chunking.py``) and embed them (through the
   embedding cache, so text embedded before is not embedded again);
4. in ONE write transaction: insert every chunk (vectors and full-text rows
   follow), mark the document ``indexed`` with its ``chunk_count``, and
   complete the job. Search sees all of a document's chunks or none.

A file that cannot be read (unsupported type, corrupt, no text) ends
``failed`` with the reason in ``error``, stays stored and downloadable, and its
job is done (retrying would not help). Any other error (an embedding service
down, the database unreachable) is retried by the queue with back-off; the last
allowed attempt marks the document ``failed`` with that error. A ``kill -9``
mid-way leaves the document ``indexing`` and the job ``running``; its lease
expires (at once for a dead process of the same host) and any process resumes
it from step 1 — nothing of the interrupted attempt was committed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
import structlog

from ..backends.schema import chunks, documents, jobs
from ..errors import ExtractionError
from ..ids import new_id
from ..jobs import FAILED, QUEUED, RUNNING, Job, enqueue
from ..stores._context import StoreContext
from ..stores.collections import ChunkRow, insert_chunks
from ..stores.files import INGEST_JOB
from .chunking import chunk_text
from .extract import extract

if TYPE_CHECKING:
    from ..jobs import JobQueue

__all__ = ["Ingestor", "INGEST_JOB"]

log = structlog.get_logger(__name__)
MAX_ERROR_CHARS = 2000


class Ingestor:
    """Indexes documents for the vault whose store context it is given."""

    def __init__(self, ctx: StoreContext) -> None:
        self._ctx = ctx
        self._db = ctx.db

    def register(self, queue: JobQueue) -> None:
        queue.register_handler(INGEST_JOB, self.handle)

    def handle(self, job: Job) -> None:
        owner_id = job.owner_id
        doc_id = job.payload.get("doc_id") if isinstance(job.payload, dict) else None
        if owner_id is None or not isinstance(doc_id, str):
            log.warning("ingest job without a document", job_id=job.id)
            return  # done: there is nothing it could ever do
        with self._db.write() as conn:
            row = conn.execute(sa.select(documents).where(
                documents.c.owner_id == owner_id, documents.c.doc_id == doc_id)
                .with_for_update()).first()
            if row is None or row.status in ("indexed", "failed"):
                return  # deleted meanwhile, or indexed by an earlier attempt
            conn.execute(documents.update().where(
                documents.c.owner_id == owner_id, documents.c.doc_id == doc_id)
                .values(status="indexing", error=None))
        try:
            rows = self._reused(row) or self._indexed(row)
        except ExtractionError as exc:
            self._finish(job, row, [], error=str(exc))
            return
        except Exception as exc:
            if job.attempts >= job.max_attempts:  # no attempt left: say why it failed
                self._finish(job, row, [], error=f"indexing failed: {exc}"[:MAX_ERROR_CHARS])
                return
            raise
        self._finish(job, row, rows)

    def reconcile(self) -> int:
        """Give every unfinished document a live job again; returns how many it
        touched. A document ``pending``/``indexing`` whose job ended ``failed``
        (its last attempt died with its process, so the handler could not say
        why) becomes ``failed`` with the job's error; one with no job at all
        (a document imported or restored without its queue) is queued again.
        A background component (``ingest-reconciler``), cheap when all is well:
        an index range scan of the few unfinished documents."""
        touched = 0
        with self._db.read() as conn:
            unfinished = conn.execute(sa.select(documents.c.owner_id, documents.c.doc_id).where(
                documents.c.status.in_(("pending", "indexing"))).limit(1000)).all()
        for owner_id, doc_id in unfinished:
            with self._db.write() as conn:
                status = conn.execute(sa.select(documents.c.status).where(
                    documents.c.owner_id == owner_id, documents.c.doc_id == doc_id)
                    .with_for_update()).scalar()
                if status not in ("pending", "indexing"):
                    continue
                ingest_jobs = conn.execute(sa.select(jobs.c.status, jobs.c.error, jobs.c.payload)
                                           .where(jobs.c.owner_id == owner_id,
                                                  jobs.c.kind == INGEST_JOB)
                                           .order_by(jobs.c.created_at)).all()
                mine = [j for j in ingest_jobs
                        if isinstance(j.payload, dict) and j.payload.get("doc_id") == doc_id]
                if any(j.status in (QUEUED, RUNNING) for j in mine):
                    continue
                if mine and mine[-1].status == FAILED:
                    conn.execute(documents.update().where(
                        documents.c.owner_id == owner_id, documents.c.doc_id == doc_id).values(
                        status="failed",
                        error=f"indexing failed: {mine[-1].error or 'its worker died'}"
                        [:MAX_ERROR_CHARS]))
                else:
                    enqueue(conn, INGEST_JOB, {"doc_id": doc_id}, owner_id=owner_id)
                touched += 1
        if touched:
            log.info("unfinished documents reconciled", documents=touched)
        return touched

    def _reused(self, doc: Any) -> list[ChunkRow] | None:
        """The chunks of an indexed document of the same entity with the same
        bytes, as new rows for ``doc`` (vectors copied, nothing embedded)."""
        with self._db.read() as conn:
            source = conn.execute(sa.select(documents.c.doc_id).where(
                documents.c.owner_id == doc.owner_id, documents.c.entity_id == doc.entity_id,
                documents.c.sha256 == doc.sha256, documents.c.status == "indexed",
                documents.c.doc_id != doc.doc_id).limit(1)).scalar()
            if source is None:
                return None
            copied = conn.execute(sa.select(
                chunks.c.position, chunks.c.char_start, chunks.c.char_end, chunks.c.page,
                chunks.c.text, chunks.c.model_id, chunks.c.embedding).where(
                chunks.c.owner_id == doc.owner_id, chunks.c.doc_id == source)
                .order_by(chunks.c.position)).all()
        model_id = self._ctx.embedder().model_id if self._ctx.embedder else None
        if any(r.model_id != model_id for r in copied):
            return None  # built with another model: index afresh
        return [ChunkRow(new_id(), r.text, r.embedding, model_id=r.model_id, doc_id=doc.doc_id,
                         position=r.position, start=r.char_start, end=r.char_end, page=r.page)
                for r in copied]

    def _indexed(self, doc: Any) -> list[ChunkRow]:
        data = b"".join(self._ctx.blobs.open(doc.sha256))
        extracted = extract(data, doc.filename, doc.content_type)
        if not extracted.text.strip():
            raise ExtractionError("no text could be extracted from this file"
                                  + (" (a scanned PDF without a text layer?)"
                                     if extracted.format == "pdf" else ""))
        assert self._ctx.embedder is not None
        embedder = self._ctx.embedder()
        budget = self._ctx.settings.chunk_tokens
        limit = getattr(embedder, "max_tokens", None)
        if isinstance(limit, int):  # leave room for the model's [CLS] and [SEP]
            budget = max(1, min(budget, limit - 2))
        overlap = min(self._ctx.settings.chunk_overlap, budget - 1)
        pieces = chunk_text(extracted.text, max_tokens=budget, overlap=overlap,
                            count_tokens=embedder.count_tokens, pages=extracted.pages or None)
        if not pieces:
            raise ExtractionError("no text could be extracted from this file")
        vectors = embedder.embed([p.text for p in pieces])
        return [ChunkRow(new_id(), p.text, np.asarray(v, dtype=np.float32),
                         model_id=embedder.model_id, doc_id=doc.doc_id, position=p.position,
                         start=p.start, end=p.end, page=p.page)
                for p, v in zip(pieces, vectors, strict=True)]

    def _finish(self, job: Job, doc: Any, rows: list[ChunkRow], *,
                error: str | None = None) -> None:
        ensure = getattr(self._db.backend, "ensure_vector_index", None)
        if ensure is not None and rows:
            ensure(self._db.engine, int(rows[0].embedding.size))
        where = sa.and_(documents.c.owner_id == doc.owner_id, documents.c.doc_id == doc.doc_id)
        with self._db.write() as conn:
            # Locked, so a concurrent delete of the document waits for us (or
            # went first, and then there is nothing left to index).
            current = conn.execute(sa.select(documents.c.status).where(where)
                                   .with_for_update()).first()
            if current is None or current.status != "indexing":
                job.complete(conn)
                return
            conn.execute(chunks.delete().where(chunks.c.owner_id == doc.owner_id,
                                               chunks.c.doc_id == doc.doc_id))
            if error is None:
                insert_chunks(self._ctx, conn, doc.owner_id, doc.entity_id, rows)
                conn.execute(documents.update().where(where).values(
                    status="indexed", chunk_count=len(rows), error=None))
            else:
                conn.execute(documents.update().where(where).values(
                    status="failed", chunk_count=0, error=error[:MAX_ERROR_CHARS]))
            job.complete(conn)
        log.info("document indexed" if error is None else "document not indexed",
                 doc_id=doc.doc_id, chunks=len(rows), error=error)
