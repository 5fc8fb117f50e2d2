"""Extractions: structured results read from a document (seed 001), e.g. the
fields a model pulled out of an invoice under some ``schema`` name.

An extraction is written once and read or deleted, never edited: a new run
of an extractor adds a new one. It belongs to its document and goes with it
(ON DELETE CASCADE; see ``backends/schema.py``). Which documents exist is the
files store's business; this store only asks it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ..backends.schema import extractions
from ..errors import Conflict, Invalid, NotFound
from ..ids import new_id, utcnow
from ..models import Extraction, Page
from ._context import StoreContext
from ._paging import DEFAULT_LIMIT, keyset_page
from ._text import check_json, check_text
from .files import require_document

__all__ = ["ExtractionStore", "MAX_NAME"]

#: Longest ``schema`` and ``model`` name (the columns' length).
MAX_NAME = 200


def check_name(value: str, field: str, *, required: bool = True) -> str:
    """A short, storable, non-empty name (``schema``, ``model``, ``label``)."""
    check_text(value, field)
    if required and not value.strip():
        raise Invalid(f"{field} must not be empty", field=field)
    if len(value) > MAX_NAME:
        raise Invalid(f"{field} must be at most {MAX_NAME} characters", field=field)
    return value


def _extraction(row: Any) -> Extraction:
    return Extraction(id=row.id, document_id=row.doc_id, schema=row.schema, data=row.data,
                      model=row.model, created_at=row.created_at)


class ExtractionStore:
    """One owner's extractions. Obtain through ``vault.for_user(uid).extractions``."""

    def __init__(self, ctx: StoreContext, owner_id: str) -> None:
        self._db = ctx.db
        self._owner = owner_id

    def _where(self, extraction_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(extractions.c.owner_id == self._owner, extractions.c.id == extraction_id)

    def create(self, doc_id: str, schema: str, data: dict[str, Any] | list[Any],
               model: str | None = None) -> Extraction:
        """Attach an extraction to the document ``doc_id``.

        Args:
            schema: what kind of result this is (1-200 characters), e.g. ``invoice/v1``.
            data: the result: a JSON object or array.
            model: what produced it, if anyone cares to say.

        Raises:
            NotFound: no such document for this owner.
            Invalid: an empty or long ``schema``/``model``, or ``data`` that is
                not a JSON object or array.
        """
        check_text(doc_id, "doc_id")
        check_name(schema, "schema")
        if model is not None:
            check_name(model, "model")
        if not isinstance(data, dict | list):
            raise Invalid("data must be a JSON object or array", field="data")
        check_json(data, "data")
        record = Extraction(id=new_id(), document_id=doc_id, schema=schema, data=data,
                            model=model, created_at=utcnow())
        try:
            with self._db.write() as conn:
                require_document(conn, self._owner, doc_id)
                conn.execute(extractions.insert(), {
                    "owner_id": self._owner, "id": record.id, "doc_id": doc_id,
                    "schema": schema, "data": data, "model": model,
                    "created_at": record.created_at})
        except Conflict:  # the document was deleted between the check and the insert
            raise NotFound(f"document {doc_id!r} not found") from None
        return record

    def get(self, extraction_id: str) -> Extraction:
        """Raises:
            NotFound: no such extraction for this owner.
        """
        check_text(extraction_id, "id")
        with self._db.read() as conn:
            row = conn.execute(sa.select(extractions).where(self._where(extraction_id))).first()
        if row is None:
            raise NotFound(f"extraction {extraction_id!r} not found")
        return _extraction(row)

    def list(self, doc_id: str, schema: str | None = None, limit: int = DEFAULT_LIMIT,
             cursor: str | None = None) -> Page[Extraction]:
        """The document's extractions, newest first; only ``schema``'s when given.

        Raises:
            NotFound: no such document for this owner.
        """
        check_text(doc_id, "doc_id")
        query = sa.select(extractions).where(extractions.c.owner_id == self._owner,
                                             extractions.c.doc_id == doc_id)
        if schema is not None:
            query = query.where(extractions.c.schema == check_text(schema, "schema"))
        with self._db.read() as conn:
            require_document(conn, self._owner, doc_id)
            return keyset_page(conn, query, extractions.c.id, limit, cursor, _extraction)

    def count(self, doc_id: str) -> int:
        """How many extractions the document has (0 for no such document)."""
        check_text(doc_id, "doc_id")
        with self._db.read() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(extractions).where(
                    extractions.c.owner_id == self._owner,
                    extractions.c.doc_id == doc_id)).scalar_one())

    def delete(self, extraction_id: str) -> None:
        """Raises:
            NotFound: no such extraction for this owner.
        """
        check_text(extraction_id, "id")
        with self._db.write() as conn:
            gone = conn.execute(extractions.delete().where(self._where(extraction_id))).rowcount
        if not gone:
            raise NotFound(f"extraction {extraction_id!r} not found")
