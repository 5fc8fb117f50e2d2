"""``/api/conversations``: conversations and their messages (seed 004)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from ...errors import Invalid
from ...models import Conversation, Message, Page
from ...stores._text import check_text
from ..deps import DEFAULT, Cursor, Limit, UserScope
from ..schemas import ConversationIn, ConversationPatch, MessageIn

router = APIRouter(prefix="/api/conversations", tags=["conversations"])


@router.post("", status_code=201, response_model=Conversation, response_model_exclude_none=False)
def create_conversation(body: ConversationIn, scope: UserScope) -> Conversation:
    return scope.conversations.create(body.title, body.entity_id, body.participants,
                                      body.metadata)


@router.get("", response_model=Page[Conversation])
def list_conversations(scope: UserScope, limit: Limit = DEFAULT, cursor: Cursor = None,
                       entity_id: str | None = None) -> Page[Conversation]:
    return scope.conversations.list(limit, cursor, entity_id)


@router.get("/{conv_id}", response_model=Conversation)
def get_conversation(conv_id: str, scope: UserScope,
                     include: Annotated[Literal["messages"] | None, Query()] = None
                     ) -> Conversation:
    return scope.conversations.get(conv_id, include_messages=include == "messages")


@router.patch("/{conv_id}", response_model=Conversation)
def update_conversation(conv_id: str, body: ConversationPatch, scope: UserScope
                        ) -> Conversation:
    return scope.conversations.update(conv_id, **body.model_dump(exclude_unset=True))


@router.delete("/{conv_id}", status_code=204)
def delete_conversation(conv_id: str, scope: UserScope) -> Response:
    scope.conversations.delete(conv_id)
    return Response(status_code=204)


@router.get("/{conv_id}/messages", response_model=Page[Message])
def list_messages(conv_id: str, scope: UserScope, limit: Limit = DEFAULT,
                  before: str | None = None, after: str | None = None, cursor: Cursor = None
                  ) -> Page[Message]:
    return scope.conversations.messages(conv_id, limit, before, after, cursor)


@router.post("/{conv_id}/messages", status_code=201, response_model=Message)
def post_message(conv_id: str, body: MessageIn, scope: UserScope) -> Message:
    convs = scope.conversations
    if body.status == "complete":
        return convs.append(conv_id, body.role, body.content, body.author, body.metadata)
    if body.content:  # refuse before the message exists, not after
        check_text(body.content, "content")
        if len(body.content) > scope.ctx.settings.max_chunk_chars:
            raise Invalid("content of a streaming message must be sent as chunks",
                          field="content")
    message = convs.start_message(conv_id, body.role, body.author, body.metadata)
    if body.content:
        convs.append_chunks(message.id, [(1, body.content)])
        return convs.get_message(message.id)
    return message
