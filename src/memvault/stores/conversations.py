"""Conversations and their messages (seeds 000 and 004).

A message is inserted whole (``append``) or streamed: created ``streaming``,
filled by chunks ``(message_id, seq)``, then completed, which materialises the
full text in the message row so reading a finished conversation never joins
chunks. Chunk appends are idempotent per seq; a gap or a changed text is a
conflict. Library streams go through ``stream()`` (see ``streaming.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, get_args

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..backends.schema import conversations, message_chunks, messages
from ..errors import Conflict, Invalid, NotFound, PayloadTooLarge
from ..ids import decode_cursor, encode_cursor, new_id, utcnow
from ..live import Listener
from ..models import Chunk, Conversation, Message, MessageStatus, Page, Role
from ._paging import DEFAULT_LIMIT, check_limit, keyset_page
from .entities import UNSET

if TYPE_CHECKING:
    from ..scope import Scope
    from .streaming import Reply

__all__ = ["ConversationStore", "MAX_CHUNKS_PER_CALL"]

ROLES: tuple[str, ...] = get_args(Role)
FINAL_STATUSES = ("complete", "failed")
MAX_CHUNKS_PER_CALL = 1000


def _conversation(row: Any, msgs: list[Message] | None = None) -> Conversation:
    return Conversation(id=row.id, entity_id=row.entity_id, title=row.title,
                        participants=row.participants or [], metadata=row.metadata or {},
                        created_at=row.created_at, updated_at=row.updated_at,
                        message_count=row.message_count, last_message_at=row.last_message_at,
                        messages=msgs)


def _message(row: Any, content: str | None = None) -> Message:
    return Message(id=row.id, conversation_id=row.conversation_id, role=row.role,
                   author=row.author, content=row.content if content is None else content,
                   metadata=row.metadata or {}, status=row.status, seq=row.seq,
                   last_chunk_seq=row.last_chunk_seq, created_at=row.created_at,
                   completed_at=row.completed_at)


def check_text(value: str, field: str) -> str:
    """Refuse what is not storable text on every backend: NUL (PostgreSQL text
    cannot hold it) and unpaired surrogates (not encodable as UTF-8)."""
    if "\x00" in value:
        raise Invalid(f"{field} must not contain NUL characters", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"{field} must not contain unpaired surrogates", field=field) from None
    return value


def check_role(role: str) -> str:
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}", field="role")
    return role


class ConversationStore:
    """One owner's conversations. Obtain through ``vault.for_user(uid).conversations``."""

    def __init__(self, scope: Scope) -> None:
        self._scope = scope
        self._vault = scope.vault
        self._db = scope.vault.db
        self._owner = scope.owner_id

    # -- conversations ------------------------------------------------------

    def _conv_where(self, conv_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(conversations.c.owner_id == self._owner, conversations.c.id == conv_id)

    def create(self, title: str | None = None, entity_id: str | None = None,
               participants: Sequence[str] | None = None,
               metadata: dict[str, Any] | None = None) -> Conversation:
        """Start a conversation, optionally inside an entity (which must exist)."""
        if entity_id is not None:
            self._scope.entities.get(entity_id)
        now = utcnow()
        row = {"owner_id": self._owner, "id": new_id(), "entity_id": entity_id, "title": title,
               "participants": list(participants or []), "metadata": metadata or {},
               "created_at": now, "updated_at": now, "message_count": 0,
               "last_message_at": None}
        try:
            with self._db.write() as conn:
                conn.execute(conversations.insert(), row)
        except Conflict:  # the entity went between our check and the insert
            raise NotFound(f"entity {entity_id!r} not found") from None
        return Conversation(**{k: v for k, v in row.items() if k != "owner_id"})

    def get(self, conv_id: str, include_messages: bool = False) -> Conversation:
        with self._db.read() as conn:
            row = conn.execute(sa.select(conversations).where(self._conv_where(conv_id))).first()
            if row is None:
                raise NotFound(f"conversation {conv_id!r} not found")
            msgs = None
            if include_messages:
                rows = conn.execute(
                    sa.select(messages).where(messages.c.owner_id == self._owner,
                                              messages.c.conversation_id == conv_id)
                    .order_by(messages.c.seq)).all()
                msgs = self._with_content(conn, rows)
        return _conversation(row, msgs)

    def list(self, limit: int = DEFAULT_LIMIT, cursor: str | None = None,
             entity_id: str | None = None) -> Page[Conversation]:
        """Newest first; only those of ``entity_id`` when given."""
        query = sa.select(conversations).where(conversations.c.owner_id == self._owner)
        if entity_id is not None:
            query = query.where(conversations.c.entity_id == entity_id)
        with self._db.read() as conn:
            return keyset_page(conn, query, conversations.c.id, limit, cursor, _conversation)

    def update(self, conv_id: str, *, title: str | None = UNSET,
               participants: Sequence[str] = UNSET, metadata: dict[str, Any] = UNSET
               ) -> Conversation:
        values: dict[str, Any] = {"updated_at": utcnow()}
        if title is not UNSET:
            values["title"] = title
        if participants is not UNSET:
            values["participants"] = list(participants or [])
        if metadata is not UNSET:
            values["metadata"] = metadata or {}
        with self._db.write() as conn:
            row = conn.execute(conversations.update().where(self._conv_where(conv_id))
                               .values(**values).returning(*conversations.c)).first()
        if row is None:
            raise NotFound(f"conversation {conv_id!r} not found")
        return _conversation(row)

    def delete(self, conv_id: str) -> None:
        """Delete the conversation with its messages and chunks."""
        with self._db.write() as conn:
            gone = conn.execute(conversations.delete().where(self._conv_where(conv_id))).rowcount
        if not gone:
            raise NotFound(f"conversation {conv_id!r} not found")

    # -- messages -----------------------------------------------------------

    def _insert_message(self, conv_id: str, role: str, content: str, author: str | None,
                        metadata: dict[str, Any] | None, status: MessageStatus,
                        writer: str | None = None) -> Message:
        check_role(role)
        if not isinstance(content, str):
            raise Invalid("content must be a string", field="content")
        check_text(content, "content")
        now = utcnow()
        lease = now + timedelta(seconds=self._vault.settings.stream_lease_s)
        streaming = status == "streaming"
        with self._db.write() as conn:
            seq = conn.execute(
                conversations.update().where(self._conv_where(conv_id))
                .values(message_count=conversations.c.message_count + 1, last_message_at=now,
                        updated_at=now)
                .returning(conversations.c.message_count)).scalar_one_or_none()
            if seq is None:
                raise NotFound(f"conversation {conv_id!r} not found")
            row = {"owner_id": self._owner, "id": new_id(), "conversation_id": conv_id,
                   "seq": seq, "role": role, "author": author,
                   "content": "" if streaming else content, "metadata": metadata or {},
                   "status": status, "last_chunk_seq": 0,
                   "writer": writer if streaming else None,
                   "lease_expires_at": lease if streaming else None, "created_at": now,
                   "completed_at": None if streaming else now}
            conn.execute(messages.insert(), row)
        return Message(**{k: v for k, v in row.items()
                          if k not in ("owner_id", "writer", "lease_expires_at")})

    def append(self, conv_id: str, role: str, content: str, author: str | None = None,
               metadata: dict[str, Any] | None = None) -> Message:
        """Add a complete message to the end of the conversation."""
        return self._insert_message(conv_id, role, content, author, metadata, "complete")

    def start_message(self, conv_id: str, role: str = "assistant", author: str | None = None,
                      metadata: dict[str, Any] | None = None) -> Message:
        """Open a ``streaming`` message whose chunks the caller will send.

        The lease is renewed by every chunk; if none comes within
        ``stream_lease_s`` the sweep marks the message ``interrupted``.
        """
        return self._insert_message(conv_id, role, "", author, metadata, "streaming",
                                    writer=self._vault.writer_id)

    def stream(self, conv_id: str, role: str = "assistant", author: str | None = None,
               metadata: dict[str, Any] | None = None) -> Reply:
        """A context manager that saves a reply while it streams.

        Example:
            with convs.stream(cid, author="researcher") as reply:
                for delta in llm.stream(prompt):
                    reply.write(delta)
        """
        from .streaming import Reply
        message = self.start_message(conv_id, role, author, metadata)
        return Reply(self._vault, self._owner, message)

    def _message_row(self, conn: Connection, message_id: str, lock: bool = False) -> Any:
        query = sa.select(messages).where(messages.c.owner_id == self._owner,
                                          messages.c.id == message_id)
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"message {message_id!r} not found")
        return row

    def _chunk_text(self, conn: Connection, message_id: str) -> str:
        return "".join(conn.execute(
            sa.select(message_chunks.c.text)
            .where(message_chunks.c.owner_id == self._owner,
                   message_chunks.c.message_id == message_id)
            .order_by(message_chunks.c.seq)).scalars())

    def _with_content(self, conn: Connection, rows: Sequence[Any]) -> list[Message]:
        """Messages, with text rebuilt from chunks for those still streaming."""
        live = [r.id for r in rows if r.status == "streaming"]
        texts: dict[str, list[str]] = {}
        if live:
            for mid, text in conn.execute(
                    sa.select(message_chunks.c.message_id, message_chunks.c.text)
                    .where(message_chunks.c.owner_id == self._owner,
                           message_chunks.c.message_id.in_(live))
                    .order_by(message_chunks.c.message_id, message_chunks.c.seq)):
                texts.setdefault(mid, []).append(text)
        return [_message(r, "".join(texts.get(r.id, [])) if r.status == "streaming" else None)
                for r in rows]

    def get_message(self, message_id: str) -> Message:
        """The message; while it streams, ``content`` is the text persisted so far."""
        with self._db.read() as conn:
            row = self._message_row(conn, message_id)
            return self._with_content(conn, [row])[0]

    def messages(self, conv_id: str, limit: int = DEFAULT_LIMIT, before: str | None = None,
                 after: str | None = None, cursor: str | None = None) -> Page[Message]:
        """A page of messages in chronological order.

        With no position: from the first message forward. ``after``: the messages
        following that message id. ``before``: the ``limit`` messages just before
        it (the page's ``next_cursor`` then leads further back). ``cursor`` continues
        a previous page in its direction.
        """
        check_limit(limit)
        if sum(x is not None for x in (before, after, cursor)) > 1:
            raise Invalid("give at most one of before, after and cursor", field="cursor")
        with self._db.read() as conn:
            if conn.execute(sa.select(conversations.c.id)
                            .where(self._conv_where(conv_id))).first() is None:
                raise NotFound(f"conversation {conv_id!r} not found")
            direction, pivot = "a", 0
            if cursor is not None:
                value = decode_cursor(cursor)
                if not (isinstance(value, list) and len(value) == 2 and value[0] in ("a", "b")
                        and isinstance(value[1], int)):
                    raise Invalid("malformed cursor", field="cursor")
                direction, pivot = value
            elif before is not None or after is not None:
                ref = before if before is not None else after
                field = "before" if before is not None else "after"
                pivot = conn.execute(sa.select(messages.c.seq).where(
                    messages.c.owner_id == self._owner, messages.c.conversation_id == conv_id,
                    messages.c.id == ref)).scalar_one_or_none()
                if pivot is None:
                    raise NotFound(f"message {ref!r} not found in this conversation")
                direction = "b" if field == "before" else "a"
            query = sa.select(messages).where(messages.c.owner_id == self._owner,
                                              messages.c.conversation_id == conv_id)
            if direction == "a":
                query = query.where(messages.c.seq > pivot).order_by(messages.c.seq)
            else:
                query = query.where(messages.c.seq < pivot).order_by(messages.c.seq.desc())
            rows = conn.execute(query.limit(limit + 1)).all()
            more = len(rows) > limit
            rows = rows[:limit]
            if direction == "b":
                rows.reverse()
            items = self._with_content(conn, rows)
        next_cursor = None
        if more and rows:
            edge = rows[-1].seq if direction == "a" else rows[0].seq
            next_cursor = encode_cursor([direction, edge])
        return Page(items=items, next_cursor=next_cursor)

    # -- chunks -------------------------------------------------------------

    def append_chunks(self, message_id: str, chunks: Iterable[tuple[int, str]]) -> int:
        """Persist chunks of a streaming message durably, in one transaction.

        Returns the highest stored seq.

        A chunk whose seq is already stored with the same text is a no-op.

        Raises:
            Conflict: the seq is stored with other text, would leave a gap, or the
                message is no longer streaming.
            PayloadTooLarge: a chunk's text is over ``max_chunk_chars``.
        """
        items = list(chunks)
        if not items:
            raise Invalid("no chunks given", field="chunks")
        if len(items) > MAX_CHUNKS_PER_CALL:
            raise PayloadTooLarge(f"at most {MAX_CHUNKS_PER_CALL} chunks per call")
        limit = self._vault.settings.max_chunk_chars
        for seq, text in items:
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
                raise Invalid("seq must be an integer >= 1", field="seq")
            if not isinstance(text, str):
                raise Invalid("text must be a string", field="text")
            check_text(text, "text")
            if len(text) > limit:
                raise PayloadTooLarge(f"chunk text is over {limit} characters")
        now = utcnow()
        with self._db.write() as conn:
            row = self._message_row(conn, message_id, lock=True)
            if row.status != "streaming":
                raise Conflict(f"message is {row.status}; it takes no more chunks")
            last = row.last_chunk_seq
            new: list[dict[str, Any]] = []
            for seq, text in items:
                if seq <= last:
                    stored = next((c["text"] for c in new if c["seq"] == seq), None)
                    if stored is None:
                        stored = conn.execute(sa.select(message_chunks.c.text).where(
                            message_chunks.c.owner_id == self._owner,
                            message_chunks.c.message_id == message_id,
                            message_chunks.c.seq == seq)).scalar_one()
                    if stored != text:
                        raise Conflict(f"chunk {seq} is already stored with other text")
                elif seq == last + 1:
                    new.append({"owner_id": self._owner, "message_id": message_id, "seq": seq,
                                "text": text, "created_at": now})
                    last = seq
                else:
                    raise Conflict(f"chunk {seq} would leave a gap after chunk {last}")
            if new:
                conn.execute(message_chunks.insert(), new)
            conn.execute(messages.update().where(messages.c.owner_id == self._owner,
                                                 messages.c.id == message_id)
                         .values(last_chunk_seq=last, writer=self._vault.writer_id,
                                 lease_expires_at=now + timedelta(
                                     seconds=self._vault.settings.stream_lease_s)))
        for chunk in new:
            self._vault.hub.publish(message_id, {"type": "chunk", "seq": chunk["seq"],
                                                 "text": chunk["text"]})
        return last

    def chunks(self, message_id: str, after_seq: int = 0, limit: int | None = None
               ) -> tuple[list[Chunk], MessageStatus]:
        """Stored chunks after ``after_seq`` and the message status.

        The status is read first, so when it is final the chunks are all there is.
        """
        with self._db.read() as conn:
            status = conn.execute(sa.select(messages.c.status).where(
                messages.c.owner_id == self._owner, messages.c.id == message_id)
            ).scalar_one_or_none()
            if status is None:
                raise NotFound(f"message {message_id!r} not found")
            query = (sa.select(message_chunks.c.seq, message_chunks.c.text,
                               message_chunks.c.created_at)
                     .where(message_chunks.c.owner_id == self._owner,
                            message_chunks.c.message_id == message_id,
                            message_chunks.c.seq > after_seq)
                     .order_by(message_chunks.c.seq))
            if limit is not None:
                query = query.limit(limit)
            rows = conn.execute(query).all()
        return [Chunk(seq=r.seq, text=r.text, created_at=r.created_at) for r in rows], status

    def complete(self, message_id: str, status: str = "complete",
                 content: str | None = None) -> Message:
        """End a streaming message: ``complete`` or ``failed``, text materialised.

        Completing again with the same status is a no-op.

        Raises:
            Conflict: the message already ended otherwise.
        """
        if status not in FINAL_STATUSES:
            raise Invalid("status must be complete or failed", field="status")
        now = utcnow()
        with self._db.write() as conn:
            row = self._message_row(conn, message_id, lock=True)
            if row.status == status:
                return _message(row)
            if row.status != "streaming":
                raise Conflict(f"message is already {row.status}")
            text = content if content is not None else self._chunk_text(conn, message_id)
            conn.execute(messages.update().where(messages.c.owner_id == self._owner,
                                                 messages.c.id == message_id)
                         .values(status=status, content=text, completed_at=now, writer=None,
                                 lease_expires_at=None))
            conn.execute(conversations.update()
                         .where(self._conv_where(row.conversation_id))
                         .values(updated_at=now, last_message_at=now))
        self._vault.hub.publish(message_id, {"type": "done", "status": status})
        return self.get_message(message_id)

    def subscribe(self, message_id: str, listener: Listener) -> Callable[[], None]:
        """Follow a live message in this process: ``listener(event)`` gets
        ``{"type": "bundle", "text"}`` every ``stream_bundle_tokens`` deltas,
        ``{"type": "chunk", "seq", "text"}`` per durable chunk and finally
        ``{"type": "done", "status"}``. Returns the unsubscribe function.
        """
        self.get_message(message_id)  # only the owner may listen
        return self._vault.hub.subscribe(message_id, listener)

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(conversations)
                                    .where(conversations.c.owner_id == self._owner)).scalar_one())
