"""Annotations: users' notes on a document (seed 001), optionally on a span of
its text (character offsets ``start`` ≤ ``end`` into the extracted text), a
page, or one of its search chunks.

A span is both offsets or neither: one offset alone names no range, so it is
refused (422) rather than guessed at; ``PATCH`` may set either, as long as the
result is both-or-neither with ``0 ≤ start ≤ end``. ``chunk_id`` is kept as
given, not checked against the document's chunks: re-indexing a document
replaces its chunks, and a note should not vanish with them.

Listings go by position (``start``, annotations without one last), then by
creation, as one keyset range over ``sort_key`` (see ``backends/schema.py``).
Annotations belong to their document and go with it (ON DELETE CASCADE).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from ..backends.schema import document_annotations as _annotations
from ..errors import Conflict, Invalid, NotFound
from ..ids import INT32_MAX, check_int, new_id
from ..models import Annotation, Page
from ._context import StoreContext
from ._paging import DEFAULT_LIMIT, keyset_page
from ._text import check_json, check_text
from .entities import UNSET
from .extractions import check_name
from .files import require_document

__all__ = ["AnnotationStore", "sort_key"]

def sort_key(start: int | None, annotation_id: str) -> str:
    """The listing order as one string: zero-padded ``start`` (10 digits hold any
    32-bit offset), or ``z`` when there is none, so those sort last; then the
    time-ordered id, for creation order among equals."""
    return (f"{start:010d}" if start is not None else "z") + annotation_id


def _annotation(row: Any) -> Annotation:
    return Annotation(id=row.id, document_id=row.doc_id, label=row.label, note=row.note,
                      start=row.char_start, end=row.char_end, page=row.page,
                      chunk_id=row.chunk_id, data=row.data or {}, author=row.author,
                      created_at=row.created_at, updated_at=row.updated_at)


def _check_span(start: int | None, end: int | None) -> None:
    if start is None and end is None:
        return
    if start is None or end is None:
        missing = "start" if start is None else "end"
        raise Invalid(f"a span needs both start and end ({missing} is missing)", field=missing)
    check_int(start, "start", 0, INT32_MAX)
    check_int(end, "end", 0, INT32_MAX)
    if start > end:
        raise Invalid("start must not be greater than end", field="start")


def _check_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Column values for the given fields, checked (``note``, ``page``,
    ``chunk_id`` and ``data`` may be ``None``: cleared)."""
    out: dict[str, Any] = {}
    if "label" in values:
        out["label"] = check_name(values["label"], "label")
    if "note" in values:
        note = values["note"]
        out["note"] = None if note is None else check_text(note, "note")
    if "page" in values:
        page = values["page"]
        out["page"] = None if page is None else check_int(page, "page", 1, INT32_MAX)
    if "chunk_id" in values:
        chunk = values["chunk_id"]
        if chunk is not None:
            check_name(chunk, "chunk_id")
        out["chunk_id"] = chunk
    if "data" in values:
        data = values["data"] if values["data"] is not None else {}
        if not isinstance(data, dict):
            raise Invalid("data must be a JSON object", field="data")
        out["data"] = check_json(data, "data")
    return out


class AnnotationStore:
    """One owner's annotations. Obtain through ``vault.for_user(uid).annotations``.

    The owner is the author: records are owner-scoped, so whoever may write an
    annotation on a document is the user it belongs to (``author`` is that
    user's id, which, unlike an email address, never changes).
    """

    def __init__(self, ctx: StoreContext, owner_id: str) -> None:
        self._db = ctx.db
        self._clock = ctx.clock
        self._owner = owner_id

    def _where(self, annotation_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(_annotations.c.owner_id == self._owner, _annotations.c.id == annotation_id)

    def create(self, doc_id: str, label: str, note: str | None = None, start: int | None = None,
               end: int | None = None, page: int | None = None, chunk_id: str | None = None,
               data: dict[str, Any] | None = None) -> Annotation:
        """Attach an annotation to the document ``doc_id``.

        Raises:
            NotFound: no such document for this owner.
            Invalid: an empty or long ``label``, half a span or ``start > end``,
                a negative offset, ``page < 1``, ``data`` not a JSON object.
        """
        check_text(doc_id, "doc_id")
        fields = _check_fields({"label": label, "note": note, "page": page,
                                "chunk_id": chunk_id, "data": data})
        _check_span(start, end)
        now = self._clock()
        annotation_id = new_id()
        row = {"owner_id": self._owner, "id": annotation_id, "doc_id": doc_id, **fields,
               "char_start": start, "char_end": end, "author": self._owner,
               "created_at": now, "updated_at": now, "sort_key": sort_key(start, annotation_id)}
        try:
            with self._db.write() as conn:
                require_document(conn, self._owner, doc_id)
                conn.execute(_annotations.insert(), row)
        except Conflict:  # the document was deleted between the check and the insert
            raise NotFound(f"document {doc_id!r} not found") from None
        return Annotation(
            id=annotation_id, document_id=doc_id, start=start, end=end, author=self._owner,
            created_at=now, updated_at=now, **fields)

    def get(self, annotation_id: str) -> Annotation:
        """Raises:
            NotFound: no such annotation for this owner.
        """
        check_text(annotation_id, "id")
        with self._db.read() as conn:
            row = conn.execute(sa.select(_annotations).where(self._where(annotation_id))).first()
        if row is None:
            raise NotFound(f"annotation {annotation_id!r} not found")
        return _annotation(row)

    def list(self, doc_id: str, label: str | None = None, limit: int = DEFAULT_LIMIT,
             cursor: str | None = None) -> Page[Annotation]:
        """The document's annotations by position (``start``; none last), then
        creation; only those labelled ``label`` when given.

        Raises:
            NotFound: no such document for this owner.
        """
        check_text(doc_id, "doc_id")
        query = sa.select(_annotations).where(_annotations.c.owner_id == self._owner,
                                             _annotations.c.doc_id == doc_id)
        if label is not None:
            query = query.where(_annotations.c.label == check_text(label, "label"))
        with self._db.read() as conn:
            require_document(conn, self._owner, doc_id)
            return keyset_page(conn, query, _annotations.c.sort_key, limit, cursor, _annotation,
                               newest_first=False)

    def count(self, doc_id: str) -> int:
        """How many annotations the document has (0 for no such document)."""
        check_text(doc_id, "doc_id")
        with self._db.read() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(_annotations).where(
                    _annotations.c.owner_id == self._owner,
                    _annotations.c.doc_id == doc_id)).scalar_one())

    def update(self, annotation_id: str, *, label: str = UNSET, note: str | None = UNSET,
               start: int | None = UNSET, end: int | None = UNSET, page: int | None = UNSET,
               chunk_id: str | None = UNSET, data: dict[str, Any] | None = UNSET
               ) -> Annotation:
        """Change the given fields; others stay, and ``updated_at`` moves on.
        ``None`` clears a field (``data`` becomes ``{}``; ``label`` cannot be
        cleared). The span that results must be both offsets or neither.

        Raises:
            NotFound: no such annotation for this owner.
            Invalid: as for ``create``.
        """
        check_text(annotation_id, "id")
        given = {name: value for name, value in (
            ("label", label), ("note", note), ("page", page), ("chunk_id", chunk_id),
            ("data", data)) if value is not UNSET}
        values = _check_fields(given)
        with self._db.write() as conn:
            old = conn.execute(sa.select(_annotations).where(self._where(annotation_id))
                               .with_for_update()).first()
            if old is None:
                raise NotFound(f"annotation {annotation_id!r} not found")
            new_start = old.char_start if start is UNSET else start
            new_end = old.char_end if end is UNSET else end
            _check_span(new_start, new_end)
            # Strictly later than before, even if the clock has not moved on.
            now = max(self._clock(), old.updated_at + timedelta(microseconds=1))
            row = conn.execute(
                _annotations.update().where(self._where(annotation_id))
                .values(**values, char_start=new_start, char_end=new_end, updated_at=now,
                        sort_key=sort_key(new_start, annotation_id))
                .returning(*_annotations.c)).one()
        return _annotation(row)

    def delete(self, annotation_id: str) -> None:
        """Raises:
            NotFound: no such annotation for this owner.
        """
        check_text(annotation_id, "id")
        with self._db.write() as conn:
            gone = conn.execute(_annotations.delete().where(self._where(annotation_id))).rowcount
        if not gone:
            raise NotFound(f"annotation {annotation_id!r} not found")
