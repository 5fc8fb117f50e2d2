"""extractions and annotations on documents (issue 7, seed 001)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 16:00:00

Both tables reference their document with ON DELETE CASCADE, so deleting a
document (or its entity, which deletes its documents) deletes them too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from memvault.backends.schema import JSONType, UTCDateTime

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('extractions',
    sa.Column('owner_id', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('doc_id', sa.String(length=64), nullable=False),
    sa.Column('schema', sa.String(length=200), nullable=False),
    sa.Column('data', JSONType, nullable=False),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id', 'doc_id'], ['documents.owner_id', 'documents.doc_id'],
                            name='fk_extractions_document', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('owner_id', 'id')
    )
    op.create_index('ix_extractions_doc', 'extractions', ['owner_id', 'doc_id', 'id'])
    op.create_index('ix_extractions_doc_schema', 'extractions',
                    ['owner_id', 'doc_id', 'schema', 'id'])
    op.create_table('annotations',
    sa.Column('owner_id', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('doc_id', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('char_start', sa.Integer(), nullable=True),
    sa.Column('char_end', sa.Integer(), nullable=True),
    sa.Column('page', sa.Integer(), nullable=True),
    sa.Column('chunk_id', sa.String(length=200), nullable=True),
    sa.Column('data', JSONType, nullable=False),
    sa.Column('author', sa.String(length=64), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.Column('sort_key', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['owner_id', 'doc_id'], ['documents.owner_id', 'documents.doc_id'],
                            name='fk_annotations_document', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('owner_id', 'id')
    )
    op.create_index('ix_annotations_doc', 'annotations', ['owner_id', 'doc_id', 'sort_key'])
    op.create_index('ix_annotations_doc_label', 'annotations',
                    ['owner_id', 'doc_id', 'label', 'sort_key'])


def downgrade() -> None:
    op.drop_table('annotations')
    op.drop_table('extractions')
