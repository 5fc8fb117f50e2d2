"""Bad input gets the documented 4xx as problem+json, and the store is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import memvault
from memvault import Settings
from memvault.service import create_app

from .conftest import register


def _counts(client: TestClient) -> dict[str, int]:
    return client.get("/health").json()["counts"]


@pytest.mark.parametrize(("body", "field"), [
    ({"entity_name": 5}, "entity_name"),
    ({"entity_name": ""}, "entity_name"),
    ({}, "entity_name"),
    ({"entity_name": "x", "metadata": [1]}, "metadata"),
    ({"entity_name": "x", "entity_id": "../etc"}, "entity_id"),
    ({"entity_name": "x", "entity_id": 7}, "entity_id"),
])
def test_entity_validation_names_the_field(client: TestClient, auth: dict[str, str],
                                           body: dict, field: str) -> None:  # type: ignore[type-arg]
    before = _counts(client)
    r = client.post("/api/entities", headers=auth, json=body)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in r.json()["errors"]]
    assert _counts(client) == before


def test_malformed_json(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/api/entities", headers={**auth, "content-type": "application/json"},
                    content=b'{"entity_name": ')
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"
    assert "Traceback" not in r.text


def test_unknown_ids_are_404(client: TestClient, auth: dict[str, str]) -> None:
    for path in ("/api/entities/nope", "/api/entities/nope/files", "/api/conversations/nope",
                 "/api/messages/nope", "/api/messages/nope/stream", "/api/chat/sessions/nope",
                 "/api/conversations/nope/messages"):
        r = client.get(path, headers=auth)
        assert r.status_code == 404, path
        assert r.json()["status"] == 404


def test_message_and_chunk_validation(client: TestClient, auth: dict[str, str]) -> None:
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    bad_messages = [{"role": "wizard", "content": "x"}, {"role": "user", "content": 5},
                    {"content": "x"}, {"role": "user", "status": "interrupted"}]
    for body in bad_messages:
        assert client.post(f"/api/conversations/{cid}/messages", headers=auth,
                           json=body).status_code == 422, body
    mid = client.post(f"/api/conversations/{cid}/messages", headers=auth,
                      json={"role": "assistant", "status": "streaming"}).json()["id"]
    for body in ({"seq": "one", "text": "x"}, {"seq": 1.5, "text": "x"}, {"seq": 0, "text": "x"},
                 {"seq": 1}, {"text": "x"}, {"seq": 1, "text": 3}, {"chunks": []},
                 {"chunks": [{"seq": "a", "text": "x"}]}, {}):
        r = client.post(f"/api/messages/{mid}/chunks", headers=auth, json=body)
        assert r.status_code == 422, body
    huge = "x" * 70_000
    r = client.post(f"/api/messages/{mid}/chunks", headers=auth, json={"seq": 1, "text": huge})
    assert r.status_code == 413
    assert client.get(f"/api/messages/{mid}", headers=auth).json()["last_chunk_seq"] == 0
    for bad in ("abc", "-1", "1.5"):
        r = client.get(f"/api/messages/{mid}/stream", headers={**auth, "Last-Event-ID": bad})
        assert r.status_code == 422, bad
    assert client.get(f"/api/messages/{mid}/stream?after_seq=-1", headers=auth).status_code == 422
    assert client.post(f"/api/messages/{mid}/complete", headers=auth,
                       json={"status": "bogus"}).status_code == 422


def test_oversized_json_body_is_413(client: TestClient, auth: dict[str, str]) -> None:
    before = _counts(client)
    r = client.post("/api/entities", headers=auth,
                    json={"entity_name": "x", "description": "y" * (5 << 20)})
    assert r.status_code == 413
    assert r.json()["status"] == 413
    assert _counts(client) == before


def test_oversized_upload_is_413_and_leaves_nothing(tmp_path: Path, settings: Settings) -> None:
    with memvault.open(settings.model_copy(update={"max_upload_mb": 1})) as vault, \
            TestClient(create_app(vault=vault)) as client:
        auth = register(client, "big@example.com")
        client.post("/api/entities", headers=auth, json={"entity_id": "e", "entity_name": "E"})
        for size in ((1 << 20) + 1, 3 << 20):
            r = client.post("/api/entities/e/files", headers=auth,
                            files=[("files", ("big.bin", b"x" * size, "application/octet-stream"))])
            assert r.status_code == 413, size
        assert client.get("/api/entities/e/files", headers=auth).json()["items"] == []
        assert client.get("/api/entities/e", headers=auth).json()["document_count"] == 0
        blobs = [p for p in vault.blobs.root.rglob("*") if p.is_file()]
        assert blobs == []
        # Exactly at the limit is fine.
        r = client.post("/api/entities/e/files", headers=auth,
                        files=[("files", ("ok.bin", b"x" * (1 << 20), "application/octet-stream"))])
        assert r.status_code == 201


def test_internal_errors_do_not_leak(client: TestClient) -> None:
    r = client.get("/api/entities", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and "Traceback" not in r.text


def test_text_no_backend_can_store_is_422_everywhere(client: TestClient,
                                                     auth: dict[str, str]) -> None:
    before = _counts(client)
    assert client.post("/api/entities", headers=auth,
                       json={"entity_name": "a\u0000b"}).status_code == 422
    lone_surrogate = b'{"entity_name": "ok", "description": "\\ud800"}'
    assert client.post("/api/entities", content=lone_surrogate,
                       headers={**auth, "content-type": "application/json"}).status_code == 422
    assert client.post("/api/conversations", headers=auth,
                       json={"title": "x\u0000"}).status_code == 422
    assert _counts(client) == before
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    r = client.patch(f"/api/conversations/{cid}", headers=auth, json={"title": "\u0000"})
    assert r.status_code == 422
    assert client.get(f"/api/conversations/{cid}", headers=auth).json()["title"] is None
