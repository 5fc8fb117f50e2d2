"""auth failures (login rate limits) and blob parts (blobs kept in the database)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from memvault.backends.schema import UTCDateTime

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('auth_failures',
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('window_start', UTCDateTime(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('key_hash')
    )
    op.create_table('blob_parts',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('part', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['sha256'], ['blobs.sha256'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sha256', 'part')
    )


def downgrade() -> None:
    op.drop_table('blob_parts')
    op.drop_table('auth_failures')
