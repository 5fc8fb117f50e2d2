"""Entities: a user's workspaces (seed 000), with client-chosen or generated ids."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..backends.schema import entities
from ..errors import Conflict, Invalid, NotFound
from ..ids import new_id, utcnow
from ..models import Entity, Page
from ._paging import DEFAULT_LIMIT, keyset_page

if TYPE_CHECKING:
    from ..scope import Scope

__all__ = ["EntityStore", "ENTITY_ID_PATTERN", "UNSET"]

ENTITY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$"
_ENTITY_ID = re.compile(ENTITY_ID_PATTERN)
UNSET: Any = object()


def _entity(row: Any) -> Entity:
    return Entity(entity_id=row.entity_id, entity_name=row.name, description=row.description,
                  metadata=row.metadata or {}, created_at=row.created_at,
                  updated_at=row.updated_at, document_count=row.document_count)


def check_entity_id(entity_id: str) -> str:
    if not isinstance(entity_id, str) or not _ENTITY_ID.match(entity_id):
        raise Invalid("entity_id must be 1-200 letters, digits or . _ : @ - "
                      "(starting with a letter or digit)", field="entity_id")
    return entity_id


class EntityStore:
    """One owner's entities. Obtain through ``vault.for_user(uid).entities``."""

    def __init__(self, scope: Scope) -> None:
        self._scope = scope
        self._db = scope.vault.db
        self._owner = scope.owner_id

    def _where(self, entity_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(entities.c.owner_id == self._owner, entities.c.entity_id == entity_id)

    def create(self, entity_name: str, entity_id: str | None = None,
               description: str | None = None, metadata: dict[str, Any] | None = None) -> Entity:
        """Create an entity.

        Raises:
            Invalid: an empty name or a malformed ``entity_id``.
            Conflict: this owner already has ``entity_id``.
        """
        if not entity_name or not entity_name.strip():
            raise Invalid("entity_name must not be empty", field="entity_name")
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
                      metadata=row["metadata"], created_at=now, updated_at=now)

    def get(self, entity_id: str) -> Entity:
        with self._db.read() as conn:
            row = conn.execute(sa.select(entities).where(self._where(entity_id))).first()
        if row is None:
            raise NotFound(f"entity {entity_id!r} not found")
        return _entity(row)

    def exists(self, entity_id: str) -> bool:
        with self._db.read() as conn:
            return conn.execute(sa.select(entities.c.row_id)
                                .where(self._where(entity_id))).first() is not None

    def list(self, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Entity]:
        """Newest first."""
        with self._db.read() as conn:
            query = sa.select(entities).where(entities.c.owner_id == self._owner)
            return keyset_page(conn, query, entities.c.row_id, limit, cursor, _entity)

    def update(self, entity_id: str, *, entity_name: str = UNSET, description: str | None = UNSET,
               metadata: dict[str, Any] = UNSET) -> Entity:
        """Change the given fields; others stay. ``metadata`` replaces the old mapping."""
        values: dict[str, Any] = {"updated_at": utcnow()}
        if entity_name is not UNSET:
            if not entity_name or not entity_name.strip():
                raise Invalid("entity_name must not be empty", field="entity_name")
            values["name"] = entity_name
        if description is not UNSET:
            values["description"] = description
        if metadata is not UNSET:
            values["metadata"] = metadata or {}
        with self._db.write() as conn:
            row = conn.execute(entities.update().where(self._where(entity_id)).values(**values)
                               .returning(*entities.c)).first()
        if row is None:
            raise NotFound(f"entity {entity_id!r} not found")
        return _entity(row)

    def delete(self, entity_id: str) -> None:
        """Delete the entity with its files and conversations."""
        with self._db.write() as conn:
            if conn.execute(sa.select(entities.c.row_id).where(self._where(entity_id))).first() \
                    is None:
                raise NotFound(f"entity {entity_id!r} not found")
            self._scope.files.release_entity(conn, entity_id)
            # Conversations, their messages and chunks go by ON DELETE CASCADE.
            conn.execute(entities.delete().where(self._where(entity_id)))

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(entities)
                                    .where(entities.c.owner_id == self._owner)).scalar_one())
