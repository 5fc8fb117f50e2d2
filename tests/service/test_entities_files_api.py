"""Entities and files over HTTP (seed 000's paths)."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient

from memvault import Vault


def test_entity_crud(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/api/entities", headers=auth, json={
        "entity_id": "test_001", "entity_name": "Test", "description": "d", "metadata": {"a": 1}})
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"entity_id", "entity_name", "description", "metadata", "created_at",
                         "updated_at", "document_count"}
    assert body["document_count"] == 0 and body["metadata"] == {"a": 1}
    assert client.post("/api/entities", headers=auth,
                       json={"entity_id": "test_001", "entity_name": "again"}).status_code == 409
    r = client.patch("/api/entities/test_001", headers=auth, json={"entity_name": "Renamed"})
    assert r.status_code == 200 and r.json()["entity_name"] == "Renamed"
    assert r.json()["description"] == "d"
    assert client.get("/api/entities/test_001", headers=auth).json()["entity_name"] == "Renamed"
    generated = client.post("/api/entities", headers=auth, json={"entity_name": "G"}).json()
    assert generated["entity_id"]
    assert client.delete("/api/entities/test_001", headers=auth).status_code == 204
    assert client.get("/api/entities/test_001", headers=auth).status_code == 404
    assert client.delete("/api/entities/test_001", headers=auth).status_code == 404


def test_entity_pagination(client: TestClient, auth: dict[str, str]) -> None:
    made = [client.post("/api/entities", headers=auth, json={"entity_name": f"e{i}"})
            .json()["entity_id"] for i in range(7)]
    page = client.get("/api/entities?limit=3", headers=auth).json()
    seen = [e["entity_id"] for e in page["items"]]
    while page["next_cursor"]:
        page = client.get("/api/entities", params={"limit": 3, "cursor": page["next_cursor"]},
                          headers=auth).json()
        seen += [e["entity_id"] for e in page["items"]]
    assert seen == made[::-1]
    assert client.get("/api/entities?limit=0", headers=auth).status_code == 422
    assert client.get("/api/entities?limit=201", headers=auth).status_code == 422
    r = client.get("/api/entities?cursor=%%%", headers=auth)
    assert r.status_code == 422 and "cursor" in r.text


def test_file_upload_list_content_delete(client: TestClient, auth: dict[str, str],
                                         vault: Vault) -> None:
    client.post("/api/entities", headers=auth, json={"entity_id": "e", "entity_name": "E"})
    payload = b"\x00\x01binary\xff" * 100
    r = client.post("/api/entities/e/files", headers=auth, files=[
        ("files", ("report 1.txt", b"hello", "text/plain")),
        ("files", ("../../../etc/passwd", payload, "application/octet-stream"))])
    assert r.status_code == 201, r.text
    items = r.json()["items"]
    assert [i["filename"] for i in items] == ["report 1.txt", "passwd"]
    assert items[1]["size"] == len(payload)
    assert items[1]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert {"doc_id", "filename", "content_type", "size", "sha256", "created_at"} <= set(items[0])
    assert client.get("/api/entities/e", headers=auth).json()["document_count"] == 2
    listed = client.get("/api/entities/e/files", headers=auth).json()
    assert {i["doc_id"] for i in listed["items"]} == {i["doc_id"] for i in items}
    doc = items[1]["doc_id"]
    meta = client.get(f"/api/entities/e/files/{doc}", headers=auth).json()
    assert meta["filename"] == "passwd"
    content = client.get(f"/api/entities/e/files/{doc}/content", headers=auth)
    assert content.status_code == 200 and content.content == payload
    assert content.headers["content-disposition"].startswith("attachment;")
    assert content.headers["x-content-type-options"] == "nosniff"
    assert client.delete(f"/api/entities/e/files/{doc}", headers=auth).status_code == 204
    assert client.get(f"/api/entities/e/files/{doc}", headers=auth).status_code == 404
    assert client.get(f"/api/entities/e/files/{doc}/content", headers=auth).status_code == 404
    assert client.get("/api/entities/e", headers=auth).json()["document_count"] == 1


def test_unicode_filename_disposition(client: TestClient, auth: dict[str, str]) -> None:
    client.post("/api/entities", headers=auth, json={"entity_id": "e", "entity_name": "E"})
    r = client.post("/api/entities/e/files", headers=auth,
                    files=[("files", ('résumé "final";.pdf', b"%PDF", "application/pdf"))])
    doc = r.json()["items"][0]["doc_id"]
    disp = client.get(f"/api/entities/e/files/{doc}/content", headers=auth) \
        .headers["content-disposition"]
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9" in disp
    assert '"final"' not in disp


def test_upload_to_unknown_entity_and_without_files(client: TestClient,
                                                    auth: dict[str, str]) -> None:
    r = client.post("/api/entities/nope/files", headers=auth,
                    files=[("files", ("a.txt", b"a", "text/plain"))])
    assert r.status_code == 404
    client.post("/api/entities", headers=auth, json={"entity_id": "e", "entity_name": "E"})
    r = client.post("/api/entities/e/files", headers=auth,
                    files=[("other", ("a.txt", b"a", "text/plain"))])
    assert r.status_code == 422 and "files" in r.text
