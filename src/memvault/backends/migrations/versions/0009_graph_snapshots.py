"""graph_snapshots: saved versions of knowledge graphs, kept in blobs

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 10:00:00

A snapshot row references a content-addressed blob (the whole graph) and is
counted in ``blobs.refcount`` like a document.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from memvault.backends.schema import UTCDateTime

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

ID = sa.String(length=64)


def upgrade() -> None:
    op.create_table('graph_snapshots',
    sa.Column('owner_id', ID, nullable=False),
    sa.Column('graph', sa.String(length=64), nullable=False),
    sa.Column('id', ID, nullable=False),
    sa.Column('label', sa.Text(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('node_count', sa.Integer(), nullable=False),
    sa.Column('edge_count', sa.Integer(), nullable=False),
    sa.Column('pattern_count', sa.Integer(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id', 'graph'], ['graphs.owner_id', 'graphs.name'],
                            name='fk_graph_snapshots_graph', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('owner_id', 'graph', 'id')
    )


def downgrade() -> None:
    op.drop_table('graph_snapshots')
