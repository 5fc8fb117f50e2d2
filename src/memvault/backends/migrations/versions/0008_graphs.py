"""graphs: knowledge graphs with nodes, weighted typed edges and patterns

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 10:00:00

The graph row keeps its counts (per type too), updated by each write; edges
have an index per direction, ordered by strength and covering a walk step
(near, strength, far, type), for neighbour lookups and traversal.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from memvault.backends.schema import JSONType, UTCDateTime

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

ID = sa.String(length=64)
NAME = sa.String(length=64)
NODE_ID = sa.String(length=256)
TYPE = sa.String(length=64)


def upgrade() -> None:
    op.create_table('graphs',
    sa.Column('owner_id', ID, nullable=False),
    sa.Column('name', NAME, nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('metadata', JSONType, nullable=False),
    sa.Column('node_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('edge_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('pattern_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('node_types', JSONType, nullable=False),
    sa.Column('edge_types', JSONType, nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('modified_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('owner_id', 'name')
    )
    op.create_table('graph_nodes',
    sa.Column('owner_id', ID, nullable=False),
    sa.Column('graph', NAME, nullable=False),
    sa.Column('id', NODE_ID, nullable=False),
    sa.Column('type', TYPE, nullable=False),
    sa.Column('data', JSONType, nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('modified_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id', 'graph'], ['graphs.owner_id', 'graphs.name'],
                            name='fk_graph_nodes_graph', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('owner_id', 'graph', 'id')
    )
    op.create_index('ix_graph_nodes_type', 'graph_nodes', ['owner_id', 'graph', 'type', 'id'])
    op.create_table('graph_edges',
    sa.Column('owner_id', ID, nullable=False),
    sa.Column('graph', NAME, nullable=False),
    sa.Column('src', NODE_ID, nullable=False),
    sa.Column('dst', NODE_ID, nullable=False),
    sa.Column('type', TYPE, nullable=False),
    sa.Column('strength', sa.Float(), nullable=False),
    sa.Column('data', JSONType, nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('modified_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id', 'graph'], ['graphs.owner_id', 'graphs.name'],
                            name='fk_graph_edges_graph', ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['owner_id', 'graph', 'src'],
                            ['graph_nodes.owner_id', 'graph_nodes.graph', 'graph_nodes.id'],
                            name='fk_graph_edges_src', ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['owner_id', 'graph', 'dst'],
                            ['graph_nodes.owner_id', 'graph_nodes.graph', 'graph_nodes.id'],
                            name='fk_graph_edges_dst', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('owner_id', 'graph', 'src', 'dst', 'type')
    )
    # Covering: a walk reads (near, strength, far, type) from the index alone.
    op.create_index('ix_graph_edges_out', 'graph_edges',
                    ['owner_id', 'graph', 'src', 'strength', 'dst', 'type'])
    op.create_index('ix_graph_edges_in', 'graph_edges',
                    ['owner_id', 'graph', 'dst', 'strength', 'src', 'type'])
    op.create_table('graph_patterns',
    sa.Column('owner_id', ID, nullable=False),
    sa.Column('graph', NAME, nullable=False),
    sa.Column('id', NODE_ID, nullable=False),
    sa.Column('type', TYPE, nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('trigger_conditions', JSONType, nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('match', JSONType, nullable=True),
    sa.Column('data', JSONType, nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('modified_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id', 'graph'], ['graphs.owner_id', 'graphs.name'],
                            name='fk_graph_patterns_graph', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('owner_id', 'graph', 'id')
    )
    op.create_index('ix_graph_patterns_type', 'graph_patterns',
                    ['owner_id', 'graph', 'type', 'id'])


def downgrade() -> None:
    op.drop_table('graph_patterns')
    op.drop_table('graph_edges')
    op.drop_table('graph_nodes')
    op.drop_table('graphs')
