"""The library streaming writer: bundling, persistence policy, completion, failure,
abandonment — on every backend."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import memvault
from memvault import Settings, Vault


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
