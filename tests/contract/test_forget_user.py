"""Forgetting a user (``ops/forget.py``, ``DELETE /api/auth/me``, ``memvault
forget-user``): afterwards no row anywhere holds the user's id, no blob of
theirs remains, the other user's records are intact and their tokens fail."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from memvault import Vault
from memvault.backends.schema import blobs
from memvault.cli import app as cli
from memvault.errors import NotFound, Unauthorized
from memvault.kinds import kinds
from memvault.ops.forget import find_user_id, forget_user
from memvault.service import create_app

from ..conftest import server_env
from .test_kinds import _fill


def _fill_all(vault: Vault, user_id: str, secret: bytes) -> str:
    """Every kind of record for ``user_id`` (``_fill``), plus a file only they
    have, a cache hit counted in this process, and a vector index searched
    (SQLite: its file under indexes/). Returns a live token."""
    _fill(vault, user_id)
    scope = vault.for_user(user_id)
    scope.files.add("e1", "mine.txt", secret)
    docs = [d.doc_id for d in scope.files.list("e1").items]  # indexed in the background
    assert all(d.status == "indexed" for d in scope.files.wait_indexed("e1", docs, 60))
    assert scope.cache("api").get("quote") == {"p": 1.5}
    scope.collections.search("e1", "kept", k=1)
    return vault.users.issue_token(user_id).access_token


def _text(value: Any) -> str | bytes | None:
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return None


def _rows_naming(vault: Vault, needle: str) -> list[str]:
    """``table: row`` of every row, in every table of the database (the
    registered ones, SQLite's FTS5 index and its shadow tables, the migration
    bookkeeping), holding ``needle`` in any text, JSON or binary column."""
    found = []
    with vault.db.read() as conn:
        tables = sa.inspect(conn).get_table_names()
        assert "users" in tables
        for table in tables:
            for row in conn.exec_driver_sql(f'SELECT * FROM "{table}"'):
                for value in row:
                    text = _text(value)
                    if text is not None and (needle.encode() if isinstance(text, bytes)
                                             else needle) in text:
                        found.append(f"{table}: {row}")
                        break
    return found


def _owned_counts(vault: Vault, user_id: str) -> dict[str, int]:
    with vault.db.read() as conn:
        return {k.name: conn.execute(sa.select(sa.func.count()).select_from(k.table)
                                     .where(k.owned_by(user_id))).scalar_one()
                for k in kinds() if k.owner is not None}


def _blob_state(vault: Vault) -> tuple[set[str], set[str]]:
    with vault.db.read() as conn:
        rows = set(conn.execute(sa.select(blobs.c.sha256)).scalars())
    return rows, set(vault.blobs.stored())


def test_forget_removes_every_trace_and_keeps_the_other_user(vault: Vault) -> None:
    gone = vault.users.register("gone@example.com", "password-1").id
    kept = vault.users.register("kept@example.com", "password-1").id
    if vault.vectors is not None:  # SQLite: every collection gets an index file
        vault.vectors._exact_below = 1
    token = _fill_all(vault, gone, b"only the forgotten user has this")
    other_token = _fill_all(vault, kept, b"only the kept user has this")
    index_files = {}
    if vault.vectors is not None:
        assert vault.vectors.wait_for_builds(60)
        for uid in (gone, kept):  # named by retrieval/ann.py's digest of the collection
            digest = hashlib.sha256(f"{uid}\0e1".encode()).hexdigest()
            index_files[uid] = list((vault.settings.data_dir / "indexes").glob(f"{digest}.*"))
            assert index_files[uid], uid
    theirs = {d.sha256 for d in vault.for_user(gone).files.list("e1").items}
    ours = {d.sha256 for d in vault.for_user(kept).files.list("e1").items}
    assert theirs & ours and theirs - ours  # one file shared, one not
    assert _rows_naming(vault, gone)
    before = _owned_counts(vault, kept)

    report = forget_user(vault, gone)

    assert report.user_id == gone and report.email == "gone@example.com"
    for name in ("users", "auth_tokens", "entities", "documents", "chunks", "messages",
                 "message_chunks", "graph_nodes", "graph_snapshots", "runs", "run_steps",
                 "cache_entries", "cache_locks", "jobs", "agents", "annotations"):
        assert report.deleted[name] >= 1, name
    assert report.deleted["documents"] == 2
    assert report.deleted["blobs"] >= 2  # their own file and their graph snapshot
    assert report.blobs_left == 0
    assert _rows_naming(vault, gone) == []
    rows, stored = _blob_state(vault)
    assert theirs & ours <= rows and theirs & ours <= stored  # still the other user's
    assert not (theirs - ours) & (rows | stored)
    with vault.db.read() as conn:  # every blob left is referenced by someone else's row
        referenced = {sha for k in kinds() if k.blob for sha in conn.execute(
            sa.select(k.table.c[k.blob])).scalars()}
    assert rows == referenced and stored == referenced
    assert _owned_counts(vault, kept) == before
    mine = [d for d in vault.for_user(kept).files.list("e1").items if d.sha256 not in theirs]
    assert vault.for_user(kept).files.read("e1", mine[0].doc_id) == b"only the kept user has this"
    with pytest.raises(Unauthorized):
        vault.users.authenticate(token)
    assert vault.users.authenticate(other_token).id == kept
    if vault.vectors is not None:  # SQLite: the forgotten user's index files went
        assert not any(p.exists() for p in index_files[gone])
        assert all(p.exists() for p in index_files[kept])
        assert vault.for_user(kept).collections.search("e1", "kept", k=1).results
    with pytest.raises(NotFound):
        forget_user(vault, gone)


def test_delete_me_needs_the_password_and_revokes_tokens_at_once(vault: Vault) -> None:
    uid = vault.users.register("me@example.com", "password-1").id
    _fill(vault, uid)
    with TestClient(create_app(vault=vault)) as client:
        token = client.post("/api/auth/login", json={"email": "me@example.com",
                                                     "password": "password-1"}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        r = client.request("DELETE", "/api/auth/me", headers=auth, json={"password": "wrong!!!"})
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        r = client.request("DELETE", "/api/auth/me", headers=auth, json={})
        assert r.status_code == 422
        assert client.request("DELETE", "/api/auth/me", json={"password": "password-1"}
                              ).status_code == 401  # no token
        assert client.get("/api/auth/me", headers=auth).status_code == 200  # nothing changed
        r = client.request("DELETE", "/api/auth/me", headers=auth,
                           json={"password": "password-1"})
        assert r.status_code == 200, r.text
        deleted = r.json()["deleted"]
        assert deleted["users"] == 1 and deleted["entities"] == 1 and "blobs" in deleted
        assert client.get("/api/auth/me", headers=auth).status_code == 401
        assert client.post("/api/auth/login", json={"email": "me@example.com",
                                                    "password": "password-1"}
                           ).status_code == 401
    assert _rows_naming(vault, uid) == []


def test_forget_user_command(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    uid = vault.users.register("Cli@Example.com", "password-1").id
    _fill(vault, uid)
    for name, value in server_env(vault.settings).items():
        if name.startswith("MEMVAULT_"):
            monkeypatch.setenv(name, value)
    runner = CliRunner()
    result = runner.invoke(cli, ["forget-user", "nobody@example.com"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: no user with email 'nobody@example.com'"]
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["forget-user", "cli@example.com"])
    assert result.exit_code == 0, result.output
    assert "message_chunks" in result.output and "deleted" in result.output
    with pytest.raises(NotFound):
        find_user_id(vault, "cli@example.com")
    assert _rows_naming(vault, uid) == []
