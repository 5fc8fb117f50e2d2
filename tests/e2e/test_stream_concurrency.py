"""Many streams at once keep every byte: through the library (group commit) and
through a two-worker server (chunk posts with batches and resends, SSE followers
that join late or reconnect with ``Last-Event-ID``)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import memvault
from memvault import Settings

from ..conftest import BACKENDS, PgDatabases
from .server import Server, login
from .streaming_support import (
    assert_gapless,
    create_conversation,
    read_all_chunks,
    sse_events,
    start_stream,
    take,
    unicode_deltas,
)


def _chunk_texts(seed: str, n: int) -> list[str]:
    """``n`` chunk texts of one to four deltas each."""
    rng, gen = random.Random(seed), unicode_deltas(seed)
    return ["".join(take(gen, rng.randint(1, 4))) for _ in range(n)]


def _run_threads(targets: list[threading.Thread], timeout: float) -> None:
    for t in targets:
        t.start()
    deadline = time.monotonic() + timeout
    for t in targets:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in targets), "threads did not finish in time"


# -- 3. the library: 100 concurrent streams of 2,000 deltas ----------------------------------


def test_library_many_concurrent_streams_keep_every_byte(settings: Settings) -> None:
    streams, deltas_each, per_conv = 100, 2000, 10
    max_chunk = 256  # small, so a persist often splits its text into several chunks
    with memvault.open(settings, max_chunk_chars=max_chunk) as vault:
        owner = vault.users.register(f"c{uuid.uuid4().hex[:8]}@example.com", "password-1").id
        convs = vault.for_user(owner).conversations
        conv_ids = [convs.create(title=f"busy {i}").id for i in range(streams // per_conv)]
        sent: dict[int, list[str]] = {i: take(unicode_deltas(f"lib-{i}"), deltas_each)
                                      for i in range(streams)}
        message_ids: dict[int, str] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(streams)

        def stream(i: int) -> None:
            try:
                barrier.wait(60)
                with convs.stream(conv_ids[i % len(conv_ids)], author=f"bot-{i}") as reply:
                    message_ids[i] = reply.message_id
                    for k, delta in enumerate(sent[i]):
                        reply.write(delta)
                        if k % 500 == 499:
                            time.sleep(0)  # let the others interleave
                    assert reply.text == "".join(sent[i])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        _run_threads([threading.Thread(target=stream, args=(i,)) for i in range(streams)], 300)
        assert not errors, errors[:3]

        for i, mid in message_ids.items():
            want = "".join(sent[i])
            msg = convs.get_message(mid)
            assert msg.status == "complete"
            assert msg.author == f"bot-{i}"
            assert msg.content == want  # byte for byte
            assert msg.content.encode("utf-8") == want.encode("utf-8")
            chunks, status = convs.chunks(mid)
            assert status == "complete"
            pairs = [(c.seq, c.text) for c in chunks]
            assert_gapless(pairs)
            assert msg.last_chunk_seq == len(pairs)
            assert all(0 < len(t) <= max_chunk for _, t in pairs)
            assert "".join(t for _, t in pairs) == want  # the chunks alone rebuild it
        assert len(message_ids) == streams
        for cid in conv_ids:
            conv = convs.get(cid, include_messages=True)
            assert conv.messages is not None
            assert conv.message_count == per_conv == len(conv.messages)
            assert [m.seq for m in conv.messages] == list(range(1, per_conv + 1))
        assert vault.integrity_check() == []


# -- a two-worker server shared by the HTTP tests of this module -----------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def server2(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Server]:
    """``memvault serve --workers 2`` on a fresh database (one per backend)."""
    dbs = None
    url = None
    if request.param == "postgresql":
        dbs = PgDatabases(request.getfixturevalue("pg_url"))
        url = dbs.create()
    settings = memvault.load_settings(data_dir=tmp_path_factory.mktemp("two-workers") / "data",
                                      database_url=url, password_hash="owasp")
    srv = Server(settings, workers=2).start()
    try:
        yield srv
        log = Path(srv.log).read_text()
        assert "Traceback" not in log, log[-5000:]
    finally:
        srv.stop()
        if dbs is not None:
            dbs.drop_all()


HTTP = pytest.mark.xdist_group("stream-two-workers")


# -- 4. HTTP: 20 concurrent client streams ----------------------------------------------------


@HTTP
def test_http_concurrent_streams_with_batches_and_resends(server2: Server) -> None:
    streams, chunks_each = 20, 100
    with server2.client() as c:
        h = login(c, f"h{uuid.uuid4().hex[:8]}@example.com")
        conv_ids = [create_conversation(c, h, f"http {i}") for i in range(4)]
    texts = {i: _chunk_texts(f"http-{i}", chunks_each) for i in range(streams)}
    results: dict[int, tuple[str, dict[str, int]]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(streams)

    def stream(i: int) -> None:
        rng = random.Random(f"plan-{i}")
        mine = texts[i]
        stats = {"requests": 0, "resends": 0, "conflicts": 0}
        try:
            # Two connections: resends go through the other one (maybe another worker).
            with server2.client() as a, server2.client() as b:
                barrier.wait(60)
                mid = start_stream(a, h, conv_ids[i % len(conv_ids)], author=f"w{i}")
                url = f"/api/messages/{mid}/chunks"
                seq = 0  # highest acknowledged
                while seq < chunks_each:
                    n = 1 if rng.random() < 0.3 else rng.randint(2, 10)
                    lo = seq + 1
                    if seq and rng.random() < 0.15:
                        lo = max(1, seq - rng.randint(0, 2))  # overlap what is stored
                    hi = min(chunks_each, max(lo, seq + 1) + n - 1)
                    items = [{"seq": s, "text": mine[s - 1]} for s in range(lo, hi + 1)]
                    body = items[0] if len(items) == 1 and rng.random() < 0.7 else {
                        "chunks": items}
                    r = a.post(url, json=body, headers=h)
                    stats["requests"] += 1
                    assert r.status_code == 200, r.text
                    assert r.json()["last_seq"] == hi
                    seq = hi
                    if rng.random() < 0.15:  # resend exactly the same request: a no-op
                        r = b.post(url, json=body, headers=h)
                        stats["resends"] += 1
                        assert r.status_code == 200, r.text
                        assert r.json()["last_seq"] == seq
                    if rng.random() < 0.03:  # same seq, other text: refused, nothing changes
                        r = b.post(url, json={"seq": seq, "text": mine[seq - 1] + "x"},
                                   headers=h)
                        stats["conflicts"] += 1
                        assert r.status_code == 409, r.text
                    if rng.random() < 0.03:  # a gap: refused
                        r = b.post(url, json={"seq": seq + 2, "text": "gap"}, headers=h)
                        stats["conflicts"] += 1
                        assert r.status_code == 409, r.text
                r = a.post(f"/api/messages/{mid}/complete", headers=h)
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "complete"
                assert r.json()["content"] == "".join(mine)
                # completing again is a no-op; more chunks are refused
                r = b.post(f"/api/messages/{mid}/complete", json={"status": "complete"},
                           headers=h)
                assert r.status_code == 200 and r.json()["content"] == "".join(mine)
                r = b.post(url, json={"seq": chunks_each + 1, "text": "late"}, headers=h)
                assert r.status_code == 409
                results[i] = (mid, stats)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    _run_threads([threading.Thread(target=stream, args=(i,)) for i in range(streams)], 240)
    assert not errors, errors[:3]
    assert len(results) == streams
    assert sum(s["resends"] for _, s in results.values()) > 0

    with server2.client() as c:
        for i, (mid, _) in results.items():
            want = "".join(texts[i])
            msg = c.get(f"/api/messages/{mid}", headers=h).json()
            assert msg["status"] == "complete"
            assert msg["content"] == want
            assert msg["last_chunk_seq"] == chunks_each
            chunks, done = read_all_chunks(c, h, mid)
            assert_gapless(chunks)
            assert [t for _, t in chunks] == texts[i]
            assert done == {"status": "complete", "last_seq": chunks_each}
        total = 0
        for cid in conv_ids:
            conv = c.get(f"/api/conversations/{cid}", params={"include": "messages"},
                         headers=h).json()
            assert [m["seq"] for m in conv["messages"]] == list(
                range(1, len(conv["messages"]) + 1))
            total += len(conv["messages"])
            for m in conv["messages"]:
                i = int(m["author"][1:])
                assert m["content"] == "".join(texts[i])
        assert total == streams


# -- 5. SSE followers that join late or reconnect ---------------------------------------------


class Follower(threading.Thread):
    """Follows one message over SSE, each (re)connection on a fresh connection.

    ``drops``: after how many chunks (in total) to disconnect and reconnect with
    ``Last-Event-ID``. ``start_after``: an event to wait for before connecting.
    """

    def __init__(self, srv: Server, headers: dict[str, str], message_id: str,
                 drops: list[int] | None = None, start_after: threading.Event | None = None,
                 ) -> None:
        super().__init__(daemon=True)
        self.srv, self.h, self.mid = srv, headers, message_id
        self.drops = sorted(drops or [])
        self.start_after = start_after
        self.got: list[tuple[int, str]] = []
        self.done: dict[str, object] | None = None
        self.connections = 0
        self.first_chunk_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.start_after is not None:
                assert self.start_after.wait(60)
            while self.done is None:
                self._connect()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def _connect(self) -> None:
        h = dict(self.h)
        if self.got:
            h["Last-Event-ID"] = str(self.got[-1][0])
        self.connections += 1
        assert self.connections < 20
        with self.srv.client() as c, c.stream("GET", f"/api/messages/{self.mid}/stream",
                                              headers=h) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"].startswith("text/event-stream")
            for ev in sse_events(r):
                if ev.event == "chunk":
                    assert ev.id == str(ev.data["seq"])
                    if self.first_chunk_at is None:
                        self.first_chunk_at = time.monotonic()
                    self.got.append((ev.data["seq"], ev.data["text"]))
                    if self.drops and len(self.got) >= self.drops[0]:
                        self.drops.pop(0)
                        return  # hang up mid-stream; reconnect
                elif ev.event == "done":
                    self.done = ev.data
                    return
        raise AssertionError("the stream ended without a done event")


@HTTP
def test_sse_followers_get_the_full_text_exactly_once(server2: Server) -> None:
    n_chunks = 120
    rng = random.Random()
    gen = unicode_deltas(f"sse-{rng.random()}")
    texts = ["".join(take(gen, rng.randint(1, 5))) for _ in range(n_chunks)]
    with server2.client() as c:
        h = login(c, f"s{uuid.uuid4().hex[:8]}@example.com")
        conv_id = create_conversation(c, h, "followed")
        mid = start_stream(c, h, conv_id)

    midway = threading.Event()
    finished_at: list[float] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with server2.client() as w:
                seq = 0
                while seq < n_chunks:
                    n = 1 if rng.random() < 0.7 else 3
                    items = [{"seq": s + 1, "text": texts[s]}
                             for s in range(seq, min(n_chunks, seq + n))]
                    body = items[0] if len(items) == 1 else {"chunks": items}
                    r = w.post(f"/api/messages/{mid}/chunks", json=body, headers=h)
                    assert r.status_code == 200, r.text
                    seq = items[-1]["seq"]
                    if seq >= 40:
                        midway.set()
                    time.sleep(0.01)
                finished_at.append(time.monotonic())
                r = w.post(f"/api/messages/{mid}/complete", headers=h)
                assert r.status_code == 200, r.text
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            midway.set()

    late = Follower(server2, h, mid, start_after=midway)
    hopper = Follower(server2, h, mid, drops=sorted(rng.sample(range(5, n_chunks - 5), 3)))
    early_late_hopper = Follower(server2, h, mid, drops=[rng.randint(45, 80)],
                                 start_after=midway)
    followers = [late, hopper, early_late_hopper]
    for f in followers:
        f.start()
    time.sleep(0.2)  # the hopper is connected before the first chunk
    writer = threading.Thread(target=write)
    _run_threads([writer], 120)
    for f in followers:
        f.join(60)
        assert not f.is_alive(), "a follower never saw the end"
    assert not errors, errors
    for f in followers:
        assert f.error is None, f.error
        assert_gapless(f.got)  # every seq once, in order, across reconnects
        assert len(f.got) == n_chunks
        assert "".join(t for _, t in f.got) == "".join(texts)
        assert f.done == {"status": "complete", "last_seq": n_chunks}
        assert f.first_chunk_at is not None and f.first_chunk_at < finished_at[0], \
            "the follower should have joined while the stream was live"
    assert hopper.connections == 4 and early_late_hopper.connections == 2

    # One who comes after the end gets it all at once, and a resume point past
    # the end gets only the done event.
    with server2.client() as c:
        chunks, done = read_all_chunks(c, h, mid)
        assert [t for _, t in chunks] == texts
        assert done == {"status": "complete", "last_seq": n_chunks}
        chunks, done = read_all_chunks(c, h, mid, after=n_chunks - 2)
        assert [s for s, _ in chunks] == [n_chunks - 1, n_chunks]
        chunks, done = read_all_chunks(c, h, mid, after=n_chunks)
        assert chunks == [] and done["status"] == "complete"


# -- text that no backend can store is refused mid-stream, and the stream goes on ------------

NOT_TEXT = ["a\x00b", "\ud800", "ok \udfff"]


def test_library_refuses_bad_deltas_without_breaking_the_stream(vault: memvault.Vault,
                                                                user_id: str) -> None:
    convs = vault.for_user(user_id).conversations
    conv_id = convs.create(title="bad deltas").id
    with convs.stream(conv_id) as reply:
        reply.write("héllo ")
        for bad in NOT_TEXT:
            with pytest.raises(memvault.Invalid):
                reply.write(bad)
        reply.write("wörld 🙂")
    msg = convs.get_message(reply.message_id)
    assert msg.status == "complete" and msg.content == "héllo wörld 🙂"
    assert "".join(c.text for c in convs.chunks(reply.message_id)[0]) == msg.content
    for bad in NOT_TEXT:
        with pytest.raises(memvault.Invalid):
            convs.append(conv_id, "user", bad)
    assert convs.get(conv_id).message_count == 1


@HTTP
def test_http_refuses_text_that_is_not_storable(server2: Server) -> None:
    with server2.client() as c:
        h = login(c, f"b{uuid.uuid4().hex[:8]}@example.com")
        conv_id = create_conversation(c, h, "bad text")
        mid = start_stream(c, h, conv_id)

        def post(path: str, body: object) -> httpx.Response:
            # json.dumps escapes as \uXXXX: valid JSON even for a lone surrogate
            return c.post(path, content=json.dumps(body).encode(),
                          headers={**h, "content-type": "application/json"})

        url = f"/api/messages/{mid}/chunks"
        assert post(url, {"seq": 1, "text": "héllo "}).status_code == 200
        for bad in NOT_TEXT:
            r = post(url, {"seq": 2, "text": bad})
            assert r.status_code == 422, r.text
            r = post(url, {"chunks": [{"seq": 2, "text": "fine"}, {"seq": 3, "text": bad}]})
            assert r.status_code == 422, r.text  # all or nothing
            for status in ("complete", "streaming"):
                r = post(f"/api/conversations/{conv_id}/messages",
                         {"role": "assistant", "status": status, "content": bad})
                assert r.status_code == 422, r.text
        r = post(url, {"chunks": [{"seq": 2, "text": "wörld"}, {"seq": 3, "text": " 🙂"}]})
        assert r.status_code == 200 and r.json()["last_seq"] == 3
        r = c.post(f"/api/messages/{mid}/complete", headers=h)
        assert r.status_code == 200 and r.json()["content"] == "héllo wörld 🙂"
        conv = c.get(f"/api/conversations/{conv_id}", params={"include": "messages"},
                     headers=h).json()
        assert conv["message_count"] == 1  # no refused message was half-created
        assert [m["content"] for m in conv["messages"]] == ["héllo wörld 🙂"]
