"""Live fan-out between vaults on one database (``fanout.py``), library level:
PostgreSQL LISTEN/NOTIFY and Redis pub/sub wake another vault's followers, and
the listener reconnects after its connection is killed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

import memvault
from memvault import Settings, Vault
from memvault.fanout import MAX_PARTS, MAX_PAYLOAD, Fanout, encode_payloads
from memvault.live import FAST_POLL_S

from ..conftest import BACKENDS, PgDatabases

LONG_POLL_MS = 60_000


def _until(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def test_payloads_are_split_then_become_wake_all() -> None:
    ids = [f"{i:036d}" for i in range(500)]
    parts = encode_payloads("o1", ids)
    assert 1 < len(parts) <= MAX_PARTS
    assert all(len(p.encode()) <= MAX_PAYLOAD for p in parts)
    assert sorted(i for p in parts for i in p.split(" ", 1)[1].split(",")) == ids
    assert encode_payloads("o1", [f"{i:036d}" for i in range(5000)]) == ["o1 *"]
    assert encode_payloads("o1", ["a"]) == ["o1 a"]


@pytest.fixture(params=["notify", "redis", "sqlite+redis"])
def medium(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """Settings for vaults sharing one database, with a long safety-net poll."""
    kind = str(request.param)
    extra: dict[str, Any] = {}
    if "redis" in kind:
        extra["pubsub_url"] = request.getfixturevalue("redis_server").url
    if kind == "sqlite+redis":
        if "sqlite" not in BACKENDS:
            pytest.skip("SQLite not among the test backends")
        yield kind, memvault.load_settings(data_dir=tmp_path / "data", password_hash="owasp",
                                           embedder="hash", live_poll_ms=LONG_POLL_MS, **extra)
        return
    if "postgresql" not in BACKENDS:
        pytest.skip("PostgreSQL not among the test backends")
    dbs = PgDatabases(request.getfixturevalue("pg_url"))
    try:
        yield kind, memvault.load_settings(
            data_dir=tmp_path / "data", database_url=dbs.create(), password_hash="owasp",
            embedder="hash", live_poll_ms=LONG_POLL_MS, **extra)
    finally:
        dbs.drop_all()


class Follower:
    """Records the events a vault's hub delivers for one message."""

    def __init__(self, vault: Vault, owner: str, message_id: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.woken = threading.Event()
        self.unsubscribe = vault.for_user(owner).conversations.subscribe(message_id, self._on)

    def _on(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.woken.set()


def _relay(vault: Vault) -> Fanout:
    assert vault.fanout is not None
    return vault.fanout


def test_a_commit_in_one_vault_wakes_the_other_vaults_followers(
        medium: tuple[str, Settings]) -> None:
    kind, settings = medium
    with memvault.open(settings) as writer, memvault.open(settings) as reader:
        assert _relay(writer).medium == ("postgresql" if kind == "notify" else "redis")
        uid = writer.users.register("fan@example.com", "password-1").id
        convs = writer.for_user(uid).conversations
        conv = convs.create()
        with convs.stream(conv.id, author="bot") as reply:
            follower = Follower(reader, uid, reply.message_id)
            own = Follower(writer, uid, reply.message_id)
            _until(lambda: _relay(reader).healthy and _relay(writer).healthy)
            assert reader.hub.poll_interval_s == LONG_POLL_MS / 1000
            follower.events.clear()
            own.events.clear()
            for i in range(20):
                follower.woken.clear()
                reply.write(f"t{i}")
                reply.flush()
                assert follower.woken.wait(5), f"chunk {i + 1} woke nobody"
            follower.woken.clear()
        assert follower.woken.wait(5), "the end woke nobody"
        # Only wakes cross processes (the database has the chunks) ...
        assert {e["type"] for e in follower.events} == {"wake"}
        # ... and a vault never hears its own announcements back.
        assert [e["type"] for e in own.events if e["type"] != "bundle"] == ["chunk"] * 20 + [
            "done"]
        follower.unsubscribe()
        own.unsubscribe()


def _kill_listener(kind: str, settings: Settings) -> None:
    if kind == "notify":
        assert settings.database_url is not None
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = 'memvault-live' "
                                  "AND datname = current_database()").fetchall()
        assert killed, "no listener connection found"
    else:
        assert settings.pubsub_url is not None
        with redis.Redis.from_url(settings.pubsub_url) as client:
            assert client.client_kill_filter(_type="pubsub") >= 1


def test_the_listener_reconnects_after_its_connection_is_killed(
        medium: tuple[str, Settings]) -> None:
    kind, settings = medium
    if kind == "sqlite+redis":
        pytest.skip("the Redis case is covered with PostgreSQL")
    with memvault.open(settings) as writer, memvault.open(settings) as reader:
        uid = writer.users.register("re@example.com", "password-1").id
        convs = writer.for_user(uid).conversations
        with convs.stream(convs.create().id) as reply:
            follower = Follower(reader, uid, reply.message_id)
            relay = _relay(reader)
            _until(lambda: relay.healthy and relay.connections == 1)
            _kill_listener(kind, settings)
            # Noticed at once (the socket closes), then back after a short back-off;
            # meanwhile followers poll fast, and on return they are woken to re-read.
            _until(lambda: relay.connections == 2 and relay.healthy)
            assert follower.events and follower.events[-1]["type"] == "wake"
            assert reader.hub.poll_interval_s == LONG_POLL_MS / 1000
            follower.woken.clear()
            reply.write("after")
            reply.flush()
            assert follower.woken.wait(5), "no wake after the reconnect"
    # Closed: no thread left behind (open connections would fail the suite's
    # ResourceWarning filter).
    assert not relay.healthy
    assert not [t for t in threading.enumerate() if t.name.startswith("memvault-fanout")]


def test_fanout_off_and_sqlite_alone_poll_fast(tmp_path: Path) -> None:
    settings = memvault.load_settings(data_dir=tmp_path / "a", embedder="hash",
                                      password_hash="owasp")
    with memvault.open(settings) as vault:
        assert vault.fanout is None and vault.hub.poll_interval_s == FAST_POLL_S
    with memvault.open(settings, live_fanout="off", pubsub_url="redis://127.0.0.1:1/0") as vault:
        assert vault.fanout is None
