"""``/api/documents/{doc_id}`` and what hangs off a document (seed 001):
``…/extractions``, ``…/annotations``, and the flat ``/api/extractions/{id}``,
``/api/annotations/{id}``. Document ids are unique, so these paths need no
entity; another owner's ids are 404 like missing ones (the stores see only the
caller's records)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from ...models import Annotation, DocumentDetail, Extraction, Page
from ..deps import DEFAULT, Cursor, Limit, UserScope
from ..schemas import AnnotationIn, AnnotationPatch, ExtractionIn

router = APIRouter(tags=["documents"])

Name = Annotated[str | None, Query(max_length=200)]


@router.get("/api/documents/{doc_id}", response_model=DocumentDetail)
def get_document(doc_id: str, scope: UserScope) -> DocumentDetail:
    doc = scope.files.get_by_id(doc_id)
    return DocumentDetail(**doc.model_dump(),
                          extraction_count=scope.extractions.count(doc_id),
                          annotation_count=scope.annotations.count(doc_id))


@router.post("/api/documents/{doc_id}/extractions", status_code=201, response_model=Extraction)
def create_extraction(doc_id: str, body: ExtractionIn, scope: UserScope) -> Extraction:
    return scope.extractions.create(doc_id, body.schema_, body.data, body.model)


@router.get("/api/documents/{doc_id}/extractions", response_model=Page[Extraction])
def list_extractions(doc_id: str, scope: UserScope, schema: Name = None,
                     limit: Limit = DEFAULT, cursor: Cursor = None) -> Page[Extraction]:
    return scope.extractions.list(doc_id, schema, limit, cursor)


@router.get("/api/extractions/{extraction_id}", response_model=Extraction)
def get_extraction(extraction_id: str, scope: UserScope) -> Extraction:
    return scope.extractions.get(extraction_id)


@router.delete("/api/extractions/{extraction_id}", status_code=204)
def delete_extraction(extraction_id: str, scope: UserScope) -> Response:
    scope.extractions.delete(extraction_id)
    return Response(status_code=204)


@router.post("/api/documents/{doc_id}/annotations", status_code=201, response_model=Annotation)
def create_annotation(doc_id: str, body: AnnotationIn, scope: UserScope) -> Annotation:
    return scope.annotations.create(doc_id, **body.model_dump())


@router.get("/api/documents/{doc_id}/annotations", response_model=Page[Annotation])
def list_annotations(doc_id: str, scope: UserScope, label: Name = None,
                     limit: Limit = DEFAULT, cursor: Cursor = None) -> Page[Annotation]:
    return scope.annotations.list(doc_id, label, limit, cursor)


@router.get("/api/annotations/{annotation_id}", response_model=Annotation)
def get_annotation(annotation_id: str, scope: UserScope) -> Annotation:
    return scope.annotations.get(annotation_id)


@router.patch("/api/annotations/{annotation_id}", response_model=Annotation)
def update_annotation(annotation_id: str, body: AnnotationPatch, scope: UserScope
                      ) -> Annotation:
    return scope.annotations.update(annotation_id, **body.model_dump(exclude_unset=True))


@router.delete("/api/annotations/{annotation_id}", status_code=204)
def delete_annotation(annotation_id: str, scope: UserScope) -> Response:
    scope.annotations.delete(annotation_id)
    return Response(status_code=204)
