"""``/api/entities/{entity_id}/files``: uploads, kept content-addressed in the
blob store (``MEMVAULT_BLOB_STORE``); downloads stream from any of them.

Each upload is indexed for search by a background job; ``?wait=true`` answers
once the uploaded documents are indexed or failed (or ``MEMVAULT_INGEST_WAIT_S``
has passed, showing them as they are then)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Query, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from ...models import Document, Page
from ..deps import DEFAULT, Cursor, Limit, UserScope, VaultDep

router = APIRouter(prefix="/api/entities/{entity_id}/files", tags=["files"])


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the exact name per RFC 6266/5987."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.post("", status_code=201)
def upload_files(entity_id: str, scope: UserScope, files: list[UploadFile] = File(...),
                 wait: Annotated[bool, Query()] = False) -> dict[str, list[Document]]:
    scope.entities.get(entity_id)
    stored = []
    for upload in files:
        stored.append(scope.files.add(entity_id, upload.filename, upload.file,
                                      upload.content_type))
    if wait:
        stored = scope.files.wait_indexed(entity_id, [d.doc_id for d in stored],
                                          scope.ctx.settings.ingest_wait_s)
    return {"items": stored}


@router.get("", response_model=Page[Document])
def list_files(entity_id: str, scope: UserScope, limit: Limit = DEFAULT, cursor: Cursor = None
               ) -> Page[Document]:
    return scope.files.list(entity_id, limit, cursor)


@router.get("/{doc_id}", response_model=Document)
def get_file(entity_id: str, doc_id: str, scope: UserScope) -> Document:
    return scope.files.get(entity_id, doc_id)


@router.get("/{doc_id}/content", response_model=None)
def get_file_content(entity_id: str, doc_id: str, scope: UserScope, vault: VaultDep
                     ) -> FileResponse | StreamingResponse:
    doc = scope.files.get(entity_id, doc_id)
    headers = {
        "Content-Disposition": content_disposition(doc.filename),
        "X-Content-Type-Options": "nosniff",
        "ETag": f'"{doc.sha256}"',
    }
    path = vault.blobs.local_path(doc.sha256)
    if path is not None and path.is_file():  # sendfile, ranges
        return FileResponse(path, media_type=doc.content_type, headers=headers)
    # Opened here, so a missing blob or an unreachable store is a problem
    # response, not a body cut short; then streamed piece by piece.
    pieces = vault.blobs.open(doc.sha256)
    return StreamingResponse(pieces, media_type=doc.content_type,
                             headers={**headers, "Content-Length": str(doc.size)})


@router.delete("/{doc_id}", status_code=204)
def delete_file(entity_id: str, doc_id: str, scope: UserScope) -> Response:
    scope.files.delete(entity_id, doc_id)
    return Response(status_code=204)
