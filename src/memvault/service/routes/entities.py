"""``/api/entities``: workspaces (seed 000)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ...models import Entity, Page
from ..deps import DEFAULT, Cursor, Limit, UserScope
from ..schemas import EntityIn, EntityPatch

router = APIRouter(prefix="/api/entities", tags=["entities"])


@router.post("", status_code=201, response_model=Entity)
def create_entity(body: EntityIn, scope: UserScope) -> Entity:
    return scope.entities.create(body.entity_name, body.entity_id, body.description,
                                 body.metadata)


@router.get("", response_model=Page[Entity])
def list_entities(scope: UserScope, limit: Limit = DEFAULT, cursor: Cursor = None
                  ) -> Page[Entity]:
    return scope.entities.list(limit, cursor)


@router.get("/{entity_id}", response_model=Entity)
def get_entity(entity_id: str, scope: UserScope) -> Entity:
    return scope.entities.get(entity_id)


@router.patch("/{entity_id}", response_model=Entity)
def update_entity(entity_id: str, body: EntityPatch, scope: UserScope) -> Entity:
    given = body.model_dump(exclude_unset=True)
    if "entity_name" in given and given["entity_name"] is None:
        given.pop("entity_name")
    return scope.entities.update(entity_id, **given)


@router.delete("/{entity_id}", status_code=204)
def delete_entity(entity_id: str, scope: UserScope) -> Response:
    scope.entities.delete(entity_id)
    return Response(status_code=204)
