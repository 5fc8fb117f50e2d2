"""Conversations and their messages (seeds 000 and 004).

A message is inserted whole (``append``) or streamed: created ``streaming``,
filled by chunks ``(message_id, seq)``, then completed, which materialises the
full text in the message row so reading a finished conversation never joins
chunks. Chunk appends are idempotent per seq; a gap or a changed text is a
conflict. Library streams go through ``stream()`` (see ``streaming.py``).
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, get_args

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..backends.base import Backend
from ..backends.schema import conversations, entities, message_chunks, messages
from ..errors import Conflict, Invalid, NotFound, PayloadTooLarge
from ..ids import INT32_MAX, decode_cursor, encode_cursor, new_id, utcnow
from ..live import Listener
from ..models import Chunk, Conversation, Message, MessageStatus, Page, Role, StreamLease
from ._context import StoreContext
from ._paging import DEFAULT_LIMIT, check_limit, keyset_page
from ._text import check_json, check_text, check_texts
from .entities import UNSET, EntityStore

if TYPE_CHECKING:
    from .streaming import Reply

__all__ = ["ConversationStore", "MAX_CHUNKS_PER_CALL"]

ROLES: tuple[str, ...] = get_args(Role)
FINAL_STATUSES = ("complete", "failed")
#: Statuses an imported message may have: it has ended (nobody streams it here).
IMPORT_STATUSES = ("complete", "interrupted", "failed")
MAX_CHUNKS_PER_CALL = 1000


# Statements are built once and rows unpacked by position: on the read paths,
# building SQLAlchemy expressions and Row attribute access per call cost more
# than the database work (bench/RESULTS.md).
_bp = sa.bindparam
_C, _M, _K = conversations.c, messages.c, message_chunks.c
_CONV_COLS = (_C.id, _C.entity_id, _C.title, _C.participants, _C.metadata, _C.created_at,
              _C.updated_at, _C.message_count, _C.last_message_at)
_CONV_KEY = sa.and_(_C.owner_id == _bp("owner"), _C.id == _bp("conv_id"))
_CONV_GET = sa.select(*_CONV_COLS).where(_CONV_KEY)
_CONV_EXISTS = sa.select(_C.id).where(_CONV_KEY)
_CONV_LIST = sa.select(*_CONV_COLS).where(_C.owner_id == _bp("owner"))
_CONV_LIST_ENTITY = _CONV_LIST.where(_C.entity_id == _bp("entity"))
_CONV_DELETE = conversations.delete().where(_CONV_KEY)
_CONV_BUMP = (conversations.update().where(_CONV_KEY)
              .values(message_count=_C.message_count + 1, last_message_at=_bp("b_now"),
                      updated_at=_bp("b_now"))
              .returning(_C.message_count))
_CONV_TOUCH = conversations.update().where(_CONV_KEY).values(
    updated_at=_bp("b_now"), last_message_at=_bp("b_now"))
_CONV_FIELDS = ("title", "participants", "metadata")

_MSG_COLS = (_M.id, _M.conversation_id, _M.role, _M.author, _M.content, _M.metadata, _M.status,
             _M.seq, _M.last_chunk_seq, _M.created_at, _M.completed_at)
_ID, _STATUS = 0, 6  # positions in _MSG_COLS
_MSG_KEY = sa.and_(_M.owner_id == _bp("owner"), _M.id == _bp("message_id"))
_MSG_GET = sa.select(*_MSG_COLS).where(_MSG_KEY)
_MSG_GET_LOCKED = _MSG_GET.with_for_update()
_MSG_STATUS = sa.select(_M.status).where(_MSG_KEY)
_MSG_IN_CONV = sa.and_(_M.owner_id == _bp("owner"), _M.conversation_id == _bp("conv_id"))
_MSGS_ALL = sa.select(*_MSG_COLS).where(_MSG_IN_CONV).order_by(_M.seq)
_MSGS_AFTER = (sa.select(*_MSG_COLS).where(_MSG_IN_CONV, _M.seq > _bp("pivot"))
               .order_by(_M.seq).limit(_bp("lim")))
_MSGS_BEFORE = (sa.select(*_MSG_COLS).where(_MSG_IN_CONV, _M.seq < _bp("pivot"))
                .order_by(_M.seq.desc()).limit(_bp("lim")))
_MSGS_LAST = (sa.select(*_MSG_COLS).where(_MSG_IN_CONV, _M.seq <= _bp("pivot"))
              .order_by(_M.seq.desc()).limit(_bp("lim")))
_MSG_SEQ_OF = sa.select(_M.seq).where(_MSG_IN_CONV, _M.id == _bp("message_id"))
# Leases are SQL expressions of the backend (the database's clock on PostgreSQL)
# with the lease as a bound parameter, so these statements are built once per
# backend kind (building one per call doubled the cost of a chunk append). A
# chunk or heartbeat renews the lease and never claims the message for this
# process: a client streaming over HTTP is its writer.
_MSG_AFTER_CHUNKS = messages.update().where(_MSG_KEY)
_MSG_HEARTBEAT = (messages.update().where(_MSG_KEY, _M.status == "streaming")
                  .returning(_M.lease_expires_at))
_LEASED: dict[tuple[type[Backend], str], Any] = {}


def _leased(backend: Backend, name: str) -> Any:
    """The statement ``name`` with the backend's lease expression, built once."""
    key = (type(backend), name)
    found = _LEASED.get(key)
    if found is None:
        lease = backend.lease_param_expr()
        if name == "after_chunks":
            found = _MSG_AFTER_CHUNKS.values(last_chunk_seq=_bp("b_last"),
                                             lease_expires_at=lease)
        elif name == "heartbeat":
            found = _MSG_HEARTBEAT.values(lease_expires_at=lease)
        else:
            found = messages.insert().values(lease_expires_at=lease)
        _LEASED[key] = found
    return found
_MSG_FINISH = messages.update().where(_MSG_KEY).values(
    status=_bp("b_status"), content=_bp("b_content"), completed_at=_bp("b_now"), writer=None,
    lease_expires_at=None)

_CHUNK_OF = sa.and_(_K.owner_id == _bp("owner"), _K.message_id == _bp("message_id"))
_CHUNK_TEXTS = sa.select(_K.text).where(_CHUNK_OF).order_by(_K.seq)
_CHUNK_TEXT_AT = sa.select(_K.text).where(_CHUNK_OF, _K.seq == _bp("seq"))
_CHUNKS_AFTER = (sa.select(_K.seq, _K.text, _K.created_at).where(_CHUNK_OF, _K.seq > _bp("after"))
                 .order_by(_K.seq))
_CHUNKS_AFTER_LIMIT = _CHUNKS_AFTER.limit(_bp("lim"))
_CHUNK_TEXTS_OF_MANY = (sa.select(_K.message_id, _K.text)
                        .where(_K.owner_id == _bp("owner"),
                               _K.message_id.in_(_bp("ids", expanding=True)))
                        .order_by(_K.message_id, _K.seq))


@functools.cache
def _conv_update_statement(fields: tuple[str, ...]) -> sa.Update:
    values: dict[str, Any] = {f: _bp(f"v_{f}") for f in fields}
    return (conversations.update().where(_CONV_KEY)
            .values(updated_at=_bp("v_updated_at"), **values).returning(*_CONV_COLS))


def _conversation(row: Any, msgs: list[Message] | None = None) -> Conversation:
    conv_id, entity_id, title, participants, metadata, created, updated, count, last = row
    return Conversation(id=conv_id, entity_id=entity_id, title=title,
                        participants=participants or [], metadata=metadata or {},
                        created_at=created, updated_at=updated, message_count=count,
                        last_message_at=last, messages=msgs)


def _message(row: Any, content: str | None = None) -> Message:
    (msg_id, conv_id, role, author, stored, metadata, status, seq, last_chunk, created,
     completed) = row
    return Message(id=msg_id, conversation_id=conv_id, role=role, author=author,
                   content=stored if content is None else content, metadata=metadata or {},
                   status=status, seq=seq, last_chunk_seq=last_chunk, created_at=created,
                   completed_at=completed)


def _position(digits: str) -> int | None:
    """A position given in ASCII digits; None when it is past any ``messages.seq``
    (a 32-bit column, which PostgreSQL will not compare with a larger parameter).
    A huge string is not converted: ``int()`` of thousands of digits is refused."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(INT32_MAX)) or int(digits) > INT32_MAX:
        return None
    return int(digits)


def _message_cursor(cursor: str) -> tuple[str, int]:
    """``[direction, seq]`` from a cursor made by ``messages()``; anything else
    (another listing's cursor, a string or out-of-range seq) is ``Invalid``."""
    value = decode_cursor(cursor)
    if not (isinstance(value, list) and len(value) == 2 and value[0] in ("a", "b")
            and isinstance(value[1], int) and not isinstance(value[1], bool)
            and 0 <= value[1] <= INT32_MAX):
        raise Invalid("malformed cursor", field="cursor")
    return value[0], value[1]


def check_role(role: str) -> str:
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}", field="role")
    return role


class ConversationStore:
    """One owner's conversations. Obtain through ``vault.for_user(uid).conversations``."""

    def __init__(self, ctx: StoreContext, owner_id: str) -> None:
        self._ctx = ctx
        self._db = ctx.db
        self._owner = owner_id

    # -- conversations ------------------------------------------------------

    def _conv_key(self, conv_id: str) -> dict[str, str]:
        return {"owner": self._owner, "conv_id": conv_id}

    def _msg_key(self, message_id: str) -> dict[str, str]:
        return {"owner": self._owner, "message_id": message_id}

    def create(self, title: str | None = None, entity_id: str | None = None,
               participants: Sequence[str] | None = None,
               metadata: dict[str, Any] | None = None) -> Conversation:
        """Start a conversation, optionally inside an entity (which must exist)."""
        if entity_id is not None:
            EntityStore(self._ctx, self._owner).get(entity_id)
        if title is not None:
            check_text(title, "title")
        if participants is not None:
            participants = check_texts(participants, "participants")
        if metadata is not None:
            check_json(metadata, "metadata")
        now = utcnow()
        conv = Conversation(id=new_id(), entity_id=entity_id, title=title,
                            participants=[*(participants or [])], metadata=metadata or {},
                            created_at=now, updated_at=now)
        row = {"owner_id": self._owner, **conv.model_dump(exclude={"messages"})}
        try:
            with self._db.write() as conn:
                conn.execute(conversations.insert(), row)
        except Conflict:  # the entity went between our check and the insert
            raise NotFound(f"entity {entity_id!r} not found") from None
        return conv

    def get(self, conv_id: str, include_messages: bool = False) -> Conversation:
        with self._db.read() as conn:
            row = conn.execute(_CONV_GET, self._conv_key(conv_id)).first()
            if row is None:
                raise NotFound(f"conversation {conv_id!r} not found")
            msgs = None
            if include_messages:
                rows = conn.execute(_MSGS_ALL, self._conv_key(conv_id)).all()
                msgs = self._with_content(conn, rows)
        return _conversation(row, msgs)

    def list(self, limit: int = DEFAULT_LIMIT, cursor: str | None = None,
             entity_id: str | None = None) -> Page[Conversation]:
        """Newest first; only those of ``entity_id`` when given."""
        query, params = _CONV_LIST, {"owner": self._owner}
        if entity_id is not None:
            query, params = _CONV_LIST_ENTITY, {**params, "entity": entity_id}
        with self._db.read() as conn:
            return keyset_page(conn, query, _C.id, limit, cursor, _conversation, params=params)

    def update(self, conv_id: str, *, title: str | None = UNSET,
               participants: Sequence[str] = UNSET, metadata: dict[str, Any] = UNSET
               ) -> Conversation:
        values: dict[str, Any] = {}
        if title is not UNSET:
            values["title"] = title if title is None else check_text(title, "title")
        if participants is not UNSET:
            values["participants"] = check_texts(participants or [], "participants")
        if metadata is not UNSET:
            values["metadata"] = check_json(metadata or {}, "metadata")
        statement = _conv_update_statement(tuple(f for f in _CONV_FIELDS if f in values))
        params = {f"v_{k}": v for k, v in values.items()}
        with self._db.write() as conn:
            row = conn.execute(statement, {**params, **self._conv_key(conv_id),
                                           "v_updated_at": utcnow()}).first()
        if row is None:
            raise NotFound(f"conversation {conv_id!r} not found")
        return _conversation(row)

    def import_conversation(self, conv: Conversation,
                            items: Sequence[tuple[Message, Sequence[Chunk]]]) -> bool:
        """Insert a whole conversation carried over from a seed's data
        (``import-legacy``), keeping its ids and times, in one transaction.

        ``items`` are the messages in order, each with its chunks (maybe
        none); messages are numbered 1..n here (their ``seq`` is
        ignored). A message given with chunks gets those chunks (numbered 1..k
        without a gap) and their text as its content. Every message has ended:
        ``complete``, ``interrupted`` or ``failed``, never ``streaming``.

        Returns:
            ``False`` (nothing written) when the conversation id exists already.

        Raises:
            NotFound: ``conv.entity_id`` is not one of this owner's entities.
            Invalid: a bad role, status, chunk numbering or text.
        """
        if conv.title is not None:
            check_text(conv.title, "title")
        participants = check_texts(conv.participants, "participants")
        check_json(conv.metadata, "metadata")
        msg_rows: list[dict[str, Any]] = []
        chunk_rows: list[dict[str, Any]] = []
        for seq, (msg, chunks) in enumerate(items, start=1):
            check_role(msg.role)
            if msg.status not in IMPORT_STATUSES:
                raise Invalid(f"an imported message must be one of {', '.join(IMPORT_STATUSES)}",
                              field="status")
            if msg.author is not None:
                check_text(msg.author, "author")
            check_json(msg.metadata, "metadata")
            if [c.seq for c in chunks] != list(range(1, len(chunks) + 1)):
                raise Invalid("chunks must be numbered 1..n without a gap", field="seq")
            content = "".join(c.text for c in chunks) if chunks else msg.content
            check_text(content, "content")
            msg_rows.append({"owner_id": self._owner, "id": msg.id, "conversation_id": conv.id,
                             "seq": seq, "role": msg.role, "author": msg.author,
                             "content": content, "metadata": msg.metadata,
                             "status": msg.status, "last_chunk_seq": len(chunks),
                             "writer": None, "lease_expires_at": None,
                             "created_at": msg.created_at,
                             "completed_at": msg.completed_at or msg.created_at})
            chunk_rows += [{"owner_id": self._owner, "message_id": msg.id, "seq": c.seq,
                            "text": c.text, "created_at": c.created_at or msg.created_at}
                           for c in chunks]
        times: list[datetime] = [conv.updated_at, *(m["completed_at"] for m in msg_rows)]
        row = {"owner_id": self._owner, **conv.model_dump(exclude={"messages"}),
               "participants": participants, "message_count": len(msg_rows),
               "last_message_at": msg_rows[-1]["created_at"] if msg_rows else None,
               "updated_at": max(times)}
        try:
            with self._db.write() as conn:
                if conn.execute(_CONV_EXISTS, self._conv_key(conv.id)).first() is not None:
                    return False
                if conv.entity_id is not None and conn.execute(
                        sa.select(entities.c.entity_id).where(
                            entities.c.owner_id == self._owner,
                            entities.c.entity_id == conv.entity_id)).first() is None:
                    raise NotFound(f"entity {conv.entity_id!r} not found")
                conn.execute(conversations.insert(), row)
                if msg_rows:
                    conn.execute(messages.insert(), msg_rows)
                if chunk_rows:
                    conn.execute(message_chunks.insert(), chunk_rows)
        except Conflict:  # a concurrent import inserted it first (or took a message id)
            with self._db.read() as conn:
                if conn.execute(_CONV_EXISTS, self._conv_key(conv.id)).first() is not None:
                    return False
            raise
        return True

    def delete(self, conv_id: str) -> None:
        """Delete the conversation with its messages and chunks."""
        with self._db.write() as conn:
            gone = conn.execute(_CONV_DELETE, self._conv_key(conv_id)).rowcount
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
        if author is not None:
            check_text(author, "author")
        if metadata is not None:
            check_json(metadata, "metadata")
        now = utcnow()
        streaming = status == "streaming"
        insert = _leased(self._db.backend, "insert") if streaming else messages.insert()
        with self._db.write() as conn:
            seq = conn.execute(_CONV_BUMP, {**self._conv_key(conv_id), "b_now": now}
                               ).scalar_one_or_none()
            if seq is None:
                raise NotFound(f"conversation {conv_id!r} not found")
            row = {"owner_id": self._owner, "id": new_id(), "conversation_id": conv_id,
                   "seq": seq, "role": role, "author": author,
                   "content": "" if streaming else content, "metadata": metadata or {},
                   "status": status, "last_chunk_seq": 0,
                   "writer": writer if streaming else None, "created_at": now,
                   "completed_at": None if streaming else now}
            conn.execute(insert, {**row, "b_lease": self._lease_param()} if streaming else row)
        return Message(**{k: v for k, v in row.items() if k not in ("owner_id", "writer")})

    def append(self, conv_id: str, role: str, content: str, author: str | None = None,
               metadata: dict[str, Any] | None = None) -> Message:
        """Add a complete message to the end of the conversation."""
        return self._insert_message(conv_id, role, content, author, metadata, "complete")

    def start_message(self, conv_id: str, role: str = "assistant", author: str | None = None,
                      metadata: dict[str, Any] | None = None) -> Message:
        """Open a ``streaming`` message whose chunks the caller will send.

        The caller (e.g. an HTTP client) is the writer, not this process: the
        lease alone keeps the message alive, renewed by every chunk and by
        ``heartbeat``; if neither comes within ``stream_lease_s`` the sweep marks
        the message ``interrupted``.
        """
        return self._insert_message(conv_id, role, "", author, metadata, "streaming")

    def heartbeat(self, message_id: str) -> StreamLease:
        """Renew the lease of a streaming message without sending a chunk.

        Raises:
            NotFound: no such message of this owner.
            Conflict: the message no longer streams.
        """
        with self._db.write() as conn:
            lease = conn.execute(_leased(self._db.backend, "heartbeat"),
                                 {**self._msg_key(message_id), "b_lease": self._lease_param()}
                                 ).scalar_one_or_none()
            if lease is None:
                status = conn.execute(_MSG_STATUS, self._msg_key(message_id)).scalar_one_or_none()
                if status is None:
                    raise NotFound(f"message {message_id!r} not found")
                raise Conflict(f"message is {status}; it no longer streams")
        return StreamLease(message_id=message_id, status="streaming", lease_expires_at=lease)

    def _lease_param(self) -> Any:
        return self._db.backend.lease_param(self._ctx.settings.stream_lease_s)

    def stream(self, conv_id: str, role: str = "assistant", author: str | None = None,
               metadata: dict[str, Any] | None = None) -> Reply:
        """A context manager that saves a reply while it streams.

        Example:
            with convs.stream(cid, author="researcher") as reply:
                for delta in llm.stream(prompt):
                    reply.write(delta)
        """
        from .streaming import Reply
        # This process writes it: if it dies, the sweep of its host sees so at once.
        message = self._insert_message(conv_id, role, "", author, metadata, "streaming",
                                       writer=self._ctx.writer_id)
        return Reply(self._ctx, self._owner, message)

    def _message_row(self, conn: Connection, message_id: str, lock: bool = False) -> Any:
        row = conn.execute(_MSG_GET_LOCKED if lock else _MSG_GET, self._msg_key(message_id)).first()
        if row is None:
            raise NotFound(f"message {message_id!r} not found")
        return row

    def _chunk_text(self, conn: Connection, message_id: str) -> str:
        return "".join(conn.execute(_CHUNK_TEXTS, self._msg_key(message_id)).scalars())

    def _with_content(self, conn: Connection, rows: Sequence[Any]) -> builtins.list[Message]:
        """Messages, with text rebuilt from chunks for those still streaming."""
        live = [r[_ID] for r in rows if r[_STATUS] == "streaming"]
        if not live:
            return [_message(r) for r in rows]
        texts: dict[str, list[str]] = {}
        for mid, text in conn.execute(_CHUNK_TEXTS_OF_MANY, {"owner": self._owner, "ids": live}):
            texts.setdefault(mid, []).append(text)
        return [_message(r, "".join(texts.get(r[_ID], [])) if r[_STATUS] == "streaming" else None)
                for r in rows]

    def _require_conversation(self, conn: Connection, conv_id: str) -> None:
        if conn.execute(_CONV_EXISTS, self._conv_key(conv_id)).first() is None:
            raise NotFound(f"conversation {conv_id!r} not found")

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
        key = self._conv_key(conv_id)
        with self._db.read() as conn:
            direction, pivot, last_page = "a", 0, False
            if cursor is not None:
                direction, pivot = _message_cursor(cursor)
            elif before is not None or after is not None:
                ref = before if before is not None else after
                field = "before" if before is not None else "after"
                assert ref is not None
                if not isinstance(ref, str):
                    raise Invalid(f"{field} must be a message id or position", field=field)
                if ref.isascii() and ref.isdigit():  # a position (seq), not a message id
                    position = _position(ref)
                    # past the end: after it nothing; before it, the last page
                    pivot = INT32_MAX if position is None else position
                    last_page = position is None and field == "before"
                else:
                    check_text(ref, field)
                    found = conn.execute(_MSG_SEQ_OF, {**key, "message_id": ref}
                                         ).scalar_one_or_none()
                    if found is None:
                        self._require_conversation(conn, conv_id)
                        raise NotFound(f"message {ref!r} not found in this conversation")
                    pivot = int(found)
                direction = "b" if field == "before" else "a"
            query = _MSGS_AFTER if direction == "a" else _MSGS_LAST if last_page else _MSGS_BEFORE
            rows = conn.execute(query, {**key, "pivot": pivot, "lim": limit + 1}).all()
            if not rows:  # an empty page: of an empty conversation, or of none at all?
                self._require_conversation(conn, conv_id)
            more = len(rows) > limit
            rows = builtins.list(rows[:limit])
            if direction == "b":
                rows.reverse()
            items = self._with_content(conn, rows)
        next_cursor = None
        if more and rows:
            edge = items[-1].seq if direction == "a" else items[0].seq
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
        limit = self._ctx.settings.max_chunk_chars
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
                        stored = conn.execute(_CHUNK_TEXT_AT, {**self._msg_key(message_id),
                                                               "seq": seq}).scalar_one()
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
            conn.execute(_leased(self._db.backend, "after_chunks"),
                         {**self._msg_key(message_id), "b_last": last,
                          "b_lease": self._lease_param()})
        for chunk in new:
            self._ctx.hub.publish(message_id, {"type": "chunk", "seq": chunk["seq"],
                                                 "text": chunk["text"]})
        return int(last)

    def chunks(self, message_id: str, after_seq: int = 0, limit: int | None = None
               ) -> tuple[builtins.list[Chunk], MessageStatus]:
        """Stored chunks after ``after_seq`` and the message status.

        The status is read first, so when it is final the chunks are all there is.
        """
        with self._db.read() as conn:
            key = self._msg_key(message_id)
            status = conn.execute(_MSG_STATUS, key).scalar_one_or_none()
            if status is None:
                raise NotFound(f"message {message_id!r} not found")
            if limit is None:
                rows = conn.execute(_CHUNKS_AFTER, {**key, "after": after_seq}).all()
            else:
                rows = conn.execute(_CHUNKS_AFTER_LIMIT, {**key, "after": after_seq,
                                                          "lim": limit}).all()
        return [Chunk(seq=seq, text=text, created_at=at) for seq, text, at in rows], status

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
            conn.execute(_MSG_FINISH, {**self._msg_key(message_id), "b_status": status,
                                       "b_content": text, "b_now": now})
            conn.execute(_CONV_TOUCH, {**self._conv_key(row.conversation_id), "b_now": now})
        self._ctx.hub.publish(message_id, {"type": "done", "status": status})
        return self.get_message(message_id)

    def subscribe(self, message_id: str, listener: Listener) -> Callable[[], None]:
        """Follow a live message in this process: ``listener(event)`` gets
        ``{"type": "bundle", "text"}`` every ``stream_bundle_tokens`` deltas,
        ``{"type": "chunk", "seq", "text"}`` per durable chunk and finally
        ``{"type": "done", "status"}``. Returns the unsubscribe function.
        """
        self.get_message(message_id)  # only the owner may listen
        return self._ctx.hub.subscribe(message_id, listener)

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(conversations)
                                    .where(_C.owner_id == self._owner)).scalar_one())
