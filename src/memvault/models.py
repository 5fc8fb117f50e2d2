"""Records the stores return. They double as the HTTP response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Page", "User", "Token", "Entity", "Document", "Conversation", "Message", "Chunk",
    "Role", "MessageStatus", "StreamLease",
]

T = TypeVar("T")
Role = Literal["user", "assistant", "system", "tool"]
MessageStatus = Literal["streaming", "complete", "interrupted", "failed"]


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
