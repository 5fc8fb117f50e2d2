"""Live fan-out across replicas: two ``memvault serve`` processes on one
PostgreSQL database; chunks written over HTTP to one reach a follower of the
other's SSE stream, in order and at once — pushed by LISTEN/NOTIFY, or by Redis
pub/sub. The safety-net poll is set to 30 s, so only the push path can deliver
within the bound asserted here."""

from __future__ import annotations

import contextlib
import queue
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import memvault

from ..conftest import BACKENDS, PgDatabases
from .server import Server, login
from .streaming_support import create_conversation, sse_events, start_stream

pytestmark = pytest.mark.skipif("postgresql" not in BACKENDS,
                                reason="replicas share a PostgreSQL database")

SAFETY_NET_POLL_MS = 30_000
CHUNKS = 30
#: Far below the safety net; a pushed chunk typically arrives in a few ms.
MAX_DELIVERY_S = 2.0


def _wait_for_log(server: Server, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged:\n{server.log.read_text()[-3000:]}")
        time.sleep(0.02)


def _follow(server: Server, headers: dict[str, str], message_id: str,
            out: queue.Queue[tuple[float, str, Any]]) -> None:
    try:
        with server.client() as c, c.stream("GET", f"/api/messages/{message_id}/stream",
                                             headers=headers, timeout=60) as r:
            assert r.status_code == 200
            for ev in sse_events(r):
                out.put((time.monotonic(), ev.event, ev.data))
                if ev.event == "done":
                    return
    except BaseException as exc:  # noqa: BLE001 - reported to the test thread
        out.put((time.monotonic(), "error", repr(exc)))


@pytest.mark.parametrize("medium", ["notify", "redis"])
def test_a_follower_on_another_replica_gets_every_chunk_at_once(
        medium: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    dbs = PgDatabases(request.getfixturevalue("pg_url"))
    url = dbs.create()
    extra: dict[str, Any] = {"live_poll_ms": SAFETY_NET_POLL_MS}
    if medium == "redis":
        extra["pubsub_url"] = request.getfixturevalue("redis_server").url
    settings = {name: memvault.load_settings(data_dir=tmp_path / name / "data",
                                             database_url=url, password_hash="owasp",
                                             embedder="hash")
                for name in ("writer", "follower")}
    events: queue.Queue[tuple[float, str, Any]] = queue.Queue()
    try:
        a, b = Server(settings["writer"], **extra), Server(settings["follower"], **extra)
        with contextlib.ExitStack() as stack, ThreadPoolExecutor(2) as pool:
            for server in (a, b):
                stack.callback(server.stop)
            list(pool.map(Server.start, (a, b)))  # side by side: half the wait
            on_a = stack.enter_context(a.client())
            auth = login(on_a, "fanout@example.com")
            conv = create_conversation(on_a, auth, "fan-out")
            mid = start_stream(on_a, auth, conv)
            chunks = f"/api/messages/{mid}/chunks"
            assert on_a.post(chunks, json={"seq": 1, "text": "c1 "}, headers=auth).is_success
            follower = threading.Thread(target=_follow, args=(b, auth, mid, events), daemon=True)
            follower.start()
            first = events.get(timeout=30)
            assert first[1:] == ("chunk", {"seq": 1, "text": "c1 "}), first
            # The follower's server listens once a follower subscribed; from then on
            # it polls every 30 s only, so whatever arrives sooner was pushed.
            _wait_for_log(b, "live fan-out: listening")
            time.sleep(0.2)  # past the fast polls of its first moments

            latencies: list[float] = []
            for seq in range(2, CHUNKS + 1):
                sent = time.monotonic()
                r = on_a.post(chunks, json={"seq": seq, "text": f"c{seq} "}, headers=auth)
                assert r.status_code == 200, r.text
                at, kind, data = events.get(timeout=MAX_DELIVERY_S + 5)
                assert (kind, data) == ("chunk", {"seq": seq, "text": f"c{seq} "}), (kind, data)
                latencies.append(at - sent)  # from the POST's start: conservative
            sent = time.monotonic()
            assert on_a.post(f"/api/messages/{mid}/complete", headers=auth).is_success
            at, kind, data = events.get(timeout=MAX_DELIVERY_S + 5)
            assert (kind, data) == ("done", {"status": "complete", "last_seq": CHUNKS})
            assert at - sent < MAX_DELIVERY_S
            follower.join(10)
            assert events.empty()
            assert max(latencies) < MAX_DELIVERY_S, latencies
            print(f"{medium}: cross-replica delivery p50 {statistics.median(latencies) * 1e3:.1f}"
                  f" ms, max {max(latencies) * 1e3:.1f} ms")
            log = b.log.read_text(errors="replace")
            assert "not listening" not in log and "cannot announce" not in log
    finally:
        dbs.drop_all()
