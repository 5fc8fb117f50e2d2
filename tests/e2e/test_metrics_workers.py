"""``memvault serve --workers 2``: ``/metrics`` sums every worker's counts,
whichever worker answers the scrape (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from memvault import Settings

from .server import Server

ROUTE = "/api/entities/{entity_id}"


def _requests(text: str) -> float:
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == "memvault_http_requests_total" and s.labels.get("route") == ROUTE)


def test_metrics_add_up_over_two_workers(settings: Settings, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("the sums are the metric files' business, the same on every backend")
    with Server(settings, workers=2) as server:
        served: dict[int, int] = {}
        sent = 0
        deadline = time.monotonic() + 60
        # New connections until both workers have answered requests of ROUTE.
        while len(served) < 2 or sent < 20:
            assert time.monotonic() < deadline, f"requests reached only {served}"
            with server.client() as c:
                r = c.get("/api/entities/e1")  # no token: 401, counted all the same
                assert r.status_code == 401
                pid = server.worker_serving(c, r)
            served[pid] = served.get(pid, 0) + 1
            sent += 1
        scraped_by: set[int] = set()
        while len(scraped_by) < 2:  # every worker's answer holds the same sum
            assert time.monotonic() < deadline, f"scrapes reached only {scraped_by}"
            with server.client() as c:
                r = c.get("/metrics")
                assert r.status_code == 200, r.text
                scraped_by.add(server.worker_serving(c, r))
            assert _requests(r.text) == sent
        files = list((settings.data_dir / "metrics").glob("*/counter_*.db"))
        assert len(files) >= 2, files
        # Off loopback (a proxy forwarding a remote client) it is refused.
        r = httpx.get(f"{server.url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        assert r.status_code == 403
