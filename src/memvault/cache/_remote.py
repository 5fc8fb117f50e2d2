"""What the network tiers (``redis_tier.py``, ``memcached_tier.py``) share.

- ``ServerHealth``: the up/down state of one server. A failed call marks the
  server down for ``RETRY_AFTER_S``, during which calls skip it at once (a
  dead server adds no timeout to every request); after that one caller probes
  it while the others keep skipping, and the first success marks it up again.
  One warning per outage (when it goes down), one info line when it returns.
- How entries and claims are laid out in the servers' values, and how keys are
  hashed (any key string works: keys never reach a server unhashed or unescaped
  where that could matter).

Times are seconds since the epoch on this host's clock (``time.time()``), as
every tier keeps them.
"""

from __future__ import annotations

import hashlib
import math
import struct
import threading
import time

import structlog

from .tiers import Claim, Entry

__all__ = ["ServerHealth", "RETRY_AFTER_S", "CONNECT_TIMEOUT_S", "SOCKET_TIMEOUT_S",
           "ERROR_HOLD_S", "encode_entry", "decode_entry", "encode_claim", "decode_claim",
           "claim_prefix", "scope_digest", "key_bytes", "ceil_ms"]

log = structlog.get_logger(__name__)

#: A server that failed is skipped for this long before it is tried again.
RETRY_AFTER_S = 1.0
#: Loopback or a LAN: a server that does not accept within this is down.
CONNECT_TIMEOUT_S = 0.3
#: Longest wait for one reply (a busy 2-core host still answers well within it).
SOCKET_TIMEOUT_S = 0.5
#: How long a failed fetch's error stays visible to the processes waiting for it.
ERROR_HOLD_S = 5.0


class ServerHealth:
    """Up or down, for one server of one tier. Thread-safe; the fast path (up)
    takes no lock."""

    def __init__(self, tier: str, server: str, retry_after_s: float = RETRY_AFTER_S) -> None:
        self.tier = tier
        self.server = server
        self.retry_after_s = retry_after_s
        #: Outages seen so far (each logged once).
        self.outages = 0
        self._down = False
        self._retry_at = 0.0
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._down

    def available(self) -> bool:
        """Whether to call the server now (False: treat it as down, skip it)."""
        if not self._down:
            return True
        with self._lock:
            now = time.monotonic()
            if now < self._retry_at:
                return False
            # This caller probes; the others keep skipping until it reports.
            self._retry_at = now + self.retry_after_s
            return True

    def succeeded(self) -> None:
        if not self._down:
            return
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.info("cache server reachable again", tier=self.tier, server=self.server)

    def failed(self, error: BaseException | str) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + self.retry_after_s
            if self._down:
                return
            self._down = True
            self.outages += 1
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        log.warning("cache server unreachable: reads miss and writes are dropped until it "
                    "returns", tier=self.tier, server=self.server, error=text)


# -- values -----------------------------------------------------------------------
# An entry's value on the server: one flag byte, then (flag 1) its expiry as a
# big-endian double, then the encoded value. The server expires it too, but to
# the second only (Memcached), so readers check the expiry themselves.

_NO_EXPIRY = b"\x00"
_EXPIRY = b"\x01"
_DOUBLE = struct.Struct("!d")


def encode_entry(entry: Entry) -> bytes:
    if entry.expires_at is None:
        return _NO_EXPIRY + entry.value
    return _EXPIRY + _DOUBLE.pack(entry.expires_at) + entry.value


def decode_entry(raw: bytes, now: float) -> Entry | None:
    """The entry, or ``None`` when it has expired (or is not one of ours)."""
    flag = raw[:1]
    if flag == _NO_EXPIRY:
        return Entry(bytes(raw[1:]), None)
    if flag == _EXPIRY and len(raw) >= 1 + _DOUBLE.size:
        (expires_at,) = _DOUBLE.unpack_from(raw, 1)
        return Entry(bytes(raw[1 + _DOUBLE.size:]), expires_at) if expires_at > now else None
    return None


def ceil_ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


# A claim's value: the holder, NUL, then nothing (fetching) or "!" + the error
# its fetch raised. The holder is compared as the prefix up to the NUL.

def claim_prefix(holder: str) -> bytes:
    if "\x00" in holder:
        raise ValueError("a claim holder cannot contain NUL")
    return holder.encode() + b"\x00"


def encode_claim(holder: str, error: str | None = None) -> bytes:
    tail = b"" if error is None else b"!" + error.encode("utf-8", "surrogatepass")
    return claim_prefix(holder) + tail


def decode_claim(raw: bytes) -> Claim:
    holder, _, tail = raw.partition(b"\x00")
    error = tail[1:].decode("utf-8", "surrogatepass") if tail[:1] == b"!" else None
    return Claim(holder.decode("utf-8", "replace"), error)


# -- keys -----------------------------------------------------------------------------

def key_bytes(key: str) -> bytes:
    """A key as bytes; lone surrogates (valid in a ``str``) survive."""
    return key.encode("utf-8", "surrogatepass")


def scope_digest(owner: str, namespace: str) -> str:
    """32 hex digits naming one namespace of one owner: safe in any key and in
    a Redis ``SCAN MATCH`` pattern (no glob characters), and unambiguous
    (lengths are part of what is hashed)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (owner, namespace):
        data = key_bytes(part)
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()
