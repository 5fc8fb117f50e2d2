"""The cache contract (``memvault/cache``), run on every tier: memory only
(``memory://``), the database (SQLite and PostgreSQL), Redis and Memcached (two
SASL servers). Values, namespaces, expiry, limits, counters, isolation, the
in-process tier's freshness, and single-flight with threads and with two
processes.

Redis and Memcached are shared by the session: each test works in namespaces
of its own (``ns``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import memvault
from memvault import Vault
from memvault.backends.schema import cache_entries, cache_locks
from memvault.cache import CacheKey, make_tier
from memvault.cache.database import DatabaseTier
from memvault.errors import Invalid, NotFound, PayloadTooLarge
from memvault.settings import Settings
from tests.conftest import BACKENDS, PgDatabases
from tests.servers import SASL_PASSWORD, SASL_USER

SHARED = ["sqlite", *(["postgresql"] if "postgresql" in BACKENDS else []), "redis", "memcached"]
TIERS = ["memory", *SHARED]


def _tier_kwargs(tier: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    kw: dict[str, Any] = {"data_dir": tmp_path / "data", "password_hash": "owasp",
                          "embedder": "hash"}
    if tier == "memory":
        kw["cache_url"] = "memory://"
    elif tier == "postgresql":
        dbs = PgDatabases(request.getfixturevalue("pg_url"))
        kw["database_url"] = dbs.create()
        request.addfinalizer(dbs.drop_all)  # after the vaults (fixtures tear down LIFO)
    elif tier == "redis":
        kw["cache_url"] = request.getfixturevalue("redis_server").url
    elif tier == "memcached":
        servers = request.getfixturevalue("memcached_servers")
        kw.update(cache_url="memcached://" + ",".join(s.address for s in servers),
                  cache_username=SASL_USER, cache_password=SASL_PASSWORD)
    return kw


@pytest.fixture(params=TIERS)
def tier(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_vault(tier: str, tmp_path: Path, request: pytest.FixtureRequest
               ) -> Iterator[Callable[..., Vault]]:
    """Opens vaults on the test's tier; closes them after."""
    base = _tier_kwargs(tier, tmp_path, request)
    opened: list[Vault] = []

    def make(**overrides: Any) -> Vault:
        v = memvault.open(memvault.load_settings(**{**base, **overrides}))
        opened.append(v)
        return v

    make.kwargs = base  # type: ignore[attr-defined]
    yield make
    for v in reversed(opened):
        v.close()


@pytest.fixture
def cv(open_vault: Callable[..., Vault]) -> Vault:
    return open_vault()


@pytest.fixture
def ns() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll ``condition`` until true; the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
    return time.monotonic() - start


VALUES: list[Any] = [{"a": 1, "b": [1, 2.5, None, True]}, [1, "two"], "text ünïcödé 🔑", 42,
                     3.25, None, False, b"\x00\xffraw bytes", b""]


# -- values, namespaces, expiry ---------------------------------------------------------

def test_set_get_delete_every_kind_of_value(cv: Vault, ns: str) -> None:
    cache = cv.cache(ns)
    for i, value in enumerate(VALUES):
        cache.set(f"k{i}", value)
    for i, value in enumerate(VALUES):
        got = cache.get(f"k{i}", default="missing")
        assert got == value and type(got) is type(value)
    assert cache.get("absent") is None
    assert cache.get("absent", default=7) == 7
    assert cache.delete("k0") is True
    assert cache.delete("k0") is False
    assert cache.get("k0", "gone") == "gone"
    cache.set("k1", {"replaced": True})
    assert cache.get("k1") == {"replaced": True}


def test_returned_values_are_copies(cv: Vault, ns: str) -> None:
    cache = cv.cache(ns)
    cache.set("k", {"list": [1]})
    got = cache.get("k")
    got["list"].append(2)
    assert cache.get("k") == {"list": [1]}


def test_get_many_and_set_many(cv: Vault, ns: str) -> None:
    cache = cv.cache(ns)
    cache.set_many({"a": 1, "b": b"two", "c": [3]}, ttl=60)
    assert cache.get_many(["a", "b", "c", "missing", "a"]) == {"a": 1, "b": b"two", "c": [3]}
    assert cache.get_many([]) == {}
    ttl = cache.ttl("b")
    assert ttl is not None and 50 < ttl <= 60
    with pytest.raises(Invalid):  # one bad value: nothing is stored
        cache.set_many({"d": 4, "e": {1, 2}})
    assert cache.get("d") is None


def test_clear_empties_one_namespace_only(cv: Vault, ns: str) -> None:
    one, other = cv.cache(ns), cv.cache(ns + ".other")
    user = cv.for_user("user-clear").cache(ns)
    for c in (one, other, user):
        c.set_many({"a": 1, "b": 2})
    one.clear()
    assert one.get_many(["a", "b"]) == {}
    assert other.get_many(["a", "b"]) == {"a": 1, "b": 2}
    assert user.get_many(["a", "b"]) == {"a": 1, "b": 2}
    one.set("a", 3)  # usable again
    assert one.get("a") == 3


def test_ttl_and_expiry(cv: Vault, ns: str) -> None:
    cache = cv.cache(ns)
    cache.set("forever", 1)
    cache.set("brief", 2, ttl=0.3)
    assert cache.ttl("forever") is None
    left = cache.ttl("brief")
    assert left is not None and 0 < left <= 0.3
    with pytest.raises(NotFound):
        cache.ttl("absent")
    _wait_for(lambda: cache.get("brief") is None)
    assert cache.get_many(["brief", "forever"]) == {"forever": 1}
    with pytest.raises(NotFound):
        cache.ttl("brief")
    # get_or_fetch honours its ttl too
    assert cache.get_or_fetch("fetched", lambda: "v", ttl=0.3) == "v"
    _wait_for(lambda: cache.get("fetched") is None)


def test_user_caches_are_isolated(cv: Vault, ns: str) -> None:
    alice, bob = cv.for_user("user-alice").cache(ns), cv.for_user("user-bob").cache(ns)
    app = cv.cache(ns)
    alice.set("k", "alice's")
    assert bob.get("k") is None and app.get("k") is None
    bob.set("k", "bob's")
    app.set("k", "app's")
    assert (alice.get("k"), bob.get("k"), app.get("k")) == ("alice's", "bob's", "app's")
    assert bob.delete("k") is True
    assert alice.get("k") == "alice's"
    assert alice.stats().sets == 1 and bob.stats().sets == 1


def test_bad_input_is_refused(open_vault: Callable[..., Vault], ns: str) -> None:
    v = open_vault(cache_max_value_kb=1)
    cache = v.cache(ns)
    for bad_ns in ["", "x" * 201, "with space", "slash/", "ünï"]:
        with pytest.raises(Invalid):
            v.cache(bad_ns)
    v.cache("x" * 200)
    v.cache("a-b_c.d:e")
    for bad_key in ["", "k" * 1025, "nul\x00", "lone \udc80"]:
        with pytest.raises(Invalid):
            cache.set(bad_key, 1)
        with pytest.raises(Invalid):
            cache.get(bad_key)
    cache.set("k" * 1024, "longest key")
    assert cache.get("k" * 1024) == "longest key"
    for bad_ttl in [0, -1, True, float("nan"), float("inf"), "10"]:
        with pytest.raises(Invalid):
            cache.set("k", 1, ttl=bad_ttl)  # type: ignore[arg-type]
    for bad_value in [{1, 2}, float("nan"), object(), {"k": float("inf")}]:
        with pytest.raises(Invalid):
            cache.set("k", bad_value)
    # the limit is on the encoded value: a one-byte tag plus the bytes
    cache.set("fits", b"x" * 1023)
    with pytest.raises(PayloadTooLarge) as info:
        cache.set("too-big", b"x" * 1024)
    assert "MEMVAULT_CACHE_MAX_VALUE_KB" in str(info.value) and info.value.status == 413
    with pytest.raises(PayloadTooLarge):
        cache.get_or_fetch("fetched-too-big", lambda: "y" * 2000)
    assert cache.get("too-big") is None and cache.get("fetched-too-big") is None


# -- counters -------------------------------------------------------------------------

def test_counters(open_vault: Callable[..., Vault], ns: str, tier: str) -> None:
    v = open_vault()
    cache = v.cache(ns)
    assert cache.get("k") is None
    cache.set("k", 1)
    assert cache.get("k") == 1
    assert cache.get_many(["k", "nope"]) == {"k": 1}
    with pytest.raises(RuntimeError):
        cache.get_or_fetch("boom", _raise(RuntimeError("down")))
    s = cache.stats()
    assert (s.hits, s.misses, s.sets, s.fetch_errors) == ({"memory": 2}, 3, 1, 1)
    assert s.hit_ratio == pytest.approx(2 / 5)
    assert v.cache_stats()[ns] == s
    if tier == "memory":
        return
    # A miss of the in-process tier that the shared tier answers is a hit of
    # the shared tier: another vault (process) on the same tier.
    other = open_vault().cache(ns)
    assert other.get("k") == 1
    shared = v.caches.tier
    assert shared is not None
    assert other.stats().hits == {shared.name: 1} and other.stats().misses == 0


def _raise(exc: BaseException) -> Callable[[], Any]:
    def fetch() -> Any:
        raise exc
    return fetch


# -- the in-process tier ------------------------------------------------------------------

@pytest.mark.parametrize("tier", ["memory"])
def test_lru_eviction_by_bytes(open_vault: Callable[..., Vault], ns: str, tier: str) -> None:
    v = open_vault(cache_memory_mb=1, cache_max_value_kb=2048)
    cache = v.cache(ns)
    chunk = b"x" * 100_000
    for i in range(8):
        cache.set(f"k{i}", chunk)
    assert cache.get("k0") == chunk  # k0 is now the most recently used
    for i in range(8, 14):
        cache.set(f"k{i}", chunk)
    local = v.caches.local
    assert local is not None and local.size_bytes <= 1024 * 1024
    kept = cache.get_many([f"k{i}" for i in range(14)])
    assert "k0" in kept and "k13" in kept
    assert "k1" not in kept and "k2" not in kept  # the least recently used went first
    assert len(kept) == 10
    assert cache.stats().evictions == 4
    # a value larger than the whole bound is not kept, and evicts nothing
    cache.set("huge", b"y" * 1_200_000)
    assert cache.get("huge") is None
    assert cache.get_many([f"k{i}" for i in range(14)]).keys() == kept.keys()
    assert cache.stats().evictions == 4


def test_restart(open_vault: Callable[..., Vault], ns: str, tier: str) -> None:
    """The database, Redis and Memcached keep entries across a restart; memory does not."""
    v = open_vault()
    v.cache(ns).set("k", {"kept": True})
    v.close()
    again = open_vault()
    expected = None if tier == "memory" else {"kept": True}
    assert again.cache(ns).get("k") == expected


@pytest.mark.parametrize("tier", SHARED)
def test_writes_elsewhere_are_seen_within_local_ttl(open_vault: Callable[..., Vault], ns: str,
                                                    tier: str) -> None:
    writer = open_vault(cache_local_ttl_ms=200).cache(ns)
    reader_vault = open_vault(cache_local_ttl_ms=200)
    reader = reader_vault.cache(ns)
    writer.set("k", 1)
    assert reader.get("k") == 1  # now held by the reader's in-process tier
    writer.set("k", 2)
    assert _wait_for(lambda: reader.get("k") == 2) < 1.0
    writer.delete("k")
    assert _wait_for(lambda: reader.get("k") is None) < 1.0
    writer.set("k", 3)
    writer.clear()
    assert reader.get("k") is None
    # 0 turns the in-process tier off: every read asks the shared tier
    direct = open_vault(cache_local_ttl_ms=0)
    assert direct.caches.local is None
    writer.set("k", 4)
    assert direct.cache(ns).get("k") == 4
    writer.set("k", 5)
    assert direct.cache(ns).get("k") == 5


# -- single-flight ----------------------------------------------------------------------

def _in_threads(n: int, work: Callable[[], Any]) -> list[Any]:
    """Run ``work`` in ``n`` threads released at once; each result or exception."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_single_flight_threads(cv: Vault, ns: str) -> None:
    cache = cv.cache(ns)
    calls: list[int] = []

    def fetch() -> dict[str, int]:
        calls.append(1)
        time.sleep(0.2)
        return {"answer": 42}

    results = _in_threads(50, lambda: cache.get_or_fetch("k", fetch, ttl=60))
    assert len(calls) == 1
    assert results == [{"answer": 42}] * 50
    assert cache.get("k") == {"answer": 42}


def test_single_flight_error_reaches_every_waiter(cv: Vault, ns: str) -> None:
    cache = cv.cache(ns)
    calls: list[int] = []
    error = ValueError("upstream said no")

    def fetch() -> int:
        calls.append(1)
        time.sleep(0.2)
        raise error

    results = _in_threads(50, lambda: cache.get_or_fetch("k", fetch))
    assert len(calls) == 1
    assert all(r is error for r in results)
    assert cache.get("k", "nothing") == "nothing"
    assert cache.stats().fetch_errors == 1


_PROCESS_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import memvault

    kwargs, ns, workdir = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    vault = memvault.open(**kwargs)
    try:
        (workdir / "ready").write_text("1")
        while not (workdir / "go").exists():
            time.sleep(0.005)

        def fetch():
            with open(workdir / "calls", "a") as f:
                f.write("child\\n")
            time.sleep(0.5)
            return {"by": "child"}

        print(json.dumps(vault.cache(ns).get_or_fetch("k", fetch, ttl=60)))
    finally:
        vault.close()
""")


@pytest.mark.parametrize("tier", SHARED)
def test_single_flight_across_processes(open_vault: Callable[..., Vault], ns: str,
                                        tier: str, tmp_path: Path) -> None:
    v = open_vault()
    kwargs = {k: str(val) for k, val in open_vault.kwargs.items()  # type: ignore[attr-defined]
              if val is not None}
    workdir = tmp_path / "flight"
    workdir.mkdir()
    child = subprocess.Popen([sys.executable, "-c", _PROCESS_SCRIPT, json.dumps(kwargs), ns,
                              str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: (workdir / "ready").exists() or child.poll() is not None, 60)
        assert child.poll() is None, child.communicate()[1].decode()[-2000:]

        def fetch() -> dict[str, str]:
            with open(workdir / "calls", "a") as f:
                f.write("parent\n")
            time.sleep(0.5)
            return {"by": "parent"}

        (workdir / "go").write_text("1")
        mine = v.cache(ns).get_or_fetch("k", fetch, ttl=60)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err.decode()[-2000:]
    theirs = json.loads(out.decode().strip().splitlines()[-1])
    assert len((workdir / "calls").read_text().splitlines()) == 1
    assert mine == theirs and mine["by"] in ("parent", "child")


# -- the database tier ----------------------------------------------------------------------

@pytest.mark.parametrize("tier", [b for b in SHARED if b in ("sqlite", "postgresql")])
def test_database_tier_sweeps_and_claims(open_vault: Callable[..., Vault], ns: str,
                                         tier: str) -> None:
    v = open_vault()
    tier = v.caches.tier
    assert isinstance(tier, DatabaseTier)
    cache = v.cache(ns)
    cache.set_many({"a": 1, "b": 2}, ttl=0.05)
    cache.set("c", 3)
    key = CacheKey("", ns, "lock")
    assert tier.claim(key, "p1", 0.05) is True
    assert tier.claim(key, "p2", 30) is False
    assert tier.claim_state(key) is not None
    time.sleep(0.1)
    assert tier.claim_state(key) is None  # lapsed: its holder is taken for dead
    assert tier.claim(key, "p2", 30) is True  # taken over
    tier.release(key, "p1")  # not p1's any more: no effect
    state = tier.claim_state(key)
    assert state is not None and state.holder == "p2"
    tier.release(key, "p2", error="ValueError: no")
    state = tier.claim_state(key)
    assert state is not None and state.error == "ValueError: no"
    assert tier.claim(CacheKey("", ns, "lapsing"), "p3", 0.01) is True
    time.sleep(0.05)
    assert v.caches.sweep() >= 3  # a, b and the lapsed claim
    with v.db.read() as conn:
        left = conn.execute(sa.select(cache_entries.c.key)
                            .where(cache_entries.c.namespace == ns)).scalars().all()
        locks = conn.execute(sa.select(cache_locks.c.key)
                             .where(cache_locks.c.namespace == ns)).scalars().all()
    assert left == ["c"]
    assert locks == ["lock"]  # the error claim is still visible for a few seconds
    assert "cache-sweeper" in v.component_stats()


# -- configuration ------------------------------------------------------------------------

def test_make_tier_by_url(tmp_path: Path) -> None:
    base = memvault.load_settings(data_dir=tmp_path / "data", embedder="hash",
                                  cache_url="memory://")
    with memvault.open(base) as v:
        assert v.caches.tier is None
        assert "cache-sweeper" not in v.component_stats()
        assert isinstance(make_tier(memvault.settings.revalidate(base, cache_url=None), v.db),
                          DatabaseTier)


def test_seed003_memcached_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MEMVAULT_CACHE_URL", "MEMVAULT_CACHE_USERNAME", "MEMVAULT_CACHE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEMCACHED_SERVERS", "127.0.0.1:11211, cache-b:11212")
    monkeypatch.setenv("MEMCACHED_USERNAME", "seed")
    monkeypatch.setenv("MEMCACHED_PASSWORD", "secret")
    s = memvault.load_settings(data_dir=tmp_path)
    assert s.cache_url == "memcached://127.0.0.1:11211,cache-b:11212"
    assert s.cache_username == "seed"
    assert s.cache_password is not None and s.cache_password.get_secret_value() == "secret"
    # the MEMVAULT_ variables win; keywords win over both; revalidate keeps them
    monkeypatch.setenv("MEMVAULT_CACHE_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("MEMVAULT_CACHE_USERNAME", "mv")
    s = memvault.load_settings(data_dir=tmp_path)
    assert (s.cache_url, s.cache_username) == ("redis://127.0.0.1:6379/0", "mv")
    s = memvault.load_settings(data_dir=tmp_path, cache_url="memory://")
    assert s.cache_url == "memory://"
    assert Settings(cache_url="memory://").cache_url == "memory://"
    again = memvault.settings.revalidate(s, cache_memory_mb=1)
    assert (again.cache_url, again.cache_username, again.cache_memory_mb) == \
        ("memory://", "mv", 1)
    with pytest.raises(memvault.errors.ConfigError, match="MEMVAULT_CACHE_URL"):
        memvault.load_settings(data_dir=tmp_path, cache_url="ftp://nope")
