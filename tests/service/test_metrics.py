"""``GET /metrics``: what moves after requests, its labels, and who may read it.

The instruments belong to the test process (prometheus-client keeps them by
name), so every check compares a scrape with the one before it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import memvault
from memvault import Vault
from memvault.service import create_app

from .conftest import register

LOOPBACK = ("127.0.0.1", 40000)


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    return sum(v for n, lab, v in _samples(text)
               if n == name and all(lab.get(k) == want for k, want in labels.items()))


@pytest.fixture
def client(vault: Vault) -> Iterator[TestClient]:
    with TestClient(create_app(vault=vault), client=LOOPBACK) as c:
        yield c


def scrape(client: TestClient) -> str:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    auth = register(client, "m@example.com")
    before = scrape(client)
    assert client.post("/api/entities", headers=auth, json={
        "entity_id": "e1", "entity_name": "E"}).status_code == 201
    for _ in range(3):
        assert client.get("/api/entities/e1", headers=auth).status_code == 200
    assert client.get("/api/entities/nope", headers=auth).status_code == 404
    assert client.get("/no/such/path").status_code == 404
    after = scrape(client)
    route = "/api/entities/{entity_id}"
    total = "memvault_http_requests_total"
    assert value(after, total, route=route, method="GET", status="200") - value(
        before, total, route=route, method="GET", status="200") == 3
    assert value(after, total, route=route, status="404") - value(
        before, total, route=route, status="404") == 1
    assert value(after, total, route="<unmatched>", status="404") - value(
        before, total, route="<unmatched>", status="404") == 1
    hist = "memvault_http_request_duration_seconds_count"
    assert value(after, hist, route=route, status="200") - value(
        before, hist, route=route, status="200") == 3
    assert value(after, "memvault_http_request_duration_seconds_bucket", route=route,
                 status="200", le="+Inf") >= 3
    # Labels name route templates only, never a raw path with ids in it.
    routes = {lab["route"] for n, lab, _ in _samples(after) if "route" in lab}
    assert "/api/entities/e1" not in routes and "/no/such/path" not in routes


def test_streams_chunks_followers_blobs_pool_and_caches(client: TestClient,
                                                        vault: Vault) -> None:
    auth = register(client, "s@example.com")
    uid = client.get("/api/auth/me", headers=auth).json()["id"]
    client.post("/api/entities", headers=auth, json={"entity_id": "e1", "entity_name": "E"})
    # Before the first scrape: the blob totals are reused for a moment.
    client.post("/api/entities/e1/files", headers=auth,
                files={"files": ("a.txt", b"y" * 1000, "text/plain")})
    before = scrape(client)
    conv = client.post("/api/conversations", headers=auth, json={"title": "t"}).json()
    msg = client.post(f"/api/conversations/{conv['id']}/messages", headers=auth,
                      json={"role": "assistant", "status": "streaming"}).json()
    assert client.post(f"/api/messages/{msg['id']}/chunks", headers=auth,
                       json={"seq": 1, "text": "hello "}).status_code == 200
    during = scrape(client)
    assert value(during, "memvault_live_streams") >= 1
    assert value(during, "memvault_chunk_append_seconds_count", via="http") - value(
        before, "memvault_chunk_append_seconds_count", via="http") == 1

    # A follower of the stream is counted while its response is open.
    opened, release = threading.Event(), threading.Event()

    def follow() -> None:
        with client.stream("GET", f"/api/messages/{msg['id']}/stream", headers=auth) as r:
            assert r.status_code == 200
            opened.set()
            for _line in r.iter_lines():
                pass
        release.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert opened.wait(10)
    assert value(scrape(client), "memvault_sse_followers") >= 1
    assert client.post(f"/api/messages/{msg['id']}/complete", headers=auth).status_code == 200
    assert release.wait(10)
    follower.join(10)
    assert value(scrape(client), "memvault_sse_followers") == 0

    # The library's group commit (a reply streamed in this process).
    convs = vault.for_user(uid).conversations
    with convs.stream(conv["id"]) as reply:
        reply.write("x")
        reply.flush()
    cache = vault.for_user(uid).cache("quotes")
    cache.get("missing")
    cache.set("k", 1)
    cache.get("k")
    after = scrape(client)
    assert value(after, "memvault_chunk_append_seconds_count", via="stream") > value(
        before, "memvault_chunk_append_seconds_count", via="stream")
    assert value(after, "memvault_blob_bytes") >= 1000 and value(after, "memvault_blobs") >= 1
    assert value(after, "memvault_db_pool_in_use") >= 0
    assert value(after, "memvault_cache_misses_total", namespace="quotes") - value(
        before, "memvault_cache_misses_total", namespace="quotes") == 1
    assert value(after, "memvault_cache_hits_total", namespace="quotes") - value(
        before, "memvault_cache_hits_total", namespace="quotes") == 1


def test_only_loopback_clients_without_a_token(vault: Vault) -> None:
    with TestClient(create_app(vault=vault), client=("203.0.113.9", 5555)) as remote:
        r = remote.get("/metrics")
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        assert r.json()["request_id"] == r.headers["x-request-id"]
    with TestClient(create_app(vault=vault), client=("::1", 5555)) as local:
        assert local.get("/metrics").status_code == 200


def test_with_a_token_every_client_must_send_it(vault: Vault) -> None:
    with memvault.open(vault.settings, metrics_token="metrics-secret") as v2:
        for host in ("127.0.0.1", "203.0.113.9"):
            with TestClient(create_app(vault=v2), client=(host, 5555)) as c:
                assert c.get("/metrics").status_code == 401
                assert c.get("/metrics", headers={
                    "Authorization": "Bearer wrong"}).status_code == 401
                r = c.get("/metrics", headers={"Authorization": "Bearer metrics-secret"})
                assert r.status_code == 200 and "memvault_http_requests_total" in r.text


def test_metrics_can_be_turned_off(vault: Vault) -> None:
    with memvault.open(vault.settings, metrics=False) as v2, \
            TestClient(create_app(vault=v2), client=LOOPBACK) as c:
        assert c.get("/metrics").status_code == 404
        assert c.get("/health").status_code == 200
