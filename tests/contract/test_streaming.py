"""The library streaming writer: bundling, persistence policy, completion, failure,
abandonment — on every backend."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import memvault
from memvault import Conflict, NotFound, Settings, Vault
from memvault.backends import base as backend_base
from memvault.backends.schema import messages
from memvault.ids import utcnow
from memvault.stores import conversations as conversations_module
from memvault.stores import streaming as streaming_module
from memvault.stores.conversations import ConversationStore


def _open(settings: Settings, **overrides: Any) -> Vault:
    return memvault.open(settings.model_copy(update=overrides))


def test_reply_persists_every_n_deltas_and_completes(settings: Settings) -> None:
    with _open(settings, persist_chunk_tokens=60, stream_bundle_tokens=20,
               persist_interval_ms=60_000) as vault:
        uid = vault.users.register("s@example.com", "password-1").id
        convs = vault.for_user(uid).conversations
        c = convs.create()
        bundles: list[str] = []
        chunks: list[int] = []
        with convs.stream(c.id, author="researcher") as reply:
            convs.subscribe(reply.message_id, lambda e: (
                bundles.append(e["text"]) if e["type"] == "bundle" else
                chunks.append(e["seq"]) if e["type"] == "chunk" else None))
            for i in range(150):
                reply.write(f"t{i} ")
                if i == 119:
                    # 120 deltas: two chunks durable, six bundles pushed.
                    stored, status = convs.chunks(reply.message_id)
                    assert [s.seq for s in stored] == [1, 2] and status == "streaming"
                    assert len(bundles) == 6
        message = reply.message
        expected = "".join(f"t{i} " for i in range(150))
        assert message.status == "complete" and message.content == expected
        assert message.author == "researcher" and message.role == "assistant"
        assert chunks == [1, 2, 3]
        assert "".join(bundles) == expected
        stored, _ = convs.chunks(message.id)
        assert "".join(s.text for s in stored) == expected


def test_reply_persists_after_the_interval_without_more_writes(settings: Settings) -> None:
    with _open(settings, persist_chunk_tokens=1000, persist_interval_ms=50) as vault:
        uid = vault.users.register("i@example.com", "password-1").id
        convs = vault.for_user(uid).conversations
        c = convs.create()
        with convs.stream(c.id) as reply:
            reply.write("slow model ")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not convs.chunks(reply.message_id)[0]:
                time.sleep(0.01)
            assert convs.get_message(reply.message_id).content == "slow model "


def test_exception_marks_failed_keeping_text(vault: Vault, user_id: str) -> None:
    convs = vault.for_user(user_id).conversations
    c = convs.create()
    with pytest.raises(RuntimeError), convs.stream(c.id) as reply:
        reply.write("partial ")
        reply.write("answer")
        raise RuntimeError("model went away")
    m = convs.get_message(reply.message_id)
    assert m.status == "failed" and m.content == "partial answer"


def test_lease_expiry_marks_interrupted(settings: Settings) -> None:
    with _open(settings, stream_lease_s=0.3) as vault:
        uid = vault.users.register("l@example.com", "password-1").id
        convs = vault.for_user(uid).conversations
        c = convs.create()
        m = convs.start_message(c.id)  # a client that sends one chunk and vanishes
        convs.append_chunks(m.id, [(1, "kept")])
        deadline = time.monotonic() + 10
        while convs.get_message(m.id).status == "streaming" and time.monotonic() < deadline:
            time.sleep(0.05)
        got = convs.get_message(m.id)
        assert got.status == "interrupted" and got.content == "kept"


def test_live_reply_keeps_its_lease(settings: Settings) -> None:
    with _open(settings, stream_lease_s=0.4, persist_interval_ms=50) as vault:
        uid = vault.users.register("k@example.com", "password-1").id
        convs = vault.for_user(uid).conversations
        c = convs.create()
        with convs.stream(c.id) as reply:
            for _ in range(15):  # 1.5 s, several lease periods
                reply.write("x")
                time.sleep(0.1)
                assert convs.get_message(reply.message_id).status == "streaming"
        assert reply.message.status == "complete"


def test_closing_the_vault_interrupts_open_replies(settings: Settings) -> None:
    vault = _open(settings)
    uid = vault.users.register("c@example.com", "password-1").id
    convs = vault.for_user(uid).conversations
    c = convs.create()
    reply = convs.stream(c.id)
    reply.write("unfinished")
    vault.close()
    with memvault.open(settings) as again:
        m = again.for_user(uid).conversations.get_message(reply.message_id)
        assert m.status == "interrupted" and m.content == "unfinished"


def test_many_concurrent_streams_share_the_writer(vault: Vault, user_id: str) -> None:
    convs = vault.for_user(user_id).conversations
    c = convs.create(participants=[f"agent{i}" for i in range(20)])
    sent: dict[str, str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            with convs.stream(c.id, author=f"agent{i}") as reply:
                parts = [f"{i}:{j}·é " for j in range(300)]
                for p in parts:
                    reply.write(p)
            sent[reply.message_id] = "".join(parts)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    full = convs.get(c.id, include_messages=True)
    assert full.message_count == 20
    for m in full.messages or []:
        assert m.status == "complete" and m.content == sent[m.id]


def test_deleting_the_conversation_mid_stream_fails_the_writer(vault: Vault,
                                                               user_id: str) -> None:
    convs = vault.for_user(user_id).conversations
    c = convs.create()
    reply = convs.stream(c.id)
    reply.write("a")
    convs.delete(c.id)
    with pytest.raises(memvault.NotFound):
        reply.write("b")
        reply.flush()


# -- ownership of streams: status, writer and lease (issue 10, faults 3-5) ------------------


def _row(vault: Vault, message_id: str) -> Any:
    with vault.db.read() as conn:
        return conn.execute(sa.select(messages.c.status, messages.c.writer,
                                      messages.c.lease_expires_at, messages.c.last_chunk_seq)
                            .where(messages.c.id == message_id)).one()


def _set(vault: Vault, message_id: str, **values: Any) -> None:
    with vault.db.write() as conn:
        conn.execute(messages.update().where(messages.c.id == message_id).values(**values))


def _expire(vault: Vault, message_id: str) -> None:
    """As if the writing process had stalled past its lease."""
    _set(vault, message_id, lease_expires_at=utcnow() - timedelta(hours=1))


def _texts(vault: Vault, uid: str, message_id: str) -> list[str]:
    return [c.text for c in vault.for_user(uid).conversations.chunks(message_id)[0]]


def _dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# Long leases and persist intervals: nothing renews or flushes behind the test's back.
_QUIET = {"stream_lease_s": 3600, "persist_chunk_tokens": 1000, "persist_interval_ms": 600_000}


def test_a_reply_interrupted_by_the_sweep_writes_nothing_more(settings: Settings) -> None:
    with _open(settings, **_QUIET) as vault:
        uid = vault.users.register("swept@example.com", "password-1").id
        convs = vault.for_user(uid).conversations
        c = convs.create()
        reply = convs.stream(c.id).__enter__()
        reply.write("before ")
        reply.flush()
        _expire(vault, reply.message_id)
        vault.sweep()
        assert _row(vault, reply.message_id).status == "interrupted"
        reply.write("after")
        with pytest.raises(Conflict):
            reply.flush()
        with pytest.raises(Conflict):  # the reply is stopped
            reply.write("more")
        assert _texts(vault, uid, reply.message_id) == ["before "]
        vault.chunk_writer.renew_leases()
        row = _row(vault, reply.message_id)
        assert row.status == "interrupted" and row.last_chunk_seq == 1
        assert row.lease_expires_at is None
        assert reply not in vault.chunk_writer.active()
        assert convs.get_message(reply.message_id).content == "before "


def test_a_reply_whose_message_another_writer_holds_writes_nothing(settings: Settings) -> None:
    with _open(settings, **_QUIET) as vault:
        uid = vault.users.register("taken@example.com", "password-1").id
        convs = vault.for_user(uid).conversations
        c = convs.create()
        reply = convs.stream(c.id).__enter__()
        reply.write("mine ")
        reply.flush()
        theirs = utcnow() + timedelta(seconds=5)
        _set(vault, reply.message_id, writer="elsewhere:1", lease_expires_at=theirs)
        vault.chunk_writer.renew_leases()  # not ours any more: left alone
        assert _row(vault, reply.message_id).lease_expires_at == theirs
        reply.write("not mine")
        with pytest.raises(Conflict):
            reply.flush()
        row = _row(vault, reply.message_id)
        assert row.status == "streaming" and row.last_chunk_seq == 1
        assert row.lease_expires_at == theirs
        assert _texts(vault, uid, reply.message_id) == ["mine "]


def test_a_refused_stream_does_not_affect_others_in_the_same_commit(settings: Settings) -> None:
    with _open(settings, **_QUIET) as vault:
        uid = vault.users.register("batch@example.com", "password-1").id
        convs = vault.for_user(uid).conversations
        c = convs.create()
        live, gone = convs.stream(c.id), convs.stream(c.id)
        _expire(vault, gone.message_id)
        vault.sweep()
        writer = vault.chunk_writer
        refused = writer.submit(uid, gone.message_id, 1, "lost")
        kept = writer.submit(uid, live.message_id, 1, "kept")
        with pytest.raises(Conflict):
            writer.wait([refused, kept])  # one batch: both were queued before it began
        writer.wait([kept])
        assert kept.error is None
        assert _texts(vault, uid, live.message_id) == ["kept"]
        assert _texts(vault, uid, gone.message_id) == []
        assert _row(vault, live.message_id).last_chunk_seq == 1
        assert _row(vault, gone.message_id).last_chunk_seq == 0


def test_http_streams_have_no_writer_and_library_streams_name_this_process(
        vault: Vault, user_id: str) -> None:
    convs = vault.for_user(user_id).conversations
    c = convs.create()
    m = convs.start_message(c.id)
    assert _row(vault, m.id).writer is None
    before = _row(vault, m.id).lease_expires_at
    convs.append_chunks(m.id, [(1, "a"), (2, "b")])
    row = _row(vault, m.id)
    assert row.writer is None and row.last_chunk_seq == 2
    assert row.lease_expires_at >= before
    with convs.stream(c.id) as reply:
        assert _row(vault, reply.message_id).writer == vault.writer_id
        reply.write("x")
        reply.flush()
        assert _row(vault, reply.message_id).writer == vault.writer_id


def test_a_dead_worker_that_served_a_chunk_does_not_interrupt_the_stream(
        vault: Vault, user_id: str) -> None:
    """The client is the writer of an HTTP stream: a worker that served one of its
    chunks and then died says nothing about it; only the lease does."""
    dead_worker = f"{socket.gethostname()}:{_dead_pid()}"
    served_by_dead = ConversationStore(dataclasses.replace(vault.ctx, writer_id=dead_worker),
                                       user_id)
    convs = vault.for_user(user_id).conversations
    c = convs.create()
    m = convs.start_message(c.id)
    served_by_dead.append_chunks(m.id, [(1, "served, then the worker died")])
    assert vault.sweep(check_dead_writers=True) == 0
    assert _row(vault, m.id).status == "streaming"
    # A library stream of a dead process is still detected at once.
    orphan = served_by_dead.stream(c.id)
    assert _row(vault, orphan.message_id).writer == dead_worker
    assert vault.sweep(check_dead_writers=True) == 1
    assert _row(vault, orphan.message_id).status == "interrupted"
    assert _row(vault, m.id).status == "streaming"


def test_heartbeat_extends_the_lease(settings: Settings) -> None:
    with _open(settings, stream_lease_s=3600) as vault:
        uid = vault.users.register("hb@example.com", "password-1").id
        convs = vault.for_user(uid).conversations
        c = convs.create()
        m = convs.start_message(c.id)
        soon = utcnow() + timedelta(seconds=5)
        _set(vault, m.id, lease_expires_at=soon)
        lease = convs.heartbeat(m.id)
        assert lease.message_id == m.id and lease.status == "streaming"
        assert lease.lease_expires_at > soon + timedelta(seconds=3000)
        row = _row(vault, m.id)
        assert row.lease_expires_at == lease.lease_expires_at and row.writer is None
        other = vault.users.register("hb-other@example.com", "password-1").id
        with pytest.raises(NotFound):
            vault.for_user(other).conversations.heartbeat(m.id)
        with pytest.raises(NotFound):
            convs.heartbeat("no-such-message")
        convs.complete(m.id)
        with pytest.raises(Conflict):
            convs.heartbeat(m.id)


def test_leases_are_on_the_database_clock(settings: Settings, backend: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas share PostgreSQL's clock, not their own: a host whose clock runs an
    hour ahead neither sets leases an hour long nor expires others' streams."""
    if backend == "sqlite":
        pytest.skip("SQLite is one machine: its leases are on the host clock")
    lease_s = 60
    with _open(settings, stream_lease_s=lease_s, persist_interval_ms=600_000) as vault:
        uid = vault.users.register("clock@example.com", "password-1").id
        convs = vault.for_user(uid).conversations
        c = convs.create()
        real = utcnow

        def ahead() -> datetime:
            return real() + timedelta(hours=1)

        for module in (conversations_module, streaming_module, backend_base):
            monkeypatch.setattr(module, "utcnow", ahead, raising=False)
        lease = timedelta(seconds=lease_s)

        def db_now() -> datetime:
            with vault.db.read() as conn:
                return conn.execute(sa.text("SELECT now()")).scalar_one()  # type: ignore[no-any-return]

        def assert_db_lease(message_id: str, start: datetime) -> None:
            got = _row(vault, message_id).lease_expires_at
            assert start + lease <= got <= db_now() + lease

        start = db_now()
        m = convs.start_message(c.id)
        assert_db_lease(m.id, start)
        start = db_now()
        convs.append_chunks(m.id, [(1, "a")])
        assert_db_lease(m.id, start)
        start = db_now()
        convs.heartbeat(m.id)
        assert_db_lease(m.id, start)
        with convs.stream(c.id) as reply:
            assert_db_lease(reply.message_id, start)
            start = db_now()
            reply.write("x")
            reply.flush()
            assert_db_lease(reply.message_id, start)
            start = db_now()
            vault.chunk_writer.renew_leases()
            assert_db_lease(reply.message_id, start)
            assert vault.sweep(check_dead_writers=True) == 0
        assert _row(vault, m.id).status == "streaming"


def test_a_reply_never_entered_expires_with_its_lease(settings: Settings) -> None:
    with _open(settings, stream_lease_s=0.3) as vault:
        uid = vault.users.register("never@example.com", "password-1").id
        convs = vault.for_user(uid).conversations
        c = convs.create()
        abandoned = convs.stream(c.id)  # created, then the caller went another way
        assert abandoned not in vault.chunk_writer.active()
        deadline = time.monotonic() + 10
        while convs.get_message(abandoned.message_id).status == "streaming":
            assert time.monotonic() < deadline, "the abandoned reply kept its lease"
            time.sleep(0.05)
        assert convs.get_message(abandoned.message_id).status == "interrupted"
