"""Saving replies while they stream: the ``Reply`` writer, the shared group-commit
``ChunkWriter``, and the sweep that marks abandoned streams ``interrupted``.

Deltas are bundled: live listeners get a bundle every ``stream_bundle_tokens``
deltas; a chunk is persisted every ``persist_chunk_tokens`` deltas or
``persist_interval_ms``, whichever comes first. Every ``Reply`` of a process
hands its chunks to one ``ChunkWriter`` thread, which commits whatever is
queued in one transaction: with many concurrent streams, one commit (one fsync)
serves a whole batch. ``Reply.write`` returns once its chunk is durable, so a
chunk the caller has seen persisted survives ``kill -9``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog

from ..backends.base import Database
from ..backends.schema import conversations, message_chunks, messages
from ..errors import Conflict, MemvaultError, NotFound
from ..ids import utcnow
from ..live import LocalHub
from ..models import Message
from ..settings import Settings
from ._text import check_text

if TYPE_CHECKING:
    from ._context import StoreContext

__all__ = ["Reply", "ChunkWriter", "sweep_interrupted", "writer_identity"]

log = structlog.get_logger(__name__)
MAX_BATCH = 4000
_POKE_TIMEOUT_S = 0.05


@functools.lru_cache(maxsize=256)
def _insert_chunks_sql(mark: str, rows: int) -> str:
    row = f"({mark}, {mark}, {mark}, {mark}, {mark})"
    return (f"INSERT INTO {message_chunks.name} (owner_id, message_id, seq, text, created_at) "
            f"VALUES {', '.join([row] * rows)}")


@functools.lru_cache(maxsize=256)
def _advance_messages_sql(mark: str, rows: int) -> str:
    """Set each message's last chunk seq and renew its lease, in one statement.
    ``column1…`` are the names SQLite and PostgreSQL both give VALUES columns."""
    values = ", ".join([f"({mark}, {mark}, {mark})"] * rows)
    return (f"UPDATE {messages.name} SET last_chunk_seq = v.column3, lease_expires_at = {mark} "
            f"FROM (VALUES {values}) AS v "
            f"WHERE {messages.name}.owner_id = v.column1 AND {messages.name}.id = v.column2")


def writer_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: gone for us
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _writer_gone(writer: str | None, host: str) -> bool:
    """True when ``writer`` was a process on this host that no longer runs."""
    if not writer:
        return False
    w_host, _, pid = writer.rpartition(":")
    if w_host != host or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and not _pid_alive(int(pid))


@dataclass(eq=False, slots=True)
class _Pending:
    owner: str
    message_id: str
    seq: int
    text: str
    done: bool = False
    error: BaseException | None = None
    wake: threading.Event = field(default_factory=threading.Event)


class ChunkWriter:
    """One per vault: commits the queued chunks of all streams in groups.

    Group commit without a hand-off: a thread that needs its chunk durable takes
    the leader's role if no commit is running and commits everything queued (its
    own and other streams' chunks) in its own thread; otherwise it waits for the
    running commit and tries again. One stream pays one transaction per chunk
    with no thread switch; many streams share each commit (and its fsync).
    A housekeeping thread persists buffers that went stale and renews leases.
    """

    def __init__(self, db: Database, hub: LocalHub, settings: Settings) -> None:
        self._db = db
        self._hub = hub
        self._lease = timedelta(seconds=settings.stream_lease_s)
        self._interval = settings.persist_interval_ms / 1000
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._committing = False
        self._replies: dict[str, Reply] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_renew = time.monotonic()
        backend = self._db.backend
        self._mark = backend.placeholder
        self._timestamp = backend.timestamp_param

    # -- called by replies ---------------------------------------------------

    def register(self, reply: Reply) -> None:
        with self._cv:
            self._replies[reply.message_id] = reply
            self._start()

    def unregister(self, reply: Reply) -> None:
        with self._cv:
            self._replies.pop(reply.message_id, None)

    def submit(self, owner: str, message_id: str, seq: int, text: str) -> _Pending:
        """Queue a chunk; ``wait`` makes it durable."""
        item = _Pending(owner, message_id, seq, text)
        with self._cv:
            if self._closed:
                raise MemvaultError("the vault is closed")
            self._queue.append(item)
        return item

    def wait(self, items: list[_Pending]) -> None:
        """Return once every item is committed; raise the first item's error."""
        for item in items:
            while not item.done:
                with self._cv:
                    if item.done:
                        break
                    lead = not self._committing
                    if lead:
                        self._committing = True
                        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    else:
                        item.wake.clear()
                if not lead:
                    # Woken when our item is committed, or poked to lead the next
                    # batch; the timeout only guards against a poke to a thread
                    # that will never come (it died between submit and wait).
                    item.wake.wait(_POKE_TIMEOUT_S)
                    continue
                nxt = None
                try:
                    self._commit(batch)
                finally:
                    with self._cv:
                        self._committing = False
                        nxt = self._queue[0] if self._queue else None
                    # Wake only whom it concerns: the committed, and one to lead next.
                    for p in batch:
                        p.wake.set()
                    if nxt is not None:
                        nxt.wake.set()
            if item.error is not None:
                raise item.error

    def active(self) -> list[Reply]:
        with self._cv:
            return list(self._replies.values())

    # -- committing ----------------------------------------------------------

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            self._write(batch)
        except BaseException as exc:  # noqa: BLE001 - isolate the failing stream
            groups: dict[str, list[_Pending]] = {}
            for p in batch:
                groups.setdefault(p.message_id, []).append(p)
            if len(groups) == 1:
                self._fail(batch, exc)
            else:
                for group in groups.values():
                    try:
                        self._write(group)
                    except BaseException as err:  # noqa: BLE001
                        self._fail(group, err)
        hub = self._hub
        for p in batch:
            p.done = True
            if p.error is None:
                hub.publish(p.message_id, {"type": "chunk", "seq": p.seq, "text": p.text})

    def _fail(self, items: list[_Pending], exc: BaseException) -> None:
        if isinstance(exc, Conflict):  # the message row (or its conversation) is gone
            exc = NotFound("the message was deleted while it streamed")
        for p in items:
            p.error = exc

    def _write(self, items: list[_Pending]) -> None:
        # Two multi-row statements through the driver, whatever the batch size:
        # SQLAlchemy's per-row parameter processing, and a driver step (and GIL
        # hand-back) per row, cost more than the rows themselves when a hundred
        # streams share a commit.
        now = utcnow()
        created = self._timestamp(now)
        last: dict[tuple[str, str], int] = {}
        for p in items:
            last[(p.owner, p.message_id)] = p.seq
        chunk_params: list[Any] = []
        for p in items:
            chunk_params += (p.owner, p.message_id, p.seq, p.text, created)
        seq_params: list[Any] = [self._timestamp(now + self._lease)]
        for (owner, mid), seq in last.items():
            seq_params += (owner, mid, seq)
        with self._db.write() as conn:
            conn.exec_driver_sql(_insert_chunks_sql(self._mark, len(items)), tuple(chunk_params))
            conn.exec_driver_sql(_advance_messages_sql(self._mark, len(last)), tuple(seq_params))

    # -- the housekeeping thread ---------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="memvault-stream-keeper",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._closed:
                    return
                self._cv.wait(self._interval / 2)
            try:
                self._housekeeping()
            except MemvaultError:
                log.warning("stream housekeeping failed; will retry", exc_info=True)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for reply in self.active():
            reply._flush_if_stale(now)
        if now - self._last_renew >= self._lease.total_seconds() / 3:
            self._last_renew = now
            self.renew_leases()

    def renew_leases(self) -> None:
        replies = self.active()
        if not replies:
            return
        lease = utcnow() + self._lease
        try:
            with self._db.write() as conn:
                conn.execute(
                    messages.update()
                    .where(messages.c.owner_id == sa.bindparam("b_owner"),
                           messages.c.id == sa.bindparam("b_id"),
                           messages.c.status == "streaming")
                    .values(lease_expires_at=lease),
                    [{"b_owner": r.owner_id, "b_id": r.message_id} for r in replies])
        except MemvaultError:
            log.warning("lease renewal failed; will retry", exc_info=True)

    def close(self) -> None:
        with self._cv:
            pending = list(self._queue)
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with contextlib.suppress(MemvaultError):
            self.wait(pending)


class Reply:
    """A streaming assistant message. Use as a context manager (see module doc)."""

    def __init__(self, ctx: StoreContext, owner_id: str, message: Message) -> None:
        settings = ctx.settings
        self._ctx = ctx
        self._writer = ctx.streams
        self.owner_id = owner_id
        self.message = message
        self.message_id = message.id
        self._bundle_every = settings.stream_bundle_tokens
        self._persist_every = settings.persist_chunk_tokens
        self._interval = settings.persist_interval_ms / 1000
        self._max_chunk = settings.max_chunk_chars
        self._lock = threading.Lock()
        self._parts: list[str] = []          # every delta, for the final text
        self._unpersisted: list[str] = []
        self._bundle: list[str] = []
        self._deltas = 0
        self._seq = 0
        self._last_persist = time.monotonic()
        self._pending: list[_Pending] = []
        self._closed = False
        self._writer.register(self)

    @property
    def text(self) -> str:
        """Everything written so far."""
        return "".join(self._parts)

    @property
    def persisted_seq(self) -> int:
        """The highest chunk seq known to be durable."""
        with self._lock:
            return self._seq - len([p for p in self._pending if not p.done])

    def write(self, delta: str) -> None:
        """Add one delta; persists (durably, before returning) when a chunk is due."""
        if not isinstance(delta, str):
            raise TypeError("delta must be a str")
        check_text(delta, "delta")
        wait: list[_Pending] = []
        with self._lock:
            if self._closed:
                raise Conflict("this reply is already finished")
            self._parts.append(delta)
            self._unpersisted.append(delta)
            self._bundle.append(delta)
            self._deltas += 1
            if len(self._bundle) >= self._bundle_every:
                self._publish_bundle()
            if (len(self._unpersisted) >= self._persist_every
                    or time.monotonic() - self._last_persist >= self._interval):
                wait = self._persist_locked()
        self._wait(wait)

    def flush(self) -> None:
        """Persist whatever is buffered and wait until it is durable."""
        with self._lock:
            if self._bundle:
                self._publish_bundle()
            wait = self._persist_locked()
            wait += [p for p in self._pending if not p.done]
        self._wait(wait)

    def _publish_bundle(self) -> None:
        self._ctx.hub.publish(self.message_id, {"type": "bundle", "text": "".join(self._bundle)})
        self._bundle = []

    def _persist_locked(self) -> list[_Pending]:
        for p in self._pending:
            if p.error is not None:  # an earlier chunk failed: never write past a gap
                raise p.error
        self._last_persist = time.monotonic()
        if not self._unpersisted:
            return []
        text = "".join(self._unpersisted)
        self._unpersisted = []
        out = []
        for start in range(0, len(text), self._max_chunk):
            self._seq += 1
            out.append(self._writer.submit(self.owner_id, self.message_id, self._seq,
                                           text[start:start + self._max_chunk]))
        self._pending = [p for p in self._pending if not p.done or p.error] + out
        return out

    def _flush_if_stale(self, now: float) -> None:
        """Called by the housekeeping thread: persist a buffer older than the
        interval. A writer busy in ``write`` is left alone (it persists itself)."""
        if not self._unpersisted or now - self._last_persist < self._interval:
            return
        items: list[_Pending] = []
        if self._lock.acquire(blocking=False):
            try:
                if not self._closed:
                    items = self._persist_locked()
            finally:
                self._lock.release()
        if items:
            # An error stays on the item; the stream's next write or flush raises it.
            with contextlib.suppress(MemvaultError):
                self._writer.wait(items)

    def _wait(self, items: list[_Pending]) -> None:
        if items:
            self._writer.wait(items)

    def finish(self, status: str = "complete") -> Message:
        """Persist the rest and end the message (``complete`` or ``failed``)."""
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
            self._writer.unregister(self)
        from .conversations import ConversationStore
        convs = ConversationStore(self._ctx, self.owner_id)
        self.message = convs.complete(self.message_id, status, content=self.text)
        return self.message

    def __enter__(self) -> Reply:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._closed:
            return
        self.finish("complete" if exc_type is None else "failed")


def sweep_interrupted(db: Database, check_dead_writers: bool = False,
                      on_interrupt: Callable[[str], None] | None = None) -> int:
    """Mark abandoned streaming messages ``interrupted``, materialising their text.

    Abandoned: the lease expired, or (``check_dead_writers``) the writing process
    ran on this host and is gone. Returns how many were marked.
    """
    now = utcnow()
    host = socket.gethostname()
    with db.read() as conn:
        rows = conn.execute(sa.select(messages.c.owner_id, messages.c.id,
                                      messages.c.conversation_id, messages.c.writer,
                                      messages.c.lease_expires_at)
                            .where(messages.c.status == "streaming")).all()
    marked = 0
    for row in rows:
        expired = row.lease_expires_at is None or row.lease_expires_at < now
        if not expired and not (check_dead_writers and _writer_gone(row.writer, host)):
            continue
        # Conditional on what we saw: a writer that renewed meanwhile keeps its message.
        guard = (sa.or_(messages.c.lease_expires_at.is_(None), messages.c.lease_expires_at < now)
                 if expired else messages.c.writer == row.writer)
        if interrupt_message(db, row.owner_id, row.id, guard):
            marked += 1
            if on_interrupt:
                on_interrupt(row.id)
    return marked


def interrupt_message(db: Database, owner_id: str, message_id: str,
                      guard: sa.ColumnElement[bool] | None = None) -> bool:
    """Mark one streaming message ``interrupted`` with its persisted text."""
    now = utcnow()
    where = [messages.c.owner_id == owner_id, messages.c.id == message_id,
             messages.c.status == "streaming"]
    if guard is not None:
        where.append(guard)
    with db.write() as conn:
        conv_id = conn.execute(sa.select(messages.c.conversation_id).where(*where)
                               ).scalar_one_or_none()
        if conv_id is None:
            return False
        text = "".join(conn.execute(
            sa.select(message_chunks.c.text)
            .where(message_chunks.c.owner_id == owner_id,
                   message_chunks.c.message_id == message_id)
            .order_by(message_chunks.c.seq)).scalars())
        conn.execute(messages.update().where(*where).values(
            status="interrupted", content=text, completed_at=now, writer=None,
            lease_expires_at=None))
        conn.execute(conversations.update().where(
            conversations.c.owner_id == owner_id,
            conversations.c.id == conv_id).values(updated_at=now))
    return True


def release_writer(db: Database, writer: str) -> None:
    """On a clean shutdown: streams a client drives over HTTP outlive this process,
    so drop our claim and leave them to their lease."""
    with db.write() as conn:
        conn.execute(messages.update().where(messages.c.writer == writer,
                                             messages.c.status == "streaming")
                     .values(writer=None))


