"""``/api/messages/{id}``: chunks of a streaming message, its heartbeat,
completion, and the live Server-Sent Events stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...errors import Invalid, NotFound
from ...ids import INT32_MAX, parse_int
from ...models import Message, StreamLease
from ...stores.conversations import ConversationStore
from ..deps import UserScope, get_vault
from ..schemas import ChunkAck, ChunksIn, CompleteIn

router = APIRouter(prefix="/api/messages", tags=["messages"])

HEARTBEAT_S = 15.0


@router.get("/{message_id}", response_model=Message)
def get_message(message_id: str, scope: UserScope) -> Message:
    return scope.conversations.get_message(message_id)


@router.post("/{message_id}/chunks", response_model=ChunkAck)
def post_chunks(message_id: str, body: ChunksIn, scope: UserScope) -> ChunkAck:
    last = scope.conversations.append_chunks(message_id, body.pairs())
    return ChunkAck(message_id=message_id, last_seq=last)


@router.post("/{message_id}/heartbeat", response_model=StreamLease, responses={
    404: {"description": "no such message"},
    409: {"description": "the message no longer streams"}})
def heartbeat(message_id: str, scope: UserScope) -> StreamLease:
    """Keep a streaming message alive between chunks (e.g. while the model thinks):
    renews its lease of ``MEMVAULT_STREAM_LEASE_S``."""
    return scope.conversations.heartbeat(message_id)


@router.post("/{message_id}/complete", response_model=Message)
def complete_message(message_id: str, scope: UserScope,
                     body: Annotated[CompleteIn | None, Body()] = None) -> Message:
    status = body.status if body is not None else "complete"
    return scope.conversations.complete(message_id, status)


def _resume_point(last_event_id: str | None, after_seq: int | None) -> int:
    if last_event_id is not None and last_event_id.strip() != "":
        try:  # ASCII digits within a chunk seq's 32 bits ("²" is a digit to isdigit())
            return parse_int(last_event_id.strip(), "Last-Event-ID", 0, INT32_MAX)
        except Invalid:
            raise Invalid("Last-Event-ID must be a chunk seq (a whole number up to "
                          f"{INT32_MAX})", field="Last-Event-ID") from None
    return after_seq or 0


def sse_event(kind: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get("/{message_id}/stream", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "chunk events, then done"}})
async def stream_message(
    message_id: str, request: Request, scope: UserScope,
    after_seq: Annotated[int | None, Query(ge=0, le=INT32_MAX)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    start = _resume_point(last_event_id, after_seq)
    convs = scope.conversations
    await run_in_threadpool(convs.chunks, message_id, start, 1)  # 404 before streaming
    return sse_response(message_events(convs, message_id, request, start))


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def message_events(convs: ConversationStore, message_id: str, request: Request,
                         start: int = 0, head: Sequence[str] = ()) -> AsyncIterator[str]:
    """A message's SSE events: ``head`` (events made with ``sse_event``), then a
    ``chunk`` per stored chunk after ``start`` as it becomes durable, then ``done``
    with the final status. Also used by ``POST /api/chat`` for its reply."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def poke(_event: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(wake.set)

    unsubscribe = convs.subscribe(message_id, poke)
    # A follower is woken by local events and, from other processes, by the live
    # fan-out; it re-reads the database at least this often (shorter while the
    # fan-out is down or absent).
    hub = get_vault(request).hub
    last = start
    idle = 0.0
    try:
        yield "retry: 1000\n\n"
        for event in head:
            yield event
        while True:
            wake.clear()
            try:
                chunks, status = await run_in_threadpool(convs.chunks, message_id, last, 500)
            except NotFound:
                yield sse_event("done", {"status": "deleted", "last_seq": last})
                return
            for chunk in chunks:
                yield sse_event("chunk", {"seq": chunk.seq, "text": chunk.text}, chunk.seq)
                last = chunk.seq
            if chunks:
                idle = 0.0
                if len(chunks) == 500:
                    continue
            if status != "streaming" and not chunks:
                yield sse_event("done", {"status": status, "last_seq": last})
                return
            if await request.is_disconnected():
                return
            poll_s = min(hub.poll_interval_s, HEARTBEAT_S)
            try:
                await asyncio.wait_for(wake.wait(), poll_s)
            except TimeoutError:
                idle += poll_s
                if idle >= HEARTBEAT_S:
                    idle = 0.0
                    yield ": keep-alive\n\n"
    finally:
        unsubscribe()
