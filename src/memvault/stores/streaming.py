"""Saving replies while they stream: the ``Reply`` writer, the shared group-commit
``ChunkWriter``, and the sweep that marks abandoned streams ``interrupted``.

Deltas are bundled: live listeners get a bundle every ``stream_bundle_tokens``
deltas; a chunk is persisted every ``persist_chunk_tokens`` deltas or
``persist_interval_ms``, whichever comes first. Every ``Reply`` of a process
hands its chunks to one ``ChunkWriter`` thread, which commits whatever is
queued in one transaction: with many concurrent streams, one commit (one fsync)
serves a whole batch. ``Reply.write`` returns once its chunk is durable, so a
chunk the caller has seen persisted survives ``kill -9``.

Ownership: a library reply's message names this process as its ``writer`` and
holds a lease the ``ChunkWriter`` renews while the reply is open (entered, or
written to). A chunk is stored only while its message still streams and is still
ours; a reply whose message was interrupted (its lease lapsed) or finished
elsewhere stops with ``Conflict``. Streams a client drives over HTTP have no
writer: only their lease, renewed by chunks and heartbeats, keeps them alive.
Leases are set and compared in SQL on the backend's clock (the database's on
PostgreSQL).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

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
    ``housekeeping()``, run by the vault's background component
    ``stream-keeper``, persists buffers that went stale and renews leases.
    """

    def __init__(self, db: Database, hub: LocalHub, settings: Settings, writer_id: str) -> None:
        self._db = db
        self._hub = hub
        self._writer_id = writer_id
        self._lease_s = settings.stream_lease_s
        self._interval = settings.persist_interval_ms / 1000
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._committing = False
        self._replies: dict[str, Reply] = {}
        self._closed = False
        self._last_renew = time.monotonic()
        #: Called after each group commit with its chunk count and seconds
        #: (``service/metrics.py`` observes the chunk append latency with it).
        self.on_commit: Callable[[int, float], None] | None = None

    # -- called by replies ---------------------------------------------------

    def register(self, reply: Reply) -> None:
        with self._cv:
            self._replies[reply.message_id] = reply

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
        started = time.perf_counter()
        refused: dict[str, MemvaultError] = {}
        try:
            refused = self._write(batch)
        except BaseException as exc:  # noqa: BLE001 - isolate the failing stream
            groups: dict[str, list[_Pending]] = {}
            for p in batch:
                groups.setdefault(p.message_id, []).append(p)
            if len(groups) == 1:
                self._fail(batch, exc)
            else:
                for group in groups.values():
                    try:
                        refused.update(self._write(group))
                    except BaseException as err:  # noqa: BLE001
                        self._fail(group, err)
        if refused:
            # A reply whose message is no longer ours stops: nothing more is
            # written for it, and its lease is no longer renewed.
            for p in batch:
                if p.message_id in refused:
                    p.error = refused[p.message_id]
            with self._cv:
                for message_id in refused:
                    self._replies.pop(message_id, None)
        if self.on_commit is not None:
            with contextlib.suppress(Exception):  # an observer never holds up the streams
                self.on_commit(len(batch), time.perf_counter() - started)
        hub = self._hub
        for p in batch:
            p.done = True
            if p.error is None:
                hub.publish(p.message_id, {"type": "chunk", "seq": p.seq, "text": p.text})

    def _fail(self, items: list[_Pending], exc: BaseException) -> None:
        for p in items:
            p.error = exc

    def _write(self, items: list[_Pending]) -> dict[str, MemvaultError]:
        """Commit ``items`` in one transaction (the backend's group-commit hook).

        Returns, per message id, why its chunks were refused (nothing of them
        written): the message is gone, no longer streams, or is not ours.
        """
        chunks = [(p.owner, p.message_id, p.seq, p.text) for p in items]
        refused: dict[str, MemvaultError] = {}
        with self._db.write() as conn:
            advanced = self._db.backend.group_commit_chunks(conn, chunks, self._writer_id,
                                                            self._lease_s)
            for owner, mid in {(p.owner, p.message_id) for p in items} - advanced:
                row = conn.execute(sa.select(messages.c.status).where(
                    messages.c.owner_id == owner, messages.c.id == mid)).first()
                if row is None:
                    refused[mid] = NotFound("the message was deleted while it streamed")
                elif row.status != "streaming":
                    refused[mid] = Conflict(f"the message is {row.status}; "
                                            "it takes no more chunks")
                else:
                    refused[mid] = Conflict("the message is no longer written by this "
                                            "process (its lease lapsed)")
        return refused

    # -- housekeeping (a background component of the vault) -------------------

    @property
    def housekeeping_interval_s(self) -> float:
        return self._interval / 2

    def housekeeping(self) -> None:
        """Persist buffers older than the persist interval; renew leases."""
        now = time.monotonic()
        for reply in self.active():
            reply._flush_if_stale(now)
        if now - self._last_renew >= self._lease_s / 3:
            self._last_renew = now
            self.renew_leases()

    def renew_leases(self) -> None:
        """Extend the lease of every open reply whose message still streams and
        is still ours (a message interrupted meanwhile stays interrupted)."""
        replies = self.active()
        if not replies:
            return
        try:
            with self._db.write() as conn:
                conn.execute(
                    messages.update()
                    .where(messages.c.owner_id == sa.bindparam("b_owner"),
                           messages.c.id == sa.bindparam("b_id"),
                           messages.c.status == "streaming",
                           messages.c.writer == self._writer_id)
                    .values(lease_expires_at=self._db.backend.lease_until(self._lease_s)),
                    [{"b_owner": r.owner_id, "b_id": r.message_id} for r in replies])
        except MemvaultError:
            log.warning("lease renewal failed; will retry", exc_info=True)

    def close(self) -> None:
        with self._cv:
            pending = list(self._queue)
            self._closed = True
            self._cv.notify_all()
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
        # Registered (its lease renewed) only once used: a reply created but never
        # entered nor written to is abandoned, and expires with its lease.
        self._registered = False

    def _register(self) -> None:
        if not self._registered and not self._closed:
            self._registered = True
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
        self._register()
        wait: list[_Pending] = []
        with self._lock:
            if self._closed:
                raise Conflict("this reply is already finished")
            self._raise_refused()
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

    def _raise_refused(self) -> None:
        for p in self._pending:
            if p.error is not None:  # an earlier chunk failed: never write past a gap
                raise p.error

    def _persist_locked(self) -> list[_Pending]:
        self._raise_refused()
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
        self._register()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._closed:
            return
        self.finish("complete" if exc_type is None else "failed")


def sweep_interrupted(db: Database, check_dead_writers: bool = False,
                      on_interrupt: Callable[[str], None] | None = None) -> int:
    """Mark abandoned streaming messages ``interrupted``, materialising their text.

    Abandoned: the lease expired (compared in SQL, on the backend's clock), or
    (``check_dead_writers``) the writing library process ran on this host and is
    gone. Streams driven over HTTP have no writer: only their lease ends them.
    Returns how many were marked.
    """
    host = socket.gethostname()
    m = messages.c

    def expired() -> sa.ColumnElement[bool]:
        return sa.or_(m.lease_expires_at.is_(None), m.lease_expires_at < db.backend.db_now())

    with db.read() as conn:
        found = [(row.owner_id, row.id, None) for row in conn.execute(
            sa.select(m.owner_id, m.id).where(m.status == "streaming", expired()))]
        if check_dead_writers:
            found += [(row.owner_id, row.id, row.writer) for row in conn.execute(
                sa.select(m.owner_id, m.id, m.writer)
                .where(m.status == "streaming", m.writer.startswith(f"{host}:", autoescape=True)))
                if _writer_gone(row.writer, host)]
    marked = 0
    for owner_id, message_id, dead_writer in found:
        # Conditional on what we saw: a lease renewed meanwhile keeps its message
        # (re-checked in SQL); a dead writer's claim is checked unchanged.
        guard = expired() if dead_writer is None else m.writer == dead_writer
        if interrupt_message(db, owner_id, message_id, guard):
            marked += 1
            if on_interrupt:
                on_interrupt(message_id)
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


