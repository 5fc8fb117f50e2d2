"""Records the stores return. They double as the HTTP response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Page", "User", "Token", "Entity", "Document", "Conversation", "Message", "Chunk",
    "Role", "MessageStatus", "StreamLease", "DocumentStatus", "ChunkRecord", "SearchHit",
    "SearchResults", "SearchMode", "Extraction", "Annotation", "DocumentDetail",
]

T = TypeVar("T")
Role = Literal["user", "assistant", "system", "tool"]
MessageStatus = Literal["streaming", "complete", "interrupted", "failed"]
DocumentStatus = Literal["pending", "indexing", "indexed", "failed"]
SearchMode = Literal["hybrid", "vector", "text"]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class Page(BaseModel, Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next one."""

    items: list[T]
    next_cursor: str | None = None


class User(_Record):
    id: str
    email: str
    name: str | None = None
    created_at: datetime


class Token(_Record):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime


class Entity(_Record):
    entity_id: str
    entity_name: str
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    document_count: int = 0


class Document(_Record):
    doc_id: str
    entity_id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime
    #: Indexing for search: pending → indexing → indexed | failed (``error`` says why).
    status: DocumentStatus = "pending"
    chunk_count: int = 0
    error: str | None = None


class Message(_Record):
    id: str
    conversation_id: str
    role: Role
    author: str | None = None
    content: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: MessageStatus
    seq: int
    last_chunk_seq: int = 0
    created_at: datetime
    completed_at: datetime | None = None


class Conversation(_Record):
    id: str
    entity_id: str | None = None
    title: str | None = None
    participants: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    message_count: int = 0
    last_message_at: datetime | None = None
    messages: list[Message] | None = None


class StreamLease(_Record):
    """A streaming message's lease, as a heartbeat renewed it."""

    message_id: str
    status: MessageStatus
    lease_expires_at: datetime


class Chunk(_Record):
    seq: int
    text: str
    created_at: datetime | None = None


class ChunkRecord(_Record):
    """A searchable passage of an entity's collection: a chunk of a document
    (``doc_id`` set, with its place in the extracted text) or a record the
    client stored itself (``doc_id`` null)."""

    chunk_id: str
    entity_id: str
    doc_id: str | None = None
    position: int | None = None
    start: int | None = None
    end: int | None = None
    page: int | None = None
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: The model that embedded ``text``; null when the client gave the embedding.
    model_id: str | None = None
    dimensions: int
    created_at: datetime


class SearchHit(_Record):
    chunk_id: str
    doc_id: str | None = None
    filename: str | None = None
    text: str
    #: Higher is better: cosine similarity (vector), bm25-derived (text), or
    #: the reciprocal-rank-fusion score (hybrid).
    score: float
    position: int | None = None
    start: int | None = None
    end: int | None = None
    page: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchResults(_Record):
    results: list[SearchHit]
    mode: SearchMode
    took_ms: float


class DocumentDetail(Document):
    """A document's metadata with what is attached to it (``GET /api/documents/{id}``)."""

    extraction_count: int = 0
    annotation_count: int = 0


class Extraction(_Record):
    """A structured result read from a document (seed 001), e.g. by a model."""

    # ``schema`` would shadow a (deprecated) BaseModel method: the field is
    # ``schema_`` in Python and ``schema`` on the wire and in ``model_dump()``.
    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    id: str
    document_id: str
    schema_: str = Field(alias="schema")
    data: Any
    model: str | None = None
    created_at: datetime


class Annotation(_Record):
    """A user's note on a document, optionally on a span of its text
    (character offsets ``start`` ≤ ``end``), a page or a chunk."""

    id: str
    document_id: str
    label: str
    note: str | None = None
    start: int | None = None
    end: int | None = None
    page: int | None = None
    chunk_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    #: The id of the user who wrote it.
    author: str
    created_at: datetime
    updated_at: datetime
