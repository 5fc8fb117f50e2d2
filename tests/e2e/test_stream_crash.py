"""Streams survive crashes: what a writer was told is durable is there after
``kill -9`` (of a library writer process or of the server), in order and without
gaps, and the message ends ``interrupted``; a graceful restart changes nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

import memvault
from memvault import Settings
from memvault.backends.schema import messages

from ..conftest import server_env
from .server import Server, login, reap
from .streaming_support import (
    assert_gapless,
    create_conversation,
    read_all_chunks,
    start_stream,
    take,
    unicode_deltas,
)

REPO = Path(__file__).resolve().parents[2]
SLOW = os.environ.get("MEMVAULT_SLOW") == "1"


# -- 1. a library writer process killed mid-stream ------------------------------------------


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"writer exited early (rc={proc.poll()}):\n{err[-3000:]}")
    if time.monotonic() > deadline:
        raise AssertionError("writer too slow")
    return line.rstrip("\n")


def _crash_once(settings: Settings, owner: str, conv_id: str, rng: random.Random,
                tmp: Path) -> None:
    seed = f"crash-{rng.random()}"
    every = rng.choice([1, 3, 5, 7])
    env = server_env(settings, persist_chunk_tokens=every, persist_interval_ms=600_000,
                     stream_bundle_tokens=rng.choice([1, 4, 20]))
    env["PYTHONUNBUFFERED"] = "1"
    errlog = tmp / f"writer-{seed}.err"
    with open(errlog, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.stream_writer", owner, conv_id, seed],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
            text=True, encoding="utf-8")
    try:
        deadline = time.monotonic() + 60
        first = _read_line(proc, deadline)
        assert first.startswith("ready "), first
        message_id = first.split()[1]
        # Kill at a random point: after some acknowledgements, plus a random delay
        # that is not synchronised with the writer's persists.
        acks_read = [_read_line(proc, deadline) for _ in range(rng.randint(1, 120))]
        assert all(line.startswith("ack ") for line in acks_read), acks_read
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        # Everything it printed before dying was acknowledged as durable.
        assert proc.stdout is not None
        lines = [first, *acks_read, *proc.stdout.read().splitlines()]
    finally:
        reap(proc)
    assert proc.returncode == -signal.SIGKILL, errlog.read_text()[-3000:]
    acks = [tuple(map(int, ln.split()[1:])) for ln in lines if ln.startswith("ack ")]
    assert acks and not any(ln.startswith("end ") for ln in lines)
    acked_seq, acked_len = acks[-1]
    assert [a[0] for a in acks] == sorted(a[0] for a in acks)

    with memvault.open(settings) as vault:  # marks the dead writer's stream interrupted
        convs = vault.for_user(owner).conversations
        msg = convs.get_message(message_id)
        chunks, status = convs.chunks(message_id)
        assert status == "interrupted"
        assert msg.status == "interrupted" and msg.completed_at is not None
        pairs = [(c.seq, c.text) for c in chunks]
        assert_gapless(pairs)
        n = len(pairs)
        assert n >= acked_seq, f"acknowledged chunk {acked_seq} lost; only {n} stored"
        assert n <= acked_seq + 1, "more chunks than the writer could have made durable"
        text = "".join(t for _, t in pairs)
        # What the writer sent, cut as it cuts: a chunk every `every` deltas (a cut
        # of only empty deltas makes none). The stored chunks are exactly a prefix.
        gen = unicode_deltas(seed)
        cuts: list[str] = []
        while len(cuts) < n:
            cut = "".join(take(gen, every))
            if cut:
                cuts.append(cut)
        assert [t for _, t in pairs] == cuts, "stored text is not what the writer sent"
        assert len("".join(cuts[:acked_seq])) == acked_len
        assert msg.content == text
        assert msg.last_chunk_seq == n
        assert msg.author == "bot" and msg.role == "assistant"
        assert vault.integrity_check() == []
        # The conversation still reads whole, and the message stays interrupted.
        conv = convs.get(conv_id, include_messages=True)
        assert conv.messages is not None
        assert [m.id for m in conv.messages] == [message_id]
        assert conv.messages[0].content == text
        assert conv.messages[0].status == "interrupted"
        assert vault.sweep(check_dead_writers=True) == 0


def _crash_runs(settings: Settings, tmp_path: Path, runs: int) -> None:
    with memvault.open(settings) as vault:
        owner = vault.users.register(f"w{uuid.uuid4().hex[:8]}@example.com", "password-1").id
        convs = vault.for_user(owner).conversations
        conv_ids = [convs.create(title=f"crash {i}").id for i in range(runs)]
    seed = os.environ.get("MEMVAULT_TEST_SEED") or uuid.uuid4().hex
    rng = random.Random(seed)
    for i, conv_id in enumerate(conv_ids):
        try:
            _crash_once(settings, owner, conv_id, rng, tmp_path)
        except AssertionError as exc:
            raise AssertionError(f"run {i} failed (MEMVAULT_TEST_SEED={seed}): {exc}") from exc


def test_library_writer_killed_mid_stream(settings: Settings, tmp_path: Path) -> None:
    _crash_runs(settings, tmp_path, 3)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="slow tier: set MEMVAULT_SLOW=1 to run 20+ crash repetitions")
def test_library_writer_killed_mid_stream_many(settings: Settings, tmp_path: Path) -> None:
    _crash_runs(settings, tmp_path, 20)


def test_lease_expiry_interrupts_a_stream_of_a_live_foreign_writer(settings: Settings) -> None:
    """A writer on another host cannot be checked for life: only its lease ends it."""
    lease = 1.5
    with memvault.open(settings, stream_lease_s=lease) as vault:
        owner = vault.users.register(f"l{uuid.uuid4().hex[:8]}@example.com", "password-1").id
        convs = vault.for_user(owner).conversations
        conv_id = convs.create(title="lease").id
        msg = convs.start_message(conv_id, author="remote")
        convs.append_chunks(msg.id, [(1, "héllo "), (2, "wörld 🙂")])
        # Pretend another machine writes it: the dead-writer check must not apply.
        with vault.db.write() as conn:
            conn.execute(messages.update().where(messages.c.id == msg.id)
                         .values(writer="some-other-host:1"))
        assert vault.sweep(check_dead_writers=True) == 0
        assert convs.get_message(msg.id).status == "streaming"
        deadline = time.monotonic() + 15
        while convs.get_message(msg.id).status == "streaming":  # the periodic sweep
            assert time.monotonic() < deadline, "lease expired but the sweep did not run"
            time.sleep(0.1)
        got = convs.get_message(msg.id)
        assert got.status == "interrupted" and got.content == "héllo wörld 🙂"
        assert convs.chunks(msg.id)[1] == "interrupted"


# -- 2. the server killed while an HTTP client streams -------------------------------------

#: A short lease for the tests where an HTTP client's stream must end with it.
HTTP_LEASE_S = 2


def test_server_killed_while_client_streams(settings: Settings) -> None:
    rng = random.Random()
    deltas = unicode_deltas(f"http-crash-{rng.random()}")
    texts = ["".join(take(deltas, rng.randint(1, 6))) for _ in range(3000)]
    acked: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    srv = Server(settings, stream_lease_s=HTTP_LEASE_S).start()
    try:
        with srv.client() as c:
            h = login(c, "crash@example.com")
            conv_id = create_conversation(c, h, "server crash")
            c.post(f"/api/conversations/{conv_id}/messages",
                   json={"role": "user", "content": "tell me a long story"},
                   headers=h).raise_for_status()
            message_id = start_stream(c, h, conv_id)

        def post_chunks() -> None:
            with srv.client() as wc:
                seq = 0
                try:
                    while seq < len(texts) and not stop.is_set():
                        batch = rng.randint(1, 4)
                        items = [{"seq": s + 1, "text": texts[s]}
                                 for s in range(seq, min(seq + batch, len(texts)))]
                        body = items[0] if len(items) == 1 else {"chunks": items}
                        r = wc.post(f"/api/messages/{message_id}/chunks", json=body, headers=h)
                        assert r.status_code == 200, r.text
                        assert r.json()["last_seq"] == items[-1]["seq"]
                        seq = items[-1]["seq"]
                        acked.append(seq)
                except httpx.TransportError:
                    return  # the server died under us
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

        writer = threading.Thread(target=post_chunks)
        writer.start()
        want = rng.randint(20, 150)
        deadline = time.monotonic() + 60
        while len(acked) < want and writer.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
        srv.kill()
        stop.set()
        writer.join(30)
        assert not errors, errors
        assert acked, "no chunk was acknowledged before the kill"
    finally:
        srv.kill()

    last_acked = acked[-1]
    with Server(settings, stream_lease_s=HTTP_LEASE_S) as srv2, srv2.client() as c:
        h = login(c, "crash@example.com")
        # The client (the stream's writer) is gone too: its lease lapses, and then
        # the sweep marks the message interrupted.
        deadline = time.monotonic() + 30
        while True:
            r = c.get(f"/api/messages/{message_id}", headers=h)
            assert r.status_code == 200, r.text
            msg = r.json()
            if msg["status"] != "streaming":
                break
            assert time.monotonic() < deadline, "the lease lapsed but nothing swept it"
            time.sleep(0.1)
        assert msg["status"] == "interrupted", msg
        n = msg["last_chunk_seq"]
        assert n >= last_acked
        assert msg["content"] == "".join(texts[:n])
        chunks, done = read_all_chunks(c, h, message_id)
        assert_gapless(chunks)
        assert len(chunks) == n
        assert [t for _, t in chunks] == texts[:n]
        assert done == {"status": "interrupted", "last_seq": n}
        # It takes no more chunks, and the conversation reads whole.
        r = c.post(f"/api/messages/{message_id}/chunks",
                   json={"seq": n + 1, "text": "late"}, headers=h)
        assert r.status_code == 409
        conv = c.get(f"/api/conversations/{conv_id}", params={"include": "messages"},
                     headers=h).json()
        assert [m["status"] for m in conv["messages"]] == ["complete", "interrupted"]
        assert conv["messages"][1]["content"] == msg["content"]
    with memvault.open(settings) as vault:
        assert vault.integrity_check() == []


# -- 3. a worker killed while a client streams through it ----------------------------------


def test_killing_a_worker_leaves_a_client_stream_alive(settings: Settings) -> None:
    """An HTTP stream's writer is its client, not the worker that served a chunk:
    kill -9 that worker, and the stream carries on through another one."""
    texts = [f"part {i} · ünï 🙂 " for i in range(40)]
    srv = Server(settings, workers=2).start()
    try:
        with srv.client() as c:  # one keep-alive connection: one worker serves it all
            h = login(c, "worker-crash@example.com")
            conv_id = create_conversation(c, h, "worker crash")
            message_id = start_stream(c, h, conv_id)
            for seq in range(1, 21):
                r = c.post(f"/api/messages/{message_id}/chunks",
                           json={"seq": seq, "text": texts[seq - 1]}, headers=h)
                assert r.status_code == 200, r.text
            victim = srv.worker_serving(c, r)
            log_start = srv.log_size()
            os.kill(victim, signal.SIGKILL)
        # uvicorn starts a worker in its place; its vault sweeps dead writers on open.
        srv.wait_started(1, log_start)
        assert victim not in srv.worker_pids()
        with srv.client() as c:
            r = c.post(f"/api/messages/{message_id}/heartbeat", headers=h)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "streaming"
            for seq in range(21, 41):
                r = c.post(f"/api/messages/{message_id}/chunks",
                           json={"seq": seq, "text": texts[seq - 1]}, headers=h)
                assert r.status_code == 200, r.text
            r = c.post(f"/api/messages/{message_id}/complete", headers=h)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "complete"
            assert r.json()["content"] == "".join(texts)
    finally:
        srv.kill()


# -- 6. a graceful restart keeps everything, streaming messages included -------------------


def test_graceful_restart_keeps_conversations_and_streams(settings: Settings) -> None:
    rng = random.Random()
    deltas = unicode_deltas(f"restart-{rng.random()}")
    with Server(settings) as srv, srv.client() as c:
        h = login(c, "restart@example.com")
        convs: list[str] = []
        expected: dict[str, str] = {}
        open_streams: dict[str, list[str]] = {}
        for i in range(3):
            conv_id = create_conversation(c, h, f"restart {i} ✓")
            convs.append(conv_id)
            r = c.post(f"/api/conversations/{conv_id}/messages",
                       json={"role": "user", "content": "".join(take(deltas, 20)),
                             "metadata": {"i": i, "note": "ünï"}}, headers=h)
            assert r.status_code == 201
            # one finished stream
            done_id = start_stream(c, h, conv_id)
            parts = ["".join(take(deltas, 3)) for _ in range(25)]
            r = c.post(f"/api/messages/{done_id}/chunks",
                       json={"chunks": [{"seq": k + 1, "text": t} for k, t in enumerate(parts)]},
                       headers=h)
            assert r.status_code == 200
            r = c.post(f"/api/messages/{done_id}/complete", headers=h)
            assert r.status_code == 200 and r.json()["content"] == "".join(parts)
            expected[done_id] = "".join(parts)
            # one still streaming, with chunks
            live_id = start_stream(c, h, conv_id, author="live-bot")
            parts = ["".join(take(deltas, 2)) for _ in range(7 + i)]
            for k, t in enumerate(parts):
                assert c.post(f"/api/messages/{live_id}/chunks", json={"seq": k + 1, "text": t},
                              headers=h).status_code == 200
            expected[live_id] = "".join(parts)
            open_streams[live_id] = parts
        before = {cid: c.get(f"/api/conversations/{cid}", params={"include": "messages"},
                             headers=h).json() for cid in convs}
        listing = c.get("/api/conversations", headers=h).json()
    # (the with-block stopped the server gracefully: SIGTERM, lifespan shutdown)

    with Server(settings) as srv, srv.client() as c:
        h = login(c, "restart@example.com")
        after = {cid: c.get(f"/api/conversations/{cid}", params={"include": "messages"},
                            headers=h).json() for cid in convs}
        assert after == before
        assert c.get("/api/conversations", headers=h).json() == listing
        for conv in after.values():
            for m in conv["messages"]:
                if m["id"] in expected:
                    assert m["content"] == expected[m["id"]]
        for live_id, parts in open_streams.items():
            n = len(parts)
            msg = c.get(f"/api/messages/{live_id}", headers=h).json()
            assert msg["status"] == "streaming" and msg["last_chunk_seq"] == n
            assert msg["content"] == expected[live_id]
            # The client carries on where it was: a resend is idempotent, then more.
            r = c.post(f"/api/messages/{live_id}/chunks",
                       json={"seq": n, "text": parts[-1]}, headers=h)
            assert r.status_code == 200 and r.json()["last_seq"] == n
            r = c.post(f"/api/messages/{live_id}/chunks", json={"seq": n + 1, "text": " fin"},
                       headers=h)
            assert r.status_code == 200
            r = c.post(f"/api/messages/{live_id}/complete", headers=h)
            assert r.status_code == 200
            assert r.json()["status"] == "complete"
            assert r.json()["content"] == expected[live_id] + " fin"
    with memvault.open(settings) as vault:
        assert vault.integrity_check() == []

