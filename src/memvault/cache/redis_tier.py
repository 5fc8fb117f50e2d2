"""The Redis tier: cache entries and single-flight claims on a Redis server
(``MEMVAULT_CACHE_URL=redis://…``, ``rediss://…`` or ``unix://…``; redis-py).

Layout (every name hashed, so any owner, namespace or key string works):

- an entry: ``memvault:cache:<scope>:<key>`` → flag byte, expiry, value
  (``_remote.encode_entry``), written with ``PX`` so Redis drops it when it
  expires (``sweep`` has nothing to do); ``<scope>`` is 32 hex digits naming
  one namespace of one owner (``_remote.scope_digest``), ``<key>`` the raw key
  bytes (Redis keys are binary-safe);
- a claim: ``memvault:claim:<scope>:<key>`` → holder (and the error its fetch
  raised), taken with ``SET NX PX`` and released by a small Lua script that
  checks the holder, so a lapsed claim re-taken by another process is never
  removed by the first.

``clear(owner, namespace)`` walks ``SCAN MATCH memvault:cache:<scope>:*`` and
``UNLINK``s what it finds, in batches. A per-namespace generation counter
would make clear O(1), but costs every read a second round trip (or a script)
and leaves the old generation's entries in memory until they expire, forever
for entries without a TTL, which a Redis with the default ``noeviction``
policy cannot afford. SCAN walks the whole keyspace, yet clears are rare and
it never blocks the server the way ``KEYS`` does; reads stay one ``MGET``.

Outages (see ``_remote.ServerHealth``): any Redis error is caught at this
boundary; reads miss, writes and claims are dropped (a claim that cannot be
made is granted: the caller fetches for itself), one warning per outage.
Connect and reply timeouts are short, a dead server is skipped for a moment
after each failure, and one immediate retry on a broken connection lets a
pooled socket from before a server restart reconnect without counting as an
outage.

Credentials: the URL's. The constructor pings the server once: a refused
password (or one missing) is a ``ConfigError`` that stops start-up; a server
that cannot be reached then is an outage like any other (logged, retried).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import ConfigError
from ..settings import Settings
from ._remote import (
    CONNECT_TIMEOUT_S,
    ERROR_HOLD_S,
    SOCKET_TIMEOUT_S,
    ServerHealth,
    ceil_ms,
    claim_prefix,
    decode_claim,
    decode_entry,
    encode_claim,
    encode_entry,
    key_bytes,
    scope_digest,
)
from .tiers import CacheKey, Claim, Entry

__all__ = ["RedisTier"]

T = TypeVar("T")

ENTRY_PREFIX = b"memvault:cache:"
CLAIM_PREFIX = b"memvault:claim:"
#: Keys per ``SCAN`` step and per ``UNLINK`` of ``clear``.
CLEAR_BATCH = 500

# KEYS[1] the claim; ARGV[1] "holder\0"; ARGV[2] the claim's new value ("" to
# remove it); ARGV[3] its life in ms. Only the holder's own claim (or none:
# it lapsed) is touched.
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  if v then redis.call('DEL', KEYS[1]) end
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""

_AUTH_ERRORS = (redis.AuthenticationError, redis.exceptions.AuthorizationError,
                redis.exceptions.NoPermissionError,
                redis.exceptions.AuthenticationWrongNumberOfArgsError)


class RedisTier:
    """``SharedTier`` on one Redis server (see ``tiers.py``). Thread-safe."""

    name = "redis"

    def __init__(self, url: str, settings: Settings) -> None:
        self.settings = settings
        # One immediate retry, on a broken connection only (not on a timeout:
        # a server that does not answer costs one timeout, not two).
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
            retry=retry, health_check_interval=0)
        kwargs = self.client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        db = kwargs.get("db", 0)
        #: host:port/db, never the password (it reaches log lines).
        self.server = f"{where}/{db}"
        self.health = ServerHealth(self.name, self.server)
        self._release = self.client.register_script(_RELEASE)
        self._check_credentials()

    def _check_credentials(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            text = str(exc)
            if not (isinstance(exc, _AUTH_ERRORS) or text.startswith(("NOAUTH", "WRONGPASS"))):
                self.health.failed(exc)  # unreachable now: an outage, not an error
                return
            self.client.close()
            if self.client.connection_pool.connection_kwargs.get("password"):
                raise ConfigError(f"Redis at {self.server} refused the credentials of "
                                  f"MEMVAULT_CACHE_URL: {text}") from exc
            raise ConfigError(f"Redis at {self.server} requires a password "
                              f"(none in MEMVAULT_CACHE_URL): {text}") from exc

    def _call(self, op: Callable[[redis.Redis], T], default: T) -> T:
        """``op(client)``, or ``default`` when the server is down or fails."""
        if not self.health.available():
            return default
        try:
            result = op(self.client)
        except redis.RedisError as exc:
            self.health.failed(exc)
            return default
        self.health.succeeded()
        return result

    @staticmethod
    def _entry_key(key: CacheKey) -> bytes:
        return (ENTRY_PREFIX + scope_digest(key.owner, key.namespace).encode() + b":"
                + key_bytes(key.key))

    @staticmethod
    def _claim_key(key: CacheKey) -> bytes:
        return (CLAIM_PREFIX + scope_digest(key.owner, key.namespace).encode() + b":"
                + key_bytes(key.key))

    # -- entries ------------------------------------------------------------------------

    def get_many(self, keys: Sequence[CacheKey]) -> dict[CacheKey, Entry]:
        if not keys:
            return {}
        wanted = list(dict.fromkeys(keys))
        raws: list[Any] = self._call(
            lambda c: c.mget([self._entry_key(k) for k in wanted]), [])
        now = time.time()
        found: dict[CacheKey, Entry] = {}
        for key, raw in zip(wanted, raws, strict=False):
            if raw is not None and (entry := decode_entry(raw, now)) is not None:
                found[key] = entry
        return found

    def set_many(self, entries: Mapping[CacheKey, Entry]) -> None:
        if not entries:
            return

        def write(client: redis.Redis) -> None:
            now = time.time()
            pipe = client.pipeline(transaction=False)
            for key, entry in entries.items():
                name = self._entry_key(key)
                if entry.expires_at is None:
                    pipe.set(name, encode_entry(entry))
                elif entry.expires_at > now:
                    pipe.set(name, encode_entry(entry), px=ceil_ms(entry.expires_at - now))
                else:  # already expired: the write replaces (removes) what was there
                    pipe.unlink(name)
            pipe.execute()

        self._call(write, None)

    def delete(self, key: CacheKey) -> bool:
        return bool(self._call(lambda c: c.delete(self._entry_key(key)), 0))

    def clear(self, owner: str, namespace: str) -> None:
        pattern = ENTRY_PREFIX + scope_digest(owner, namespace).encode() + b":*"

        def unlink_all(client: redis.Redis) -> None:
            batch: list[bytes] = []
            for name in client.scan_iter(match=pattern, count=CLEAR_BATCH):
                batch.append(name)
                if len(batch) >= CLEAR_BATCH:
                    client.unlink(*batch)
                    batch = []
            if batch:
                client.unlink(*batch)

        self._call(unlink_all, None)

    # -- claims -------------------------------------------------------------------------

    def claim(self, key: CacheKey, holder: str, ttl_s: float) -> bool:
        value = encode_claim(holder)
        return self._call(
            lambda c: bool(c.set(self._claim_key(key), value, nx=True, px=ceil_ms(ttl_s))), True)

    def claim_state(self, key: CacheKey) -> Claim | None:
        raw: Any = self._call(lambda c: c.get(self._claim_key(key)), None)
        return decode_claim(raw) if isinstance(raw, bytes) else None

    def release(self, key: CacheKey, holder: str, error: str | None = None) -> None:
        value = b"" if error is None else encode_claim(holder, error)
        self._call(lambda c: self._release(keys=[self._claim_key(key)],
                                           args=[claim_prefix(holder), value,
                                                 ceil_ms(ERROR_HOLD_S)], client=c), None)

    # -- upkeep -------------------------------------------------------------------------

    def sweep(self) -> int:
        return 0  # Redis expires entries (PX) and claims by itself

    def close(self) -> None:
        self.client.close()
