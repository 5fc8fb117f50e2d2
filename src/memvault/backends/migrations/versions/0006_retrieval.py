"""retrieval: document indexing status, collections, chunks with vectors and full text

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 15:10:00

SQLite also gets the derived full-text index (FTS5 table ``chunks_fts``, an
external-content index of ``chunks.search_text`` kept in step by triggers) and
a trigger writing ``chunk_tombstones`` for the ANN index files. PostgreSQL gets
pgvector (when the server offers it) and a stored generated column
``search_tsv`` (the ``tsvector`` of ``search_text``, not in schema.py: derived,
never written or exported) with a GIN index; its HNSW indexes are partial per dimension and created when the
first vector of that dimension arrives (``PostgresBackend.ensure_vector_index``).
Documents stored before this revision are queued for indexing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from memvault.backends.schema import JSONType, UTCDateTime, VectorType
from memvault.ids import new_id, utcnow

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer, "sqlite")

#: Kept in step with ``retrieval/fulltext.py`` (FTS_TOKENIZE, TS_CONFIG).
FTS_TOKENIZE = "porter unicode61 remove_diacritics 2"
TS_CONFIG = "english"

SQLITE_DDL = (
    f"CREATE VIRTUAL TABLE chunks_fts USING fts5(search_text, content='chunks', "
    f"content_rowid='id', tokenize='{FTS_TOKENIZE}')",
    "CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN "
    "INSERT INTO chunks_fts(rowid, search_text) VALUES (new.id, new.search_text); END",
    "CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN "
    "INSERT INTO chunks_fts(chunks_fts, rowid, search_text) "
    "VALUES ('delete', old.id, old.search_text); "
    "INSERT INTO chunk_tombstones(owner_id, entity_id, chunk_pk, deleted_at) "
    "VALUES (old.owner_id, old.entity_id, old.id, strftime('%Y-%m-%d %H:%M:%f', 'now')); END",
    # Chunks are never updated in place (see schema.py); refuse it, so an index
    # can never silently go out of step.
    "CREATE TRIGGER chunks_au BEFORE UPDATE ON chunks BEGIN "
    "SELECT RAISE(ABORT, 'chunks are replaced, never updated'); END",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        offered = bind.execute(sa.text(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first()
        if offered:
            op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    with op.batch_alter_table('documents') as batch:
        batch.add_column(sa.Column('status', sa.String(length=16), server_default='pending',
                                   nullable=False))
        batch.add_column(sa.Column('chunk_count', sa.Integer(), server_default='0',
                                   nullable=False))
        batch.add_column(sa.Column('error', sa.Text(), nullable=True))
    op.create_index('ix_documents_status', 'documents', ['status'])
    op.create_table('collections',
    sa.Column('owner_id', sa.String(length=64), nullable=False),
    sa.Column('entity_id', sa.String(length=200), nullable=False),
    sa.Column('model_id', sa.String(length=200), nullable=True),
    sa.Column('dimensions', sa.Integer(), nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id', 'entity_id'], ['entities.owner_id', 'entities.entity_id'],
                            name='fk_collections_entity', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('owner_id', 'entity_id')
    )
    op.create_table('chunks',
    sa.Column('id', BIGINT, autoincrement=True, nullable=False),
    sa.Column('owner_id', sa.String(length=64), nullable=False),
    sa.Column('entity_id', sa.String(length=200), nullable=False),
    sa.Column('chunk_id', sa.String(length=200), nullable=False),
    sa.Column('doc_id', sa.String(length=64), nullable=True),
    sa.Column('position', sa.Integer(), nullable=True),
    sa.Column('char_start', sa.Integer(), nullable=True),
    sa.Column('char_end', sa.Integer(), nullable=True),
    sa.Column('page', sa.Integer(), nullable=True),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('search_text', sa.Text(), nullable=False),
    sa.Column('metadata', JSONType, nullable=False),
    sa.Column('model_id', sa.String(length=200), nullable=True),
    sa.Column('dimensions', sa.Integer(), nullable=False),
    sa.Column('embedding', VectorType(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id', 'doc_id'], ['documents.owner_id', 'documents.doc_id'],
                            name='fk_chunks_document', ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['owner_id', 'entity_id'], ['entities.owner_id', 'entities.entity_id'],
                            name='fk_chunks_entity', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('owner_id', 'entity_id', 'chunk_id', name='uq_chunks_entity_chunk'),
    sqlite_autoincrement=True,
    )
    op.create_index('ix_chunks_entity_id', 'chunks', ['owner_id', 'entity_id', 'id'])
    op.create_index('ix_chunks_doc', 'chunks', ['owner_id', 'doc_id', 'position'])
    op.create_index('ix_chunks_entity_model', 'chunks', ['owner_id', 'entity_id', 'model_id'])
    op.create_index('ix_chunks_entity_dims', 'chunks', ['owner_id', 'entity_id', 'dimensions'])
    op.create_table('chunk_tombstones',
    sa.Column('seq', BIGINT, autoincrement=True, nullable=False),
    sa.Column('owner_id', sa.String(length=64), nullable=False),
    sa.Column('entity_id', sa.String(length=200), nullable=False),
    sa.Column('chunk_pk', sa.BigInteger(), nullable=False),
    sa.Column('deleted_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sqlite_autoincrement=True,
    )
    op.create_index('ix_chunk_tombstones_entity', 'chunk_tombstones',
                    ['owner_id', 'entity_id', 'seq'])
    if bind.dialect.name == "sqlite":
        for statement in SQLITE_DDL:
            op.execute(statement)
    else:
        # Stored, so ranking reads each match's tsvector instead of parsing its
        # text again (ts_rank over an expression index recomputes it per row).
        op.execute(f"ALTER TABLE chunks ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS "
                   f"(to_tsvector('{TS_CONFIG}', search_text)) STORED")
        op.execute("CREATE INDEX ix_chunks_fts ON chunks USING gin (search_tsv)")
    # Documents stored before retrieval existed: index them now, like new uploads.
    documents = sa.table('documents', sa.column('owner_id'), sa.column('doc_id'))
    jobs = sa.table('jobs', sa.column('id'), sa.column('owner_id'), sa.column('kind'),
                    sa.column('payload', JSONType), sa.column('status'),
                    sa.column('attempts'), sa.column('max_attempts'),
                    sa.column('run_after', UTCDateTime()), sa.column('created_at', UTCDateTime()),
                    sa.column('updated_at', UTCDateTime()))
    now = utcnow()
    rows = bind.execute(sa.select(documents.c.owner_id, documents.c.doc_id)).all()
    for start in range(0, len(rows), 500):
        op.bulk_insert(jobs, [
            {"id": new_id(), "owner_id": owner, "kind": "ingest",
             "payload": {"doc_id": doc_id}, "status": "queued", "attempts": 0,
             "max_attempts": 5, "run_after": now, "created_at": now, "updated_at": now}
            for owner, doc_id in rows[start:start + 500]])


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for name in ("chunks_ai", "chunks_ad", "chunks_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS chunks_fts")
    op.drop_table('chunk_tombstones')
    op.drop_table('chunks')
    op.drop_table('collections')
    op.drop_index('ix_documents_status', table_name='documents')
    with op.batch_alter_table('documents') as batch:
        batch.drop_column('error')
        batch.drop_column('chunk_count')
        batch.drop_column('status')
