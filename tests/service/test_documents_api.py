"""``/api/documents/{doc_id}``, its extractions and annotations over HTTP
(issue 7, seed 001): the documented shapes, status codes, problem+json errors,
pages, and another owner's ids answering 404."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import register


@pytest.fixture
def doc_id(client: TestClient, auth: dict[str, str]) -> str:
    client.post("/api/entities", headers=auth, json={"entity_id": "e", "entity_name": "E"})
    r = client.post("/api/entities/e/files", headers=auth,
                    files=[("files", ("report.txt", b"quarterly numbers went up", "text/plain"))])
    assert r.status_code == 201, r.text
    return str(r.json()["items"][0]["doc_id"])


def _all(client: TestClient, auth: dict[str, str], path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = client.get(path, headers=auth, params={"limit": 2, **({"cursor": cursor}
                                                                   if cursor else {})})
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


def test_extractions_round_trip(client: TestClient, auth: dict[str, str], doc_id: str) -> None:
    r = client.post(f"/api/documents/{doc_id}/extractions", headers=auth,
                    json={"schema": "invoice/v1", "data": {"total": 12.5}, "model": "m"})
    assert r.status_code == 201, r.text
    ex = r.json()
    assert set(ex) == {"id", "document_id", "schema", "data", "model", "created_at"}
    assert (ex["document_id"], ex["schema"], ex["data"], ex["model"]) == (
        doc_id, "invoice/v1", {"total": 12.5}, "m")
    other = client.post(f"/api/documents/{doc_id}/extractions", headers=auth,
                        json={"schema": "summary", "data": ["a", "b"]}).json()
    assert other["model"] is None
    assert client.get(f"/api/extractions/{ex['id']}", headers=auth).json() == ex
    listed = client.get(f"/api/documents/{doc_id}/extractions", headers=auth).json()
    assert [e["id"] for e in listed["items"]] == [other["id"], ex["id"]]
    assert listed["next_cursor"] is None
    only = client.get(f"/api/documents/{doc_id}/extractions?schema=invoice/v1", headers=auth)
    assert [e["id"] for e in only.json()["items"]] == [ex["id"]]
    assert [e["id"] for e in _all(client, auth, f"/api/documents/{doc_id}/extractions")] == [
        other["id"], ex["id"]]
    assert client.delete(f"/api/extractions/{ex['id']}", headers=auth).status_code == 204
    r = client.get(f"/api/extractions/{ex['id']}", headers=auth)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert client.delete(f"/api/extractions/{ex['id']}", headers=auth).status_code == 404


@pytest.mark.parametrize("body", [
    {"data": {}}, {"schema": "s"}, {"schema": "", "data": {}}, {"schema": "s", "data": 3},
    {"schema": "s", "data": {}, "modle": "typo"}, {"schema_": "s", "data": {}},
    {"schema": 5, "data": {}},
])
def test_extraction_bad_bodies_are_422(client: TestClient, auth: dict[str, str], doc_id: str,
                                       body: dict[str, Any]) -> None:
    r = client.post(f"/api/documents/{doc_id}/extractions", headers=auth, json=body)
    assert r.status_code == 422, r.text


def test_annotations_round_trip(client: TestClient, auth: dict[str, str], doc_id: str) -> None:
    me = client.get("/api/auth/me", headers=auth).json()
    r = client.post(f"/api/documents/{doc_id}/annotations", headers=auth,
                    json={"label": "claim", "note": "check", "start": 10, "end": 19, "page": 1,
                          "chunk_id": "c1", "data": {"color": "red"}})
    assert r.status_code == 201, r.text
    late = r.json()
    assert set(late) == {"id", "document_id", "label", "note", "start", "end", "page",
                         "chunk_id", "data", "author", "created_at", "updated_at"}
    assert late["author"] == me["id"] and late["document_id"] == doc_id
    plain = client.post(f"/api/documents/{doc_id}/annotations", headers=auth,
                        json={"label": "todo"}).json()
    assert (plain["start"], plain["end"], plain["note"], plain["data"]) == (None, None, None, {})
    early = client.post(f"/api/documents/{doc_id}/annotations", headers=auth,
                        json={"label": "claim", "start": 0, "end": 0}).json()
    base = f"/api/documents/{doc_id}/annotations"
    order = [early["id"], late["id"], plain["id"]]
    assert [a["id"] for a in client.get(base, headers=auth).json()["items"]] == order
    assert [a["id"] for a in _all(client, auth, base)] == order
    claims = client.get(f"{base}?label=claim", headers=auth).json()["items"]
    assert [a["id"] for a in claims] == [early["id"], late["id"]]

    r = client.patch(f"/api/annotations/{late['id']}", headers=auth,
                     json={"note": None, "start": 12})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert (patched["note"], patched["start"], patched["end"], patched["label"]) == (
        None, 12, 19, "claim")
    assert patched["updated_at"] > late["updated_at"]
    assert patched["created_at"] == late["created_at"]
    assert client.get(f"/api/annotations/{late['id']}", headers=auth).json() == patched
    assert client.delete(f"/api/annotations/{late['id']}", headers=auth).status_code == 204
    assert client.get(f"/api/annotations/{late['id']}", headers=auth).status_code == 404
    assert client.patch(f"/api/annotations/{late['id']}", headers=auth,
                        json={"label": "x"}).status_code == 404


@pytest.mark.parametrize("body", [
    {"label": "l", "start": 5, "end": 4}, {"label": "l", "start": -1, "end": 4},
    {"label": "l", "start": 5}, {"label": "l", "end": 5}, {"label": ""}, {},
    {"label": "l", "page": 0}, {"label": "l", "start": "1", "end": 2},
    {"label": "l", "colour": "red"}, {"label": "l", "data": [1]},
])
def test_annotation_bad_bodies_are_422(client: TestClient, auth: dict[str, str], doc_id: str,
                                       body: dict[str, Any]) -> None:
    r = client.post(f"/api/documents/{doc_id}/annotations", headers=auth, json=body)
    assert r.status_code == 422, r.text


def test_annotation_bad_patches_are_422(client: TestClient, auth: dict[str, str],
                                        doc_id: str) -> None:
    note = client.post(f"/api/documents/{doc_id}/annotations", headers=auth,
                       json={"label": "l", "start": 1, "end": 5}).json()
    for body in ({"start": 6}, {"end": None}, {"label": None}, {"extra": 1}):
        r = client.patch(f"/api/annotations/{note['id']}", headers=auth, json=body)
        assert r.status_code == 422, (body, r.text)
    assert client.get(f"/api/annotations/{note['id']}", headers=auth).json() == note


def test_document_metadata_with_counts(client: TestClient, auth: dict[str, str],
                                       doc_id: str) -> None:
    r = client.get(f"/api/documents/{doc_id}", headers=auth)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) == {"doc_id", "entity_id", "filename", "content_type", "size", "sha256",
                        "created_at", "status", "chunk_count", "error", "extraction_count",
                        "annotation_count"}
    same = client.get(f"/api/entities/e/files/{doc_id}", headers=auth).json()
    stable = ("doc_id", "entity_id", "filename", "content_type", "size", "sha256", "created_at")
    assert {k: doc[k] for k in stable} == {k: same[k] for k in stable}  # status may move on
    assert (doc["extraction_count"], doc["annotation_count"]) == (0, 0)
    for _ in range(2):
        client.post(f"/api/documents/{doc_id}/extractions", headers=auth,
                    json={"schema": "s", "data": {}})
    client.post(f"/api/documents/{doc_id}/annotations", headers=auth, json={"label": "l"})
    doc = client.get(f"/api/documents/{doc_id}", headers=auth).json()
    assert (doc["extraction_count"], doc["annotation_count"]) == (2, 1)
    assert client.get("/api/documents/nope", headers=auth).status_code == 404


def test_deleting_the_document_deletes_them(client: TestClient, auth: dict[str, str],
                                            doc_id: str) -> None:
    ex = client.post(f"/api/documents/{doc_id}/extractions", headers=auth,
                     json={"schema": "s", "data": {}}).json()
    note = client.post(f"/api/documents/{doc_id}/annotations", headers=auth,
                       json={"label": "l"}).json()
    assert client.delete(f"/api/entities/e/files/{doc_id}", headers=auth).status_code == 204
    assert client.get(f"/api/extractions/{ex['id']}", headers=auth).status_code == 404
    assert client.get(f"/api/annotations/{note['id']}", headers=auth).status_code == 404
    assert client.get(f"/api/documents/{doc_id}", headers=auth).status_code == 404
    assert client.get(f"/api/documents/{doc_id}/annotations",
                      headers=auth).status_code == 404


def test_another_owner_gets_404(client: TestClient, auth: dict[str, str], doc_id: str) -> None:
    ex = client.post(f"/api/documents/{doc_id}/extractions", headers=auth,
                     json={"schema": "s", "data": {"secret": 1}}).json()
    note = client.post(f"/api/documents/{doc_id}/annotations", headers=auth,
                       json={"label": "l", "note": "private"}).json()
    other = register(client, "intruder@example.com")
    for method, path, body in [
        ("GET", f"/api/documents/{doc_id}", None),
        ("GET", f"/api/documents/{doc_id}/extractions", None),
        ("POST", f"/api/documents/{doc_id}/extractions", {"schema": "s", "data": {}}),
        ("GET", f"/api/extractions/{ex['id']}", None),
        ("DELETE", f"/api/extractions/{ex['id']}", None),
        ("GET", f"/api/documents/{doc_id}/annotations", None),
        ("POST", f"/api/documents/{doc_id}/annotations", {"label": "l"}),
        ("GET", f"/api/annotations/{note['id']}", None),
        ("PATCH", f"/api/annotations/{note['id']}", {"label": "mine"}),
        ("DELETE", f"/api/annotations/{note['id']}", None),
    ]:
        r = client.request(method, path, headers=other, json=body)
        assert r.status_code == 404, (method, path, r.status_code)
    assert client.get(f"/api/extractions/{ex['id']}", headers=auth).json() == ex
    assert client.get(f"/api/annotations/{note['id']}", headers=auth).json() == note
    doc = client.get(f"/api/documents/{doc_id}", headers=auth).json()
    assert (doc["extraction_count"], doc["annotation_count"]) == (1, 1)
