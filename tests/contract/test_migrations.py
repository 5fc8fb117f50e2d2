"""Schema migrations on every backend: one transaction per upgrade, foreign keys
kept safe while tables are rebuilt, no drift from ``schema.py``, and upgrades
from each earlier revision with data in it.

Test-only revisions are written into a temporary directory that ``upgrade()``
searches besides the shipped ones, so nothing test-only ships.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from typer.testing import CliRunner

import memvault
from memvault import MigrationFailed, Settings, Unavailable, Vault
from memvault.backends import backend_for
from memvault.backends.base import Database
from memvault.backends.migrate import alembic_config, current_revision, head_revision, upgrade
from memvault.backends.schema import metadata
from memvault.cli import app
from memvault.kinds import DERIVED_TABLES

HEAD = head_revision()
# Every shipped revision, oldest first.
REVISIONS = [s.revision for s in reversed(list(
    ScriptDirectory.from_config(alembic_config()).walk_revisions()))]


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    """A bare database handle (no vault): the schema is whatever the test makes."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    backend = backend_for(settings)
    database = Database(backend.create_engine(), backend)
    try:
        yield database
    finally:
        database.close()


def add_revision(versions: Path, rev: str, down: str | None, body: str,
                 doc: str = "test revision") -> None:
    versions.mkdir(exist_ok=True)
    (versions / f"{rev}_test_only.py").write_text(
        f'"""{doc}"""\n\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\n"
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ")
        + "\n\n\ndef downgrade() -> None:\n    pass\n")


def tables(db: Database) -> set[str]:
    with db.engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def chunk_rows(db: Database) -> list[tuple[Any, ...]]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT owner_id, message_id, seq, text FROM message_chunks "
            "ORDER BY owner_id, message_id, seq"))]


def fill_with_library(settings: Settings) -> None:
    """A user, a conversation, a finished streamed reply and a still-streaming one."""
    with memvault.open(settings) as vault:
        me = vault.users.register(f"m{uuid.uuid4().hex[:8]}@example.com", "password-1").id
        convs = vault.for_user(me).conversations
        conv = convs.create(title="migrations")
        convs.append(conv.id, "user", "tell me")
        with convs.stream(conv.id, author="bot") as reply:
            for i in range(150):
                reply.write(f"w{i} ")
            reply.flush()
        live = convs.start_message(conv.id, author="bot")
        convs.append_chunks(live.id, [(1, "still "), (2, "going")])


# -- 1. a revision that fails half-way ----------------------------------------------

def test_a_failing_revision_rolls_back_the_whole_upgrade(settings: Settings, db: Database,
                                                        tmp_path: Path) -> None:
    fill_with_library(settings)
    before_chunks = chunk_rows(db)
    versions = tmp_path / "versions"
    add_revision(versions, "0098", HEAD, """
        op.create_table('mv_fine', sa.Column('id', sa.Integer, primary_key=True))
    """, doc="fine on its own")
    add_revision(versions, "0099", "0098", """
        op.create_table('mv_probe', sa.Column('id', sa.Integer, primary_key=True))
        op.add_column('users', sa.Column('probe', sa.Text))
        op.execute("DELETE FROM message_chunks")
        raise RuntimeError("boom halfway")
    """, doc="breaks halfway")

    for _attempt in range(2):  # and again: no leftovers make the retry fail otherwise
        with pytest.raises(MigrationFailed) as info:
            upgrade(db, versions=[versions])
        detail = info.value.detail
        assert "0099" in detail and "breaks halfway" in detail and "boom halfway" in detail
        assert f"still at revision {HEAD}" in detail and "cannot reach" not in detail

    assert current_revision(db) == HEAD
    assert not {"mv_fine", "mv_probe"} & tables(db)
    with db.engine.connect() as conn:
        assert "probe" not in {c["name"] for c in sa.inspect(conn).get_columns("users")}
    assert chunk_rows(db) == before_chunks
    with memvault.open(settings) as vault:  # the shipped schema still opens
        assert vault.counts()["messages"] == 3


def test_a_foreign_key_violation_rolls_back(settings: Settings, db: Database,
                                           tmp_path: Path) -> None:
    fill_with_library(settings)
    before_chunks = chunk_rows(db)
    versions = tmp_path / "versions"
    add_revision(versions, "0099", HEAD, """
        op.execute("INSERT INTO message_chunks (owner_id, message_id, seq, text, created_at) "
                   "VALUES ('nobody', 'nothing', 1, 'orphan', '2026-01-01 00:00:00')")
    """, doc="leaves an orphan")
    with pytest.raises(MigrationFailed) as info:
        upgrade(db, versions=[versions])
    assert f"still at revision {HEAD}" in info.value.detail
    assert "message_chunks" in info.value.detail or "0099" in info.value.detail
    assert current_revision(db) == HEAD
    assert chunk_rows(db) == before_chunks


def test_half_applied_schema_is_a_migration_error_not_unreachable(
        settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a table left behind by a failed migration made every later open
    fail with "cannot reach the database"."""
    upgrade(db, "0001")
    with db.engine.begin() as conn:  # what 0002 would create, left behind
        conn.execute(sa.text("CREATE TABLE auth_failures (key_hash VARCHAR(64))"))
    with pytest.raises(MigrationFailed) as info:
        memvault.open(settings)
    assert "0002" in info.value.detail and "still at revision 0001" in info.value.detail
    assert "cannot reach" not in info.value.detail
    assert current_revision(db) == "0001"

    monkeypatch.setenv("MEMVAULT_DATA_DIR", str(settings.data_dir))
    if settings.database_url:
        monkeypatch.setenv("MEMVAULT_DATABASE_URL", settings.database_url)
    else:
        monkeypatch.delenv("MEMVAULT_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == 1
    assert "error: schema migration 0002" in result.output
    assert "Traceback" not in result.output


def test_an_unreachable_database_is_unavailable(tmp_path: Path) -> None:
    url = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2"
    with pytest.raises(Unavailable, match="cannot reach the database"):
        memvault.open(memvault.load_settings(data_dir=tmp_path / "d", database_url=url))


def test_a_database_newer_than_the_code_is_refused_clearly(settings: Settings,
                                                          db: Database) -> None:
    upgrade(db)
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(MigrationFailed, match="'9999'.*newer version"):
        memvault.open(settings)


# -- 2. a table rebuild keeps its children --------------------------------------------

def test_rebuilding_messages_keeps_every_chunk(settings: Settings, db: Database,
                                               tmp_path: Path) -> None:
    """Regression: with foreign keys on during the migration, SQLite's batch rebuild
    of ``messages`` (copy, DROP, rename) emptied ``message_chunks`` by cascade."""
    fill_with_library(settings)
    before_chunks = chunk_rows(db)
    assert len(before_chunks) >= 4
    versions = tmp_path / "versions"
    # Changing a column's type rebuilds the table on SQLite (batch "auto" mode)
    # and is an ALTER on PostgreSQL.
    add_revision(versions, "0099", HEAD, """
        with op.batch_alter_table('messages') as batch:
            batch.alter_column('author', existing_type=sa.String(200), type_=sa.String(300))
    """, doc="rebuild messages")
    assert upgrade(db, versions=[versions]) == (HEAD, "0099")

    with db.engine.connect() as conn:
        author = {c["name"]: c for c in sa.inspect(conn).get_columns("messages")}["author"]
        assert getattr(author["type"], "length", None) == 300
        assert db.backend.integrity_check(conn) == []
    assert chunk_rows(db) == before_chunks
    # Foreign keys are enforced again on pooled connections: deleting the
    # messages cascades to their chunks.
    with db.write() as conn:
        conn.execute(sa.text("DELETE FROM messages"))
    assert chunk_rows(db) == []


# -- 3. no drift between the migrations and schema.py ---------------------------------

def _same_default(_context: Any, _inspected_column: Any, _metadata_column: Any,
                  inspected: str | None, _metadata: Any, rendered: str | None) -> bool | None:
    # Alembic reports SQLite's DEFAULT '' as differing from server_default="";
    # every other default goes through its own comparison (None).
    if rendered == "" and (inspected or "").strip("()") in ("''", '""'):
        return False
    return None


def test_migrations_produce_exactly_the_schema(vault: Vault) -> None:
    """``alembic check``: the shipped migrations build exactly ``schema.py``
    (tables, columns, types, server defaults, keys and indexes)."""
    with vault.db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True, "compare_server_default": _same_default,
            "include_object": _not_derived})
        diffs = compare_metadata(context, metadata)
    assert diffs == []


def _not_derived(obj: Any, name: str | None, type_: str, reflected: bool,
                 _compare_to: Any) -> bool:
    """Leave out what only one backend has, derived from ``chunks`` (see
    migration 0006): SQLite's FTS5 tables, PostgreSQL's search_tsv column and
    its GIN and HNSW indexes."""
    if type_ == "table" and name in DERIVED_TABLES:
        return False
    if type_ == "column" and reflected and name == "search_tsv":
        return False
    return not (type_ == "index" and reflected and name is not None
                and name.startswith(("ix_chunks_fts", "ix_chunks_vec_")))


# -- 4. upgrades from each earlier revision, with data ---------------------------------

def _rows(ts: Any) -> dict[str, list[dict[str, Any]]]:
    """Rows for each table, in insertion (parent-first) order."""
    return {
        "users": [{"id": "u1", "email": "old@example.com", "name": "Old",
                   "password_hash": "x", "created_at": ts}],
        "auth_tokens": [{"token_hash": "t" * 64, "user_id": "u1", "created_at": ts,
                         "expires_at": ts}],
        "auth_failures": [{"key_hash": "k" * 64, "window_start": ts, "failures": 2}],
        "entities": [{"owner_id": "u1", "entity_id": "e1", "row_id": "r1", "name": "E",
                      "description": None, "metadata": "{}", "created_at": ts,
                      "updated_at": ts, "document_count": 1}],
        "blobs": [{"sha256": "a" * 64, "size": 3, "refcount": 1, "created_at": ts}],
        "blob_parts": [{"sha256": "a" * 64, "part": 0, "data": b"abc"}],
        "documents": [{"owner_id": "u1", "doc_id": "d1", "entity_id": "e1",
                       "filename": "f.txt", "content_type": "text/plain", "size": 3,
                       "sha256": "a" * 64, "created_at": ts}],
        "conversations": [{"owner_id": "u1", "id": "c1", "entity_id": "e1", "title": "T",
                           "participants": "[]", "metadata": "{}", "created_at": ts,
                           "updated_at": ts, "message_count": 1, "last_message_at": ts}],
        "messages": [{"owner_id": "u1", "id": "m1", "conversation_id": "c1", "seq": 1,
                      "role": "assistant", "author": "bot", "content": "hello there",
                      "metadata": "{}", "status": "complete", "last_chunk_seq": 2,
                      "writer": None, "lease_expires_at": None, "created_at": ts,
                      "completed_at": ts}],
        "message_chunks": [{"owner_id": "u1", "message_id": "m1", "seq": 1, "text": "hello ",
                            "created_at": ts},
                           {"owner_id": "u1", "message_id": "m1", "seq": 2, "text": "there",
                            "created_at": ts}],
    }


def _count(conn: sa.Connection, table: str) -> int:
    return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.mark.parametrize("start", REVISIONS[:-1])
def test_upgrade_from_an_earlier_revision_keeps_its_data(start: str, settings: Settings,
                                                         db: Database) -> None:
    upgrade(db, start)
    assert current_revision(db) == start
    present = tables(db)
    rows = _rows(db.backend.timestamp_param(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)))
    inserted = {name: data for name, data in rows.items() if name in present}
    assert {"users", "messages", "message_chunks"} <= inserted.keys()
    with db.write() as conn:  # plain SQL, as data written by that release would be
        for name, data in inserted.items():
            cols = list(data[0])
            conn.execute(sa.text(f"INSERT INTO {name} ({', '.join(cols)}) VALUES "
                                 f"({', '.join(':' + c for c in cols)})"), data)

    assert upgrade(db) == (start, HEAD)
    with db.engine.connect() as conn:
        for name, data in inserted.items():
            assert _count(conn, name) == len(data), name
        assert db.backend.integrity_check(conn) == []
    assert chunk_rows(db) == [("u1", "m1", 1, "hello "), ("u1", "m1", 2, "there")]
    with memvault.open(settings) as vault:  # and the library reads it
        mine = vault.for_user("u1").conversations
        assert [m.content for m in mine.messages("c1").items] == ["hello there"]
