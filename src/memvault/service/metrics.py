"""``GET /metrics``: Prometheus text format (prometheus-client).

What is measured, and where:

- ``memvault_http_requests_total`` and ``memvault_http_request_duration_seconds``
  per method, route *template* (``/api/entities/{entity_id}``, never the raw
  path: ids would make a series per record; ``<unmatched>`` when no route
  matched) and status, by ``MetricsMiddleware``. A streamed response is timed
  to its end.
- ``memvault_chunk_append_seconds``: ``via="stream"``, each group commit of the
  vault's chunk writer (library and chat replies); ``via="http"``, each
  ``POST /api/messages/{message_id}/chunks`` request.
- ``memvault_sse_followers``: Server-Sent Events responses in progress.
- ``memvault_db_pool_in_use``: database connections checked out of the pool.
- ``memvault_cache_hits_total`` (per namespace and tier) and
  ``memvault_cache_misses_total`` (per namespace): ``vault.cache_stats()``.
- ``memvault_live_streams`` (messages ``streaming`` now) and
  ``memvault_blob_bytes`` / ``memvault_blobs``: read from the database when
  scraped, so they describe the whole vault, whichever process answers. The
  blob totals are a sum over the ``blobs`` table: a scrape reuses them for a
  hundred times as long as they took to compute (at most a minute), so the
  sum costs about 1% of a database whatever its size, and is exact when small.

Several workers (``memvault serve --workers N``): ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a private folder under the data dir before the
workers start; each worker writes its instruments to files there, and the one
scraped sums them (``MultiProcessCollector``). Process-local values kept
elsewhere (the pool, the cache counters) are copied into the instruments by a
background component every ``SYNC_INTERVAL_S`` and at each scrape.

Access: ``MEMVAULT_METRICS=false`` leaves the route out (404); without
``MEMVAULT_METRICS_TOKEN`` only loopback clients are answered (others 403);
with it, every client must send ``Authorization: Bearer <token>`` (401).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import shutil
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..backends.schema import blobs, messages
from ..errors import Unauthorized
from ..vault import Vault
from .hosts import is_loopback_address
from .problems import problem, request_id

__all__ = ["MetricsMiddleware", "install", "attach", "detach", "prepare_multiprocess_dir",
           "MULTIPROC_ENV", "UNMATCHED"]

log = structlog.get_logger(__name__)

#: The variable prometheus-client reads (at import) to write its values to files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The route label of requests no route matched.
UNMATCHED = "<unmatched>"
#: How often every process copies its pool and cache counters into the instruments.
SYNC_INTERVAL_S = 5.0
#: A scrape reuses the blob totals for this many times as long as their sum
#: took, and at most ``BLOB_STATS_MAX_AGE_S``.
BLOB_STATS_REUSE = 100
BLOB_STATS_MAX_AGE_S = 60.0
_CHUNKS_ROUTE = ("POST", "/api/messages/{message_id}/chunks")
_APPEND_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5)


def _multiprocess() -> bool:
    return MULTIPROC_ENV in os.environ


class _Instruments:
    """This process's instruments, made once (prometheus-client keeps them by
    name). In multiprocess mode they are registered nowhere: their values go to
    files that ``MultiProcessCollector`` reads."""

    def __init__(self) -> None:
        self.registry: CollectorRegistry | None = (
            None if _multiprocess() else CollectorRegistry(auto_describe=True))
        reg = self.registry
        self.requests = Counter("memvault_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=reg)
        self.latency = Histogram("memvault_http_request_duration_seconds",
                                 "HTTP request latency (streamed responses: to their end)",
                                 ["method", "route", "status"], registry=reg)
        self.append = Histogram("memvault_chunk_append_seconds",
                                "latency of making streamed chunks durable", ["via"],
                                buckets=_APPEND_BUCKETS, registry=reg)
        self.followers = Gauge("memvault_sse_followers", "Server-Sent Events streams open",
                               registry=reg, multiprocess_mode="livesum")
        self.pool = Gauge("memvault_db_pool_in_use", "database connections in use",
                          registry=reg, multiprocess_mode="livesum")
        self.cache_hits = Counter("memvault_cache_hits", "cache hits per namespace and tier",
                                  ["namespace", "tier"], registry=reg)
        self.cache_misses = Counter("memvault_cache_misses", "cache misses per namespace",
                                    ["namespace"], registry=reg)

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests.labels(method, route, code).inc()
        self.latency.labels(method, route, code).observe(seconds)
        if (method, route) == _CHUNKS_ROUTE and status < 300:
            self.append.labels("http").observe(seconds)


_instruments: _Instruments | None = None
_instruments_lock = threading.Lock()


def _get_instruments() -> _Instruments:
    global _instruments
    if _instruments is None:
        with _instruments_lock:
            if _instruments is None:
                _instruments = _Instruments()
    return _instruments


class _VaultStats:
    """One vault's process-local values copied into the instruments (the cache
    counters as increments since the last copy), and its database-wide gauges."""

    def __init__(self, vault: Vault, instruments: _Instruments) -> None:
        self._vault = weakref.ref(vault)
        self._ins = instruments
        self._lock = threading.Lock()
        self._hits: dict[tuple[str, str], int] = {}
        self._misses: dict[str, int] = {}
        #: (valid until, count, bytes)
        self._blobs: tuple[float, int, int] | None = None

    def sync(self) -> None:
        vault = self._vault()
        if vault is None:
            return
        with self._lock:
            checkedout = getattr(vault.db.engine.pool, "checkedout", None)
            if callable(checkedout):
                self._ins.pool.set(checkedout())
            for namespace, stats in vault.cache_stats().items():
                for tier, hits in stats.hits.items():
                    before = self._hits.get((namespace, tier), 0)
                    if hits > before:
                        self._ins.cache_hits.labels(namespace, tier).inc(hits - before)
                    self._hits[(namespace, tier)] = hits
                before = self._misses.get(namespace, 0)
                if stats.misses > before:
                    self._ins.cache_misses.labels(namespace).inc(stats.misses - before)
                self._misses[namespace] = stats.misses

    def database_gauges(self) -> list[Metric]:
        vault = self._vault()
        if vault is None:
            return []
        now = time.monotonic()
        with vault.db.read() as conn:
            streaming = conn.execute(sa.select(sa.func.count()).select_from(messages)
                                     .where(messages.c.status == "streaming")).scalar_one()
            cached = self._blobs
            if cached is None or now >= cached[0]:
                count, size = conn.execute(sa.select(
                    sa.func.count(), sa.func.coalesce(sa.func.sum(blobs.c.size), 0))).one()
                took = time.monotonic() - now
                cached = self._blobs = (now + min(BLOB_STATS_MAX_AGE_S, took * BLOB_STATS_REUSE),
                                        int(count), int(size))
        return [
            GaugeMetricFamily("memvault_live_streams", "messages streaming now",
                              value=int(streaming)),
            GaugeMetricFamily("memvault_blobs", "blobs stored", value=cached[1]),
            GaugeMetricFamily("memvault_blob_bytes", "bytes of the blobs stored",
                              value=cached[2]),
        ]


_attached: weakref.WeakKeyDictionary[Vault, _VaultStats] = weakref.WeakKeyDictionary()
_attached_lock = threading.Lock()


def attach(vault: Vault) -> None:
    """Measure ``vault`` in this process (idempotent): its chunk writer's
    commits, and its pool and cache counters (a background component)."""
    ins = _get_instruments()
    with _attached_lock:
        if vault in _attached:
            return
        stats = _attached[vault] = _VaultStats(vault, ins)
    stream = ins.append.labels("stream")
    vault.chunk_writer.on_commit = lambda _count, seconds: stream.observe(seconds)
    with contextlib.suppress(ValueError):  # registered by an app measured before
        vault.background.register("metrics-sync", SYNC_INTERVAL_S, stats.sync)


def detach(vault: Vault) -> None:
    """The app serving ``vault`` stops: in multiprocess mode, this process's
    live gauges leave the sums."""
    if _multiprocess():
        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class _DatabaseCollector(Collector):
    def __init__(self, stats: _VaultStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        return self._stats.database_gauges()


def _exposition(vault: Vault) -> bytes:
    ins = _get_instruments()
    with _attached_lock:
        stats = _attached.get(vault)
    if stats is None:
        attach(vault)
        with _attached_lock:
            stats = _attached[vault]
    stats.sync()
    registry = CollectorRegistry()
    if ins.registry is None:  # every worker's files, this one's included
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(ins.registry)
    registry.register(_DatabaseCollector(stats))
    return generate_latest(registry)


# -- the route --------------------------------------------------------------------------

router = APIRouter()


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    vault: Vault = request.app.state.vault
    token = vault.settings.metrics_token
    if token is not None:
        given = _bearer(request)
        if given is None or not hmac.compare_digest(given.encode(),
                                                    token.get_secret_value().encode()):
            raise Unauthorized("metrics need the metrics token (MEMVAULT_METRICS_TOKEN)")
    elif request.client is None or not is_loopback_address(request.client.host):
        return problem(403, "without MEMVAULT_METRICS_TOKEN, metrics are served to "
                       "loopback clients only", "forbidden", request_id=request_id(request))
    return Response(_exposition(vault), media_type=CONTENT_TYPE_LATEST)


# -- the middleware ---------------------------------------------------------------------

def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Counts and times every request by route template and status, and counts
    the Server-Sent Events responses in progress."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.ins = _get_instruments()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an error escaped the app
        following = False
        followers = self.ins.followers

        async def observe(message: Message) -> None:
            nonlocal status, following
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-type" and value.startswith(
                            b"text/event-stream"):
                        following = True
                        followers.inc()
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            if following:
                followers.dec()
            self.ins.request_done(scope["method"], _route(scope), status,
                                  time.perf_counter() - started)


def install(app: FastAPI) -> None:
    """Serve ``/metrics`` and measure every request of ``app`` (add this before
    the request-id middleware, so it sees every response)."""
    app.add_middleware(MetricsMiddleware)
    app.include_router(router)


def prepare_multiprocess_dir(data_dir: Path) -> Path:
    """A fresh, private folder for the workers' metric files of this server
    (``<data_dir>/metrics/<pid>``); folders of servers no longer running go."""
    root = data_dir / "metrics"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in root.iterdir():
        if old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    mine = root / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir(mode=0o700)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
