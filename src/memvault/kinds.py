"""The registry of record kinds: every table the vault keeps, declared once.

A ``Kind`` says which table holds the records, which columns are its key, which
column names the owning user, how a row becomes JSON and back, and which blobs
or derived indexes hang off it. Counts and ``memvault stats`` are driven by this
list, and so are backup, export/import, verify and forget-user: a kind a later
feature adds is covered by all of them by being registered here once (a test
checks that every table of ``backends/schema.py`` is).

Kinds are listed parents first, so importing in this order never breaks a
foreign key, and deleting in reverse order never needs a cascade.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from .backends import schema
from .backends.schema import UTCDateTime, VectorType, vector_bytes

__all__ = ["Kind", "KINDS", "kind", "kinds", "UNREGISTERED_TABLES", "DERIVED_TABLES"]

#: Backend-specific tables derived from registered ones (SQLite's FTS5 index of
#: ``chunks`` and its shadow tables): rebuilt from the records, never exported.
DERIVED_TABLES = frozenset({"chunks_fts", "chunks_fts_config", "chunks_fts_data",
                            "chunks_fts_docsize", "chunks_fts_idx"})
#: Tables that hold no records of their own (the migration bookkeeping and the
#: derived tables above).
UNREGISTERED_TABLES = frozenset({"alembic_version"}) | DERIVED_TABLES


def _encoder(column: sa.Column[Any]) -> Any:
    if isinstance(column.type, VectorType):  # float32 little-endian, base64
        return lambda v: None if v is None else base64.b64encode(vector_bytes(v)).decode()
    if isinstance(column.type, UTCDateTime):
        return lambda v: None if v is None else v.isoformat()
    if isinstance(column.type, sa.LargeBinary):
        return lambda v: None if v is None else base64.b64encode(bytes(v)).decode()
    return None


def _decoder(column: sa.Column[Any]) -> Any:
    if isinstance(column.type, VectorType):
        return lambda v: None if v is None else np.frombuffer(base64.b64decode(v), dtype="<f4")
    if isinstance(column.type, UTCDateTime):
        return lambda v: None if v is None else datetime.fromisoformat(v)
    if isinstance(column.type, sa.LargeBinary):
        return lambda v: None if v is None else base64.b64decode(v)
    return None


@dataclass(frozen=True)
class Kind:
    """One kind of record.

    Attributes:
        name: the stable name used in counts, manifests and export files.
        table: where the records live.
        key: the columns that identify one record.
        owner: the column holding the owning user's id (``users`` own
            themselves through ``id``); ``None`` for records no single user owns
            (content-addressed blobs, shared by reference).
        blob: the column holding the sha256 of a blob each record references.
        derived: names of indexes derived from these records (rebuilt, never
            exported): e.g. an ANN index file or a full-text index.
        portable: part of an export (and so of a move between backends);
            ``False`` for operational state such as login failure counters.
        description: one line for ``stats`` and manifests.
    """

    name: str
    table: sa.Table
    key: tuple[str, ...]
    owner: str | None
    blob: str | None = None
    derived: tuple[str, ...] = ()
    portable: bool = True
    description: str = ""
    _encode: dict[str, Any] = field(init=False, repr=False, compare=False)
    _decode: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in (*self.key, *(c for c in (self.owner, self.blob) if c)):
            if name not in self.table.c:
                raise ValueError(f"kind {self.name}: {self.table.name} has no column {name!r}")
        enc = {c.name: f for c in self.table.c if (f := _encoder(c))}
        dec = {c.name: f for c in self.table.c if (f := _decoder(c))}
        object.__setattr__(self, "_encode", enc)
        object.__setattr__(self, "_decode", dec)

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.table.c]

    def encode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A row (mapping of column → value) as a JSON-ready dict."""
        enc = self._encode
        return {name: (enc[name](row[name]) if name in enc else row[name])
                for name in self.columns}

    def decode(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The inverse of ``encode``: column → value, ready to insert.

        Raises:
            KeyError: a column is missing from ``record``.
        """
        dec = self._decode
        return {name: (dec[name](record[name]) if name in dec else record[name])
                for name in self.columns}

    def owned_by(self, user_id: str) -> sa.ColumnElement[bool]:
        """The condition selecting ``user_id``'s records of this kind."""
        if self.owner is None:
            raise ValueError(f"{self.name} records have no owner")
        return self.table.c[self.owner] == user_id


KINDS: tuple[Kind, ...] = (
    Kind("users", schema.users, ("id",), owner="id",
         description="accounts: email, argon2 password hash"),
    Kind("auth_tokens", schema.auth_tokens, ("token_hash",), owner="user_id",
         description="bearer tokens, stored as their sha256"),
    Kind("auth_failures", schema.auth_failures, ("key_hash",), owner=None, portable=False,
         description="failed-login counters (rate limits)"),
    Kind("entities", schema.entities, ("owner_id", "entity_id"), owner="owner_id",
         description="workspaces"),
    Kind("blobs", schema.blobs, ("sha256",), owner=None,
         description="content-addressed file contents, reference-counted"),
    Kind("blob_parts", schema.blob_parts, ("sha256", "part"), owner=None,
         description="bytes of blobs kept in the database (MEMVAULT_BLOB_STORE=database)"),
    Kind("documents", schema.documents, ("owner_id", "doc_id"), owner="owner_id",
         blob="sha256", description="uploaded files of an entity"),
    Kind("extractions", schema.extractions, ("owner_id", "id"), owner="owner_id",
         description="structured results extracted from a document"),
    Kind("annotations", schema.document_annotations, ("owner_id", "id"), owner="owner_id",
         description="users' notes on a document, optionally on a span of its text"),
    Kind("graphs", schema.graphs, ("owner_id", "name"), owner="owner_id",
         description="knowledge graphs, with their node, edge and pattern counts"),
    Kind("graph_nodes", schema.graph_nodes, ("owner_id", "graph", "id"), owner="owner_id",
         description="nodes of knowledge graphs"),
    Kind("graph_edges", schema.graph_edges, ("owner_id", "graph", "src", "dst", "type"),
         owner="owner_id", description="weighted, typed edges of knowledge graphs"),
    Kind("graph_patterns", schema.graph_patterns, ("owner_id", "graph", "id"),
         owner="owner_id", description="patterns of knowledge graphs"),
    Kind("graph_snapshots", schema.graph_snapshots, ("owner_id", "graph", "id"),
         owner="owner_id", blob="sha256",
         description="saved versions of knowledge graphs (the graph in a blob)"),
    Kind("collections", schema.collections, ("owner_id", "entity_id"), owner="owner_id",
         description="an entity's searchable collection: the embedding model it was built with"),
    # ``id`` labels the row in the derived indexes; an import keeps it.
    Kind("chunks", schema.chunks, ("id",), owner="owner_id",
         derived=("chunks_fts (SQLite FTS5) / GIN tsvector (PostgreSQL)",
                  "ANN index files under indexes/ (SQLite) / pgvector HNSW (PostgreSQL)"),
         description="searchable passages: document chunks and vector records, with vectors"),
    # What the ANN index files catch up on; derived from deletions, not exported.
    Kind("chunk_tombstones", schema.chunk_tombstones, ("seq",), owner="owner_id",
         portable=False, description="deleted chunks, for derived indexes to catch up on"),
    Kind("conversations", schema.conversations, ("owner_id", "id"), owner="owner_id",
         description="chat sessions"),
    Kind("messages", schema.messages, ("owner_id", "id"), owner="owner_id",
         description="messages of conversations"),
    Kind("message_chunks", schema.message_chunks, ("owner_id", "message_id", "seq"),
         owner="owner_id", description="chunks of messages saved while they streamed"),
    Kind("agents", schema.agents, ("owner_id", "id"), owner="owner_id",
         description="agents: name, kind, instructions, model, tools, config"),
    Kind("runs", schema.runs, ("owner_id", "id"), owner="owner_id",
         description="agent and workflow runs, newest kept per workflow"),
    Kind("run_steps", schema.run_steps, ("owner_id", "run_id", "step"), owner="owner_id",
         description="steps of runs, numbered 1, 2, … in order"),
    # Derived data (re-created by embedding the texts again): not exported, and
    # owned by no one, since it holds vectors and never who asked for them.
    Kind("embedding_cache", schema.embedding_cache, ("model_id", "text_sha256"), owner=None,
         portable=False, description="cached embedding vectors, keyed by model and text sha256"),
    # Operational state, like auth_failures: a job names the process holding its
    # lease, and what it would do is derivable from the records it serves (a
    # document still ``pending`` after an import is enqueued again), so jobs are
    # not exported; forget-user still removes a user's jobs through owner_id.
    Kind("jobs", schema.jobs, ("id",), owner="owner_id", portable=False,
         description="background jobs (durable queue, with a bounded history)"),
    # The cache's database tier: re-fetchable by definition, so not exported;
    # ``owner_id`` "" holds the application-wide caches (no user owns them).
    Kind("cache_entries", schema.cache_entries, ("owner_id", "namespace", "key"),
         owner="owner_id", portable=False,
         description="cache entries (database tier), with their expiry"),
    Kind("cache_locks", schema.cache_locks, ("owner_id", "namespace", "key"),
         owner="owner_id", portable=False,
         description="single-flight claims of the cache's database tier"),
)

_BY_NAME = {k.name: k for k in KINDS}
if len(_BY_NAME) != len(KINDS):  # pragma: no cover - a programming error
    raise RuntimeError("two kinds share a name")


def kind(name: str) -> Kind:
    """The kind called ``name``.

    Raises:
        KeyError: no such kind.
    """
    return _BY_NAME[name]


def kinds(*, portable: bool | None = None) -> Iterator[Kind]:
    """Every kind, parents first (optionally only the portable ones, or the others)."""
    return (k for k in KINDS if portable is None or k.portable is portable)
