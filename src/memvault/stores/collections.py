"""Collections: each entity's searchable passages — its documents' chunks and
the client's own vector records — with vector, full-text and hybrid search.

The database holds the truth: a ``chunks`` row carries the text, what the
full-text index sees (``search_text``) and the vector. What is derived from it
is kept in step by the database itself or caught up from it:

- full text: SQLite's FTS5 table follows ``chunks`` through triggers;
  PostgreSQL indexes a stored ``tsvector`` of it with GIN;
- vectors: PostgreSQL answers from pgvector HNSW indexes (partial, one per
  dimension); SQLite from ``retrieval/ann.py``, which catches each collection's
  index up from the rows (by id high-water mark and tombstones) before every
  search, so a search served by any process sees every committed chunk.

A chunk is never updated in place: replacing one deletes its row and inserts a
new one, so the catch-up never misses a change. Chunks become visible all at
once: a document's chunks are inserted in the transaction that marks it
``indexed`` (``retrieval/ingest.py``), a client's records in one transaction
per call.

Search ranks by cosine similarity (``vector``), bm25 / ``ts_rank`` (``text``),
or reciprocal rank fusion of both (``hybrid``, the default): each mode
contributes ``weight / (rrf_k + rank)`` for every candidate it ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlalchemy.engine import Connection

from ..backends.schema import chunks, collections, documents, entities
from ..errors import Conflict, Invalid, NotFound
from ..ids import new_id
from ..models import ChunkRecord, Page, SearchHit, SearchMode, SearchResults
from ..retrieval.fulltext import collection_token, query_terms, search_text
from ._context import StoreContext
from ._paging import DEFAULT_LIMIT, keyset_page
from ._text import check_json, check_text

if TYPE_CHECKING:
    from ..retrieval.embedders import Embedder

_List = list  # ``list`` is also a method of the store

__all__ = ["CollectionStore", "ChunkRow", "insert_chunks", "DEFAULT_RRF_K", "DEFAULT_WEIGHTS",
           "MAX_ITEMS", "MAX_K", "normalise"]

#: Records per ``add`` call (the HTTP route's body limit is sized for it).
MAX_ITEMS = 1000
MAX_K = 100
MAX_CHUNK_ID = 200
#: Longest text of one record, in characters.
MAX_TEXT_CHARS = 100_000
#: Reciprocal rank fusion: each mode adds ``weight / (rrf_k + rank)``. Tuned on
#: the labelled set of tests/retrieval/quality (see README, "Search quality").
#: With the local embedder, vector search is the stronger mode on paraphrases
#: and about as strong on keywords; rrf_k=60 (the usual choice) let text-only
#: hits push the right passage out of the top 10 on paraphrased questions,
#: while rrf_k 5-20 and vector:text 1:1-2:1 all score within noise of each other.
DEFAULT_RRF_K = 10
DEFAULT_WEIGHTS: Mapping[str, float] = {"vector": 1.5, "text": 1.0}
#: Candidates each mode contributes to a fusion, at least.
FUSION_CANDIDATES = 50
#: A filtered vector search on SQLite ranks the filtered rows exactly when at
#: most this many pass the filter; beyond, it over-fetches from the index.
EXACT_FILTER_LIMIT = 50_000
MODES: tuple[SearchMode, ...] = ("hybrid", "vector", "text")


def normalise(vector: Any, dims: int | None, field: str = "embedding") -> NDArray[np.float32]:
    """A client's vector checked (length, finite, not zero) and scaled to unit
    length, so cosine similarity is a dot product on every backend."""
    if isinstance(vector, str | bytes) or not isinstance(vector, Sequence | np.ndarray):
        raise Invalid(f"{field} must be a list of numbers", field=field)
    try:
        array = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        raise Invalid(f"{field} must be a list of numbers", field=field) from None
    if array.ndim != 1 or array.size == 0:
        raise Invalid(f"{field} must be a list of numbers", field=field)
    if dims is not None and array.size != dims:
        raise Invalid(f"{field} has {array.size} dimensions; this vault's embeddings have "
                      f"{dims}", field=field)
    if not np.all(np.isfinite(array)):
        raise Invalid(f"{field} must hold finite numbers", field=field)
    norm = float(np.linalg.norm(array))
    if norm == 0.0 or not math.isfinite(norm):
        raise Invalid(f"{field} must not be all zeros", field=field)
    return (array / norm).astype(np.float32)


class ChunkRow:
    """A chunk ready to insert (text, place, vector)."""

    __slots__ = ("chunk_id", "doc_id", "position", "start", "end", "page", "text", "metadata",
                 "model_id", "embedding")

    def __init__(self, chunk_id: str, text: str, embedding: NDArray[np.float32], *,
                 model_id: str | None, doc_id: str | None = None, position: int | None = None,
                 start: int | None = None, end: int | None = None, page: int | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.chunk_id, self.text, self.embedding = chunk_id, text, embedding
        self.model_id, self.doc_id, self.position = model_id, doc_id, position
        self.start, self.end, self.page = start, end, page
        self.metadata = metadata if metadata is not None else {}


def insert_chunks(ctx: StoreContext, conn: Connection, owner_id: str, entity_id: str,
                  rows: Sequence[ChunkRow]) -> list[ChunkRecord]:
    """Insert ``rows`` into the entity's collection inside the caller's write
    transaction, recording the collection's model and dimensions."""
    if not rows:
        return []
    now = ctx.clock()
    token = collection_token(owner_id, entity_id)
    values = [{
        "owner_id": owner_id, "entity_id": entity_id, "chunk_id": r.chunk_id,
        "doc_id": r.doc_id, "position": r.position, "char_start": r.start, "char_end": r.end,
        "page": r.page, "text": r.text, "search_text": search_text(r.text, token),
        "metadata": r.metadata, "model_id": r.model_id, "dimensions": int(r.embedding.size),
        "embedding": r.embedding, "created_at": now,
    } for r in rows]
    conn.execute(chunks.insert(), values)
    models = {r.model_id for r in rows if r.model_id is not None}
    dims = int(rows[-1].embedding.size)
    _record_collection(ctx, conn, owner_id, entity_id, next(iter(models), None), dims, now)
    return [_record_from_values(v) for v in values]


def _record_collection(ctx: StoreContext, conn: Connection, owner_id: str, entity_id: str,
                       model_id: str | None, dims: int, now: Any) -> None:
    """Create the collection row, or note the model its records are built with."""
    backend = ctx.db.backend
    set_: dict[str, Any] = {"updated_at": now, "dimensions": dims}
    if model_id is not None:
        # The collection's model changes only when no record of another model
        # remains (after ``memvault reindex``, or a collection emptied of them).
        others = conn.execute(sa.select(chunks.c.id).where(
            chunks.c.owner_id == owner_id, chunks.c.entity_id == entity_id,
            chunks.c.model_id.is_not(None), chunks.c.model_id != model_id).limit(1)).first()
        if others is None:
            set_["model_id"] = model_id
    conn.execute(backend.upsert(
        collections, {"owner_id": owner_id, "entity_id": entity_id, "model_id": model_id,
                      "dimensions": dims, "created_at": now, "updated_at": now},
        keys=["owner_id", "entity_id"], set_=set_))


def _record_from_values(v: Mapping[str, Any]) -> ChunkRecord:
    return ChunkRecord(chunk_id=v["chunk_id"], entity_id=v["entity_id"], doc_id=v["doc_id"],
                       position=v["position"], start=v["char_start"], end=v["char_end"],
                       page=v["page"], text=v["text"], metadata=v["metadata"] or {},
                       model_id=v["model_id"], dimensions=v["dimensions"],
                       created_at=v["created_at"])


def _record(row: Any) -> ChunkRecord:
    return _record_from_values(row._mapping)


_RECORD_COLUMNS = (chunks.c.id, chunks.c.chunk_id, chunks.c.entity_id, chunks.c.doc_id,
                   chunks.c.position, chunks.c.char_start, chunks.c.char_end, chunks.c.page,
                   chunks.c.text, chunks.c.metadata, chunks.c.model_id, chunks.c.dimensions,
                   chunks.c.created_at)


# Statements of the search path, built once (constructing SQLAlchemy
# expressions cost more than running them on SQLite).
_OWNER: sa.BindParameter[str] = sa.bindparam("owner")
_ENTITY: sa.BindParameter[str] = sa.bindparam("entity")
_IN_COLLECTION = sa.and_(chunks.c.owner_id == _OWNER, chunks.c.entity_id == _ENTITY)
_ENTITY_EXISTS = sa.select(entities.c.row_id).where(entities.c.owner_id == _OWNER,
                                                    entities.c.entity_id == _ENTITY)
_ANY_CHUNK = sa.select(chunks.c.id).where(_IN_COLLECTION).limit(1)


def _other_than(column: sa.Column[Any], value: sa.BindParameter[Any]
                ) -> _List[sa.ScalarSelect[Any]]:
    """A value of ``column`` in the collection other than ``value``, if any:
    "!=" would scan the collection's index entries; "<" and ">" are two index
    range seeks that find nothing when all is well (and skip NULLs)."""
    return [sa.select(column).where(_IN_COLLECTION, differs).limit(1).scalar_subquery()
            for differs in (column < value, column > value)]


# What a search checks before searching, in one statement (one round trip to a
# database server instead of six): the entity exists, the collection holds a
# chunk and, for vector search, no vector of another model or dimensions.
_TEXT_CHECKS = sa.select(_ENTITY_EXISTS.scalar_subquery(), _ANY_CHUNK.scalar_subquery())
_VECTOR_CHECKS = sa.select(
    _ENTITY_EXISTS.scalar_subquery(), _ANY_CHUNK.scalar_subquery(),
    *_other_than(chunks.c.model_id, sa.bindparam("model")),
    *_other_than(chunks.c.dimensions, sa.bindparam("dims")))
_DOCUMENT_OF_CHUNK = sa.and_(documents.c.owner_id == chunks.c.owner_id,
                             documents.c.doc_id == chunks.c.doc_id)
_HITS = (sa.select(*_RECORD_COLUMNS, documents.c.filename)
         .select_from(chunks.outerjoin(documents, _DOCUMENT_OF_CHUNK))
         .where(_IN_COLLECTION, chunks.c.id.in_(sa.bindparam("pks", expanding=True))))
#: Vector search with its hits in one statement, per (backend, dimensions),
#: for backends with native vectors (``_native_vector_hits``).
_NATIVE_HITS: dict[tuple[str, int], sa.Executable] = {}


class CollectionStore:
    """One owner's collections. Obtain through ``vault.for_user(uid).collections``."""

    def __init__(self, ctx: StoreContext, owner_id: str) -> None:
        self._ctx = ctx
        self._db = ctx.db
        self._owner = owner_id

    # -- helpers ---------------------------------------------------------

    def _embedder(self) -> Embedder:
        if self._ctx.embedder is None:  # pragma: no cover - the vault always sets one
            raise Invalid("this vault has no embedder")
        return self._ctx.embedder()

    def _require_entity(self, conn: Connection, entity_id: str) -> None:
        if not isinstance(entity_id, str):
            raise Invalid("entity_id must be a string", field="entity_id")
        found = conn.execute(_ENTITY_EXISTS, self._key(entity_id)).first()
        if found is None:
            raise NotFound(f"entity {entity_id!r} not found")

    def _key(self, entity_id: str) -> dict[str, str]:
        return {"owner": self._owner, "entity": entity_id}

    def _in(self, entity_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(chunks.c.owner_id == self._owner, chunks.c.entity_id == entity_id)

    # -- records -----------------------------------------------------------

    def add(self, entity_id: str, items: Sequence[Mapping[str, Any]]) -> list[ChunkRecord]:
        """Store records ``{id?, text, metadata?, embedding?}`` in the entity's
        collection, all or none. A record without ``embedding`` is embedded by
        the vault; one with it must match the vault's dimensions and is stored
        as given (normalised). An ``id`` already present is replaced.

        Raises:
            NotFound: no such entity. Invalid: a bad record, or more than
                ``MAX_ITEMS``. Conflict: an ``id`` names a document's chunk.
        """
        self._ctx.db.backend.require_vector("vector records")
        if isinstance(items, Mapping | str | bytes) or not isinstance(items, Sequence):
            raise Invalid("items must be a list of records", field="items")
        if len(items) > MAX_ITEMS:
            raise Invalid(f"at most {MAX_ITEMS} records per call", field="items")
        with self._db.read() as conn:
            self._require_entity(conn, entity_id)
        checked = [self._check_item(i, item) for i, item in enumerate(items)]
        by_id: dict[str, int] = {}
        for i, item in enumerate(checked):  # the same id twice: the last one stands
            by_id[item["id"]] = i
        checked = [checked[i] for i in sorted(by_id.values())]
        embedder = self._embedder()
        missing = [i for i, item in enumerate(checked) if item["embedding"] is None]
        dims: int | None = None
        if any(item["embedding"] is not None for item in checked):
            dims = embedder.dimensions
        vectors: dict[int, NDArray[np.float32]] = {}
        for i, item in enumerate(checked):
            if item["embedding"] is not None:
                vectors[i] = normalise(item["embedding"], dims, f"items[{i}].embedding")
        if missing:
            embedded = embedder.embed([checked[i]["text"] for i in missing])
            for i, vector in zip(missing, embedded, strict=True):
                vectors[i] = np.asarray(vector, dtype=np.float32)
        rows = [ChunkRow(item["id"], item["text"], vectors[i],
                         model_id=None if item["embedding"] is not None else embedder.model_id,
                         metadata=item["metadata"])
                for i, item in enumerate(checked)]
        self._ensure_vector_index(rows)
        with self._db.write() as conn:
            self._require_entity(conn, entity_id)
            ids = [r.chunk_id for r in rows]
            taken = conn.execute(sa.select(chunks.c.chunk_id).where(
                self._in(entity_id), chunks.c.chunk_id.in_(ids),
                chunks.c.doc_id.is_not(None))).scalars().first()
            if taken is not None:
                raise Conflict(f"chunk {taken!r} belongs to a document; delete the document "
                               "or choose another id")
            conn.execute(chunks.delete().where(self._in(entity_id), chunks.c.chunk_id.in_(ids)))
            return insert_chunks(self._ctx, conn, self._owner, entity_id, rows)

    def _check_item(self, index: int, item: Any) -> dict[str, Any]:
        where = f"items[{index}]"
        if not isinstance(item, Mapping):
            raise Invalid(f"{where} must be an object", field=where)
        unknown = set(item) - {"id", "text", "metadata", "embedding"}
        if unknown:
            raise Invalid(f"{where} has unknown fields: {', '.join(sorted(unknown))}",
                          field=where)
        chunk_id = item.get("id")
        if chunk_id is None:
            chunk_id = new_id()
        elif (not isinstance(chunk_id, str) or not chunk_id.strip()
              or len(chunk_id) > MAX_CHUNK_ID):
            raise Invalid(f"{where}.id must be a non-empty string of at most {MAX_CHUNK_ID} "
                          "characters", field=f"{where}.id")
        check_text(chunk_id, f"{where}.id")
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise Invalid(f"{where}.text must be a non-empty string", field=f"{where}.text")
        if len(text) > MAX_TEXT_CHARS:
            raise Invalid(f"{where}.text is longer than {MAX_TEXT_CHARS} characters",
                          field=f"{where}.text")
        check_text(text, f"{where}.text")
        metadata = item.get("metadata")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise Invalid(f"{where}.metadata must be an object", field=f"{where}.metadata")
        check_json(metadata, f"{where}.metadata")
        return {"id": chunk_id, "text": text, "metadata": metadata,
                "embedding": item.get("embedding")}

    def _ensure_vector_index(self, rows: Iterable[ChunkRow]) -> None:
        ensure = getattr(self._db.backend, "ensure_vector_index", None)
        if ensure is not None:
            for dims in {int(r.embedding.size) for r in rows}:
                ensure(self._db.engine, dims)

    def get(self, entity_id: str, chunk_id: str) -> ChunkRecord:
        with self._db.read() as conn:
            row = conn.execute(sa.select(*_RECORD_COLUMNS).where(
                self._in(entity_id), chunks.c.chunk_id == chunk_id)).first()
            if row is None:
                self._require_entity(conn, entity_id)
                raise NotFound(f"chunk {chunk_id!r} not found")
        return _record(row)

    def list(self, entity_id: str, doc_id: str | None = None, limit: int = DEFAULT_LIMIT,
             cursor: str | None = None) -> Page[ChunkRecord]:
        """In the order they were stored (a document's chunks by position)."""
        with self._db.read() as conn:
            self._require_entity(conn, entity_id)
            query = sa.select(*_RECORD_COLUMNS).where(self._in(entity_id))
            if doc_id is not None:
                query = query.where(chunks.c.doc_id == check_text(doc_id, "doc_id"))
            return keyset_page(conn, query, chunks.c.id, limit, cursor, _record,
                               newest_first=False)

    def delete(self, entity_id: str, chunk_ids: str | Sequence[str]) -> int:
        """Delete records (or single document chunks) by id; returns how many went.

        Raises:
            NotFound: no such entity.
        """
        ids = [chunk_ids] if isinstance(chunk_ids, str) else list(chunk_ids)
        for chunk_id in ids:
            check_text(chunk_id, "chunk_id")
        with self._db.write() as conn:
            self._require_entity(conn, entity_id)
            if not ids:
                return 0
            gone = conn.execute(chunks.delete().where(
                self._in(entity_id), chunks.c.chunk_id.in_(ids))).rowcount
        return int(gone)

    def collection(self, entity_id: str) -> dict[str, Any]:
        """The collection's model, dimensions and record count."""
        with self._db.read() as conn:
            self._require_entity(conn, entity_id)
            row = conn.execute(sa.select(collections.c.model_id, collections.c.dimensions).where(
                collections.c.owner_id == self._owner,
                collections.c.entity_id == entity_id)).first()
            count = conn.execute(sa.select(sa.func.count()).select_from(chunks)
                                 .where(self._in(entity_id))).scalar_one()
        return {"entity_id": entity_id, "model_id": row.model_id if row else None,
                "dimensions": row.dimensions if row else None, "count": int(count)}

    # -- search ------------------------------------------------------------

    def search(self, entity_id: str, query: str | None = None, embedding: Any = None,
               k: int = 10, mode: SearchMode = "hybrid",
               filter: Mapping[str, Any] | None = None,  # noqa: A002 - the API's name
               rrf_k: float | None = None,
               weights: Mapping[str, float] | None = None) -> SearchResults:
        """The ``k`` passages of the entity's collection that best match.

        Raises:
            NotFound: no such entity. Invalid: bad arguments. Conflict: vector
                search of a collection built with another embedding model (or
                holding vectors of other dimensions) until ``memvault reindex``.
        """
        started = time.perf_counter()
        mode, k, rrf_k, weights = _check_search(query, embedding, k, mode, rrf_k, weights)
        conditions = self._filter(filter)
        embedder = self._embedder() if mode != "text" else None
        empty = self._check_searchable(entity_id, embedder)
        if empty:
            return SearchResults(results=[], mode=mode, took_ms=_ms(started))
        ranked: dict[str, list[tuple[int, float]]] = {}
        wanted = k if mode != "hybrid" else max(FUSION_CANDIDATES, 3 * k)
        if embedder is not None:
            vector = self._query_vector(embedder, query, embedding)
            if mode == "vector" and self._db.backend.has_vector:
                hits = self._native_vector_hits(entity_id, vector, k, conditions)
                return SearchResults(results=hits, mode=mode, took_ms=_ms(started))
            ranked["vector"] = self._vector_ranked(entity_id, vector, wanted, conditions)
        if mode in ("text", "hybrid"):
            assert query is not None
            ranked["text"] = self._text_ranked(entity_id, query, wanted, conditions)
        scored = _fuse(ranked, rrf_k, weights)[:k] if mode == "hybrid" else ranked[mode][:k]
        hits = self._hits(entity_id, scored)
        return SearchResults(results=hits, mode=mode, took_ms=_ms(started))

    def _filter(self, filter_: Mapping[str, Any] | None) -> _List[sa.ColumnElement[bool]]:
        if filter_ is None:
            return []
        if not isinstance(filter_, Mapping):
            raise Invalid("filter must be an object", field="filter")
        unknown = set(filter_) - {"doc_id", "metadata"}
        if unknown:
            raise Invalid(f"filter has unknown fields: {', '.join(sorted(unknown))}",
                          field="filter")
        conditions: list[sa.ColumnElement[bool]] = []
        doc_id = filter_.get("doc_id")
        if doc_id is not None:
            doc_ids = [doc_id] if isinstance(doc_id, str) else doc_id
            if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
                raise Invalid("filter.doc_id must be a string or a list of strings",
                              field="filter.doc_id")
            for d in doc_ids:
                check_text(d, "filter.doc_id")
            conditions.append(chunks.c.doc_id.in_(doc_ids))
        metadata = filter_.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise Invalid("filter.metadata must be an object", field="filter.metadata")
            check_json(dict(metadata), "filter.metadata")
            for key, value in metadata.items():
                if isinstance(value, dict | list):
                    raise Invalid("filter.metadata values must be strings, numbers, booleans "
                                  "or null", field="filter.metadata")
                conditions.append(self._db.backend.json_equals(chunks.c.metadata, key, value))
        return conditions

    def _query_vector(self, embedder: Embedder, query: str | None,
                      embedding: Any) -> NDArray[np.float32]:
        if embedding is not None:
            return normalise(embedding, embedder.dimensions)
        assert query is not None
        embed_query = getattr(embedder, "embed_query", None)
        if embed_query is not None:  # the vault's CachedEmbedder: no write per search
            return np.asarray(embed_query(query), dtype=np.float32)
        return np.asarray(embedder.embed([query])[0], dtype=np.float32)

    def _check_searchable(self, entity_id: str, embedder: Embedder | None) -> bool:
        """Whether the collection is empty, after checking that the entity
        exists and, for vector search (``embedder`` given), that every vector
        is comparable with the vault's embedder: vault-embedded ones by the
        same model, all of them of its dimensions.

        Raises:
            NotFound: no such entity. Conflict: a vector is not comparable.
        """
        if not isinstance(entity_id, str):
            raise Invalid("entity_id must be a string", field="entity_id")
        with self._db.read() as conn:
            if embedder is None:
                row: tuple[Any, ...] = tuple(conn.execute(_TEXT_CHECKS,
                                                          self._key(entity_id)).one())
            else:
                model, dims = embedder.model_id, embedder.dimensions
                row = tuple(conn.execute(_VECTOR_CHECKS, {**self._key(entity_id), "model": model,
                                                          "dims": dims}).one())
        if row[0] is None:
            raise NotFound(f"entity {entity_id!r} not found")
        if row[1] is None:
            return True
        if embedder is not None:
            stale = row[2] if row[2] is not None else row[3]
            if stale is not None:
                raise Conflict(f"this collection was embedded with {stale!r}, but the vault "
                               f"now embeds with {model!r}; run `memvault reindex --entity "
                               f"{entity_id}` to rebuild its vectors")
            other = row[4] if row[4] is not None else row[5]
            if other is not None:
                raise Conflict(f"this collection holds {other}-dimension vectors given by the "
                               f"client, but the vault's embeddings have {dims}; re-post or "
                               "delete those records")
        return False

    def _vector_ranked(self, entity_id: str, vector: NDArray[np.float32], wanted: int,
                       conditions: _List[sa.ColumnElement[bool]]) -> _List[tuple[int, float]]:
        backend = self._db.backend
        if backend.has_vector:
            with self._db.read() as conn:
                return backend.vector_search(conn, self._in(entity_id), conditions, vector,
                                             wanted)
        indexes = self._ctx.vectors
        if indexes is None:  # pragma: no cover - the vault always sets one
            raise Invalid("vector search is not available on this vault")
        candidates: list[int] | None = None
        if conditions:
            with self._db.read() as conn:
                candidates = list(conn.execute(
                    sa.select(chunks.c.id).where(self._in(entity_id), *conditions)
                    .limit(EXACT_FILTER_LIMIT + 1)).scalars())
            if not candidates:
                return []
            if len(candidates) > EXACT_FILTER_LIMIT:
                # Too many to rank exactly: over-fetch from the index, filter after.
                found = indexes.search(self._owner, entity_id, int(vector.size), vector,
                                       max(wanted * 20, 1000))
                allowed = self._existing([pk for pk, _ in found], entity_id, conditions)
                return [(pk, s) for pk, s in found if pk in allowed][:wanted]
        return indexes.search(self._owner, entity_id, int(vector.size), vector, wanted,
                              candidates=candidates)

    def _existing(self, pks: Sequence[int], entity_id: str,
                  conditions: _List[sa.ColumnElement[bool]]) -> set[int]:
        with self._db.read() as conn:
            return set(conn.execute(sa.select(chunks.c.id).where(
                self._in(entity_id), chunks.c.id.in_(pks), *conditions)).scalars())

    def _text_ranked(self, entity_id: str, query: str, wanted: int,
                     conditions: _List[sa.ColumnElement[bool]]) -> _List[tuple[int, float]]:
        terms = query_terms(query)
        if not terms:
            return []
        with self._db.read() as conn:
            return self._db.backend.text_search(
                conn, self._in(entity_id), conditions, terms,
                collection_token(self._owner, entity_id), wanted)

    def _native_vector_hits(self, entity_id: str, vector: NDArray[np.float32], k: int,
                            conditions: _List[sa.ColumnElement[bool]]) -> _List[SearchHit]:
        """Vector search by the database's own index, ranking and reading the
        hits in one statement: each round trip to a database server costs
        about as much as the index search itself on a busy host."""
        backend = self._db.backend
        key = (backend.name, int(vector.size))
        statement: sa.Executable | None = None if conditions else _NATIVE_HITS.get(key)
        if statement is None:  # building it costs more than a small search
            ranked = backend.vector_ranking(_IN_COLLECTION, conditions, int(vector.size))
            statement = (sa.select(*_RECORD_COLUMNS, documents.c.filename, ranked.c.distance)
                         .select_from(ranked.join(chunks, chunks.c.id == ranked.c.id)
                                      .outerjoin(documents, _DOCUMENT_OF_CHUNK))
                         .where(_IN_COLLECTION))
            if not conditions:
                _NATIVE_HITS[key] = statement
        with self._db.read() as conn:
            rows = conn.execute(statement, {**self._key(entity_id),
                                            **backend.vector_params(conn, vector, k)}).all()
        scored = sorted(((1.0 - float(row.distance), row) for row in rows),
                        key=lambda item: (-item[0], item[1].id))
        return [_hit(row, score) for score, row in scored]

    def _hits(self, entity_id: str, scored: Sequence[tuple[int, float]]) -> _List[SearchHit]:
        if not scored:
            return []
        pks = [pk for pk, _ in scored]
        with self._db.read() as conn:
            rows = conn.execute(_HITS, {**self._key(entity_id), "pks": pks}).all()
        by_pk = {row.id: row for row in rows}
        # a chunk deleted since it was ranked is dropped
        return [_hit(by_pk[pk], score) for pk, score in scored if pk in by_pk]


def _hit(row: Any, score: float) -> SearchHit:
    return SearchHit(chunk_id=row.chunk_id, doc_id=row.doc_id, filename=row.filename,
                     text=row.text, score=float(score), position=row.position,
                     start=row.char_start, end=row.char_end, page=row.page,
                     metadata=row.metadata or {})


def _check_search(query: str | None, embedding: Any, k: int, mode: SearchMode, rrf_k: float | None,
                  weights: Mapping[str, float] | None
                  ) -> tuple[SearchMode, int, float, dict[str, float]]:
    if mode not in MODES:
        raise Invalid("mode must be one of hybrid, vector, text", field="mode")
    if (query is None) == (embedding is None):
        raise Invalid("give exactly one of query and embedding", field="query")
    if embedding is not None and mode != "vector":
        raise Invalid("embedding can only be searched with mode 'vector'", field="embedding")
    if query is not None:
        if not isinstance(query, str) or not query.strip():
            raise Invalid("query must be a non-empty string", field="query")
        check_text(query, "query")
        if len(query) > MAX_TEXT_CHARS:
            raise Invalid(f"query is longer than {MAX_TEXT_CHARS} characters", field="query")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise Invalid(f"k must be between 1 and {MAX_K}", field="k")
    fusion_k = DEFAULT_RRF_K if rrf_k is None else rrf_k
    if (isinstance(fusion_k, bool) or not isinstance(fusion_k, int | float)
            or not math.isfinite(fusion_k) or not 0 <= fusion_k <= 10_000):
        raise Invalid("rrf_k must be a number between 0 and 10000", field="rrf_k")
    merged = dict(DEFAULT_WEIGHTS)
    if weights is not None:
        if not isinstance(weights, Mapping) or set(weights) - set(DEFAULT_WEIGHTS):
            raise Invalid("weights may hold only 'vector' and 'text'", field="weights")
        for name, value in weights.items():
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or not 0 <= value <= 1000):
                raise Invalid("weights must be numbers between 0 and 1000", field="weights")
            merged[name] = float(value)
    return mode, k, float(fusion_k), merged


def _fuse(ranked: Mapping[str, Sequence[tuple[int, float]]], rrf_k: float,
          weights: Mapping[str, float]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: ``sum(weight / (rrf_k + rank))``, ranks from 1."""
    scores: dict[int, float] = {}
    for name, hits in ranked.items():
        weight = weights[name]
        for rank, (pk, _score) in enumerate(hits, start=1):
            scores[pk] = scores.get(pk, 0.0) + weight / (rrf_k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)

