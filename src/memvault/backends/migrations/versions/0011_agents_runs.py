"""agents, runs, run_steps (issue 8, seeds 002 and 003)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23 18:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from memvault.backends.schema import JSONType, UTCDateTime

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

ID = sa.String(length=64)


def upgrade() -> None:
    op.create_table('agents',
    sa.Column('owner_id', ID, nullable=False),
    sa.Column('id', ID, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=True),
    sa.Column('instructions', sa.Text(), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('tools', JSONType, nullable=False),
    sa.Column('config', JSONType, nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('owner_id', 'id')
    )
    op.create_table('runs',
    sa.Column('owner_id', ID, nullable=False),
    sa.Column('id', ID, nullable=False),
    sa.Column('workflow', sa.String(length=200), nullable=False),
    sa.Column('agent_id', ID, nullable=True),
    sa.Column('conversation_id', ID, nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('input', JSONType, nullable=True),
    sa.Column('output', JSONType, nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('metadata', JSONType, nullable=False),
    sa.Column('step_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('writer', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', UTCDateTime(), nullable=True),
    sa.Column('started_at', UTCDateTime(), nullable=False),
    sa.Column('finished_at', UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('owner_id', 'id')
    )
    op.create_index('ix_runs_owner_workflow', 'runs', ['owner_id', 'workflow', 'id'])
    op.create_index('ix_runs_owner_status', 'runs', ['owner_id', 'status', 'id'])
    op.create_index('ix_runs_owner_agent', 'runs', ['owner_id', 'agent_id', 'id'])
    op.create_index('ix_runs_retention', 'runs', ['owner_id', 'workflow', 'started_at', 'id'])
    op.create_index('ix_runs_status_lease', 'runs', ['status', 'lease_expires_at'])
    op.create_table('run_steps',
    sa.Column('owner_id', ID, nullable=False),
    sa.Column('run_id', ID, nullable=False),
    sa.Column('step', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('agent', sa.String(length=200), nullable=True),
    sa.Column('action', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('result', JSONType, nullable=True),
    sa.Column('started_at', UTCDateTime(), nullable=True),
    sa.Column('finished_at', UTCDateTime(), nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id', 'run_id'], ['runs.owner_id', 'runs.id'],
                            name='fk_run_steps_run', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('owner_id', 'run_id', 'step')
    )


def downgrade() -> None:
    op.drop_table('run_steps')
    op.drop_table('runs')
    op.drop_table('agents')
