"""The one schema both databases share (SQLAlchemy Core).

Every table carries ``owner_id`` and leads its keys with it, so owner-scoped
lookups are index lookups and the layout can be distributed by owner (Citus).
Migrations in ``migrations/versions`` must be kept in step with this file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.sqlite import DATETIME as SQLITE_DATETIME

__all__ = ["metadata", "users", "auth_tokens", "auth_failures", "entities", "blobs",
           "blob_parts", "documents", "conversations", "messages", "message_chunks",
           "embedding_cache", "jobs", "UTCDateTime", "JSONType"]


class _SQLiteUTC(SQLITE_DATETIME):
    """SQLite text timestamps ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC), the layout
    SQLAlchemy's own DATETIME uses, so they sort and compare as text. Parsed with
    ``datetime.fromisoformat`` (C) instead of the generic regex: reading a page
    of messages parses two timestamps a row."""

    def bind_processor(self, dialect: sa.Dialect) -> Any:
        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given to the database")
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        return process

    def result_processor(self, dialect: sa.Dialect, coltype: object) -> Any:
        parse = datetime.fromisoformat

        def process(value: str | None) -> datetime | None:
            return None if value is None else parse(value).replace(tzinfo=UTC)
        return process


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on every backend (``timestamptz`` on
    PostgreSQL, sortable UTC text on SQLite)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLiteUTC())  # type: ignore[no-untyped-call]
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None or value.tzinfo is UTC:
            return value
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType: Any = sa.JSON().with_variant(JSONB(), "postgresql")

metadata = sa.MetaData()
ID = sa.String(64)

users = sa.Table(
    "users", metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("name", sa.String(200)),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

auth_tokens = sa.Table(
    "auth_tokens", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", ID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
              index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

# Failed logins per account and per client address, counted in fixed windows
# shared by every worker. The key is a sha256 (of "account:<email>" or
# "address:<ip>"), so the table holds no address in clear.
auth_failures = sa.Table(
    "auth_failures", metadata,
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("window_start", UTCDateTime, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
)

entities = sa.Table(
    "entities", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("entity_id", sa.String(200), primary_key=True),
    # Client-chosen ids do not sort by time; row_id (UUIDv7) gives listings a
    # stable, time-ordered cursor.
    sa.Column("row_id", ID, nullable=False),
    sa.Column("name", sa.String(500), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("metadata", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("document_count", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("owner_id", "row_id", name="uq_entities_owner_row"),
)

blobs = sa.Table(
    "blobs", metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("refcount", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # The collector looks for refcount-0 rows: an index lookup, not a scan.
    sa.Index("ix_blobs_refcount", "refcount"),
)

# The bytes of blobs kept in the database itself (MEMVAULT_BLOB_STORE=database),
# in pieces so that neither side holds a whole large file in one value.
blob_parts = sa.Table(
    "blob_parts", metadata,
    sa.Column("sha256", sa.String(64), sa.ForeignKey("blobs.sha256", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

documents = sa.Table(
    "documents", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("doc_id", ID, primary_key=True),
    sa.Column("entity_id", sa.String(200), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # No cascade: deleting an entity must release blob references, which the
    # files store does explicitly before the entity row goes.
    sa.ForeignKeyConstraint(["owner_id", "entity_id"],
                            ["entities.owner_id", "entities.entity_id"],
                            name="fk_documents_entity"),
    sa.Index("ix_documents_owner_entity", "owner_id", "entity_id", "doc_id"),
)

conversations = sa.Table(
    "conversations", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("id", ID, primary_key=True),
    sa.Column("entity_id", sa.String(200)),
    sa.Column("title", sa.String(500)),
    sa.Column("participants", JSONType, nullable=False),
    sa.Column("metadata", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_message_at", UTCDateTime),
    sa.ForeignKeyConstraint(["owner_id", "entity_id"],
                            ["entities.owner_id", "entities.entity_id"],
                            ondelete="CASCADE", name="fk_conversations_entity"),
    sa.Index("ix_conversations_owner_entity", "owner_id", "entity_id", "id"),
)

messages = sa.Table(
    "messages", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("id", ID, primary_key=True),
    sa.Column("conversation_id", ID, nullable=False),
    # Position in the conversation, assigned in the inserting transaction: the
    # order clients see, whatever the clocks of several writers say.
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("author", sa.String(200)),
    sa.Column("content", sa.Text, nullable=False, server_default=""),
    sa.Column("metadata", JSONType, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("last_chunk_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("writer", sa.String(200)),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("completed_at", UTCDateTime),
    sa.ForeignKeyConstraint(["owner_id", "conversation_id"],
                            ["conversations.owner_id", "conversations.id"],
                            ondelete="CASCADE", name="fk_messages_conversation"),
    sa.UniqueConstraint("owner_id", "conversation_id", "seq", name="uq_messages_conv_seq"),
    sa.Index("ix_messages_status_lease", "status", "lease_expires_at"),
)

message_chunks = sa.Table(
    "message_chunks", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("message_id", ID, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["owner_id", "message_id"], ["messages.owner_id", "messages.id"],
                            ondelete="CASCADE", name="fk_chunks_message"),
)

# Vectors of texts already embedded, keyed by the model and the text's sha256:
# shared by every user and entity (it holds vectors, never who asked), bounded
# in size by evicting the least recently used rows (MEMVAULT_EMBED_CACHE_MB).
embedding_cache = sa.Table(
    "embedding_cache", metadata,
    sa.Column("model_id", sa.String(200), primary_key=True),
    sa.Column("text_sha256", sa.String(64), primary_key=True),
    sa.Column("dimensions", sa.Integer, nullable=False),
    # float32, little-endian, ``dimensions`` values.
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("last_used_at", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Eviction takes the least recently used rows first: an index range scan.
    sa.Index("ix_embedding_cache_last_used", "last_used_at"),
)

# The durable job queue (``memvault/jobs.py``): background work such as indexing
# an upload, enqueued in the transaction that makes it necessary and claimed by
# any process of the vault under a lease (a crashed worker's job is taken again
# once its lease expires). ``owner_id`` is null for vault-wide jobs.
jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("owner_id", ID),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("payload", JSONType, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("run_after", UTCDateTime, nullable=False),
    sa.Column("locked_by", sa.String(200)),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # Claiming looks for queued jobs due now (and the few running ones whose
    # lease may have expired): a range scan of this index, never of the history.
    sa.Index("ix_jobs_claim", "status", "run_after"),
    sa.Index("ix_jobs_owner_kind", "owner_id", "kind"),
)
