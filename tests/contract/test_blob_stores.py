"""Blob stores (file, database, S3) on every backend: commit discipline of blob
side effects (issue 10, fault 1), garbage collection, downloads over HTTP and
the ``MEMVAULT_BLOB_STORE`` setting."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import memvault
from memvault import ConfigError, Settings, Vault
from memvault.backends.schema import blob_parts, blobs, documents
from memvault.service import create_app
from memvault.stores.files import collect_garbage


@pytest.fixture
def settings(blob_settings: Settings) -> Settings:
    return blob_settings


class CommitFails(Exception):
    pass


@pytest.fixture
def fail_next_commit(vault: Vault) -> Iterator[Callable[[], None]]:
    """Arm a failure of the next COMMIT the vault's engine issues (the write
    rolls back, as when the database or the process fails at that moment)."""
    armed = [False]

    def on_commit(conn: Any) -> None:
        if armed[0]:
            armed[0] = False
            # What a refused commit leaves: the transaction rolled back.
            conn.connection.dbapi_connection.rollback()
            raise CommitFails("commit refused by the test")

    sa.event.listen(vault.db.engine, "commit", on_commit)
    yield lambda: armed.__setitem__(0, True)
    sa.event.remove(vault.db.engine, "commit", on_commit)


def _blob_rows(vault: Vault) -> dict[str, int]:
    with vault.db.read() as conn:
        return {r.sha256: r.refcount for r in conn.execute(sa.select(blobs))}


def test_failed_delete_commit_keeps_the_bytes(vault: Vault, user_id: str,
                                              fail_next_commit: Callable[[], None]) -> None:
    # Fault 1: the blob was removed inside the delete's transaction, so a failed
    # commit brought the document row back without its bytes.
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    doc = scope.files.add("e", "keep.txt", b"precious bytes")
    scope.files.wait_indexed("e", [doc.doc_id], 30)  # the indexing job commits no more
    fail_next_commit()
    with pytest.raises(CommitFails):
        scope.files.delete("e", doc.doc_id)
    assert scope.files.read("e", doc.doc_id) == b"precious bytes"
    assert list(vault.blobs.stored()) == [doc.sha256]
    fail_next_commit()
    with pytest.raises(CommitFails):
        scope.entities.delete("e")  # releasing through the entity, same rule
    assert scope.files.read("e", doc.doc_id) == b"precious bytes"
    scope.files.delete("e", doc.doc_id)  # and a delete that commits frees them
    assert list(vault.blobs.stored()) == [] and _blob_rows(vault) == {}


def test_crash_between_commit_and_removal_is_collected_at_open(
        vault: Vault, user_id: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    doc = scope.files.add("e", "a.txt", b"soon an orphan")

    def crash(*_args: object) -> None:  # the process dies after the commit
        raise OSError("simulated crash before the bytes were removed")

    with monkeypatch.context() as patch:
        patch.setattr(vault.blobs, "remove", crash)
        scope.files.delete("e", doc.doc_id)  # committed; the after-commit removal fails
    assert _blob_rows(vault) == {doc.sha256: 0}
    assert list(vault.blobs.stored()) == [doc.sha256]
    with memvault.open(settings) as reopened:  # start-up (a restart) collects the orphan
        assert _blob_rows(reopened) == {}
        assert list(reopened.blobs.stored()) == []


def test_upload_retakes_a_blob_awaiting_collection(
        vault: Vault, user_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The race: after a release commits refcount 0, an upload of the same bytes
    # re-references the blob before the collector runs; the collector must
    # re-check under the row lock and keep it.
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    first = scope.files.add("e", "a.txt", b"same bytes")
    with monkeypatch.context() as patch:  # the collector has not run yet
        patch.setattr("memvault.stores.files.collect_quietly", lambda *a: None)
        scope.files.delete("e", first.doc_id)
    assert _blob_rows(vault) == {first.sha256: 0}
    second = scope.files.add("e", "b.txt", b"same bytes")
    assert _blob_rows(vault) == {first.sha256: 1}
    assert collect_garbage(vault.db, vault.blobs) == 0
    assert scope.files.read("e", second.doc_id) == b"same bytes"


def test_concurrent_uploads_and_deletes_of_the_same_bytes(vault: Vault, user_id: str) -> None:
    # Releases, collections and uploads of one blob interleave from several
    # threads; whatever the order, every kept document reads back and the store
    # ends holding exactly the referenced blob.
    scope = vault.for_user(user_id)
    errors: list[BaseException] = []

    def churn(worker: int) -> None:
        try:
            scope.entities.create(f"W{worker}", entity_id=f"w{worker}")
            for i in range(8):
                doc = scope.files.add(f"w{worker}", "same.txt", b"contended bytes")
                assert scope.files.read(f"w{worker}", doc.doc_id) == b"contended bytes"
                if i < 7:
                    scope.files.delete(f"w{worker}", doc.doc_id)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    collect_garbage(vault.db, vault.blobs, full=True)
    (sha,) = _blob_rows(vault)
    assert _blob_rows(vault) == {sha: 3} and list(vault.blobs.stored()) == [sha]
    for n in range(3):
        (doc,) = scope.files.list(f"w{n}").items
        assert scope.files.read(f"w{n}", doc.doc_id) == b"contended bytes"


def test_failed_upload_commit_leaves_no_bytes(vault: Vault, user_id: str,
                                              fail_next_commit: Callable[[], None]) -> None:
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    fail_next_commit()
    with pytest.raises(CommitFails):
        scope.files.add("e", "a.txt", b"never committed")
    assert scope.files.list("e").items == []
    assert list(vault.blobs.stored()) == [] and _blob_rows(vault) == {}
    assert list(vault.blobs.tmp.iterdir()) == []


def test_full_collection_removes_bytes_no_row_references(vault: Vault, user_id: str) -> None:
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    kept = scope.files.add("e", "kept.txt", b"referenced")
    staged = vault.blobs.stage([b"published, then the commit failed"], 1 << 20)
    # Bytes published by a transaction that then rolled back, with no chance to
    # clean up (a crash): an orphan only a full scan finds.
    with pytest.raises(RuntimeError), vault.db.write() as conn:
        conn.execute(blobs.insert().values(sha256=staged.sha256, size=staged.size,
                                           refcount=1, created_at=kept.created_at))
        vault.blobs.publish(conn, staged)
        raise RuntimeError("crash")
    staged.discard()
    assert collect_garbage(vault.db, vault.blobs) == 0  # the quick pass does not scan
    collect_garbage(vault.db, vault.blobs, full=True)
    assert list(vault.blobs.stored()) == [kept.sha256]
    assert scope.files.read("e", kept.doc_id) == b"referenced"


def test_publish_restores_bytes_that_are_gone(vault: Vault, user_id: str) -> None:
    # A collector whose commit failed after removing the bytes leaves a
    # refcount-0 row without bytes; the next upload of that content restores them.
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    doc = scope.files.add("e", "a.txt", b"bytes")
    with vault.db.write() as conn:
        conn.execute(blobs.update().values(refcount=0))
        vault.blobs.remove(conn, doc.sha256)
        conn.execute(documents.delete())
    again = scope.files.add("e", "b.txt", io.BytesIO(b"bytes"))
    assert scope.files.read("e", again.doc_id) == b"bytes"


@pytest.fixture
def database_store_only(blob_store: str) -> None:
    if blob_store != "database":  # before the vault is opened
        pytest.skip("database blob store only")


def test_database_store_keeps_pieces_in_blob_parts(database_store_only: None, vault: Vault,
                                                    user_id: str) -> None:
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    doc = scope.files.add("e", "big.bin", b"x" * ((1 << 20) + 1))
    with vault.db.read() as conn:
        parts = conn.execute(sa.select(blob_parts.c.part, sa.func.length(blob_parts.c.data))
                             .where(blob_parts.c.sha256 == doc.sha256)
                             .order_by(blob_parts.c.part)).all()
    assert [tuple(p) for p in parts] == [(0, 1 << 20), (1, 1)]
    scope.files.delete("e", doc.doc_id)
    with vault.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(blob_parts)).scalar() == 0


def test_download_over_http(vault: Vault) -> None:
    with TestClient(create_app(vault=vault)) as client:
        client.post("/api/auth/register", json={"email": "d@example.com",
                                                "password": "password-1"})
        token = client.post("/api/auth/login", json={"email": "d@example.com",
                                                     "password": "password-1"}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        client.post("/api/entities", headers=auth, json={"entity_id": "e", "entity_name": "E"})
        payload = bytes(range(256)) * 5000
        up = client.post("/api/entities/e/files", headers=auth,
                         files=[("files", ("report ü.bin", payload, "application/x-test"))])
        assert up.status_code == 201, up.text
        item = up.json()["items"][0]
        r = client.get(f"/api/entities/e/files/{item['doc_id']}/content", headers=auth)
        assert r.status_code == 200 and r.content == payload
        assert r.headers["etag"] == f'"{item["sha256"]}"'
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-type"].startswith("application/x-test")
        assert "filename*=UTF-8''report%20%C3%BC.bin" in r.headers["content-disposition"]
        assert int(r.headers["content-length"]) == len(payload)
        # bytes lost behind the database's back: a problem response, not a cut body
        with vault.db.write() as conn:
            vault.blobs.remove(conn, item["sha256"])
        lost = client.get(f"/api/entities/e/files/{item['doc_id']}/content", headers=auth)
        assert lost.status_code == 500
        assert lost.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("value", ["bogus", "s3://", "s3://UPPER", "S3://bucket", "files"])
def test_invalid_blob_store_is_one_line_naming_the_setting(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        memvault.load_settings(blob_store=value)
    message = str(caught.value)
    assert "MEMVAULT_BLOB_STORE" in message and "\n" not in message


def test_invalid_s3_endpoint_is_refused() -> None:
    with pytest.raises(ConfigError, match="MEMVAULT_S3_ENDPOINT_URL"):
        memvault.load_settings(s3_endpoint_url="ftp://example.com")


def test_missing_bucket_stops_open(s3_endpoint: str, s3_blob_store: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MEMVAULT_BLOB_STORE.*no-such-bucket"):
        memvault.open(tmp_path / "data", blob_store="s3://no-such-bucket/x",
                      s3_endpoint_url=s3_endpoint)
