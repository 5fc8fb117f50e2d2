"""The in-process tier: an LRU of encoded entries bounded in bytes.

It sits in front of the shared tier (``cache/core.py`` decides what it may
serve): each entry carries ``trusted_until``, a monotonic instant after which
the core asks the shared tier again, so that another process's write or delete
is seen within ``MEMVAULT_CACHE_LOCAL_TTL_MS``. Without a shared tier
(``memory://``) entries are trusted until they expire.

Sizes are the encoded value plus the key plus a fixed overhead, so that many
tiny entries still count. An entry larger than the whole bound is not kept.
Thread-safe; every operation is O(1) except ``clear`` (a scan of the entries).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .tiers import CacheKey

__all__ = ["LocalTier", "LocalEntry", "ENTRY_OVERHEAD"]

#: Bytes an entry costs besides its value and key (the key object, the
#: ordered dict's node, the entry record): an estimate.
ENTRY_OVERHEAD = 200


@dataclass(frozen=True, slots=True)
class LocalEntry:
    value: bytes
    #: Seconds since the epoch; ``None``: no expiry.
    expires_at: float | None
    #: ``time.monotonic()`` after which the shared tier must be asked again.
    trusted_until: float
    size: int


def entry_size(key: CacheKey, value: bytes) -> int:
    return len(value) + len(key.owner) + len(key.namespace) + len(key.key) + ENTRY_OVERHEAD


class LocalTier:
    """An LRU of ``CacheKey → LocalEntry`` holding at most ``max_bytes``.

    Args:
        max_bytes: the bound; ``0`` keeps nothing.
        on_evict: called with each key evicted to make room (the counters).
    """

    def __init__(self, max_bytes: int, on_evict: Callable[[CacheKey], None]) -> None:
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self._entries: OrderedDict[CacheKey, LocalEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey, now: float, mono: float) -> LocalEntry | None:
        """The entry if it is unexpired at ``now`` and still trusted at ``mono``
        (marked most recently used); an expired one is dropped."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires_at is not None and entry.expires_at <= now:
                self._drop(key)
                return None
            if entry.trusted_until < mono:
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: CacheKey, value: bytes, expires_at: float | None,
            trusted_until: float = math.inf) -> None:
        size = entry_size(key, value)
        evicted: list[CacheKey] = []
        with self._lock:
            self._drop(key)
            if size > self.max_bytes:
                return
            self._entries[key] = LocalEntry(value, expires_at, trusted_until, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                old, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.size
                evicted.append(old)
        for old in evicted:  # outside the lock: the callback takes the counters' lock
            self._on_evict(old)

    def discard(self, key: CacheKey) -> bool:
        with self._lock:
            return self._drop(key)

    def clear(self, owner: str, namespace: str) -> None:
        with self._lock:
            for key in [k for k in self._entries
                        if k.namespace == namespace and k.owner == owner]:
                self._drop(key)

    def _drop(self, key: CacheKey) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True
