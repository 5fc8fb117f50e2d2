"""Request bodies. Responses are the records in ``memvault.models``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from ..ids import INT32_MAX
from ..models import Conversation, Role

__all__ = ["RegisterIn", "LoginIn", "EntityIn", "EntityPatch", "ConversationIn",
           "ConversationPatch", "MessageIn", "ChunkIn", "ChunksIn", "CompleteIn",
           "ChatSessionIn", "ChatSession", "ChunkAck"]


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RegisterIn(_In):
    email: StrictStr = Field(max_length=320)
    password: StrictStr = Field(max_length=1024)
    name: StrictStr | None = Field(None, max_length=200)


class LoginIn(_In):
    email: StrictStr = Field(max_length=320)
    password: StrictStr = Field(max_length=1024)


class EntityIn(_In):
    entity_id: StrictStr | None = None
    entity_name: StrictStr = Field(min_length=1, max_length=500)
    description: StrictStr | None = Field(None, max_length=100_000)
    metadata: dict[str, Any] | None = None


class EntityPatch(_In):
    entity_name: StrictStr | None = Field(None, min_length=1, max_length=500)
    description: StrictStr | None = Field(None, max_length=100_000)
    metadata: dict[str, Any] | None = None


class ConversationIn(_In):
    title: StrictStr | None = Field(None, max_length=500)
    entity_id: StrictStr | None = None
    participants: list[StrictStr] | None = None
    metadata: dict[str, Any] | None = None


class ConversationPatch(_In):
    title: StrictStr | None = Field(None, max_length=500)
    participants: list[StrictStr] | None = None
    metadata: dict[str, Any] | None = None


class MessageIn(_In):
    role: Role
    content: StrictStr = ""
    author: StrictStr | None = Field(None, max_length=200)
    metadata: dict[str, Any] | None = None
    status: Literal["complete", "streaming"] = "complete"


class ChunkIn(_In):
    seq: StrictInt = Field(ge=1, le=INT32_MAX)
    text: StrictStr


class ChunksIn(_In):
    """Either one chunk ``{seq, text}`` or several ``{chunks: [...]}``."""

    seq: StrictInt | None = Field(None, ge=1, le=INT32_MAX)
    text: StrictStr | None = None
    chunks: list[ChunkIn] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> ChunksIn:
        single = self.seq is not None or self.text is not None
        if single == (self.chunks is not None):
            raise ValueError("send either {seq, text} or {chunks: [{seq, text}, ...]}")
        if single and (self.seq is None or self.text is None):
            raise ValueError("a chunk needs both seq and text")
        return self

    def pairs(self) -> list[tuple[int, str]]:
        if self.chunks is not None:
            return [(c.seq, c.text) for c in self.chunks]
        assert self.seq is not None and self.text is not None
        return [(self.seq, self.text)]


class CompleteIn(_In):
    status: Literal["complete", "failed"] = "complete"


class ChatSessionIn(_In):
    entity_id: StrictStr
    title: StrictStr | None = Field(None, max_length=500)


class ChatSession(Conversation):
    """Seed 000's view of a conversation: the same record, ``session_id`` = ``id``."""

    session_id: str

    @classmethod
    def of(cls, conv: Conversation) -> ChatSession:
        return cls(session_id=conv.id, **conv.model_dump())


class ChunkAck(BaseModel):
    message_id: str
    last_seq: int
    status: str = "streaming"
