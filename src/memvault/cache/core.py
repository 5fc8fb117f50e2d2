"""The caches: ``vault.cache(namespace)`` and ``scope.cache(namespace)``.

``Caches`` is the vault's one cache: an in-process LRU bounded in bytes
(``memory.py``) in front of one shared tier (``tiers.py``: the database, Redis or
Memcached, chosen by ``MEMVAULT_CACHE_URL`` in ``make_tier``), plus this
process's counters and its single-flight table. ``Cache`` is a view of one
namespace of one owner ("" for the application, a user id for a scope): keys of
different owners or namespaces never meet.

Values are anything JSON can hold, or ``bytes``, encoded with a one-byte tag
(``j`` + compact UTF-8 JSON, ``b`` + the raw bytes); a value whose encoding is
over ``MEMVAULT_CACHE_MAX_VALUE_KB`` is refused (``PayloadTooLarge``). Reads
decode anew, so a caller mutating what ``get`` returned changes nothing cached.

Freshness: with a shared tier, the in-process tier serves an entry for at most
``MEMVAULT_CACHE_LOCAL_TTL_MS`` before asking the shared tier again, so another
process's write or delete is seen within it (``0`` turns the in-process tier
off). With ``memory://`` the in-process tier is the only one and serves each
entry until it expires.

Single-flight (``get_or_fetch``): threads of this process missing the same key
share one fetch (a per-key flight; its result or its exception reaches every
waiter; nothing is cached when it raises). Across processes the leader of a
flight claims the key on the shared tier; the others poll the tier with a short
backoff until the entry appears, the claim carries an error (raised here as
``CacheFetchError``), or the claim lapses (its holder died: they claim it).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from ..errors import CacheFetchError, Invalid, NotFound, PayloadTooLarge
from .memory import LocalTier
from .tiers import CacheKey, Entry, SharedTier

if TYPE_CHECKING:
    from ..backends.base import Database
    from ..settings import Settings

__all__ = ["Cache", "Caches", "CacheItem", "CacheStats", "CacheFetchError", "make_tier",
           "encode", "decode", "check_namespace", "MEMORY_TIER"]

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: The counters' name of the in-process tier.
MEMORY_TIER = "memory"
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
MAX_KEY_CHARS = 1024
_JSON, _BYTES = b"j", b"b"
#: How long a cross-process claim holds before it lapses (its holder is taken
#: for dead): a fetch slower than this may run twice.
CLAIM_TTL_S = 30.0
#: Backoff of a process waiting for another's fetch: first and longest pause.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.1
#: Longest error text a claim carries to the other processes.
MAX_ERROR_CHARS = 1000
_MISSING: Any = object()


# -- keys and values -------------------------------------------------------------------

def check_namespace(namespace: str) -> str:
    """``namespace`` if valid: 1–200 letters, digits, ``_ - . :``.

    Raises:
        Invalid: otherwise.
    """
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise Invalid("a cache namespace is 1-200 letters, digits, '_', '-', '.' or ':'",
                      field="namespace")
    return namespace


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS:
        raise Invalid(f"a cache key is a string of 1-{MAX_KEY_CHARS} characters", field="key")
    if "\x00" in key:  # PostgreSQL text cannot hold it
        raise Invalid("a cache key cannot contain NUL", field="key")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise Invalid("a cache key must be valid Unicode text", field="key") from None
    return key


def encode(value: Any) -> bytes:
    """A value as the tiers store it: ``b`` + bytes, or ``j`` + UTF-8 JSON.

    Raises:
        Invalid: neither bytes nor JSON-able (NaN, sets, objects, …).
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return _BYTES + bytes(value)
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return _JSON + text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise Invalid(f"a cache value must be bytes or JSON-able: {exc}", field="value") from None


def decode(data: bytes) -> Any:
    tag, body = data[:1], data[1:]
    if tag == _BYTES:
        return body
    if tag == _JSON:
        return json.loads(body)
    raise ValueError(f"unknown cache entry tag {tag!r}")


def _expiry(ttl: float | None, now: float) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0 \
            or math.isinf(ttl):
        raise Invalid("ttl must be a positive number of seconds (None: no expiry)", field="ttl")
    return now + float(ttl)


# -- counters ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheStats:
    """One namespace's counters in this process (a snapshot)."""

    namespace: str
    #: Hits per tier (``memory`` and the shared tier's name). A look-up that
    #: missed the in-process tier and found the entry in the shared one is a
    #: hit of the shared tier.
    hits: dict[str, int]
    misses: int
    sets: int
    #: Entries the in-process tier dropped to stay within its bound.
    evictions: int
    fetch_errors: int

    @property
    def hit_count(self) -> int:
        return sum(self.hits.values())

    @property
    def hit_ratio(self) -> float:
        """Hits over look-ups; 0.0 before any look-up."""
        total = self.hit_count + self.misses
        return self.hit_count / total if total else 0.0


@dataclass
class _Counters:
    hits: dict[str, int] = field(default_factory=dict)
    misses: int = 0
    sets: int = 0
    evictions: int = 0
    fetch_errors: int = 0

    def add(self, other: _Counters) -> None:
        for tier, n in other.hits.items():
            self.hits[tier] = self.hits.get(tier, 0) + n
        self.misses += other.misses
        self.sets += other.sets
        self.evictions += other.evictions
        self.fetch_errors += other.fetch_errors

    def snapshot(self, namespace: str) -> CacheStats:
        return CacheStats(namespace, dict(self.hits), self.misses, self.sets, self.evictions,
                          self.fetch_errors)


@dataclass(frozen=True, slots=True)
class CacheItem:
    """One entry as ``Cache.item`` reads it."""

    key: str
    value: Any
    expires_at: datetime | None


class _Flight:
    """One fetch in progress in this process, shared by the threads waiting for it."""

    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: bytes | None = None
        self.error: BaseException | None = None


# -- the vault's cache ---------------------------------------------------------------

class Caches:
    """The vault's cache: tiers, counters and single-flight, shared by every
    ``Cache`` view. Thread-safe.

    Args:
        settings: ``cache_memory_mb``, ``cache_local_ttl_ms``, ``cache_max_value_kb``.
        tier: the shared tier (``make_tier``); ``None``: the in-process tier only.
        clock: seconds since the epoch (expiry); tests pass their own.
    """

    def __init__(self, settings: Settings, tier: SharedTier | None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.tier = tier
        self.clock = clock
        self.max_value_bytes = settings.cache_max_value_kb * 1024
        self.local_ttl_s = settings.cache_local_ttl_ms / 1000
        self.local: LocalTier | None = None
        if tier is None or self.local_ttl_s > 0:
            self.local = LocalTier(settings.cache_memory_mb * 1024 * 1024, self._evicted)
        self._counters: dict[tuple[str, str], _Counters] = {}
        self._counters_lock = threading.Lock()
        self._flights: dict[CacheKey, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._holder = f"{socket.gethostname()}:{os.getpid()}"

    def view(self, owner: str, namespace: str) -> Cache:
        """The namespace ``namespace`` of ``owner`` ("" for the application)."""
        return Cache(self, owner, check_namespace(namespace))

    def stats(self, owner: str | None = None) -> dict[str, CacheStats]:
        """This process's counters per namespace: of ``owner`` only, or summed
        over every owner (``None``)."""
        totals: dict[str, _Counters] = {}
        with self._counters_lock:
            for (o, namespace), counters in self._counters.items():
                if owner is None or o == owner:
                    totals.setdefault(namespace, _Counters()).add(counters)
        return {ns: c.snapshot(ns) for ns, c in sorted(totals.items())}

    def namespace_stats(self, owner: str, namespace: str) -> CacheStats:
        with self._counters_lock:
            counters = self._counters.get((owner, namespace), _Counters())
            return counters.snapshot(namespace)

    def sweep(self) -> int:
        """Remove the shared tier's expired entries and lapsed claims."""
        return self.tier.sweep() if self.tier is not None else 0

    def close(self) -> None:
        if self.tier is not None:
            self.tier.close()

    # -- counters ----------------------------------------------------------------------

    def _count(self, owner: str, namespace: str) -> _Counters:
        """The counters of one namespace; call with ``_counters_lock`` held."""
        counters = self._counters.get((owner, namespace))
        if counters is None:
            counters = self._counters[(owner, namespace)] = _Counters()
        return counters

    def _evicted(self, key: CacheKey) -> None:
        with self._counters_lock:
            self._count(key.owner, key.namespace).evictions += 1

    # -- the tiers together ------------------------------------------------------------

    def lookup(self, keys: list[CacheKey], count: bool = True) -> dict[CacheKey, Entry]:
        """The live entries among ``keys`` (of one namespace), from the
        in-process tier when it may answer, else from the shared tier."""
        now, mono = self.clock(), time.monotonic()
        found: dict[CacheKey, Entry] = {}
        missing: list[CacheKey] = []
        local = self.local
        for key in keys:
            hit = local.get(key, now, mono) if local is not None else None
            if hit is None:
                missing.append(key)
            else:
                found[key] = Entry(hit.value, hit.expires_at)
        local_hits = len(found)
        shared_hits = 0
        if missing and self.tier is not None:
            got = self.tier.get_many(missing)
            for key in missing:
                entry = got.get(key)
                if entry is None:
                    if local is not None:  # deleted or expired elsewhere
                        local.discard(key)
                    continue
                if entry.expires_at is not None and entry.expires_at <= now:
                    continue
                found[key] = entry
                shared_hits += 1
                self._remember(key, entry, mono)
        if count and keys:
            owner, namespace = keys[0].owner, keys[0].namespace
            with self._counters_lock:
                counters = self._count(owner, namespace)
                if local_hits:
                    counters.hits[MEMORY_TIER] = counters.hits.get(MEMORY_TIER, 0) + local_hits
                if shared_hits:
                    name = self.tier.name if self.tier is not None else "shared"
                    counters.hits[name] = counters.hits.get(name, 0) + shared_hits
                counters.misses += len(keys) - local_hits - shared_hits
        return found

    def store(self, items: Mapping[CacheKey, bytes], expires_at: float | None) -> None:
        """Write encoded values (already checked) through both tiers."""
        if not items:
            return
        mono = time.monotonic()
        entries = {key: Entry(value, expires_at) for key, value in items.items()}
        for key, entry in entries.items():
            self._remember(key, entry, mono)
        if self.tier is not None:
            self.tier.set_many(entries)
        first = next(iter(items))
        with self._counters_lock:
            self._count(first.owner, first.namespace).sets += len(items)

    def _remember(self, key: CacheKey, entry: Entry, mono: float) -> None:
        if self.local is not None:
            trusted = math.inf if self.tier is None else mono + self.local_ttl_s
            self.local.put(key, entry.value, entry.expires_at, trusted)

    def delete(self, key: CacheKey) -> bool:
        here = self.local.discard(key) if self.local is not None else False
        if self.tier is None:
            return here
        return self.tier.delete(key) or here

    def clear(self, owner: str, namespace: str) -> None:
        if self.local is not None:
            self.local.clear(owner, namespace)
        if self.tier is not None:
            self.tier.clear(owner, namespace)

    def encode_checked(self, value: Any) -> bytes:
        data = encode(value)
        if len(data) > self.max_value_bytes:
            raise PayloadTooLarge(
                f"cache value is {len(data)} bytes encoded; the limit is "
                f"{self.max_value_bytes // 1024} KiB (MEMVAULT_CACHE_MAX_VALUE_KB)",
                field="value")
        return data

    # -- single-flight ------------------------------------------------------------------

    def fetch_once(self, key: CacheKey, fetch: Callable[[], Any], ttl: float | None) -> bytes:
        """The encoded value of ``key`` from ``fetch``, run once however many
        threads (and processes sharing the tier) ask at the same time."""
        with self._flights_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.value is not None
            return flight.value
        try:
            # A flight that ended between this caller's miss and its taking the
            # lead has stored the value: no second fetch.
            entry = self.lookup([key], count=False).get(key)
            flight.value = entry.value if entry is not None else self._lead(key, fetch, ttl)
            return flight.value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._flights_lock:
                del self._flights[key]
            flight.done.set()

    def _fetch_and_store(self, key: CacheKey, fetch: Callable[[], Any],
                         ttl: float | None) -> bytes:
        try:
            value = fetch()
            expires_at = _expiry(ttl, self.clock())
            data = self.encode_checked(value)
        except Exception:
            with self._counters_lock:
                self._count(key.owner, key.namespace).fetch_errors += 1
            raise
        self.store({key: data}, expires_at)
        return data

    def _lead(self, key: CacheKey, fetch: Callable[[], Any], ttl: float | None) -> bytes:
        tier = self.tier
        if tier is None:
            return self._fetch_and_store(key, fetch, ttl)
        holder = f"{self._holder}:{uuid.uuid4().hex[:12]}"
        while True:
            if tier.claim(key, holder, CLAIM_TTL_S):
                return self._fetch_claimed(tier, key, holder, fetch, ttl)
            # Another process fetches: wait for its entry, its error, or its
            # claim to lapse (it died) and then claim the key ourselves.
            delay = POLL_FIRST_S
            while True:
                time.sleep(delay)
                delay = min(delay * 2, POLL_MAX_S)
                entry = tier.get_many([key]).get(key)
                if entry is not None:
                    self._remember(key, entry, time.monotonic())
                    return entry.value
                state = tier.claim_state(key)
                if state is None:
                    break
                if state.error is not None:
                    raise CacheFetchError(state.error)

    def _fetch_claimed(self, tier: SharedTier, key: CacheKey, holder: str,
                       fetch: Callable[[], Any], ttl: float | None) -> bytes:
        released = False
        try:
            # Another process may have stored it between our miss and our claim.
            entry = tier.get_many([key]).get(key)
            if entry is not None:
                self._remember(key, entry, time.monotonic())
                return entry.value
            try:
                return self._fetch_and_store(key, fetch, ttl)
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
                tier.release(key, holder, error=text)
                released = True
                raise
        finally:
            if not released:
                tier.release(key, holder)


class Cache:
    """One namespace of one owner's cache. Get it from ``vault.cache(namespace)``
    (application-wide) or ``scope.cache(namespace)`` (one user's)."""

    def __init__(self, caches: Caches, owner: str, namespace: str) -> None:
        self._caches = caches
        self.owner = owner
        self.namespace = namespace

    def _key(self, key: str) -> CacheKey:
        return CacheKey(self.owner, self.namespace, _check_key(key))

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` when there is none (or it expired)."""
        ck = self._key(key)
        entry = self._caches.lookup([ck]).get(ck)
        return default if entry is None else decode(entry.value)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of those ``keys`` that are cached; missing ones are left out."""
        cks = list(dict.fromkeys(self._key(k) for k in keys))
        found = self._caches.lookup(cks) if cks else {}
        return {ck.key: decode(entry.value) for ck, entry in found.items()}

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Cache ``value`` (JSON-able or ``bytes``) for ``ttl`` seconds (``None``: no expiry).

        Raises:
            Invalid: a bad key, ttl or value.
            PayloadTooLarge: the encoded value is over ``MEMVAULT_CACHE_MAX_VALUE_KB``.
        """
        self.put(key, value, ttl)

    def put(self, key: str, value: Any, ttl: float | None = None) -> CacheItem:
        """``set``, returning the entry as stored (the HTTP ``PUT``)."""
        ck = self._key(key)
        expires_at = _expiry(ttl, self._caches.clock())
        data = self._caches.encode_checked(value)
        self._caches.store({ck: data}, expires_at)
        return CacheItem(key, decode(data), _when(expires_at))

    def set_many(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """``set`` of every item, with one ``ttl``; nothing is stored when one is refused."""
        expires_at = _expiry(ttl, self._caches.clock())
        items = {self._key(k): self._caches.encode_checked(v) for k, v in mapping.items()}
        self._caches.store(items, expires_at)

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        return self._caches.delete(self._key(key))

    def clear(self) -> None:
        """Remove every entry of this namespace (of this owner), and nothing else."""
        self._caches.clear(self.owner, self.namespace)

    def item(self, key: str) -> CacheItem:
        """The entry under ``key`` with its expiry.

        Raises:
            NotFound: nothing is cached under ``key``.
        """
        ck = self._key(key)
        entry = self._caches.lookup([ck]).get(ck)
        if entry is None:
            raise NotFound(f"no cache entry {key!r} in namespace {self.namespace!r}")
        return CacheItem(key, decode(entry.value), _when(entry.expires_at))

    def ttl(self, key: str) -> float | None:
        """Seconds ``key`` has left; ``None``: it never expires.

        Raises:
            NotFound: nothing is cached under ``key``.
        """
        ck = self._key(key)
        entry = self._caches.lookup([ck], count=False).get(ck)
        if entry is None:
            raise NotFound(f"no cache entry {key!r} in namespace {self.namespace!r}")
        if entry.expires_at is None:
            return None
        return max(0.0, entry.expires_at - self._caches.clock())

    def get_or_fetch(self, key: str, fetch: Callable[[], T], ttl: float | None = None) -> T:
        """The cached value of ``key``, or ``fetch()``'s, cached for ``ttl`` seconds.

        Single-flight: while one caller fetches, every other caller of the same
        key (other threads; other processes on a shared tier) waits for its
        value instead of fetching too. When ``fetch`` raises, every waiter
        raises that error (other processes: ``CacheFetchError`` with its text)
        and nothing is cached.
        """
        ck = self._key(key)
        entry = self._caches.lookup([ck]).get(ck)
        if entry is not None:
            value: T = decode(entry.value)
            return value
        if ttl is not None:
            _expiry(ttl, 0.0)  # refuse a bad ttl before fetching
        fetched: T = decode(self._caches.fetch_once(ck, fetch, ttl))
        return fetched

    def stats(self) -> CacheStats:
        """This namespace's counters in this process."""
        return self._caches.namespace_stats(self.owner, self.namespace)

    def __repr__(self) -> str:
        return f"Cache(owner={self.owner!r}, namespace={self.namespace!r})"


def _when(expires_at: float | None) -> datetime | None:
    return None if expires_at is None else datetime.fromtimestamp(expires_at, UTC)


# -- the shared tier by URL --------------------------------------------------------------

def make_tier(settings: Settings, db: Database) -> SharedTier | None:
    """The shared tier ``MEMVAULT_CACHE_URL`` names: unset → the database;
    ``memory://`` → none; ``redis://…``; ``memcached://host:port[,…]``.

    Redis and Memcached clients are imported only when chosen.
    """
    url = settings.cache_url
    if not url:
        from .database import DatabaseTier
        return DatabaseTier(db)
    if url.startswith("memory://"):
        return None
    if url.startswith(("redis://", "rediss://")):
        from .redis_tier import RedisTier
        redis_tier: SharedTier = RedisTier(url, settings)
        return redis_tier
    if url.startswith("memcached://"):
        from .memcached_tier import MemcachedTier
        servers = [s.strip() for s in url.removeprefix("memcached://").split(",") if s.strip()]
        password = settings.cache_password
        memcached_tier: SharedTier = MemcachedTier(
            servers, settings.cache_username,
            password.get_secret_value() if password is not None else None, settings)
        return memcached_tier
    raise Invalid(f"unknown cache URL scheme in {url.split('://')[0]!r}")
