"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 02:18:21.195041
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from memvault.backends.schema import JSONType, UTCDateTime

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('blobs',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('refcount', sa.Integer(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('sha256')
    )
    op.create_table('entities',
    sa.Column('owner_id', sa.String(length=64), nullable=False),
    sa.Column('entity_id', sa.String(length=200), nullable=False),
    sa.Column('row_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=500), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('metadata', JSONType, nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.Column('document_count', sa.Integer(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('owner_id', 'entity_id'),
    sa.UniqueConstraint('owner_id', 'row_id', name='uq_entities_owner_row')
    )
    op.create_table('users',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('email')
    )
    op.create_table('auth_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('expires_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_hash')
    )
    with op.batch_alter_table('auth_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auth_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('conversations',
    sa.Column('owner_id', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('entity_id', sa.String(length=200), nullable=True),
    sa.Column('title', sa.String(length=500), nullable=True),
    sa.Column('participants', JSONType, nullable=False),
    sa.Column('metadata', JSONType, nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.Column('message_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_message_at', UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['owner_id', 'entity_id'], ['entities.owner_id', 'entities.entity_id'], name='fk_conversations_entity', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('owner_id', 'id')
    )
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.create_index('ix_conversations_owner_entity', ['owner_id', 'entity_id', 'id'], unique=False)

    op.create_table('documents',
    sa.Column('owner_id', sa.String(length=64), nullable=False),
    sa.Column('doc_id', sa.String(length=64), nullable=False),
    sa.Column('entity_id', sa.String(length=200), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('content_type', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id', 'entity_id'], ['entities.owner_id', 'entities.entity_id'], name='fk_documents_entity'),
    sa.PrimaryKeyConstraint('owner_id', 'doc_id')
    )
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.create_index('ix_documents_owner_entity', ['owner_id', 'entity_id', 'doc_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_documents_sha256'), ['sha256'], unique=False)

    op.create_table('messages',
    sa.Column('owner_id', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('conversation_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('author', sa.String(length=200), nullable=True),
    sa.Column('content', sa.Text(), server_default='', nullable=False),
    sa.Column('metadata', JSONType, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('last_chunk_seq', sa.Integer(), server_default='0', nullable=False),
    sa.Column('writer', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', UTCDateTime(), nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('completed_at', UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['owner_id', 'conversation_id'], ['conversations.owner_id', 'conversations.id'], name='fk_messages_conversation', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('owner_id', 'id'),
    sa.UniqueConstraint('owner_id', 'conversation_id', 'seq', name='uq_messages_conv_seq')
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_status_lease', ['status', 'lease_expires_at'], unique=False)

    op.create_table('message_chunks',
    sa.Column('owner_id', sa.String(length=64), nullable=False),
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id', 'message_id'], ['messages.owner_id', 'messages.id'], name='fk_chunks_message', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('owner_id', 'message_id', 'seq')
    )



def downgrade() -> None:

    op.drop_table('message_chunks')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_status_lease')

    op.drop_table('messages')
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_documents_sha256'))
        batch_op.drop_index('ix_documents_owner_entity')

    op.drop_table('documents')
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('ix_conversations_owner_entity')

    op.drop_table('conversations')
    with op.batch_alter_table('auth_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auth_tokens_user_id'))

    op.drop_table('auth_tokens')
    op.drop_table('users')
    op.drop_table('entities')
    op.drop_table('blobs')

