"""The Memcached tier: cache entries and single-flight claims spread over one
or more Memcached servers (``MEMVAULT_CACHE_URL=memcached://host:port[,…]``).

The binary protocol (``python-binary-memcached``), the one with SASL
authentication (PLAIN; ``MEMVAULT_CACHE_USERNAME`` / ``_PASSWORD``). One client
per server (with a socket per thread: the library's connection is thread-local).
Each key lives on the server a consistent-hash ring (``uhashring``) picks for
it, so adding or removing a server moves only that server's share of the keys.
A server that is down keeps its place on the ring: its keys miss until it
returns (moving them to another server would serve stale values once it is
back).

Keys: Memcached wants at most 250 bytes without spaces or control characters,
so every key sent is ``memvault:<kind>:`` + a BLAKE2b digest in hex:

- the namespace's *generation token* ``memvault:gen:<scope>`` → random hex;
- an entry ``memvault:e:`` + digest(scope, token, key) → flag byte, expiry,
  value (``_remote.encode_entry``); Memcached expires it too (to the second),
  readers check the exact expiry;
- a claim ``memvault:claim:`` + digest(scope, key) → holder (and error).

``clear(owner, namespace)`` writes a fresh token: the old entries become
unreachable at once, on every server, and Memcached evicts them as it needs
the room (it has no way to list keys). A missing token (never written, evicted,
or its server restarted) reads as "no entries"; the first write makes one with
``add`` so that two processes agree on it. Reads therefore cost two round trips
(token, then entries), never more, whatever the number of keys.

Claims use ``add`` with an expiry (whole seconds, at least one); a release
checks the holder and uses CAS, so it never removes a claim another process
took after this one lapsed.

Outages: per server, as for Redis (``_remote.ServerHealth``): short timeouts,
reads miss, writes and claims are dropped (a claim that cannot be made is
granted), one warning per outage of each server, a moment's back-off after a
failure, and recovery by itself. A connection from before a server restart is
retried once at once. A server refusing the credentials at run time (say its
password changed) counts as an outage, with the reason in the warning; at
construction it is a ``ConfigError`` that stops start-up (as is a server that
wants SASL when no credentials are set). A server unreachable at construction
is only an outage.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import socket
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import structlog
from bmemcached.exceptions import MemcachedException
from bmemcached.protocol import Protocol
from uhashring import HashRing

from ..errors import ConfigError
from ..settings import Settings
from ._remote import (
    ERROR_HOLD_S,
    SOCKET_TIMEOUT_S,
    ServerHealth,
    decode_claim,
    decode_entry,
    encode_claim,
    encode_entry,
    key_bytes,
    scope_digest,
)
from .tiers import CacheKey, Claim, Entry

__all__ = ["MemcachedTier"]

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: Memcached status codes: authentication failed / needs more steps.
AUTH_STATUSES = (0x20, 0x21)
#: The library's own status for a connection it gave up on (never the server's).
DISCONNECTED = Protocol.STATUS["server_disconnected"]
#: Beyond this many seconds Memcached reads an expiry as a Unix time.
RELATIVE_EXPIRY_MAX_S = 30 * 86_400

Scope = tuple[str, str]


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _exptime(expires_at: float | None, now: float) -> int | None:
    """Memcached's expiry for an entry (0: none); ``None`` when already expired."""
    if expires_at is None:
        return 0
    left = expires_at - now
    if left <= 0:
        return None
    if left > RELATIVE_EXPIRY_MAX_S:
        return math.ceil(expires_at)
    return math.ceil(left)


# One Memcached command each, bound to its arguments (for ``_Server.call``).

def _get_multi(mkeys: list[str]) -> Callable[[Protocol], dict[str, Any]]:
    return lambda p: p.get_multi(mkeys)


def _set_multi(mapping: dict[str, bytes], exptime: int) -> Callable[[Protocol], list[Any]]:
    return lambda p: p.set_multi(mapping, exptime)


def _delete(mkey: str) -> Callable[[Protocol], bool]:
    def delete(p: Protocol) -> bool:
        # The library answers True for a key that was not there: look first.
        value, _ = p.get(mkey)
        if value is None:
            return False
        p.delete(mkey)
        return True

    return delete


class _SocketCloser:
    """Closes a socket when the thread that opened it ends (see ``_Client``)."""

    __slots__ = ("sock", "__weakref__")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __del__(self) -> None:
        self.sock.close()


class _Client(Protocol):  # type: ignore[misc]
    """The library's connection to one server, which is a ``threading.local``:
    each thread gets its own socket (so no locking, and no pool), opened on
    first use. This subclass makes sure every socket gets closed: by ``close_all``,
    or when its thread ends (a ``_SocketCloser`` in the thread's own attributes;
    without it, a socket of a finished thread is left to the garbage collector,
    unclosed), and never shared with a forked child."""

    def __init__(self, address: str, sockets: weakref.WeakSet[_SocketCloser],
                 username: str | None, password: str | None) -> None:
        # threading.local runs this again in each thread that uses the client
        super().__init__(address, username=username, password=password,
                         socket_timeout=SOCKET_TIMEOUT_S, raw_data=True)
        self.set_retry_delay(0)  # the back-off is ServerHealth's, per server
        self._sockets = sockets
        self._closer: _SocketCloser | None = None
        self._pid = os.getpid()

    def _open_connection(self) -> None:
        conn: socket.socket | None = getattr(self, "connection", None)
        if conn is not None and self._pid != os.getpid():
            # a forked child: the parent's socket is not ours (closing our copy
            # of the descriptor leaves the parent's connection alone)
            conn.close()
            self.connection = None
        self._pid = os.getpid()
        super()._open_connection()
        conn = getattr(self, "connection", None)
        if conn is not None and (self._closer is None or self._closer.sock is not conn):
            self._closer = _SocketCloser(conn)
            self._sockets.add(self._closer)


class _Server:
    """One Memcached server: its client (a socket per thread) and its health."""

    def __init__(self, address: str, username: str | None, password: str | None) -> None:
        self.address = address
        self.username = username
        self.password = password
        self.health = ServerHealth("memcached", address)
        self._sockets: weakref.WeakSet[_SocketCloser] = weakref.WeakSet()
        self.client = _Client(address, self._sockets, username, password)
        self._refused: set[int] = set()  # status codes already warned about

    def call(self, op: Callable[[Protocol], T], default: T) -> T:
        """``op(client)``, or ``default`` when the server is down or fails.

        The client library reports a lost connection as a miss (and drops the
        socket), so a call failed when the connection is gone afterwards."""
        if not self.health.available():
            return default
        client = self.client
        try:
            had_socket = client.connection is not None
            result = op(client)
            if client.connection is None and had_socket:
                # A socket from before a server restart: reconnect once.
                result = op(client)
            if client.connection is None:
                self.health.failed("connection refused, lost or timed out")
                return default
        except MemcachedException as exc:
            client.disconnect()  # the stream may be out of step after an error
            if exc.code in AUTH_STATUSES:
                self.health.failed(f"authentication failed: {exc}")
            elif exc.code == DISCONNECTED:  # e.g. not a memcached speaking there
                self.health.failed(exc)
            else:
                self.refused(exc.code, str(exc))
            return default
        except OSError as exc:
            client.disconnect()
            self.health.failed(exc)
            return default
        self.health.succeeded()
        return result

    def refused(self, status: int | None, text: str) -> None:
        """A command the server answered with an error (not an outage): warned
        about once per status code."""
        code = status if status is not None else -1
        if code in self._refused:
            return
        self._refused.add(code)
        log.warning("memcached refused a cache command; it is dropped", server=self.address,
                    status=code, error=text)

    def check(self) -> None:
        """Connect and authenticate once (at start-up)."""
        client = self.client
        try:
            status = client.noop()
        except MemcachedException as exc:
            status = exc.code
        if client.connection is None:
            self.health.failed("connection refused or timed out")
        elif status in AUTH_STATUSES:
            client.disconnect()
            if self.username and self.password:
                raise ConfigError(f"memcached at {self.address} refused the SASL credentials "
                                  "(MEMVAULT_CACHE_USERNAME / MEMVAULT_CACHE_PASSWORD)")
            raise ConfigError(f"memcached at {self.address} requires SASL authentication: "
                              "set MEMVAULT_CACHE_USERNAME and MEMVAULT_CACHE_PASSWORD")

    def close(self) -> None:
        """Close every thread's socket (a thread that calls again reconnects)."""
        for closer in list(self._sockets):
            closer.sock.close()


class MemcachedTier:
    """``SharedTier`` on Memcached servers (see ``tiers.py``). Thread-safe."""

    name = "memcached"

    def __init__(self, servers: list[str], username: str | None, password: str | None,
                 settings: Settings) -> None:
        addresses = list(dict.fromkeys(s.strip() for s in servers if s.strip()))
        if not addresses:
            raise ConfigError("MEMVAULT_CACHE_URL names no memcached server")
        self.settings = settings
        self.servers = {a: _Server(a, username, password) for a in addresses}
        self.ring = HashRing(nodes=addresses)
        try:
            for server in self.servers.values():
                server.check()
        except ConfigError:
            self.close()
            raise

    def server_for(self, mkey: str) -> _Server:
        """The server a (hashed) Memcached key lives on."""
        return self.servers[str(self.ring.get_node(mkey))]

    def _by_server(self, mkeys: Iterable[str]) -> dict[_Server, list[str]]:
        groups: dict[_Server, list[str]] = defaultdict(list)
        for mkey in mkeys:
            groups[self.server_for(mkey)].append(mkey)
        return groups

    def _get_multi(self, mkeys: Iterable[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for server, group in self._by_server(mkeys).items():
            got: dict[str, Any] = server.call(_get_multi(group), {})
            found.update((k, v[0]) for k, v in got.items())
        return found

    # -- keys -----------------------------------------------------------------------------

    @staticmethod
    def _token_key(scope: Scope) -> str:
        return "memvault:gen:" + scope_digest(*scope)

    @staticmethod
    def _entry_key(key: CacheKey, token: bytes) -> str:
        scope = scope_digest(key.owner, key.namespace).encode()
        return "memvault:e:" + _digest(scope, token, key_bytes(key.key))

    @staticmethod
    def _claim_key(key: CacheKey) -> str:
        scope = scope_digest(key.owner, key.namespace).encode()
        return "memvault:claim:" + _digest(scope, key_bytes(key.key))

    def _tokens(self, scopes: Iterable[Scope], create: bool) -> dict[Scope, bytes]:
        """The generation token of each namespace (left out: none, or its server
        is down); with ``create``, missing ones are made."""
        by_key = {self._token_key(s): s for s in scopes}
        got = self._get_multi(by_key)
        tokens = {by_key[k]: v for k, v in got.items()}
        if create:
            for mkey, scope in by_key.items():
                if scope not in tokens:
                    token = self._new_token(mkey)
                    if token is not None:
                        tokens[scope] = token
        return tokens

    def _new_token(self, mkey: str) -> bytes | None:
        fresh = secrets.token_hex(8).encode()

        def add(p: Protocol) -> bytes | None:
            if p.add(mkey, fresh, 0):
                return fresh
            value, _ = p.get(mkey)  # another process made it first: take theirs
            return value if isinstance(value, bytes) else None

        token: bytes | None = self.server_for(mkey).call(add, None)
        return token

    # -- entries ----------------------------------------------------------------------------

    def get_many(self, keys: Sequence[CacheKey]) -> dict[CacheKey, Entry]:
        if not keys:
            return {}
        wanted = list(dict.fromkeys(keys))
        tokens = self._tokens({(k.owner, k.namespace) for k in wanted}, create=False)
        mkeys = {self._entry_key(k, tokens[(k.owner, k.namespace)]): k for k in wanted
                 if (k.owner, k.namespace) in tokens}
        raws = self._get_multi(mkeys)
        now = time.time()
        found: dict[CacheKey, Entry] = {}
        for mkey, raw in raws.items():
            if (entry := decode_entry(raw, now)) is not None:
                found[mkeys[mkey]] = entry
        return found

    def set_many(self, entries: Mapping[CacheKey, Entry]) -> None:
        if not entries:
            return
        tokens = self._tokens({(k.owner, k.namespace) for k in entries}, create=True)
        now = time.time()
        # server → exptime → {key: value}: one pipelined set_multi per group
        writes: dict[_Server, dict[int, dict[str, bytes]]] = defaultdict(
            lambda: defaultdict(dict))
        gone: list[str] = []
        for key, entry in entries.items():
            token = tokens.get((key.owner, key.namespace))
            if token is None:
                continue  # the token's server is down: the write is dropped
            mkey = self._entry_key(key, token)
            exptime = _exptime(entry.expires_at, now)
            if exptime is None:
                gone.append(mkey)  # already expired: the write removes what was there
            else:
                writes[self.server_for(mkey)][exptime][mkey] = encode_entry(entry)
        for server, by_time in writes.items():
            for exptime, mapping in by_time.items():
                failed: list[Any] = server.call(_set_multi(mapping, exptime), [])
                if failed:
                    server.refused(None, f"{len(failed)} entries not stored (larger than the "
                                   "server's item size limit, memcached -I?)")
        for mkey in gone:
            self.server_for(mkey).call(_delete(mkey), False)

    def delete(self, key: CacheKey) -> bool:
        token = self._tokens([(key.owner, key.namespace)], create=False).get(
            (key.owner, key.namespace))
        if token is None:
            return False
        mkey = self._entry_key(key, token)
        return bool(self.server_for(mkey).call(_delete(mkey), False))

    def clear(self, owner: str, namespace: str) -> None:
        mkey = self._token_key((owner, namespace))
        fresh = secrets.token_hex(8).encode()
        self.server_for(mkey).call(lambda p: p.set(mkey, fresh, 0), False)

    # -- claims -----------------------------------------------------------------------------

    def claim(self, key: CacheKey, holder: str, ttl_s: float) -> bool:
        mkey = self._claim_key(key)
        value = encode_claim(holder)
        seconds = max(1, math.ceil(ttl_s))
        return bool(self.server_for(mkey).call(lambda p: p.add(mkey, value, seconds), True))

    def claim_state(self, key: CacheKey) -> Claim | None:
        mkey = self._claim_key(key)
        raw = self.server_for(mkey).call(lambda p: p.get(mkey)[0], None)
        return decode_claim(raw) if isinstance(raw, bytes) else None

    def release(self, key: CacheKey, holder: str, error: str | None = None) -> None:
        mkey = self._claim_key(key)

        def release(p: Protocol) -> None:
            raw, cas = p.get(mkey)
            if isinstance(raw, bytes) and decode_claim(raw).holder != holder:
                return  # lapsed, and another process holds it now
            if error is None:
                if cas:
                    p.delete(mkey, cas)
            elif cas:
                p.cas(mkey, encode_claim(holder, error), cas, math.ceil(ERROR_HOLD_S))
            else:
                p.add(mkey, encode_claim(holder, error), math.ceil(ERROR_HOLD_S))

        self.server_for(mkey).call(release, None)

    # -- upkeep -----------------------------------------------------------------------------

    def sweep(self) -> int:
        return 0  # Memcached expires entries and claims by itself

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
