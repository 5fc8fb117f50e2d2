"""``memvault verify``: each kind of damage, injected into a vault, is named
(with its ids), and ``--repair`` fixes the derivable ones; a clean vault with
every kind of record passes."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

import memvault
from memvault import Settings, Vault
from memvault.backends.schema import blobs, conversations, graphs, message_chunks, messages
from memvault.cli import app
from memvault.ops.verify import CHECK_NAMES, CheckResult, VerifyReport, verify
from tests.conftest import server_env
from tests.contract.test_kinds import _fill


def _check(report: VerifyReport, name: str) -> CheckResult:
    return next(c for c in report.checks if c.name == name)


def _wrong(report: VerifyReport) -> dict[str, list[str]]:
    return {c.name: c.problems for c in report.checks if not c.ok}


@pytest.fixture
def filled(vault: Vault, user_id: str) -> Vault:
    """A vault holding every kind of record, its streamed message completed."""
    _fill(vault, user_id)
    with vault.db.read() as conn:
        streaming = conn.execute(sa.select(messages.c.id).where(
            messages.c.status == "streaming")).scalar_one()
    vault.for_user(user_id).conversations.complete(streaming)
    return vault


def _streamed(vault: Vault) -> str:
    with vault.db.read() as conn:
        return str(conn.execute(sa.select(messages.c.id).where(
            messages.c.last_chunk_seq > 0)).scalar_one())


def _document_sha(vault: Vault) -> str:
    with vault.db.read() as conn:
        return str(conn.execute(sa.text("SELECT sha256 FROM documents")).scalar_one())


def _blob_file(vault: Vault, sha: str) -> Path:
    path = vault.blobs.local_path(sha)
    assert path is not None and path.exists()
    return path


def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify", *args], env=server_env(settings))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_a_clean_vault_with_every_kind_passes(filled: Vault) -> None:
    report = verify(filled.settings)
    assert report.ok, _wrong(report)
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    code, output = _cli(filled.settings)
    assert code == 0, output
    for name in CHECK_NAMES:
        assert f"ok  {name}" in output
    code, output = _cli(filled.settings, "--json")
    assert code == 0
    data = json.loads(output)
    assert data["ok"] is True
    assert {c["name"] for c in data["checks"]} == set(CHECK_NAMES)
    assert all(set(c) >= {"name", "ok", "problems", "repaired"} for c in data["checks"])
    if filled.backend == "postgresql":  # amcheck ran, or says why not
        notes = _check(report, "database integrity").notes
        assert any("amcheck" in n for n in notes), notes


def test_a_flipped_byte_in_a_blob_is_named_and_not_repaired(filled: Vault) -> None:
    sha = _document_sha(filled)
    path = _blob_file(filled, sha)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify(filled.settings, repair=True)
    problems = _wrong(report)
    assert any(sha in p and "sha256" in p for p in problems["blob bytes"])
    with filled.db.read() as conn:
        doc_id = conn.execute(sa.text("SELECT doc_id FROM documents")).scalar_one()
    assert any(doc_id in p and "corrupt" in p for p in problems["blob references"])
    code, output = _cli(filled.settings, "--json")
    assert code == 1
    assert sha in output


def test_missing_blob_bytes_are_named(filled: Vault) -> None:
    sha = _document_sha(filled)
    _blob_file(filled, sha).unlink()
    report = verify(filled.settings, repair=True)
    assert not report.ok
    problems = _wrong(report)
    assert any(sha in p and "missing" in p for p in problems["blob bytes"])
    assert any("missing" in p for p in problems["blob references"])
    code, output = _cli(filled.settings)
    assert code == 1 and f"FAIL  blob bytes: blob {sha}" in output


def test_orphan_bytes_are_removed_by_repair(filled: Vault) -> None:
    orphan = "ab" * 32  # not the sha of its bytes: no row names it either way
    path = filled.settings.data_dir / "blobs" / orphan[:2] / orphan[2:]
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"left behind by a crash")
    report = verify(filled.settings)
    assert any(orphan in p for p in _wrong(report)["orphan blobs"])
    code, _ = _cli(filled.settings)
    assert code == 1
    report = verify(filled.settings, repair=True)
    assert report.ok, _wrong(report)
    assert any(orphan in r for r in _check(report, "orphan blobs").repaired)
    assert not path.exists()
    assert verify(filled.settings).ok


def test_a_wrong_refcount_is_recounted(filled: Vault) -> None:
    sha = _document_sha(filled)
    with filled.db.write() as conn:
        conn.execute(blobs.update().where(blobs.c.sha256 == sha).values(refcount=5))
    report = verify(filled.settings)
    assert any(sha in p and "refcount 5" in p for p in _wrong(report)["blob refcounts"])
    code, _ = _cli(filled.settings, "--repair")
    assert code == 0
    with filled.db.read() as conn:
        assert conn.execute(sa.select(blobs.c.refcount).where(
            blobs.c.sha256 == sha)).scalar_one() == 1
    assert verify(filled.settings).ok


def test_a_missing_chunk_row_is_a_gap_that_stays(filled: Vault) -> None:
    mid = _streamed(filled)
    with filled.db.write() as conn:
        conn.execute(message_chunks.delete().where(message_chunks.c.message_id == mid,
                                                   message_chunks.c.seq == 1))
    report = verify(filled.settings, repair=True)
    problems = _wrong(report)
    assert set(problems) == {"message chunks"}, problems
    assert any(mid in p and "chunks 1 missing" in p for p in problems["message chunks"])
    code, output = _cli(filled.settings, "--repair")
    assert code == 1 and mid in output


def test_a_changed_message_text_is_rematerialised_from_its_chunks(filled: Vault) -> None:
    mid = _streamed(filled)
    with filled.db.write() as conn:
        conn.execute(messages.update().where(messages.c.id == mid).values(content="tampered"))
    report = verify(filled.settings)
    assert any(mid in p for p in _wrong(report)["message text"])
    report = verify(filled.settings, repair=True)
    assert report.ok, _wrong(report)
    with filled.db.read() as conn:
        assert conn.execute(sa.select(messages.c.content).where(
            messages.c.id == mid)).scalar_one() == "part one part two"


def test_corrupt_counters_are_recounted(filled: Vault) -> None:
    with filled.db.write() as conn:
        conn.execute(graphs.update().values(node_count=7, edge_types={"self": 3, "x": 1}))
        conn.execute(conversations.update().values(message_count=99))
        conv = conn.execute(sa.select(conversations.c.id)).scalar_one()
    report = verify(filled.settings)
    problems = _wrong(report)["counters"]
    assert any("node_count 7, rows 1" in p and "/kg" in p for p in problems)
    assert any("edge_types" in p for p in problems)
    assert any(conv in p and "message_count 99, rows 2" in p for p in problems)
    report = verify(filled.settings, repair=True)
    assert report.ok, _wrong(report)
    assert len(_check(report, "counters").repaired) == 3
    with filled.db.read() as conn:
        row = conn.execute(sa.select(graphs.c.node_count, graphs.c.edge_types)).one()
        assert (row.node_count, row.edge_types) == (1, {"self": 1})
        assert conn.execute(sa.select(conversations.c.message_count)).scalar_one() == 2


def test_full_text_rows_out_of_step_are_rebuilt(filled: Vault) -> None:
    if filled.backend != "sqlite":
        pytest.skip("PostgreSQL's tsvector is a generated column: always in step")
    with filled.db.write() as conn:
        pk = conn.exec_driver_sql("SELECT id FROM chunks ORDER BY id LIMIT 1").scalar_one()
        conn.exec_driver_sql(
            "INSERT INTO chunks_fts(chunks_fts, rowid, search_text) "
            "SELECT 'delete', id, search_text FROM chunks WHERE id = ?", (pk,))
    report = verify(filled.settings)
    assert any(f"ids {pk}" in p for p in _wrong(report)["full-text index"])
    report = verify(filled.settings, repair=True)
    assert report.ok, _wrong(report)
    assert verify(filled.settings).ok


@pytest.fixture
def ann_vault(settings: Settings) -> Vault:
    """A SQLite vault whose collection is past ``ann_exact_below``: it has an
    HNSW index file under indexes/ (closed, so the file is saved)."""
    if settings.backend != "sqlite":
        pytest.skip("ANN index files are SQLite's")
    vault = memvault.open(settings, ann_exact_below=4)
    user = vault.users.register("ann@example.com", "password-1").id
    scope = vault.for_user(user)
    scope.entities.create("Vectors", entity_id="v")
    scope.collections.add("v", [{"id": f"r{i}", "text": f"record {i}"} for i in range(8)])
    scope.collections.search("v", "record", k=3, mode="vector")
    assert vault.vectors is not None
    vault.vectors.wait_for_builds()
    vault.close()
    return memvault.open(settings, ann_exact_below=4)


def _ann_file(vault: Vault) -> Path:
    (path,) = (vault.settings.data_dir / "indexes").glob("*.usearch")
    return path


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_ann_index_file_is_rebuilt(ann_vault: Vault, damage: str) -> None:
    path = _ann_file(ann_vault)
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        path.unlink()
    try:
        report = verify(ann_vault.settings)
        (problem,) = _wrong(report)["vector indexes"]
        assert "entity v" in problem
        assert ("unreadable" if damage == "truncate" else "missing") in problem
        report = verify(ann_vault.settings, repair=True)
        assert report.ok, _wrong(report)
        assert verify(ann_vault.settings).ok
        assert _ann_file(ann_vault).stat().st_size > 100
    finally:
        ann_vault.close()


def test_a_truncated_sqlite_file_fails_integrity_without_a_traceback(
        filled: Vault, tmp_path: Path) -> None:
    if filled.backend != "sqlite":
        pytest.skip("a SQLite file")
    filled.close()  # checkpoints the WAL into the file
    copy = tmp_path / "copy"
    shutil.copytree(filled.settings.data_dir, copy)
    db_file = copy / "memvault.db"
    for leftover in ("-wal", "-shm"):
        Path(f"{db_file}{leftover}").unlink(missing_ok=True)
    page = int.from_bytes(db_file.read_bytes()[16:18], "big")
    os.truncate(db_file, db_file.stat().st_size - page)
    settings = memvault.load_settings(data_dir=copy, password_hash="owasp", embedder="hash")
    report = verify(settings)
    assert _wrong(report)["database integrity"]
    code, output = _cli(settings)
    assert code == 1
    assert "FAIL  database integrity" in output
    assert "Traceback" not in output


def test_missing_postgres_search_indexes_are_recreated(filled: Vault) -> None:
    if filled.backend != "postgresql":
        pytest.skip("PostgreSQL's GIN and HNSW indexes")
    with filled.db.read() as conn:
        hnsw = conn.execute(sa.text(
            "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_chunks_vec_%'")
        ).scalars().all()
    with filled.db.write() as conn:
        conn.execute(sa.text("DROP INDEX ix_chunks_fts"))
        for name in hnsw:
            conn.execute(sa.text(f"DROP INDEX {name}"))
    report = verify(filled.settings)
    problems = _wrong(report)
    assert any("ix_chunks_fts" in p for p in problems["full-text index"])
    assert all(any(name in p for p in problems["vector indexes"]) for name in hnsw)
    report = verify(filled.settings, repair=True)
    assert report.ok, _wrong(report)
    assert verify(filled.settings).ok


def test_verify_while_the_vault_is_written(filled: Vault, user_id: str) -> None:
    """Uploads (sharing blobs), deletions, streamed messages and graph writes
    go on while verify reads: it sees one consistent state, never a problem."""
    scope = filled.for_user(user_id)
    conv = scope.conversations.create(title="busy")
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        i = 0
        try:
            while not stop.is_set():
                i += 1
                doc = scope.files.add("e1", f"f{i}.txt", f"content {i % 3}".encode())
                scope.conversations.append(conv.id, "user", f"m{i}")
                msg = scope.conversations.start_message(conv.id)
                scope.conversations.append_chunks(msg.id, [(1, "a"), (2, "b")])
                scope.conversations.complete(msg.id)
                scope.graph("kg").batch(nodes=[{"id": f"n{i}", "type": "t"}])
                if i % 2:
                    scope.files.delete("e1", doc.doc_id)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(3):
            report = verify(filled.settings)
            assert report.ok, _wrong(report)
    finally:
        stop.set()
        writer.join()
    assert not errors, errors
    assert verify(filled.settings).ok
