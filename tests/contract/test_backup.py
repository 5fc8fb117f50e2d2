"""Backup and restore (ops/backup.py): consistent while writers go on, restored
identical on either backend, damaged backups refused with nothing touched,
``--force`` keeping the old data aside, retention, listing, encryption, and the
backup a schema migration takes first."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

import memvault
from memvault import Settings, Vault
from memvault.backends import backend_for
from memvault.backends.base import Database
from memvault.backends.migrate import current_revision, upgrade
from memvault.backends.schema import message_chunks, messages
from memvault.cli import app
from memvault.errors import Conflict, Invalid, MigrationFailed
from memvault.kinds import kinds
from memvault.ops.archive import archived_kinds, export_archive
from memvault.ops.backup import (
    check_backup,
    create_backup,
    guard_migration,
    list_backups,
    restore_backup,
)
from memvault.ops.verify import verify
from tests.conftest import BACKENDS, PgDatabases, server_env
from tests.contract.test_export_import import (  # noqa: F401 - make_vault is a fixture
    _blob_files,
    _filled,
    _jsonl,
    _sorted_lines,
    make_vault,
)
from tests.contract.test_migrations import REVISIONS, _rows, add_revision, tables

PASSWORD = "password-1"


def _writer(vault: Vault, uid: str, stop: threading.Event) -> threading.Thread:
    convs = vault.for_user(uid).conversations
    conv = convs.create(title="busy")

    def run() -> None:
        i = 0
        while not stop.is_set():
            convs.append(conv.id, "user", f"message {i}")
            with convs.stream(conv.id, author="bot") as reply:
                for w in range(5):
                    reply.write(f"w{w} ")
                reply.flush()
            i += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _chunks_complete(vault: Vault) -> None:
    """Every message's chunks are 1..last_chunk_seq without a gap."""
    with vault.db.read() as conn:
        last = {(o, m): n for o, m, n in conn.execute(sa.select(
            messages.c.owner_id, messages.c.id, messages.c.last_chunk_seq))}
        seqs: dict[tuple[str, str], list[int]] = {}
        for o, m, s in conn.execute(sa.select(message_chunks.c.owner_id,
                                              message_chunks.c.message_id,
                                              message_chunks.c.seq)):
            seqs.setdefault((o, m), []).append(s)
    assert any(last.values())
    for key, n in last.items():
        assert sorted(seqs.get(key, [])) == list(range(1, n + 1)), key


def _stable(files: dict[str, bytes]) -> dict[str, list[bytes]]:
    """Sorted lines, and of a reply still streaming in the snapshot only what
    identifies it: opening the restored vault ends it (its writer is gone)."""
    out = _sorted_lines(files)
    lines = []
    for line in out["messages.jsonl"]:
        record = json.loads(line)
        if record["status"] == "streaming":
            line = json.dumps({k: record[k] for k in ("owner_id", "id", "seq",
                                                      "last_chunk_seq")}).encode()
        lines.append(line)
    out["messages.jsonl"] = sorted(lines)
    return out


def _pg_url(request: pytest.FixtureRequest, made: list[PgDatabases]) -> str:
    if not made:
        made.append(PgDatabases(request.getfixturevalue("pg_url")))
    return made[0].create()


@pytest.fixture
def pg_dbs(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    made: list[PgDatabases] = []
    yield lambda: _pg_url(request, made)
    for d in made:
        d.drop_all()


def test_backup_while_writing_restores_identical_on_both_backends(
        vault: Vault, tmp_path: Path, pg_dbs) -> None:  # type: ignore[no-untyped-def]
    users = _filled(vault, ["ann@example.com"])
    stop = threading.Event()
    thread = _writer(vault, users["ann@example.com"], stop)
    try:
        while vault.counts()["message_chunks"] < 20:
            pass
        info = create_backup(vault.db, vault.blobs, vault.settings, tmp_path / "backups")
    finally:
        stop.set()
        thread.join(10)
    assert info.path.name.startswith("backup-") and info.type == "archive"
    assert info.backend == vault.backend and info.counts["messages"] > 2
    assert set(info.counts) == {k.name for k in archived_kinds()}
    assert check_backup(info.path).counts == info.counts
    taken = _jsonl(info.path / "archive")

    targets: list[tuple[str, dict[str, object]]] = [("sqlite", {"to": tmp_path / "restored"})]
    if "postgresql" in BACKENDS:
        targets.append(("postgresql", {"database_url": pg_dbs()}))
    for backend, where in targets:
        # The target's own blob store (a PostgreSQL target's: under its data dir).
        settings = memvault.load_settings(
            data_dir=where.get("to", tmp_path / f"pg-{backend}"),
            database_url=where.get("database_url"), password_hash="owasp", embedder="hash")
        report = restore_backup(info.path, settings, **where)  # type: ignore[arg-type]
        assert report.inserted == info.counts
        with Vault(settings, sweep=False) as restored:
            counts = restored.counts()
            for name, n in info.counts.items():
                assert counts[name] == n, name
            _chunks_complete(restored)
            again = export_archive(restored.db, restored.blobs, tmp_path / f"again-{backend}")
            assert again.counts == info.counts
            assert restored.users.login("ann@example.com", PASSWORD).access_token
        checked = verify(settings)
        assert checked.ok, [c.to_json() for c in checked.checks if not c.ok]
        again_files = _jsonl(tmp_path / f"again-{backend}")
        assert _stable(again_files) == _stable(taken)
        assert _blob_files(tmp_path / f"again-{backend}") == _blob_files(info.path / "archive")


@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("name", ["manifest.json", "archive/manifest.json",
                                  "archive/messages.jsonl", "blob"])
def test_a_flipped_byte_anywhere_is_refused_with_nothing_touched(
        settings: Settings, tmp_path: Path, name: str, encrypted: bool) -> None:
    if settings.backend != "sqlite":
        pytest.skip("the checks do not depend on the backend")
    with memvault.open(settings) as source:
        _filled(source, ["ann@example.com"])
        info = create_backup(source.db, source.blobs, settings,
                             passphrase=b"secret" if encrypted else None)
    if name == "blob":
        name = next(n for n in info.files if n.startswith("archive/blobs/"))
    path = info.path / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    before = sorted(p.name for p in tmp_path.iterdir())
    home_before = sorted(p.relative_to(settings.data_dir).as_posix()
                         for p in settings.data_dir.rglob("*"))
    for target in ({"to": tmp_path / "empty"}, {"to": settings.data_dir, "force": True}):
        with pytest.raises(Invalid, match="damaged"):
            restore_backup(info.path, settings, passphrase=b"secret" if encrypted else None,
                           **target)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.relative_to(settings.data_dir).as_posix()
                  for p in settings.data_dir.rglob("*")) == home_before
    assert [p.name for p in info.path.parent.iterdir() if p.name.startswith(".")] == []


def test_force_replaces_the_target_and_keeps_the_old_data_aside(
        vault: Vault, make_vault, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _filled(vault, ["ann@example.com"])
    info = create_backup(vault.db, vault.blobs, vault.settings, tmp_path / "backups")
    target: Vault = make_vault(vault.backend)
    target.users.register("old@example.com", PASSWORD)
    settings = target.settings
    if vault.backend == "sqlite":
        create_backup(target.db, target.blobs, settings)  # its backups/ moves along
    target.close()
    where = ({"to": settings.data_dir} if vault.backend == "sqlite"
             else {"database_url": settings.database_url})
    with pytest.raises(Conflict, match="--force"):
        restore_backup(info.path, settings, **where)  # type: ignore[arg-type]
    report = restore_backup(info.path, settings, force=True, **where)  # type: ignore[arg-type]
    assert report.kept_aside is not None
    with Vault(settings, sweep=False) as restored:
        assert restored.users.find("ann@example.com") is not None
        assert restored.users.find("old@example.com") is None
        assert restored.counts()["messages"] == info.counts["messages"]
    if vault.backend == "sqlite":
        aside = report.kept_aside
        assert aside.name.startswith(f"{settings.data_dir.name}.old-")
        assert (aside / "memvault.db").exists()
        assert len(list_backups(settings.data_dir / "backups")) == 1
        assert not list(settings.data_dir.parent.glob("*.restoring-*"))
        with Vault(memvault.load_settings(data_dir=aside, password_hash="owasp",
                                          embedder="hash"), sweep=False) as old:
            assert old.users.find("old@example.com") is not None
    else:  # the replaced contents were backed up first
        kept = check_backup(report.kept_aside)
        assert kept.counts["users"] == 1 and "pre-restore" in report.kept_aside.name


def test_keep_and_list(vault: Vault, tmp_path: Path) -> None:
    if vault.backend != "sqlite":
        pytest.skip("retention does not depend on the backend")
    _filled(vault, ["ann@example.com"])
    root = tmp_path / "backups"
    made = [create_backup(vault.db, vault.blobs, vault.settings, root) for _ in range(3)]
    assert len({b.path for b in made}) == 3  # same second: -2, -3
    assert (root.stat().st_mode & 0o777) == 0o700
    newest = create_backup(vault.db, vault.blobs, vault.settings, root, keep=2)
    assert [b.path for b in list_backups(root)] == [made[-1].path, newest.path]
    runner = CliRunner()
    env = server_env(vault.settings)
    result = runner.invoke(app, ["backup", "--to", str(root), "--list"], env=env)
    assert result.exit_code == 0, result.output
    assert newest.path.name in result.output and "2 backups" in result.output
    assert "messages" in result.output
    result = runner.invoke(app, ["backup", "--to", str(root), "--keep", "1"], env=env)
    assert result.exit_code == 0, result.output
    assert "backed up" in result.output
    assert len(list_backups(root)) == 1


def test_encrypted_backup_round_trip_and_wrong_passphrase(vault: Vault, tmp_path: Path) -> None:
    if vault.backend != "sqlite":
        pytest.skip("encryption does not depend on the backend")
    _filled(vault, ["ann@example.com"])
    secret, wrong = tmp_path / "secret", tmp_path / "wrong"
    secret.write_text("correct horse battery staple\n")
    wrong.write_text("incorrect\n")
    runner = CliRunner()
    env = server_env(vault.settings)
    root = tmp_path / "backups"
    result = runner.invoke(app, ["backup", "--to", str(root), "--passphrase-file", str(secret)],
                           env=env)
    assert result.exit_code == 0, result.output
    (info,) = list_backups(root)
    assert info.encryption is not None and "salt" in info.encryption
    stored = b"".join(p.read_bytes() for p in info.path.rglob("*") if p.is_file())
    assert b"ann@example.com" not in stored and b"correct horse" not in stored

    for args, message in (([], "encrypted"), (["--passphrase-file", str(wrong)],
                                              "wrong passphrase")):
        result = runner.invoke(app, ["restore", str(info.path), "--to",
                                     str(tmp_path / "r"), *args], env=env)
        assert result.exit_code == 1
        assert message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "r").exists()
    result = runner.invoke(app, ["restore", str(info.path), "--to", str(tmp_path / "r"),
                                 "--passphrase-file", str(secret)], env=env)
    assert result.exit_code == 0, result.output
    with memvault.open(tmp_path / "r", password_hash="owasp", embedder="hash") as restored:
        assert restored.users.login("ann@example.com", PASSWORD).access_token
        for k in archived_kinds():
            assert restored.counts()[k.name] == info.counts[k.name], k.name


def _old_database_with_rows(settings: Settings) -> Database:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    backend = backend_for(settings)
    db = Database(backend.create_engine(), backend)
    upgrade(db, REVISIONS[-2])
    present = tables(db)
    rows = _rows(db.backend.timestamp_param(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)))
    with db.write() as conn:
        for name, data in rows.items():
            if name in present:
                cols = list(data[0])
                conn.execute(sa.text(f"INSERT INTO {name} ({', '.join(cols)}) VALUES "
                                     f"({', '.join(':' + c for c in cols)})"), data)
    return db


def test_sqlite_migration_backs_up_first(settings: Settings) -> None:
    if settings.backend != "sqlite":
        pytest.skip("SQLite only")
    db = _old_database_with_rows(settings)
    db.close()
    with memvault.open(settings) as vault:
        assert vault.users.find("old@example.com") is not None
    (taken,) = list_backups(settings.data_dir / "backups")
    assert taken.type == "sqlite-file" and taken.schema_revision == REVISIONS[-2]
    assert taken.path.name.endswith("-pre-migration") and taken.counts["users"] == 1
    check_backup(taken.path)
    copy = Database(*_sqlite_at(taken.path / "archive" / "memvault.db"))
    try:
        assert current_revision(copy) == REVISIONS[-2]
    finally:
        copy.close()
    with pytest.raises(Invalid, match="pre-migration"):
        restore_backup(taken.path, settings, to=settings.data_dir.parent / "x")
    # an empty or current database needs none
    memvault.open(settings).close()
    assert len(list_backups(settings.data_dir / "backups")) == 1


def _sqlite_at(path: Path) -> tuple[sa.Engine, object]:
    s = memvault.load_settings(data_dir=path.parent, database_url=f"sqlite:///{path}")
    backend = backend_for(s)
    return backend.create_engine(), backend


def test_postgresql_migration_needs_a_recent_backup(settings: Settings, tmp_path: Path) -> None:
    if settings.backend != "postgresql":
        pytest.skip("PostgreSQL only")
    db = _old_database_with_rows(settings)
    try:
        runner = CliRunner()
        env = server_env(settings)
        result = runner.invoke(app, ["migrate"], env=env)
        assert result.exit_code == 1
        assert "backup" in result.output and "--yes" in result.output
        assert "Traceback" not in result.output
        assert current_revision(db) == REVISIONS[-2]
        with pytest.raises(MigrationFailed, match="last hour"):
            memvault.open(settings)
        result = runner.invoke(app, ["migrate", "--yes"], env=env)
        assert result.exit_code == 0, result.output
        assert current_revision(db) == REVISIONS[-1]

        # a later revision: refused until a backup of this database exists
        versions = tmp_path / "versions"
        add_revision(versions, "0099", REVISIONS[-1], "pass")
        with pytest.raises(MigrationFailed):
            guard_migration(settings, db, versions=(versions,))
        with db.write() as conn:  # the made-up blob has no bytes to back up
            for table in ("documents", "blob_parts", "blobs"):
                conn.execute(sa.text(f"DELETE FROM {table}"))
        with Vault(settings, sweep=False) as vault:
            create_backup(vault.db, vault.blobs, settings)
        assert guard_migration(settings, db, versions=(versions,)) is None
        other = memvault.load_settings(data_dir=settings.data_dir,
                                       database_url=settings.database_url,
                                       migrate_without_backup=True)
        assert guard_migration(other, db, versions=(versions,)) is None
        assert {"users", "messages"} <= tables(db)
    finally:
        db.close()


def test_every_kind_is_counted() -> None:
    assert {k.name for k in archived_kinds()} <= {k.name for k in kinds()}


def test_cli_restores_a_sqlite_backup_into_postgresql(settings: Settings, tmp_path: Path,
                                                      pg_dbs) -> None:  # type: ignore[no-untyped-def]
    if settings.backend != "sqlite" or "postgresql" not in BACKENDS:
        pytest.skip("SQLite → PostgreSQL")
    with memvault.open(settings) as source:
        _filled(source, ["ann@example.com"])
    runner = CliRunner()
    result = runner.invoke(app, ["backup"], env=server_env(settings))
    assert result.exit_code == 0, result.output
    (info,) = list_backups(settings.data_dir / "backups")
    target = memvault.load_settings(data_dir=tmp_path / "pg", database_url=pg_dbs(),
                                    password_hash="owasp", embedder="hash")
    env = server_env(target)
    args = ["restore", str(info.path), "--database-url", str(target.database_url)]
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "restored" in result.output
    result = runner.invoke(app, args, env=env)  # not empty any more
    assert result.exit_code == 1 and "--force" in result.output
    assert "Traceback" not in result.output
    with Vault(target, sweep=False) as restored:
        assert restored.users.login("ann@example.com", PASSWORD).access_token
        for k in archived_kinds():
            assert restored.counts()[k.name] == info.counts[k.name], k.name


@pytest.mark.parametrize("encrypted", [False, True])
def test_sqlite_vector_index_files_travel_with_the_backup(settings: Settings, tmp_path: Path,
                                                          encrypted: bool) -> None:
    """The issue's "every blob and any derived index file": SQLite's HNSW files
    are in the backup (checksummed, encrypted with the rest) and put back by a
    restore into SQLite, where they are used as they are or rebuilt."""
    if settings.backend != "sqlite":
        pytest.skip("vector index files are SQLite's")
    with memvault.open(settings, ann_exact_below=4) as vault:
        uid = vault.users.register("ann@example.com", PASSWORD).id
        scope = vault.for_user(uid)
        scope.entities.create("Vectors", entity_id="v")
        scope.collections.add("v", [{"id": f"r{i}", "text": f"record {i}"} for i in range(8)])
        before = [h.chunk_id for h in scope.collections.search(
            "v", "record 3", k=3, mode="vector").results]
        assert vault.vectors is not None
        vault.vectors.wait_for_builds()
    index_files = sorted(p.name for p in (settings.data_dir / "indexes").iterdir()
                         if not p.name.startswith("."))
    assert index_files
    secret = b"correct horse battery staple" if encrypted else None
    with memvault.open(settings, ann_exact_below=4) as vault:
        info = create_backup(vault.db, vault.blobs, vault.settings, tmp_path / "backups",
                             passphrase=secret)
    assert sorted(n.removeprefix("indexes/") for n in info.files
                  if n.startswith("indexes/")) == index_files
    assert check_backup(info.path).files == info.files
    restore_backup(info.path, settings, to=tmp_path / "r", passphrase=secret)
    restored_files = tmp_path / "r" / "indexes"
    assert sorted(p.name for p in restored_files.iterdir()) == index_files
    for name in index_files:  # byte for byte (the backup's copies were encrypted)
        assert (restored_files / name).read_bytes() == (
            settings.data_dir / "indexes" / name).read_bytes()
    with memvault.open(tmp_path / "r", password_hash="owasp", embedder="hash",
                       ann_exact_below=4) as restored:
        assert restored.users.login("ann@example.com", PASSWORD).access_token
        found = [h.chunk_id for h in restored.for_user(uid).collections.search(  # ids kept
            "v", "record 3", k=3, mode="vector").results]
    # The exact search before and the graph's search after agree on the best
    # hit (approximate search may order the rest otherwise).
    assert found[0] == before[0] == "r3" and len(found) == 3
