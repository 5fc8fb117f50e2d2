"""What a shared cache tier provides (the database, Redis, Memcached).

The cache (``cache/core.py``) keeps an in-process LRU in front of one shared
tier chosen by ``MEMVAULT_CACHE_URL``. A tier stores encoded entries (bytes;
the core encodes JSON values and raw bytes) under a ``CacheKey`` and implements
the cross-process part of single-flight with *claims*: the process that claims
a missing key fetches it; the others wait for the entry to appear, or for the
claim to be released with an error (they raise it) or to lapse (its holder
died: they try to claim it themselves).

A network tier (Redis, Memcached) that is down never raises to the caller:
reads are misses, writes and claims are dropped (a failed claim means "fetch
it yourself"), and it logs one warning per outage of each server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CacheKey", "Entry", "Claim", "SharedTier"]


@dataclass(frozen=True, slots=True)
class CacheKey:
    #: The user of a ``scope.cache``; "" for the application-wide ``vault.cache``.
    owner: str
    namespace: str
    key: str


@dataclass(frozen=True, slots=True)
class Entry:
    #: The encoded value (see ``cache/core.py``).
    value: bytes
    #: Seconds since the epoch; ``None``: no expiry.
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Claim:
    """Who is fetching a key, and how it ended if it failed."""

    holder: str
    #: Set when the holder's fetch raised: the text waiters raise.
    error: str | None = None


class SharedTier(Protocol):
    #: ``database``, ``redis`` or ``memcached`` (the name counters use).
    name: str

    def get_many(self, keys: Sequence[CacheKey]) -> dict[CacheKey, Entry]:
        """The live (unexpired) entries among ``keys``; missing ones left out."""
        ...

    def set_many(self, entries: Mapping[CacheKey, Entry]) -> None: ...

    def delete(self, key: CacheKey) -> bool:
        """True when an entry was there."""
        ...

    def clear(self, owner: str, namespace: str) -> None:
        """Every entry of one namespace of one owner, and nothing else."""
        ...

    def claim(self, key: CacheKey, holder: str, ttl_s: float) -> bool:
        """Claim the right to fetch ``key`` for ``ttl_s`` seconds; False when
        another live claim holds it."""
        ...

    def claim_state(self, key: CacheKey) -> Claim | None:
        """The live claim on ``key``, if any (lapsed claims are ``None``)."""
        ...

    def release(self, key: CacheKey, holder: str, error: str | None = None) -> None:
        """End ``holder``'s claim; with ``error``, leave it visible to waiters
        (for a few seconds) instead of removing it."""
        ...

    def sweep(self) -> int:
        """Remove expired entries and lapsed claims (a tier that expires by
        itself returns 0); the number removed."""
        ...

    def close(self) -> None: ...
