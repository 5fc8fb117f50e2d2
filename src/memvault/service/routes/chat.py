"""``POST /api/chat`` (seed 000): a question answered from the session's entity's
documents, stored as it streams.

The turn itself (user message first, retrieval, durable reply, citations) is
``memvault.retrieval.chat``'s; this module parses the request and answers it
as JSON or as Server-Sent Events. A streamed reply is generated in a thread
of its own, so a client that disconnects does not stop it: ``GET
/api/messages/{message_id}/stream`` resumes it, with the same events.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator
from starlette.concurrency import run_in_threadpool

from ...models import Message, SearchMode
from ...retrieval.chat import run_in_background, start_chat
from ...retrieval.responders import ResponderFailed
from ...stores.collections import MAX_K
from ..deps import UserScope
from .messages import message_events, sse_event, sse_response

router = APIRouter(tags=["chat"])


class ChatIn(BaseModel):
    """Seed 000's request; ``conversation_id`` is accepted for ``session_id``."""

    model_config = ConfigDict(extra="ignore")

    session_id: StrictStr | None = None
    conversation_id: StrictStr | None = None
    message: StrictStr = Field(min_length=1)
    stream: StrictBool = False
    k: StrictInt = Field(5, ge=1, le=MAX_K)
    mode: SearchMode = "hybrid"

    @model_validator(mode="after")
    def _one_session(self) -> ChatIn:
        if self.session_id is None and self.conversation_id is None:
            raise ValueError("send session_id (or conversation_id)")
        if (self.session_id is not None and self.conversation_id is not None
                and self.session_id != self.conversation_id):
            raise ValueError("session_id and conversation_id name different conversations")
        return self

    @property
    def session(self) -> str:
        session = self.session_id if self.session_id is not None else self.conversation_id
        assert session is not None
        return session


class ChatOut(BaseModel):
    session_id: str
    user_message: Message
    message: Message


@router.post("/api/chat", response_model=ChatOut, responses={
    200: {"content": {"text/event-stream": {}},
          "description": "the reply; with stream: true, an event message "
                         "{session_id, user_message_id, message_id}, then chunk events, "
                         "then done"},
    404: {"description": "no such session"},
    502: {"description": "the responder failed (the reply is stored failed)"}})
async def chat(body: ChatIn, request: Request, scope: UserScope) -> ChatOut | Response:
    turn = await run_in_threadpool(start_chat, scope, body.session, body.message, k=body.k,
                                   mode=body.mode)
    if not body.stream:
        # Runs to the end in its worker thread even if this request is cancelled.
        message = await run_in_threadpool(turn.run)
        if turn.error is not None:
            raise ResponderFailed(turn.error)
        return ChatOut(session_id=turn.session_id, user_message=turn.user_message,
                       message=message)
    run_in_background(turn)
    head = sse_event("message", {"session_id": turn.session_id,
                                 "user_message_id": turn.user_message.id,
                                 "message_id": turn.message_id})
    return sse_response(message_events(scope.conversations, turn.message_id, request,
                                       head=[head]))
