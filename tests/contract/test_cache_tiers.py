"""The network tiers of the cache (``cache/redis_tier.py``, ``cache/memcached_tier.py``)
on real servers: round trips, expiry, per-namespace clear, keys spread over the
Memcached servers, SASL, claims across two tier instances, and outages (``kill -9``
mid-test: no call raises, one warning per outage, recovery after a restart).

The cache's behaviour on every tier (memory, database, Redis, Memcached) is the
contract suite ``test_cache.py``; these are the tiers' own guarantees the core
relies on. Each test uses its own owner, so tests share the session's servers.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bmemcached.protocol import Protocol
from structlog.testing import capture_logs

import memvault
from memvault import Settings
from memvault.cache.memcached_tier import MemcachedTier
from memvault.cache.redis_tier import RedisTier
from memvault.cache.tiers import CacheKey, Claim, Entry
from memvault.errors import ConfigError
from tests.servers import SASL_PASSWORD, SASL_USER, MemcachedServer, RedisServer

Tier = RedisTier | MemcachedTier

ODD_KEYS = ["plain", "with space", "tab\tand\nnewline", "ünïcödé 🔑", "*?[glob]\\", "",
            "x" * 10_000, "lone \udc80 surrogate", "memvault:cache:looks-like-a-prefix"]


@pytest.fixture
def tier_settings(tmp_path: Path) -> Settings:
    return memvault.load_settings(data_dir=tmp_path / "data")


def _memcached(servers: list[MemcachedServer], settings: Settings, *,
               password: str | None = SASL_PASSWORD) -> MemcachedTier:
    user = SASL_USER if any(s.sasl for s in servers) else None
    return MemcachedTier([s.address for s in servers], user, password if user else None,
                         settings)


@pytest.fixture(params=["redis", "memcached"])
def make_tier(request: pytest.FixtureRequest, tier_settings: Settings
              ) -> Iterator[Callable[[], Tier]]:
    """Makes tier instances on the session's server(s) (two, for claims)."""
    made: list[Tier] = []

    def make() -> Tier:
        tier: Tier
        if request.param == "redis":
            tier = RedisTier(request.getfixturevalue("redis_server").url, tier_settings)
        else:
            tier = _memcached(request.getfixturevalue("memcached_servers"), tier_settings)
        made.append(tier)
        return tier

    yield make
    for tier in made:
        tier.close()


@pytest.fixture
def tier(make_tier: Callable[[], Tier]) -> Tier:
    return make_tier()


@pytest.fixture
def owner() -> str:
    return f"u-{uuid.uuid4().hex}"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def outage_logs(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"].startswith("cache server unreachable")]


# -- entries --------------------------------------------------------------------------

def test_round_trip_with_any_key(tier: Tier, owner: str) -> None:
    later = time.time() + 3600
    entries = {CacheKey(owner, "ns", k): Entry(f"v{i}".encode(), later if i % 2 else None)
               for i, k in enumerate(ODD_KEYS)}
    tier.set_many(entries)
    missing = CacheKey(owner, "ns", "never set")
    got = tier.get_many([*entries, missing])
    assert set(got) == set(entries)
    for key, entry in entries.items():
        assert got[key].value == entry.value
        if entry.expires_at is None:
            assert got[key].expires_at is None
        else:
            assert got[key].expires_at == pytest.approx(entry.expires_at, abs=0.001)
    # a second write replaces; bytes survive as they are
    first = CacheKey(owner, "ns", ODD_KEYS[0])
    tier.set_many({first: Entry(b"\x00\xff binary", None)})
    assert tier.get_many([first])[first].value == b"\x00\xff binary"
    assert tier.delete(first) is True
    assert tier.delete(first) is False
    assert tier.get_many([first]) == {}
    assert tier.get_many([]) == {}
    assert tier.sweep() == 0


def test_entries_expire(tier: Tier, owner: str) -> None:
    short, long_ = CacheKey(owner, "ns", "short"), CacheKey(owner, "ns", "long")
    tier.set_many({short: Entry(b"s", time.time() + 0.3), long_: Entry(b"l", time.time() + 60)})
    assert set(tier.get_many([short, long_])) == {short, long_}
    wait_for(lambda: short not in tier.get_many([short]), timeout=3)
    assert set(tier.get_many([short, long_])) == {long_}
    # writing an entry that has already expired removes the one that was there
    tier.set_many({long_: Entry(b"old", time.time() - 1)})
    assert tier.get_many([long_]) == {}


def test_clear_touches_one_namespace_of_one_owner(tier: Tier, owner: str) -> None:
    other_owner = owner + "-other"
    keys = [CacheKey(o, ns, k) for o in (owner, other_owner) for ns in ("a", "b")
            for k in ("1", "2")]
    tier.set_many({k: Entry(k.key.encode(), None) for k in keys})
    tier.clear(owner, "a")
    left = tier.get_many(keys)
    assert set(left) == {k for k in keys if (k.owner, k.namespace) != (owner, "a")}
    # the namespace works again after a clear
    again = CacheKey(owner, "a", "1")
    tier.set_many({again: Entry(b"new", None)})
    assert tier.get_many([again])[again].value == b"new"
    tier.clear(owner, "never used")  # nothing to clear: no error


def test_fifty_threads_share_a_tier(tier: Tier, owner: str) -> None:
    shared = CacheKey(owner, "ns", "shared")
    tier.set_many({shared: Entry(b"shared", None)})
    errors: list[str] = []

    def work(i: int) -> None:
        mine = CacheKey(owner, "ns", f"thread {i}")
        for j in range(20):
            tier.set_many({mine: Entry(f"{i}/{j}".encode(), None)})
            got = tier.get_many([mine, shared])
            if got != {mine: Entry(f"{i}/{j}".encode(), None), shared: Entry(b"shared", None)}:
                errors.append(f"thread {i}: {got}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- claims ---------------------------------------------------------------------------

def test_claims_across_two_instances(make_tier: Callable[[], Tier], owner: str) -> None:
    one, two = make_tier(), make_tier()
    key = CacheKey(owner, "ns", "slow call")
    assert one.claim(key, "holder-1", 30) is True
    assert two.claim(key, "holder-2", 30) is False
    assert two.claim_state(key) == Claim("holder-1", None)
    two.release(key, "holder-2")  # not its claim: nothing happens
    assert one.claim_state(key) == Claim("holder-1", None)
    # a failed fetch leaves its error visible to the waiters, and the key claimed
    one.release(key, "holder-1", error="ValueError: upstream said no")
    assert two.claim_state(key) == Claim("holder-1", "ValueError: upstream said no")
    assert two.claim(key, "holder-2", 30) is False
    one.release(key, "holder-1")
    assert two.claim_state(key) is None
    assert two.claim(key, "holder-2", 30) is True
    two.release(key, "holder-2")
    assert one.claim_state(key) is None


def test_a_lapsed_claim_is_free_and_its_old_holder_cannot_release_the_new_one(
        make_tier: Callable[[], Tier], owner: str) -> None:
    one, two = make_tier(), make_tier()
    key = CacheKey(owner, "ns", "k")
    assert one.claim(key, "holder-1", 0.2) is True
    wait_for(lambda: two.claim_state(key) is None, timeout=4)  # Memcached: whole seconds
    assert two.claim(key, "holder-2", 30) is True
    one.release(key, "holder-1")
    one.release(key, "holder-1", error="late")
    assert one.claim_state(key) == Claim("holder-2", None)


# -- Memcached: spread, SASL ----------------------------------------------------------

def _items_stored(server: MemcachedServer) -> int:
    proto = Protocol(server.address, username=SASL_USER if server.sasl else None,
                     password=SASL_PASSWORD if server.sasl else None, socket_timeout=2)
    try:
        return int(proto.stats()["total_items"])
    finally:
        proto.disconnect()


def test_memcached_keys_spread_over_every_server(memcached_servers: list[MemcachedServer],
                                                 tier_settings: Settings, owner: str) -> None:
    tier = _memcached(memcached_servers, tier_settings)
    try:
        before = [_items_stored(s) for s in memcached_servers]
        keys = [CacheKey(owner, "spread", f"key {i}") for i in range(200)]
        tier.set_many({k: Entry(b"v", None) for k in keys})
        added = [_items_stored(s) - b for s, b in zip(memcached_servers, before, strict=True)]
        # 200 entries and one generation token, each on exactly one server
        assert sum(added) == 201
        assert all(n >= 40 for n in added), added
        assert len(tier.get_many(keys)) == 200
    finally:
        tier.close()


def test_memcached_entry_over_the_item_size_limit_is_dropped_with_one_warning(
        memcached_servers: list[MemcachedServer], tier_settings: Settings, owner: str) -> None:
    tier = _memcached(memcached_servers, tier_settings)
    big = [CacheKey(owner, "ns", f"big {i}") for i in range(3)]
    small = CacheKey(owner, "ns", "small")
    try:
        with capture_logs() as logs:
            for key in big:  # memcached's default limit: 1 MiB per item
                tier.set_many({key: Entry(b"x" * (2 << 20), None), small: Entry(b"s", None)})
        assert tier.get_many([*big, small]) == {small: Entry(b"s", None)}
        refused = [e for e in logs if e["event"].startswith("memcached refused")]
        assert 1 <= len(refused) <= len(memcached_servers)  # once per server
        assert outage_logs(logs) == []
    finally:
        tier.close()


def test_memcached_sasl_credentials_are_checked_at_start(
        memcached_servers: list[MemcachedServer], tier_settings: Settings) -> None:
    addresses = [s.address for s in memcached_servers]
    with pytest.raises(ConfigError, match="refused the SASL credentials"):
        MemcachedTier(addresses, SASL_USER, "wrong password", tier_settings)
    with pytest.raises(ConfigError, match="requires SASL authentication"):
        MemcachedTier(addresses, None, None, tier_settings)
    with pytest.raises(ConfigError, match="names no memcached server"):
        MemcachedTier([], None, None, tier_settings)


# -- Redis: credentials ---------------------------------------------------------------

def test_redis_password_is_checked_at_start(tmp_path: Path, tier_settings: Settings) -> None:
    if not RedisServer.available():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        redis.Redis.from_url(server.url).config_set("requirepass", "s3cret")
        host = f"127.0.0.1:{server.port}/0"
        with pytest.raises(ConfigError, match="password"):
            RedisTier(f"redis://{host}", tier_settings)
        with pytest.raises(ConfigError, match="refused the credentials") as caught:
            RedisTier(f"redis://:wrong@{host}", tier_settings)
        assert "wrong" not in str(caught.value).replace("WRONGPASS", "")
        tier = RedisTier(f"redis://:s3cret@{host}", tier_settings)
        key = CacheKey("", "ns", "k")
        tier.set_many({key: Entry(b"v", None)})
        assert tier.get_many([key])[key].value == b"v"
        assert "s3cret" not in tier.server
        tier.close()
    finally:
        server.stop()


# -- outages ---------------------------------------------------------------------------

def _every_call_survives(tier: Tier, key: CacheKey) -> None:
    assert tier.get_many([key]) == {}
    tier.set_many({key: Entry(b"dropped", None)})
    assert tier.delete(key) is False
    tier.clear(key.owner, key.namespace)
    assert tier.claim(key, "me", 10) is True  # cannot be made: fetch it yourself
    assert tier.claim_state(key) is None
    tier.release(key, "me", error="boom")
    tier.release(key, "me")


def test_redis_killed_mid_test(tmp_path: Path, tier_settings: Settings) -> None:
    if not RedisServer.available():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis")
    server.start()
    tier = RedisTier(server.url, tier_settings)
    key = CacheKey("", "ns", "k")
    try:
        tier.set_many({key: Entry(b"before", None)})
        with capture_logs() as logs:
            server.kill()
            started = time.monotonic()
            for _ in range(20):
                _every_call_survives(tier, key)
            assert time.monotonic() - started < 5  # no timeout per call
            assert len(outage_logs(logs)) == 1
            assert outage_logs(logs)[0]["log_level"] == "warning"
            server.start()

            def works() -> bool:
                tier.set_many({key: Entry(b"after", None)})
                return tier.get_many([key]).get(key) == Entry(b"after", None)

            wait_for(works)
            assert len(outage_logs(logs)) == 1
            assert any(e["event"] == "cache server reachable again" for e in logs)
            # a second outage is logged again
            server.kill()
            assert tier.get_many([key]) == {}
            assert tier.get_many([key]) == {}
            assert len(outage_logs(logs)) == 2
    finally:
        tier.close()
        server.stop()


def test_memcached_servers_killed_mid_test(tmp_path: Path, tier_settings: Settings) -> None:
    if not MemcachedServer.available(sasl=True):
        pytest.skip("memcached / saslpasswd2 are not installed")
    servers = [MemcachedServer(tmp_path / f"mc{i}", sasl=True) for i in range(2)]
    for server in servers:
        server.start()
    tier = _memcached(servers, tier_settings)
    keys = [CacheKey("", "ns", f"k{i}") for i in range(40)]
    try:
        tier.set_many({k: Entry(b"before", None) for k in keys})
        with capture_logs() as logs:
            for server in servers:
                server.kill()
            started = time.monotonic()
            for key in keys:
                _every_call_survives(tier, key)
            assert tier.get_many(keys) == {}
            assert time.monotonic() - started < 5  # no timeout per call
            # one warning per outage of each server
            assert sorted(e["server"] for e in outage_logs(logs)) == sorted(
                s.address for s in servers)
            for server in servers:
                server.start()

            full = {k: Entry(b"again", None) for k in keys}

            def works() -> bool:  # every server back (each after its own back-off)
                tier.set_many(full)
                return tier.get_many(keys) == full

            wait_for(works)
            assert len(outage_logs(logs)) == 2
            assert sum(e["event"] == "cache server reachable again" for e in logs) == 2
    finally:
        tier.close()
        for server in servers:
            server.stop()


def test_memcached_one_server_down_leaves_the_other_working(
        tmp_path: Path, tier_settings: Settings) -> None:
    if not MemcachedServer.available():
        pytest.skip("memcached is not installed")
    servers = [MemcachedServer(tmp_path / f"mc{i}") for i in range(2)]
    for server in servers:
        server.start()
    tier = _memcached(servers, tier_settings)
    try:
        scope = ("", "ns")
        token_home = tier.server_for(tier._token_key(scope)).address
        alive = next(s for s in servers if s.address == token_home)
        dead = next(s for s in servers if s is not alive)
        keys = [CacheKey(*scope, f"k{i}") for i in range(60)]
        tier.set_many({k: Entry(b"v", None) for k in keys})
        dead.kill()
        got = tier.get_many(keys)
        # exactly the keys on the living server are still found
        token = tier._tokens([scope], create=False)[scope]
        on_alive = {k for k in keys
                    if tier.server_for(tier._entry_key(k, token)).address == alive.address}
        assert set(got) == on_alive and 0 < len(on_alive) < len(keys)
    finally:
        tier.close()
        for server in servers:
            server.stop()


@pytest.mark.parametrize("kind", ["redis", "memcached"])
def test_a_server_down_at_start_is_an_outage_not_an_error(
        kind: str, tier_settings: Settings) -> None:
    from tests.servers import free_port

    port = free_port()  # nothing listens there
    key = CacheKey("", "ns", "k")
    with capture_logs() as logs:
        tier: Tier = (RedisTier(f"redis://127.0.0.1:{port}/0", tier_settings)
                      if kind == "redis" else
                      MemcachedTier([f"127.0.0.1:{port}"], None, None, tier_settings))
        for _ in range(10):
            _every_call_survives(tier, key)
        tier.close()
    assert len(outage_logs(logs)) == 1
