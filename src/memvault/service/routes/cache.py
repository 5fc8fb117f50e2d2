"""``/api/cache``: the calling user's cache namespaces (issue 8).

Values are JSON here; ``bytes`` values are for the library only (reading one
over HTTP is refused). Stats are this server process's counters.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from ...errors import Invalid
from ..deps import UserScope
from ..schemas import CacheEntryOut, CacheStatsOut, CacheValueIn

router = APIRouter(prefix="/api/cache", tags=["cache"])


@router.get("/{namespace}", response_model=CacheStatsOut)
def cache_stats(namespace: str, scope: UserScope) -> CacheStatsOut:
    stats = scope.cache(namespace).stats()
    return CacheStatsOut(namespace=namespace, hits=stats.hit_count, misses=stats.misses,
                         hit_ratio=stats.hit_ratio, sets=stats.sets, evictions=stats.evictions)


@router.delete("/{namespace}", status_code=204)
def clear_cache(namespace: str, scope: UserScope) -> Response:
    scope.cache(namespace).clear()
    return Response(status_code=204)


@router.get("/{namespace}/{key:path}", response_model=CacheEntryOut)
def get_cache_entry(namespace: str, key: str, scope: UserScope) -> CacheEntryOut:
    item = scope.cache(namespace).item(key)
    if isinstance(item.value, bytes):
        raise Invalid("this entry holds bytes, which only the library reads", field="key")
    return CacheEntryOut(key=item.key, value=item.value, expires_at=item.expires_at)


@router.put("/{namespace}/{key:path}", response_model=CacheEntryOut)
def put_cache_entry(namespace: str, key: str, body: CacheValueIn,
                    scope: UserScope) -> CacheEntryOut:
    item = scope.cache(namespace).put(key, body.value, body.ttl_s)
    return CacheEntryOut(key=item.key, value=item.value, expires_at=item.expires_at)


@router.delete("/{namespace}/{key:path}", status_code=204)
def delete_cache_entry(namespace: str, key: str, scope: UserScope) -> Response:
    scope.cache(namespace).delete(key)
    return Response(status_code=204)
