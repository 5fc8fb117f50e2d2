"""Entities: a user's workspaces (seed 000), with client-chosen or generated ids."""

from __future__ import annotations

import functools
import re
from functools import partial
from typing import Any

import sqlalchemy as sa

from ..backends.base import after_commit
from ..backends.schema import chunk_tombstones, entities
from ..errors import Conflict, Invalid, NotFound
from ..ids import new_id, utcnow
from ..models import Entity, Page
from ._context import StoreContext
from ._paging import DEFAULT_LIMIT, keyset_page
from ._text import check_json, check_text
from .files import release_entity_documents

__all__ = ["EntityStore", "ENTITY_ID_PATTERN", "UNSET"]

ENTITY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$"
_ENTITY_ID = re.compile(ENTITY_ID_PATTERN)
UNSET: Any = object()


# Statements are built once: building SQLAlchemy expressions per call cost more
# than the database work (bench/RESULTS.md). Rows are unpacked by position.
_COLUMNS = (entities.c.entity_id, entities.c.name, entities.c.description, entities.c.metadata,
            entities.c.created_at, entities.c.updated_at, entities.c.document_count,
            entities.c.row_id)
_KEY = sa.and_(entities.c.owner_id == sa.bindparam("owner"),
               entities.c.entity_id == sa.bindparam("b_entity_id"))
_GET = sa.select(*_COLUMNS).where(_KEY)
_EXISTS = sa.select(entities.c.row_id).where(_KEY)
# Locks the entity row before any blob row: the order an upload takes them in
# (entity count, then blob upsert), so a delete and an upload never deadlock.
_LOCK = _EXISTS.with_for_update()
_DELETE = entities.delete().where(_KEY)
_LIST = sa.select(*_COLUMNS).where(entities.c.owner_id == sa.bindparam("owner"))
_COUNT = sa.select(sa.func.count()).select_from(entities).where(
    entities.c.owner_id == sa.bindparam("owner"))
_UPDATE_FIELDS = ("name", "description", "metadata")


@functools.cache
def _update_statement(fields: tuple[str, ...]) -> sa.Update:
    values: dict[str, Any] = {f: sa.bindparam(f"v_{f}") for f in fields}
    return (entities.update().where(_KEY)
            .values(updated_at=sa.bindparam("v_updated_at"), **values).returning(*_COLUMNS))


def _entity(row: Any) -> Entity:
    entity_id, name, description, metadata, created, updated, count, _row_id = row
    return Entity(entity_id=entity_id, entity_name=name, description=description,
                  metadata=metadata or {}, created_at=created, updated_at=updated,
                  document_count=count)


def check_entity_id(entity_id: str) -> str:
    if not isinstance(entity_id, str) or not _ENTITY_ID.match(entity_id):
        raise Invalid("entity_id must be 1-200 letters, digits or . _ : @ - "
                      "(starting with a letter or digit)", field="entity_id")
    return entity_id


class EntityStore:
    """One owner's entities. Obtain through ``vault.for_user(uid).entities``."""

    def __init__(self, ctx: StoreContext, owner_id: str) -> None:
        self._ctx = ctx
        self._db = ctx.db
        self._owner = owner_id

    def _key(self, entity_id: str) -> dict[str, str]:
        return {"owner": self._owner, "b_entity_id": entity_id}

    def create(self, entity_name: str, entity_id: str | None = None,
               description: str | None = None, metadata: dict[str, Any] | None = None) -> Entity:
        """Create an entity.

        Raises:
            Invalid: an empty name or a malformed ``entity_id``.
            Conflict: this owner already has ``entity_id``.
        """
        if not entity_name or not entity_name.strip():
            raise Invalid("entity_name must not be empty", field="entity_name")
        check_text(entity_name, "entity_name")
        if description is not None:
            check_text(description, "description")
        if metadata is not None:
            check_json(metadata, "metadata")
        entity_id = check_entity_id(entity_id) if entity_id is not None else new_id()
        now = utcnow()
        row = {"owner_id": self._owner, "entity_id": entity_id, "row_id": new_id(),
               "name": entity_name, "description": description, "metadata": metadata or {},
               "created_at": now, "updated_at": now, "document_count": 0}
        try:
            with self._db.write() as conn:
                conn.execute(entities.insert(), row)
        except Conflict:
            raise Conflict(f"entity {entity_id!r} already exists") from None
        return Entity(entity_id=entity_id, entity_name=entity_name, description=description,
                      metadata=metadata or {}, created_at=now, updated_at=now)

    def get(self, entity_id: str) -> Entity:
        with self._db.read() as conn:
            row = conn.execute(_GET, self._key(entity_id)).first()
        if row is None:
            raise NotFound(f"entity {entity_id!r} not found")
        return _entity(row)

    def exists(self, entity_id: str) -> bool:
        with self._db.read() as conn:
            return conn.execute(_EXISTS, self._key(entity_id)).first() is not None

    def list(self, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Entity]:
        """Newest first."""
        with self._db.read() as conn:
            return keyset_page(conn, _LIST, entities.c.row_id, limit, cursor, _entity,
                               params={"owner": self._owner})

    def update(self, entity_id: str, *, entity_name: str = UNSET, description: str | None = UNSET,
               metadata: dict[str, Any] = UNSET) -> Entity:
        """Change the given fields; others stay. ``metadata`` replaces the old mapping."""
        values: dict[str, Any] = {}
        if entity_name is not UNSET:
            if not entity_name or not entity_name.strip():
                raise Invalid("entity_name must not be empty", field="entity_name")
            values["name"] = check_text(entity_name, "entity_name")
        if description is not UNSET:
            values["description"] = description if description is None else check_text(
                description, "description")
        if metadata is not UNSET:
            values["metadata"] = check_json(metadata or {}, "metadata")
        statement = _update_statement(tuple(f for f in _UPDATE_FIELDS if f in values))
        params = {f"v_{k}": v for k, v in values.items()}
        with self._db.write() as conn:
            row = conn.execute(statement, {**params, **self._key(entity_id),
                                           "v_updated_at": utcnow()}).first()
        if row is None:
            raise NotFound(f"entity {entity_id!r} not found")
        return _entity(row)

    def delete(self, entity_id: str) -> None:
        """Delete the entity with its files and conversations."""
        with self._db.write() as conn:
            if conn.execute(_LOCK, self._key(entity_id)).first() is None:
                raise NotFound(f"entity {entity_id!r} not found")
            release_entity_documents(self._ctx, conn, self._owner, entity_id)
            # Conversations, their messages and chunks, and the collection with
            # its chunks, go by ON DELETE CASCADE.
            conn.execute(_DELETE, self._key(entity_id))
            # The collection is gone whole: no index needs its tombstones, and
            # a search joins with the rows, so no process returns its labels.
            conn.execute(chunk_tombstones.delete().where(
                chunk_tombstones.c.owner_id == self._owner,
                chunk_tombstones.c.entity_id == entity_id))
            if self._ctx.vectors is not None:
                after_commit(conn, partial(self._ctx.vectors.drop, self._owner, entity_id))

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute(_COUNT, {"owner": self._owner}).scalar_one())
