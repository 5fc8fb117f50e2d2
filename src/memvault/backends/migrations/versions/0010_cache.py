"""cache_entries, cache_locks: the cache's database tier (issue 8)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 18:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

ID = sa.String(length=64)


def upgrade() -> None:
    op.create_table('cache_entries',
    sa.Column('owner_id', ID, nullable=False),
    sa.Column('namespace', sa.String(length=200), nullable=False),
    sa.Column('key', sa.String(length=1024), nullable=False),
    sa.Column('value', sa.LargeBinary(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('owner_id', 'namespace', 'key')
    )
    op.create_index('ix_cache_entries_expires', 'cache_entries', ['expires_at'])
    op.create_table('cache_locks',
    sa.Column('owner_id', ID, nullable=False),
    sa.Column('namespace', sa.String(length=200), nullable=False),
    sa.Column('key', sa.String(length=1024), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('owner_id', 'namespace', 'key')
    )


def downgrade() -> None:
    op.drop_table('cache_locks')
    op.drop_table('cache_entries')
