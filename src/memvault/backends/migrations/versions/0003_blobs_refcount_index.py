"""index blobs by refcount, so the blob collector finds refcount-0 rows without a scan

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 12:30:00
"""

from __future__ import annotations

from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_blobs_refcount', 'blobs', ['refcount'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_blobs_refcount', table_name='blobs')
