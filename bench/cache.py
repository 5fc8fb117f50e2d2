"""Caches (issue 8): a cache hit on each tier, and ``get_or_fetch`` under 50 threads.

Measured through the public API, ``vault.cache(namespace)``, on a value shaped
like a small API response (a JSON object of ~400 bytes), one call at a time,
p50/p99 each, all variants in alternating rounds of 50 calls (``measure_interleaved``)
so that a noisy neighbour hits them alike:

- a hit on the in-process tier (``MEMVAULT_CACHE_URL=memory://``);
- a hit on each shared tier with the in-process tier off
  (``MEMVAULT_CACHE_LOCAL_TTL_MS=0``, so every ``get`` reaches the tier): the
  database on the run's backend (SQLite or PostgreSQL), Redis, Memcached (two
  servers, keys spread over both; a read is two round trips: the namespace's
  generation token, then the entry);
- references in the same run: ``diskcache`` (``Cache.get`` in a temporary
  directory; skipped with a note when the optional ``bench`` dependency is
  absent), a bare redis-py ``GET`` and a bare python-binary-memcached ``get`` of
  a raw value on the same servers.

``get_or_fetch`` under 50 threads: per round, 50 threads released together by a
barrier ask for the same missing key; ``fetch`` takes 20 ms. Each caller's wait
is one sample; the note says how many times ``fetch`` ran (single-flight: once
per round).

Redis and Memcached are private servers this script starts on loopback ports
(``tests/servers.py``, Debian packages ``redis-server`` and ``memcached``) and
stops by pid; a tier whose server is not installed is skipped with a note.

Run alone (prints the tables)::

    python bench/cache.py [--backend sqlite|postgresql|all] [--quick]

or as the ``cache`` section of ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/cache.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

from tests.servers import MemcachedServer, RedisServer  # noqa: E402

from bench.common import (  # noqa: E402
    Config,
    Env,
    PostgresServer,
    Result,
    Stats,
    measure_interleaved,
    stats,
    verdict,
)
from memvault import Vault  # noqa: E402

SECTION = "cache"
SEED = 8
NAMESPACE = "api-responses"
THREADS = 50
FETCH_S = 0.020
VALUE: dict[str, Any] = {
    "symbol": "ACME", "source": "bench", "currency": "USD",
    "series": [round(100 + i * 0.37, 2) for i in range(40)],
}


@contextlib.contextmanager
def _servers(root: Path) -> Iterator[tuple[RedisServer | None, list[MemcachedServer]]]:
    """A private Redis and two Memcached servers (each ``None``/empty when the
    package is not installed)."""
    redis_server = RedisServer(root / "redis") if RedisServer.available() else None
    memcached = ([MemcachedServer(root / f"memcached{i}") for i in range(2)]
                 if MemcachedServer.available() else [])
    started = [s for s in [redis_server, *memcached] if s is not None]
    try:
        for server in started:
            server.start()
        yield redis_server, memcached
    finally:
        for server in started:
            server.stop()


def _tier_vaults(env: Env, stack: contextlib.ExitStack, redis_server: RedisServer | None,
                 memcached: list[MemcachedServer]) -> dict[str, Vault]:
    """One vault per tier, named as the rows are."""
    vaults = {
        "memory (in-process LRU)": stack.enter_context(env.vault(cache_url="memory://")),
        f"database ({env.backend})": stack.enter_context(env.vault(cache_local_ttl_ms=0)),
    }
    if redis_server is not None:
        vaults["Redis"] = stack.enter_context(
            env.vault(cache_url=redis_server.url, cache_local_ttl_ms=0))
    if memcached:
        url = "memcached://" + ",".join(s.address for s in memcached)
        vaults[f"Memcached ({len(memcached)} servers)"] = stack.enter_context(
            env.vault(cache_url=url, cache_local_ttl_ms=0))
    return vaults


def _references(stack: contextlib.ExitStack, keys: list[str], redis_server: RedisServer | None,
                memcached: list[MemcachedServer], notes: list[str]
                ) -> dict[str, Callable[[str], Any]]:
    """Bare clients holding the same keys (raw values: no encoding, no tiers)."""
    import json

    raw = json.dumps(VALUE).encode()
    refs: dict[str, Callable[[str], Any]] = {}
    try:
        import diskcache
    except ImportError:
        notes.append("diskcache: not installed (pip install -e '.[bench]'), row skipped")
    else:
        folder = tempfile.mkdtemp(prefix="memvault-bench-diskcache-")
        dc = diskcache.Cache(folder)
        stack.callback(shutil.rmtree, folder, True)
        stack.callback(dc.close)
        for key in keys:
            dc.set(key, VALUE)
        refs["diskcache Cache.get (ref)"] = dc.get
    if redis_server is not None:
        import redis

        client = redis.Redis.from_url(redis_server.url)
        stack.callback(client.close)
        client.mset({f"bench:{k}": raw for k in keys})
        refs["redis-py GET, bare (ref)"] = lambda k: client.get(f"bench:{k}")
    if memcached:
        from bmemcached.protocol import Protocol

        proto = Protocol(memcached[0].address, raw_data=True, socket_timeout=2)
        stack.callback(proto.disconnect)
        for key in keys:
            proto.set(f"bench:{key}", raw, 0)
        refs["memcached get, bare (ref)"] = lambda k: proto.get(f"bench:{k}")
    return refs


def measure_hits(vaults: dict[str, Vault], refs: dict[str, Callable[[str], Any]],
                 n_keys: int, n_gets: int) -> tuple[dict[str, Stats], list[str]]:
    keys = [f"series:{i}" for i in range(n_keys)]
    order = list(range(n_gets))
    random.Random(SEED).shuffle(order)
    picks = [keys[i % n_keys] for i in order]
    missed: dict[str, int] = {}
    fns: dict[str, Callable[[int], Any]] = {}
    for name, vault in vaults.items():
        cache = vault.cache(NAMESPACE)
        cache.set_many({k: VALUE for k in keys}, ttl=3600)
        missed[name] = 0

        def get(i: int, cache: Any = cache, name: str = name) -> None:
            if cache.get(picks[i % n_gets]) is None:
                missed[name] += 1

        fns[f"cache hit: {name}"] = get
    for name, ref in refs.items():
        fns[name] = lambda i, ref=ref: ref(picks[i % n_gets])
    got = measure_interleaved(fns, n_gets)
    notes = [f"{name}: {count} misses" for name, count in missed.items() if count]
    return got, notes


def measure_single_flight(vault: Vault, rounds: int) -> tuple[Stats, int]:
    """``rounds`` × 50 threads asking for one missing key at once; (each
    caller's wait, how many times ``fetch`` ran)."""
    cache = vault.cache(NAMESPACE + "-flight")
    calls = 0
    lock = threading.Lock()

    def fetch() -> dict[str, Any]:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(FETCH_S)
        return VALUE

    samples: list[int] = []
    for r in range(rounds):
        key = f"flight:{r}:{random.random()}"
        barrier = threading.Barrier(THREADS)
        waits: list[int] = []

        def caller(key: str = key, barrier: threading.Barrier = barrier,
                   waits: list[int] = waits) -> None:
            barrier.wait()
            t0 = time.perf_counter_ns()
            cache.get_or_fetch(key, fetch, ttl=60)
            t1 = time.perf_counter_ns()
            with lock:
                waits.append(t1 - t0)

        threads = [threading.Thread(target=caller) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        samples += waits
    return stats(samples), calls


def run(env: Env) -> list[Result]:
    """The ``cache`` section of bench/run.py."""
    quick = env.config.quick
    n_keys, n_gets, rounds = (1_000, 2_000, 5) if quick else (10_000, 20_000, 20)
    root = Path(tempfile.mkdtemp(prefix="memvault-bench-servers-"))
    notes: list[str] = []
    out: list[Result] = []
    try:
        with _servers(root) as (redis_server, memcached), contextlib.ExitStack() as stack:
            if redis_server is None:
                notes.append("Redis: redis-server not installed, rows skipped")
            if not memcached:
                notes.append("Memcached: memcached not installed, rows skipped")
            vaults = _tier_vaults(env, stack, redis_server, memcached)
            keys = [f"series:{i}" for i in range(n_keys)]
            refs = _references(stack, keys, redis_server, memcached, notes)
            hits, miss_notes = measure_hits(vaults, refs, n_keys, n_gets)
            notes += miss_notes
            for name, s in hits.items():
                if name == "cache hit: memory (in-process LRU)":
                    out.append(Result(SECTION, name, s, target="p50 < 20 µs",
                                      verdict=verdict(s.p50_ns < 20_000)))
                else:
                    out.append(Result(SECTION, name, s, target="—"))
            for name, vault in vaults.items():
                s, calls = measure_single_flight(vault, rounds)
                out.append(Result(SECTION, f"get_or_fetch, {THREADS} threads, one key: {name}",
                                  s, target="fetch once",
                                  verdict=verdict(calls == rounds),
                                  note=f"fetch ({FETCH_S * 1000:.0f} ms) ran {calls}× in "
                                       f"{rounds} rounds"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if out and notes:
        out[0].note = "; ".join(filter(None, [out[0].note, *notes]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args(argv)
    from bench.run import text_table
    from memvault.logs import configure_logging
    from memvault.settings import load_settings

    configure_logging(load_settings(log_level="WARNING"))
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    for backend in backends:
        pg = PostgresServer() if backend == "postgresql" else None
        env = Env(backend=backend, config=Config.make(args.quick), pg=pg)
        try:
            results = run(env)
        finally:
            env.close()
            if pg is not None:
                pg.stop()
        print(f"\n=== {backend} ===")
        print(text_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
