"""The one schema both databases share (SQLAlchemy Core).

Every table carries ``owner_id`` and leads its keys with it, so owner-scoped
lookups are index lookups and the layout can be distributed by owner (Citus).
Migrations in ``migrations/versions`` must be kept in step with this file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.sqlite import DATETIME as SQLITE_DATETIME

__all__ = ["metadata", "users", "auth_tokens", "auth_failures", "entities", "blobs",
           "blob_parts", "documents", "conversations", "messages", "message_chunks",
           "embedding_cache", "jobs", "collections", "chunks", "chunk_tombstones",
           "graphs", "graph_nodes", "graph_edges", "graph_patterns", "graph_snapshots",
           "extractions", "document_annotations", "cache_entries", "cache_locks",
           "agents", "runs", "run_steps",
           "UTCDateTime", "JSONType", "VectorType", "vector_bytes"]


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


def vector_bytes(vector: Any) -> bytes:
    """A vector as little-endian float32 bytes (the layout SQLite keeps)."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


class VectorType(sa.TypeDecorator[Any]):
    """A float32 vector of any length: pgvector's ``vector`` on PostgreSQL (when
    the server offers pgvector; ``bytea`` otherwise, and the vault refuses vector
    work there), little-endian float32 bytes on SQLite. Python side: a numpy
    float32 array, in and out, on every backend."""

    impl = sa.LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            from pgvector.sqlalchemy import VECTOR
            return dialect.type_descriptor(VECTOR())
        return dialect.type_descriptor(sa.LargeBinary())

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "postgresql":
            return np.asarray(value, dtype=np.float32)
        return vector_bytes(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bytes | memoryview | bytearray):
            return np.frombuffer(bytes(value), dtype="<f4").astype(np.float32)
        return np.asarray(value, dtype=np.float32)

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
    # Indexing (issue 6): pending → indexing → indexed | failed, with why.
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("chunk_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    # No cascade: deleting an entity must release blob references, which the
    # files store does explicitly before the entity row goes.
    sa.ForeignKeyConstraint(["owner_id", "entity_id"],
                            ["entities.owner_id", "entities.entity_id"],
                            name="fk_documents_entity"),
    sa.Index("ix_documents_owner_entity", "owner_id", "entity_id", "doc_id"),
    # The few documents not yet indexed, for the reconciler: a short range scan.
    sa.Index("ix_documents_status", "status"),
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

# Retrieval (issue 6). Each entity has one collection: its document chunks and
# the client's own vector records. ``collections`` records the embedding model
# its vault-embedded records were built with (so a change of embedder is
# noticed) and their dimensions.
collections = sa.Table(
    "collections", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("entity_id", sa.String(200), primary_key=True),
    sa.Column("model_id", sa.String(200)),
    sa.Column("dimensions", sa.Integer),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["owner_id", "entity_id"],
                            ["entities.owner_id", "entities.entity_id"],
                            ondelete="CASCADE", name="fk_collections_entity"),
)

# One searchable passage: a chunk of a document (``doc_id`` set) or a client's
# own record (``doc_id`` null). ``chunk_id`` is the public id, unique within the
# entity; ``id`` is an integer that is never reused (AUTOINCREMENT on SQLite, an
# identity on PostgreSQL) and labels the row in the derived indexes: SQLite's
# FTS5 table ``chunks_fts`` (rowid) and the ANN index files, which catch up from
# the rows by it. A chunk is never updated in place: replacing one deletes the
# row and inserts a new one, so "rows with id > high-water mark, plus
# tombstones" is everything an index has to catch up on.
chunks = sa.Table(
    "chunks", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("owner_id", ID, nullable=False),
    sa.Column("entity_id", sa.String(200), nullable=False),
    sa.Column("chunk_id", sa.String(200), nullable=False),
    sa.Column("doc_id", ID),
    sa.Column("position", sa.Integer),
    sa.Column("char_start", sa.Integer),
    sa.Column("char_end", sa.Integer),
    sa.Column("page", sa.Integer),
    sa.Column("text", sa.Text, nullable=False),
    # The text as the full-text index sees it: prefixed with the collection's
    # token (so a query intersects one collection's postings, not everyone's)
    # and with CJK characters spaced apart (no tokenizer here segments them).
    sa.Column("search_text", sa.Text, nullable=False),
    sa.Column("metadata", JSONType, nullable=False),
    # The model that embedded ``text``; null when the client gave the vector.
    sa.Column("model_id", sa.String(200)),
    sa.Column("dimensions", sa.Integer, nullable=False),
    sa.Column("embedding", VectorType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["owner_id", "entity_id"],
                            ["entities.owner_id", "entities.entity_id"],
                            ondelete="CASCADE", name="fk_chunks_entity"),
    sa.ForeignKeyConstraint(["owner_id", "doc_id"], ["documents.owner_id", "documents.doc_id"],
                            ondelete="CASCADE", name="fk_chunks_document"),
    sa.UniqueConstraint("owner_id", "entity_id", "chunk_id", name="uq_chunks_entity_chunk"),
    sa.Index("ix_chunks_entity_id", "owner_id", "entity_id", "id"),
    sa.Index("ix_chunks_doc", "owner_id", "doc_id", "position"),
    sa.Index("ix_chunks_entity_model", "owner_id", "entity_id", "model_id"),
    sa.Index("ix_chunks_entity_dims", "owner_id", "entity_id", "dimensions"),
    sqlite_autoincrement=True,
)

# Chunks deleted, for the derived ANN index files to catch up on (SQLite: a
# trigger on ``chunks`` writes them, cascades included). Pruned after a while:
# a search joins its candidates with ``chunks``, so a label an index kept past
# its tombstone is dropped at query time, never returned.
chunk_tombstones = sa.Table(
    "chunk_tombstones", metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("owner_id", ID, nullable=False),
    sa.Column("entity_id", sa.String(200), nullable=False),
    sa.Column("chunk_pk", sa.BigInteger, nullable=False),
    sa.Column("deleted_at", UTCDateTime, nullable=False),
    sa.Index("ix_chunk_tombstones_entity", "owner_id", "entity_id", "seq"),
    sqlite_autoincrement=True,
)

# Extractions and annotations (issue 7, seed 001): structured results and user
# notes attached to a document, gone with it (ON DELETE CASCADE: deleting the
# document, or its entity, which deletes its documents).
extractions = sa.Table(
    "extractions", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("id", ID, primary_key=True),
    sa.Column("doc_id", ID, nullable=False),
    sa.Column("schema", sa.String(200), nullable=False),
    sa.Column("data", JSONType, nullable=False),
    sa.Column("model", sa.String(200)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["owner_id", "doc_id"], ["documents.owner_id", "documents.doc_id"],
                            ondelete="CASCADE", name="fk_extractions_document"),
    sa.Index("ix_extractions_doc", "owner_id", "doc_id", "id"),
    sa.Index("ix_extractions_doc_schema", "owner_id", "doc_id", "schema", "id"),
)

# ``document_annotations`` in Python: ``annotations`` is taken by the
# ``from __future__`` feature every module here imports.
document_annotations = sa.Table(
    "annotations", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("id", ID, primary_key=True),
    sa.Column("doc_id", ID, nullable=False),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("char_start", sa.Integer),
    sa.Column("char_end", sa.Integer),
    sa.Column("page", sa.Integer),
    sa.Column("chunk_id", sa.String(200)),
    sa.Column("data", JSONType, nullable=False),
    sa.Column("author", ID, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # Listing order as one sortable string, so a page is a keyset range of one
    # index: the zero-padded start (or "z" when there is none: last), then the
    # time-ordered id. Rewritten whenever ``char_start`` changes.
    sa.Column("sort_key", sa.String(64), nullable=False),
    sa.ForeignKeyConstraint(["owner_id", "doc_id"], ["documents.owner_id", "documents.doc_id"],
                            ondelete="CASCADE", name="fk_annotations_document"),
    sa.Index("ix_annotations_doc", "owner_id", "doc_id", "sort_key"),
    sa.Index("ix_annotations_doc_label", "owner_id", "doc_id", "label", "sort_key"),
)

# Knowledge graphs (issue 7, seed 002). A user has named graphs; the graph row
# keeps its counts (nodes, edges, patterns, and per type), updated in the same
# transaction as each write, so reading them never scans. Every write to a graph
# locks its row first: writes to one graph are serialised (which also keeps the
# counts exact on PostgreSQL), writes to different graphs are not.
graphs = sa.Table(
    "graphs", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("description", sa.Text),
    sa.Column("metadata", JSONType, nullable=False),
    sa.Column("node_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("edge_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("pattern_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("node_types", JSONType, nullable=False),
    sa.Column("edge_types", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("modified_at", UTCDateTime, nullable=False),
)

graph_nodes = sa.Table(
    "graph_nodes", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("graph", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(256), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("data", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("modified_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["owner_id", "graph"], ["graphs.owner_id", "graphs.name"],
                            ondelete="CASCADE", name="fk_graph_nodes_graph"),
    # Listing by type, in id order: an index range scan.
    sa.Index("ix_graph_nodes_type", "owner_id", "graph", "type", "id"),
)

# One row per (from, to, type). Neighbours and influences read one node's
# out- or in-edges strongest first: a range scan of one of the two indexes.
graph_edges = sa.Table(
    "graph_edges", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("graph", sa.String(64), primary_key=True),
    sa.Column("src", sa.String(256), primary_key=True),
    sa.Column("dst", sa.String(256), primary_key=True),
    sa.Column("type", sa.String(64), primary_key=True),
    sa.Column("strength", sa.Float, nullable=False),
    sa.Column("data", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("modified_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["owner_id", "graph"], ["graphs.owner_id", "graphs.name"],
                            ondelete="CASCADE", name="fk_graph_edges_graph"),
    sa.ForeignKeyConstraint(["owner_id", "graph", "src"],
                            ["graph_nodes.owner_id", "graph_nodes.graph", "graph_nodes.id"],
                            ondelete="CASCADE", name="fk_graph_edges_src"),
    sa.ForeignKeyConstraint(["owner_id", "graph", "dst"],
                            ["graph_nodes.owner_id", "graph_nodes.graph", "graph_nodes.id"],
                            ondelete="CASCADE", name="fk_graph_edges_dst"),
    # Each index holds the whole (near, strength, far, type) step, so a walk
    # (graph_walk.py) reads the index only, never the table.
    sa.Index("ix_graph_edges_out", "owner_id", "graph", "src", "strength", "dst", "type"),
    sa.Index("ix_graph_edges_in", "owner_id", "graph", "dst", "strength", "src", "type"),
)

graph_patterns = sa.Table(
    "graph_patterns", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("graph", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(256), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("trigger_conditions", JSONType, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    # ``{type?, data?}``: the nodes the pattern matches (node filter semantics).
    sa.Column("match", JSONType),
    sa.Column("data", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("modified_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["owner_id", "graph"], ["graphs.owner_id", "graphs.name"],
                            ondelete="CASCADE", name="fk_graph_patterns_graph"),
    sa.Index("ix_graph_patterns_type", "owner_id", "graph", "type", "id"),
)

# Versions of a graph (seed 002 copied graph.json before each save): the whole
# graph serialised to a content-addressed blob (``blobs.refcount`` counts these
# rows as it counts documents), newest kept per graph. Released by the graph
# store before the rows go (deleting a graph, pruning, deleting a snapshot).
graph_snapshots = sa.Table(
    "graph_snapshots", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("graph", sa.String(64), primary_key=True),
    sa.Column("id", ID, primary_key=True),
    sa.Column("label", sa.Text),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("node_count", sa.Integer, nullable=False),
    sa.Column("edge_count", sa.Integer, nullable=False),
    sa.Column("pattern_count", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["owner_id", "graph"], ["graphs.owner_id", "graphs.name"],
                            ondelete="CASCADE", name="fk_graph_snapshots_graph"),
)

# The cache's database tier (issue 8): one row per entry. ``owner_id`` is the
# user of a ``scope.cache`` and "" for the application-wide ``vault.cache``.
# ``value`` is the encoded entry (a one-byte tag, then JSON text or raw bytes);
# ``expires_at`` is seconds since the epoch (NULL: no expiry), swept by a
# background component through its index.
cache_entries = sa.Table(
    "cache_entries", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("namespace", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_cache_entries_expires", "expires_at"),
)

# Single-flight across processes on the database tier: the process that claims
# a missing key's row fetches; others wait for the entry (or for the claim to
# lapse at ``expires_at``, seconds since the epoch, when its holder died).
cache_locks = sa.Table(
    "cache_locks", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("namespace", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    # Set when the holder's fetch raised: waiters re-raise it instead of
    # fetching again.
    sa.Column("error", sa.Text),
)

# Agents and their runs (issue 8, seeds 002 and 003).
agents = sa.Table(
    "agents", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(64)),
    sa.Column("instructions", sa.Text),
    sa.Column("model", sa.String(200)),
    sa.Column("tools", JSONType, nullable=False),
    sa.Column("config", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# A run is ``running`` until completed (completed | failed | cancelled) or, when
# its writer dies or its lease lapses, ``interrupted`` — like a streaming
# message. ``writer`` names a library process holding it (NULL: HTTP-driven).
runs = sa.Table(
    "runs", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("id", ID, primary_key=True),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("agent_id", ID),
    sa.Column("conversation_id", ID),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("input", JSONType),
    sa.Column("output", JSONType),
    sa.Column("error", sa.Text),
    sa.Column("metadata", JSONType, nullable=False),
    sa.Column("step_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("writer", sa.String(200)),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    # Listing newest first (ids are time-ordered), filtered by one field.
    sa.Index("ix_runs_owner_workflow", "owner_id", "workflow", "id"),
    sa.Index("ix_runs_owner_status", "owner_id", "status", "id"),
    sa.Index("ix_runs_owner_agent", "owner_id", "agent_id", "id"),
    # Retention: the newest finished runs of one (owner, workflow) by start.
    sa.Index("ix_runs_retention", "owner_id", "workflow", "started_at", "id"),
    # The sweeper finds lapsed leases through this.
    sa.Index("ix_runs_status_lease", "status", "lease_expires_at"),
)

run_steps = sa.Table(
    "run_steps", metadata,
    sa.Column("owner_id", ID, primary_key=True),
    sa.Column("run_id", ID, primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("agent", sa.String(200)),
    sa.Column("action", sa.String(200), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("result", JSONType),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.ForeignKeyConstraint(["owner_id", "run_id"], ["runs.owner_id", "runs.id"],
                            ondelete="CASCADE", name="fk_run_steps_run"),
)
