"""An entity's collection over HTTP: vector records (``/api/entities/{id}/chunks``,
seed 003's persistent vector store) and search (``/api/search``).

Thin: each route checks the body's shape and calls one method of the user's
``scope.collections``, which owns ids, dimensions, isolation and ranking. The
records route's larger body limit lives in ``service/limits.py``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from ...errors import NotFound
from ...models import ChunkRecord, Page, SearchResults
from ..deps import DEFAULT, Cursor, Limit, UserScope
from ..schemas import RecordsIn, SearchIn

router = APIRouter(tags=["collections"])

_CHUNKS = "/api/entities/{entity_id}/chunks"


@router.post(_CHUNKS, status_code=201)
def add_records(entity_id: str, body: RecordsIn, scope: UserScope
                ) -> dict[str, list[ChunkRecord]]:
    items = [item.model_dump(exclude_none=True) for item in body.items]
    return {"items": scope.collections.add(entity_id, items)}


@router.get(_CHUNKS, response_model=Page[ChunkRecord])
def list_records(entity_id: str, scope: UserScope, limit: Limit = DEFAULT, cursor: Cursor = None,
                 doc_id: Annotated[str | None, Query(max_length=512)] = None
                 ) -> Page[ChunkRecord]:
    return scope.collections.list(entity_id, doc_id=doc_id, limit=limit, cursor=cursor)


@router.get(_CHUNKS + "/{chunk_id}", response_model=ChunkRecord)
def get_record(entity_id: str, chunk_id: str, scope: UserScope) -> ChunkRecord:
    return scope.collections.get(entity_id, chunk_id)


@router.delete(_CHUNKS + "/{chunk_id}", status_code=204)
def delete_record(entity_id: str, chunk_id: str, scope: UserScope) -> Response:
    if scope.collections.delete(entity_id, [chunk_id]) == 0:
        raise NotFound(f"chunk {chunk_id!r} not found")
    return Response(status_code=204)


@router.post("/api/search", response_model=SearchResults)
def search(body: SearchIn, scope: UserScope) -> SearchResults:
    return scope.collections.search(
        body.entity_id, query=body.query, embedding=body.embedding, k=body.k, mode=body.mode,
        filter=body.filter.model_dump(exclude_none=True) if body.filter else None,
        rrf_k=body.rrf_k,
        weights=body.weights.model_dump(exclude_none=True) if body.weights else None)
