"""Files: uploaded documents of an entity, kept content-addressed in the blob store.

A document row references a blob by sha256; ``blobs.refcount`` counts the rows.
Commit discipline (architecture principle 6):

- Bytes a new row needs are published durably *before* the row commits, inside
  the write transaction, right after the upsert that locks the ``blobs`` row.
  If the commit fails they are an orphan, removed at once when possible, else
  by ``collect_garbage``.
- Bytes are removed only *after* the commit that made them unreferenced:
  releasing the last reference commits refcount 0 (the row stays), and an
  after-commit callback runs ``collect_blob``, a new short write transaction
  that deletes the row only if its refcount is still 0 (an upload of the same
  bytes may have taken it back meanwhile) and removes the bytes before it
  commits. A crash in between leaves a refcount-0 row, which
  ``collect_garbage`` (at open and periodically) collects the same way.
"""

from __future__ import annotations

import mimetypes
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any, BinaryIO

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from ..backends.base import Database, after_commit
from ..backends.schema import blobs, documents, entities
from ..blobs import BlobStore
from ..errors import MemvaultError, NotFound
from ..ids import new_id, utcnow
from ..jobs import enqueue
from ..models import Document, Page
from ._context import StoreContext
from ._paging import DEFAULT_LIMIT, keyset_page

__all__ = ["FileStore", "clean_filename", "collect_blob", "collect_garbage",
           "release_entity_documents", "release_blobs", "collect_quietly",
           "require_document", "INGEST_JOB", "INDEXING_DONE"]

log = structlog.get_logger(__name__)

#: The job kind that indexes a document (handler: ``retrieval/ingest.py``).
INGEST_JOB = "ingest"
#: Document statuses after which indexing is over.
INDEXING_DONE = frozenset({"indexed", "failed"})
#: How often ``wait_indexed`` looks again.
WAIT_POLL_S = 0.1

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTENT_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+(\s*;.*)?$")


def clean_filename(name: str | None) -> str:
    """A display name with no path parts or control characters; never a path."""
    name = unicodedata.normalize("NFC", name or "")
    name = _CONTROL.sub("", name)
    name = re.split(r"[/\\]", name)[-1].strip().lstrip(".")
    if len(name.encode()) > 255:
        stem, dot, ext = name.rpartition(".")
        keep = ext if dot and len(ext) <= 16 else ""
        name = name.encode()[: 255 - len(keep) - 1].decode(errors="ignore") + (
            "." + keep if keep else "")
    return name or "file"


def _content_type(declared: str | None, filename: str) -> str:
    if declared and _CONTENT_TYPE.match(declared) and declared != "application/octet-stream":
        return declared[:255]
    return mimetypes.guess_type(filename)[0] or declared or "application/octet-stream"


def _document(row: Any) -> Document:
    return Document(doc_id=row.doc_id, entity_id=row.entity_id, filename=row.filename,
                    content_type=row.content_type, size=row.size, sha256=row.sha256,
                    created_at=row.created_at, status=row.status, chunk_count=row.chunk_count,
                    error=row.error)


class FileStore:
    """One owner's documents. Obtain through ``vault.for_user(uid).files``."""

    def __init__(self, ctx: StoreContext, owner_id: str) -> None:
        self._ctx = ctx
        self._db = ctx.db
        self._blobs = ctx.blobs
        self._owner = owner_id

    def _require_entity(self, entity_id: str) -> None:
        with self._db.read() as conn:
            found = conn.execute(sa.select(entities.c.row_id).where(
                entities.c.owner_id == self._owner, entities.c.entity_id == entity_id)).first()
        if found is None:
            raise NotFound(f"entity {entity_id!r} not found")

    def _where(self, entity_id: str, doc_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(documents.c.owner_id == self._owner, documents.c.entity_id == entity_id,
                       documents.c.doc_id == doc_id)

    def add(self, entity_id: str, filename: str | None, data: BinaryIO | Iterable[bytes] | bytes,
            content_type: str | None = None, max_bytes: int | None = None) -> Document:
        """Store one file under the entity.

        Raises:
            NotFound: no such entity for this owner.
            PayloadTooLarge: over ``max_bytes`` (default: the upload limit); nothing is kept.
        """
        self._require_entity(entity_id)  # 404 before reading a large body
        limit = max_bytes if max_bytes is not None else self._ctx.settings.max_upload_mb << 20
        source = [data] if isinstance(data, bytes) else data
        staged = self._blobs.stage(source, limit)
        name = clean_filename(filename)
        document = Document(doc_id=new_id(), entity_id=entity_id, filename=name,
                            content_type=_content_type(content_type, name), size=staged.size,
                            sha256=staged.sha256, created_at=utcnow())
        doc = {"owner_id": self._owner, **document.model_dump()}
        published = False
        try:
            with self._db.write() as conn:
                found = conn.execute(
                    entities.update().where(entities.c.owner_id == self._owner,
                                            entities.c.entity_id == entity_id)
                    .values(document_count=entities.c.document_count + 1)).rowcount
                if not found:
                    raise NotFound(f"entity {entity_id!r} not found")
                conn.execute(documents.insert(), doc)
                # Indexed in the background; the job commits with the upload.
                enqueue(conn, INGEST_JOB, {"doc_id": document.doc_id}, owner_id=self._owner)
                conn.execute(self._db.backend.upsert(
                    blobs, {"sha256": staged.sha256, "size": staged.size, "refcount": 1,
                            "created_at": doc["created_at"]},
                    keys=["sha256"], set_={"refcount": blobs.c.refcount + 1}))
                # After the upsert: its row lock orders us with a collector of
                # the same blob, so the bytes we publish are not removed under us.
                self._blobs.publish(conn, staged)
                published = True
        except BaseException:
            if published:  # the commit failed: the bytes may be an orphan now
                collect_quietly(self._db, self._blobs, staged.sha256)
            raise
        finally:
            staged.discard()
        return document

    def wait_indexed(self, entity_id: str, doc_ids: Sequence[str],
                     timeout_s: float) -> list[Document]:
        """The documents once each is ``indexed`` or ``failed``, or as they are
        when ``timeout_s`` runs out (any process of the vault may index them).
        A document deleted meanwhile is left out."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            with self._db.read() as conn:
                rows = conn.execute(sa.select(documents).where(
                    documents.c.owner_id == self._owner, documents.c.entity_id == entity_id,
                    documents.c.doc_id.in_(list(doc_ids)))).all()
            found = {row.doc_id: _document(row) for row in rows}
            docs = [found[d] for d in doc_ids if d in found]
            if all(d.status in INDEXING_DONE for d in docs) or time.monotonic() >= deadline:
                return docs
            time.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))

    def get(self, entity_id: str, doc_id: str) -> Document:
        with self._db.read() as conn:
            row = conn.execute(sa.select(documents).where(self._where(entity_id, doc_id))).first()
        if row is None:
            self._require_entity(entity_id)
            raise NotFound(f"document {doc_id!r} not found")
        return _document(row)

    def get_by_id(self, doc_id: str) -> Document:
        """The document ``doc_id``, whichever entity holds it (document ids are unique).

        Raises:
            NotFound: no such document for this owner.
        """
        with self._db.read() as conn:
            row = conn.execute(sa.select(documents).where(
                documents.c.owner_id == self._owner, documents.c.doc_id == doc_id)).first()
        if row is None:
            raise NotFound(f"document {doc_id!r} not found")
        return _document(row)

    def open(self, entity_id: str, doc_id: str) -> tuple[Document, Iterator[bytes]]:
        """The document and an iterator over its bytes."""
        doc = self.get(entity_id, doc_id)
        return doc, self._blobs.open(doc.sha256)

    def read(self, entity_id: str, doc_id: str) -> bytes:
        _doc, chunks = self.open(entity_id, doc_id)
        return b"".join(chunks)

    def list(self, entity_id: str, limit: int = DEFAULT_LIMIT,
             cursor: str | None = None) -> Page[Document]:
        """Newest first."""
        self._require_entity(entity_id)
        with self._db.read() as conn:
            query = sa.select(documents).where(documents.c.owner_id == self._owner,
                                               documents.c.entity_id == entity_id)
            return keyset_page(conn, query, documents.c.doc_id, limit, cursor, _document)

    def delete(self, entity_id: str, doc_id: str) -> None:
        with self._db.write() as conn:
            row = conn.execute(documents.delete().where(self._where(entity_id, doc_id))
                               .returning(documents.c.sha256)).first()
            if row is None:
                raise NotFound(f"document {doc_id!r} not found")
            conn.execute(entities.update().where(entities.c.owner_id == self._owner,
                                                 entities.c.entity_id == entity_id)
                         .values(document_count=entities.c.document_count - 1))
            release_blobs(self._ctx, conn, [row.sha256])


def require_document(conn: Connection, owner_id: str, doc_id: str) -> None:
    """Raise ``NotFound`` unless ``owner_id`` has the document ``doc_id``: the
    check every store of things attached to a document makes first."""
    found = conn.execute(sa.select(documents.c.doc_id).where(
        documents.c.owner_id == owner_id, documents.c.doc_id == doc_id)).first()
    if found is None:
        raise NotFound(f"document {doc_id!r} not found")


def release_entity_documents(ctx: StoreContext, conn: Connection, owner_id: str,
                             entity_id: str) -> None:
    """Delete every document of an entity inside the caller's transaction."""
    shas = conn.execute(documents.delete().where(documents.c.owner_id == owner_id,
                                                 documents.c.entity_id == entity_id)
                        .returning(documents.c.sha256)).scalars().all()
    release_blobs(ctx, conn, shas)


def release_blobs(ctx: StoreContext, conn: Connection, shas: Sequence[str]) -> None:
    """Drop one reference per entry of ``shas`` inside the caller's transaction
    (any record kind that references blobs: documents, graph snapshots); blobs
    left unreferenced are collected after the commit."""
    # One update per distinct blob, in sha order: two transactions releasing
    # overlapping sets lock the rows in the same order (no deadlock on PostgreSQL).
    for sha, references in sorted(Counter(shas).items()):
        left = conn.execute(blobs.update().where(blobs.c.sha256 == sha)
                            .values(refcount=blobs.c.refcount - references)
                            .returning(blobs.c.refcount)).scalar_one_or_none()
        if left is not None and left <= 0:
            # Never inside this transaction: if it rolled back, its rows would
            # come back without their bytes. The row stays at refcount 0 until
            # the collector, after commit, finds it still unreferenced.
            after_commit(conn, partial(collect_quietly, ctx.db, ctx.blobs, sha))


def collect_blob(db: Database, store: BlobStore, sha256: str) -> bool:
    """Delete the blob ``sha256`` and its bytes if nothing references it.

    One short write transaction: lock the ``blobs`` row (creating it at
    refcount 0 when only bytes exist, so an upload of the same bytes waits for
    us), delete it if its refcount is still 0, remove the bytes, commit. An
    upload that re-referenced the blob first keeps it. If the commit fails
    after the bytes went, the row stays at refcount 0 with no bytes: harmless,
    since publishing always restores bytes that are absent.

    Returns:
        Whether the blob was removed.
    """
    with db.write() as conn:
        conn.execute(db.backend.upsert(
            blobs, {"sha256": sha256, "size": 0, "refcount": 0, "created_at": utcnow()},
            keys=["sha256"], set_={"refcount": blobs.c.refcount}))
        gone = conn.execute(blobs.delete().where(blobs.c.sha256 == sha256,
                                                 blobs.c.refcount <= 0)
                            .returning(blobs.c.sha256)).first()
        if gone is None:
            return False
        store.remove(conn, sha256)
    return True


def collect_quietly(db: Database, store: BlobStore, sha256: str) -> None:
    """``collect_blob`` for after-commit callbacks: a failure is logged and left
    to ``collect_garbage``, never raised into work that already committed."""
    try:
        collect_blob(db, store, sha256)
    except (MemvaultError, OSError):  # left for collect_garbage; the caller's work stands
        log.warning("blob not collected; collect_garbage will retry", sha256=sha256,
                    exc_info=True)


def collect_garbage(db: Database, store: BlobStore, *, full: bool = False) -> int:
    """Remove what crashes and failed commits left behind; returns blobs removed.

    Always: stale staged temp files, and blobs whose refcount is 0 (a crash
    between a release's commit and its collection). With ``full``, also bytes in
    the store that no row references (a crash or failed commit after an upload
    published them) — a scan of the whole store, for ``verify`` and periodic
    runs rather than every open. Safe while the vault is in use, from any
    number of replicas: each blob is collected by ``collect_blob``.
    """
    store.clean_tmp()
    removed = 0
    after = ""
    while True:
        with db.read() as conn:
            batch = conn.execute(
                sa.select(blobs.c.sha256).where(blobs.c.refcount <= 0, blobs.c.sha256 > after)
                .order_by(blobs.c.sha256).limit(500)).scalars().all()
        if not batch:
            break
        removed += sum(collect_blob(db, store, sha) for sha in batch)
        after = batch[-1]
    if full:
        for sha in store.stored():
            with db.read() as conn:
                referenced = conn.execute(sa.select(blobs.c.refcount).where(
                    blobs.c.sha256 == sha, blobs.c.refcount > 0)).first()
            if referenced is None:
                removed += collect_blob(db, store, sha)
    if removed:
        log.info("blobs collected", removed=removed, store=store.name)
    return removed
