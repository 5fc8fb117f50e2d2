"""Seed 000's chat-session paths over the same conversations (``session_id`` = id).

``/api/chat`` (answers from an entity's documents) will live in ``chat.py``, beside it.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from ...models import Message, Page
from ..deps import DEFAULT, Cursor, Limit, UserScope
from ..schemas import ChatSession, ChatSessionIn

router = APIRouter(tags=["chat sessions"])


@router.post("/api/chat/sessions", status_code=201, response_model=ChatSession)
def create_session(body: ChatSessionIn, scope: UserScope) -> ChatSession:
    conv = scope.conversations.create(title=body.title, entity_id=body.entity_id)
    return ChatSession.of(conv.model_copy(update={"messages": []}))


@router.get("/api/chat/sessions/{session_id}", response_model=ChatSession)
def get_session(session_id: str, scope: UserScope) -> ChatSession:
    return ChatSession.of(scope.conversations.get(session_id, include_messages=True))


@router.delete("/api/chat/sessions/{session_id}", status_code=204)
def delete_session(session_id: str, scope: UserScope) -> Response:
    scope.conversations.delete(session_id)
    return Response(status_code=204)


@router.get("/api/chat/sessions/{session_id}/messages", response_model=Page[Message])
def session_messages(session_id: str, scope: UserScope, limit: Limit = DEFAULT,
                     cursor: Cursor = None) -> Page[Message]:
    return scope.conversations.messages(session_id, limit, cursor=cursor)


@router.get("/api/entities/{entity_id}/sessions", response_model=Page[ChatSession])
def entity_sessions(entity_id: str, scope: UserScope, limit: Limit = DEFAULT,
                    cursor: Cursor = None) -> Page[ChatSession]:
    scope.entities.get(entity_id)
    page = scope.conversations.list(limit, cursor, entity_id=entity_id)
    return Page[ChatSession](items=[ChatSession.of(c) for c in page.items],
                             next_cursor=page.next_cursor)
