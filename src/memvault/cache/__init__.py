"""Caches: ``vault.cache(namespace)`` and ``scope.cache(namespace)``.

``core.py`` holds the cache itself (values, the in-process tier in front of a
shared tier, counters, single-flight); ``memory.py`` the in-process LRU;
``tiers.py`` what a shared tier provides; ``database.py``, ``redis_tier.py`` and
``memcached_tier.py`` the shared tiers, chosen by ``make_tier``.
"""

from __future__ import annotations

from .core import Cache, CacheFetchError, CacheItem, Caches, CacheStats, check_namespace, make_tier
from .tiers import CacheKey, Claim, Entry, SharedTier

__all__ = ["Cache", "Caches", "CacheItem", "CacheStats", "CacheFetchError", "make_tier",
           "check_namespace", "CacheKey", "Claim", "Entry", "SharedTier"]
