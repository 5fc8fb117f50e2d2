"""embedding cache: vectors keyed by (model_id, sha256(text)), evicted least recently used

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 13:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from memvault.backends.schema import UTCDateTime

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('embedding_cache',
    sa.Column('model_id', sa.String(length=200), nullable=False),
    sa.Column('text_sha256', sa.String(length=64), nullable=False),
    sa.Column('dimensions', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('last_used_at', UTCDateTime(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('model_id', 'text_sha256')
    )
    op.create_index('ix_embedding_cache_last_used', 'embedding_cache', ['last_used_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_embedding_cache_last_used', table_name='embedding_cache')
    op.drop_table('embedding_cache')
