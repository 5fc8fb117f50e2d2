"""Bad input gets the documented 4xx as problem+json, and the store is unchanged."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import memvault
from memvault import Settings, Vault
from memvault.service import create_app

from .conftest import register


def _counts(vault: Vault) -> dict[str, int]:
    return vault.counts()


@pytest.mark.parametrize(("body", "field"), [
    ({"entity_name": 5}, "entity_name"),
    ({"entity_name": ""}, "entity_name"),
    ({}, "entity_name"),
    ({"entity_name": "x", "metadata": [1]}, "metadata"),
    ({"entity_name": "x", "entity_id": "../etc"}, "entity_id"),
    ({"entity_name": "x", "entity_id": 7}, "entity_id"),
])
def test_entity_validation_names_the_field(client: TestClient, vault: Vault,
                                           auth: dict[str, str],
                                           body: dict, field: str) -> None:  # type: ignore[type-arg]
    before = _counts(vault)
    r = client.post("/api/entities", headers=auth, json=body)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in r.json()["errors"]]
    assert _counts(vault) == before


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


def test_oversized_json_body_is_413(client: TestClient, vault: Vault,
                                    auth: dict[str, str]) -> None:
    before = _counts(vault)
    r = client.post("/api/entities", headers=auth,
                    json={"entity_name": "x", "description": "y" * (5 << 20)})
    assert r.status_code == 413
    assert r.json()["status"] == 413
    assert _counts(vault) == before


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


def test_text_no_backend_can_store_is_422_everywhere(client: TestClient, vault: Vault,
                                                     auth: dict[str, str]) -> None:
    before = _counts(vault)
    assert client.post("/api/entities", headers=auth,
                       json={"entity_name": "a\u0000b"}).status_code == 422
    lone_surrogate = b'{"entity_name": "ok", "description": "\\ud800"}'
    assert client.post("/api/entities", content=lone_surrogate,
                       headers={**auth, "content-type": "application/json"}).status_code == 422
    assert client.post("/api/conversations", headers=auth,
                       json={"title": "x\u0000"}).status_code == 422
    assert _counts(vault) == before
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    r = client.patch(f"/api/conversations/{cid}", headers=auth, json={"title": "\u0000"})
    assert r.status_code == 422
    assert client.get(f"/api/conversations/{cid}", headers=auth).json()["title"] is None


# -- out-of-range positions, cursors and integers (never a 5xx) ---------------

def _cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


HUGE = 10**30


def test_out_of_range_message_positions(client: TestClient, auth: dict[str, str]) -> None:
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    for text in ("one", "two", "three"):
        client.post(f"/api/conversations/{cid}/messages", headers=auth,
                    json={"role": "user", "content": text})
    url = f"/api/conversations/{cid}/messages"
    # "²" passes str.isdigit() but is no position: it is looked up as a message id.
    r = client.get(url, headers=auth, params={"before": "²"})
    assert r.status_code == 404, r.text
    # A position past the end is past every message.
    r = client.get(url, headers=auth, params={"before": str(HUGE)})
    assert r.status_code == 200, r.text
    assert [m["content"] for m in r.json()["items"]] == ["one", "two", "three"]
    r = client.get(url, headers=auth, params={"after": str(HUGE)})
    assert r.status_code == 200 and r.json()["items"] == []
    r = client.get(url, headers=auth, params={"after": "9" * 5000})  # int() would refuse it
    assert r.status_code == 200 and r.json()["items"] == []
    r = client.get(url, headers=auth, params={"after": "2", "limit": 1})
    assert [m["content"] for m in r.json()["items"]] == ["three"]


@pytest.mark.parametrize("cursor", [["a", HUGE], ["b", -1], ["a", "x"], ["a", True],
                                    ["a", 2**31 + 5], "x", 5, ["a"], [[[[]]]]])
def test_message_cursors_are_checked(client: TestClient, auth: dict[str, str],
                                     cursor: object) -> None:
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    for path in (f"/api/conversations/{cid}/messages", f"/api/chat/sessions/{cid}/messages"):
        r = client.get(path, headers=auth, params={"cursor": _cursor(cursor)})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize("cursor", [5, HUGE, -HUGE, 1.5, True, None, ["x"], {"a": 1},
                                    "x" * 65, "a\u0000b"])
def test_listing_cursors_match_the_key_type(client: TestClient, auth: dict[str, str],
                                            cursor: object) -> None:
    """Entity, conversation and file listings are keyed by string ids: an integer
    cursor was a 500 on PostgreSQL (varchar < integer), a huge one on SQLite."""
    client.post("/api/entities", headers=auth, json={"entity_id": "e", "entity_name": "E"})
    for path in ("/api/entities", "/api/conversations", "/api/entities/e/files",
                 "/api/entities/e/sessions"):
        r = client.get(path, headers=auth, params={"cursor": _cursor(cursor)})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["errors"][0]["field"] == "cursor"


def test_out_of_range_stream_positions(client: TestClient, auth: dict[str, str]) -> None:
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    mid = client.post(f"/api/conversations/{cid}/messages", headers=auth,
                      json={"role": "assistant", "status": "streaming"}).json()["id"]
    url = f"/api/messages/{mid}/stream"
    for value in (str(HUGE), str(2**31), "9" * 5000):
        r = client.get(url, headers=auth, params={"after_seq": value})
        assert r.status_code == 422, value
        assert r.json()["errors"][0]["field"] == "after_seq"
    # Headers arrive as latin-1: b"\xb2" is "²", which str.isdigit() took for a digit.
    for value in (str(HUGE).encode(), str(2**31).encode(), "²".encode("latin-1"),
                  "١٢".encode(), b"9" * 5000):
        r = client.get(url, headers={**auth, "Last-Event-ID": value})  # type: ignore[dict-item]
        assert r.status_code == 422, value
        assert r.json()["errors"][0]["field"] == "Last-Event-ID"
    for seq in (2**31, HUGE):
        r = client.post(f"/api/messages/{mid}/chunks", headers=auth, json={"seq": seq, "text": "x"})
        assert r.status_code == 422, seq
    r = client.get(f"/api/conversations/{cid}/messages", headers=auth, params={"limit": HUGE})
    assert r.status_code == 422


def test_nul_in_the_url_is_422_on_every_backend(client: TestClient,
                                                auth: dict[str, str]) -> None:
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    for path in ("/api/entities/a%00b", "/api/conversations/%00", "/api/messages/x%00",
                 f"/api/conversations/{cid}/messages?before=a%00",
                 "/api/conversations?entity_id=%00"):
        r = client.get(path, headers=auth)
        assert r.status_code == 422, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")


# -- NUL and lone surrogates: one 422 naming the field, on every backend -------

NUL_CASES = [
    ("/api/entities", {"entity_name": "E", "metadata": {"a\u0000": 1}}, "metadata"),
    ("/api/entities", {"entity_name": "E", "metadata": {"a": "b\u0000"}}, "metadata"),
    ("/api/entities", {"entity_name": "E", "metadata": {"a": [{"b": ["\u0000"]}]}}, "metadata"),
    ("/api/entities", {"entity_name": "E", "description": "\u0000"}, "description"),
    ("/api/conversations", {"title": "t\u0000"}, "title"),
    ("/api/conversations", {"participants": ["ok", "x\u0000"]}, "participants"),
    ("/api/conversations", {"metadata": {"k\u0000": "v"}}, "metadata"),
    ("/api/conversations", {"metadata": {"k": {"deep": "v\u0000"}}}, "metadata"),
    ("messages", {"role": "user", "content": "hi", "author": "a\u0000"}, "author"),
    ("messages", {"role": "user", "content": "hi", "metadata": {"\u0000": 1}}, "metadata"),
    ("messages", {"role": "user", "content": "hi", "metadata": {"k": "\u0000"}}, "metadata"),
    ("messages", {"role": "assistant", "status": "streaming", "author": "\u0000"}, "author"),
    ("messages", {"role": "assistant", "status": "streaming", "metadata": {"a": "\u0000"}},
     "metadata"),
    ("messages", {"role": "user", "content": "a\u0000"}, "content"),
    ("/api/auth/register", {"email": "n\u0000@example.com", "password": "password-1"}, "email"),
    ("/api/auth/register", {"email": "nul@example.com", "password": "password-1",
                            "name": "\u0000"}, "name"),
    ("/api/auth/login", {"email": "\u0000@example.com", "password": "password-1"}, "email"),
]


@pytest.mark.parametrize(("path", "body", "field"), NUL_CASES)
def test_nul_is_the_same_422_on_every_backend(client: TestClient, vault: Vault,
                                              auth: dict[str, str], path: str,
                                              body: dict, field: str) -> None:  # type: ignore[type-arg]
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    url = f"/api/conversations/{cid}/messages" if path == "messages" else path
    before = _counts(vault)
    r = client.post(url, headers=auth, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert "NUL" in r.json()["detail"]
    assert _counts(vault) == before


@pytest.mark.parametrize(("path", "raw", "field"), [
    ("/api/entities", b'{"entity_name": "E", "metadata": {"\\ud800": 1}}', "metadata"),
    ("/api/entities", b'{"entity_name": "E", "metadata": {"a": ["\\udfff"]}}', "metadata"),
    ("/api/conversations", b'{"participants": ["\\ud800"]}', "participants"),
    ("messages", b'{"role": "user", "content": "x", "author": "\\ud800"}', "author"),
])
def test_lone_surrogates_are_the_same_422(client: TestClient, auth: dict[str, str],
                                          path: str, raw: bytes, field: str) -> None:
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    url = f"/api/conversations/{cid}/messages" if path == "messages" else path
    r = client.post(url, content=raw, headers={**auth, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]


def test_nul_in_updates_is_422_and_changes_nothing(client: TestClient,
                                                   auth: dict[str, str]) -> None:
    eid = client.post("/api/entities", headers=auth,
                      json={"entity_name": "E", "metadata": {"k": "v"}}).json()["entity_id"]
    r = client.patch(f"/api/entities/{eid}", headers=auth, json={"metadata": {"k": "\u0000"}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "metadata"
    assert client.get(f"/api/entities/{eid}", headers=auth).json()["metadata"] == {"k": "v"}
    cid = client.post("/api/conversations", headers=auth,
                      json={"participants": ["a"], "metadata": {"k": 1}}).json()["id"]
    for body, field in (({"participants": ["\u0000"]}, "participants"),
                        ({"metadata": {"\u0000": 1}}, "metadata")):
        r = client.patch(f"/api/conversations/{cid}", headers=auth, json=body)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == field
    got = client.get(f"/api/conversations/{cid}", headers=auth).json()
    assert got["participants"] == ["a"] and got["metadata"] == {"k": 1}


def test_library_callers_get_invalid_too(vault: Vault, user_id: str) -> None:
    mine = vault.for_user(user_id)
    cases = [
        (lambda: mine.entities.create("E", metadata={"a": float("nan")}), "metadata"),
        (lambda: mine.entities.create("E", metadata={1: "x"}), "metadata"),  # type: ignore[dict-item]
        (lambda: mine.entities.create("E", metadata={"a": object()}), "metadata"),
        (lambda: mine.conversations.create(participants="ab"), "participants"),
        (lambda: mine.conversations.create(metadata={"x": "\ud800"}), "metadata"),
    ]
    deep: object = "leaf"
    for _ in range(200):
        deep = [deep]
    cases.append((lambda: mine.entities.create("E", metadata={"d": deep}), "metadata"))
    for call, field in cases:
        with pytest.raises(memvault.Invalid) as info:
            call()
        assert info.value.field == field
    assert mine.entities.count() == 0 and mine.conversations.count() == 0
