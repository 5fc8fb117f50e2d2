"""Export, import and snapshots of knowledge graphs (issue 7, seed 002).

Seed 002 kept its graph in one ``graph.json`` and versioned it by copying the
file. Here that format is a way in and out (``export_graph``/``import_graph``),
and versions are *snapshots*: the whole graph serialised to a content-addressed
blob, referenced by a ``graph_snapshots`` row and counted in ``blobs.refcount``
exactly as documents are (``stores/files.py``: publish inside the write
transaction right after the upsert that locks the ``blobs`` row; release with
``release_blobs``, whose after-commit collector removes unreferenced bytes).

Everything that reads the whole graph does so under the graph row's lock
(``GraphStore._open``), so a dump is one consistent version even on PostgreSQL,
whose reads see each statement's own commit. Rows are read in keyset pages and
written out as they come: memory does not grow with the graph. An export is
dumped to an unlinked temp file under the lock, then streamed from it, so a
slow client never holds the lock.

A friend of ``stores/graphs.py``: it uses the store's lock, count and upsert
helpers; ``GraphStore`` exposes the operations as methods.
"""

from __future__ import annotations

import json
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import Connection

from ..backends.schema import (
    blobs,
    graph_edges,
    graph_nodes,
    graph_patterns,
    graph_snapshots,
    graphs,
)
from ..blobs import PIECE
from ..errors import Invalid, NotFound
from ..ids import new_id, utcnow
from ..kinds import kind
from ..models import Page
from ._context import StoreContext
from ._paging import DEFAULT_LIMIT, keyset_page
from ._text import check_text
from .files import collect_quietly, release_blobs
from .graphs import _edge_item, _node_item, _Tally

if TYPE_CHECKING:
    from .graphs import GraphStore

__all__ = ["GraphSnapshot", "ImportResult", "export_graph", "import_graph", "create_snapshot",
           "list_snapshots", "restore_snapshot", "delete_snapshot", "release_snapshots"]

#: Rows read (or written) per statement while dumping or loading a graph.
PAGE = 1000
#: Snapshot blobs are not bounded by the upload limit: they are the graph itself.
_NO_LIMIT = 1 << 62
_SNAPSHOT_FORMAT = "memvault.graph-snapshot"
_NODE_KEYS = {"id", "type", "data", "created_at", "modified_at"}
_EDGE_KEYS = {"from", "to", "type", "strength", "data", "created_at", "modified_at"}
_PATTERN_KEYS = {"id", "type", "description", "trigger_conditions", "confidence", "match",
                 "data", "created_at", "modified_at"}


class GraphSnapshot(BaseModel):
    """A saved version of a graph."""

    model_config = ConfigDict(frozen=True)

    id: str
    label: str | None = None
    created_at: datetime
    node_count: int
    edge_count: int
    pattern_count: int


class ImportResult(BaseModel):
    """How many items of each kind an import wrote."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["merge", "replace"]
    nodes: int
    edges: int
    patterns: int


# -- reading a graph page by page -------------------------------------------------

def _pages(conn: Connection, table: sa.Table, condition: sa.ColumnElement[bool],
           key: Sequence[str]) -> Iterator[sa.Row[Any]]:
    """Every row of ``table`` under ``condition`` in ``key`` order, ``PAGE`` at a
    time (a keyset walk of the primary key: no offset, no whole-table fetch)."""
    columns = [table.c[k] for k in key]
    after: tuple[Any, ...] | None = None
    while True:
        query = sa.select(table).where(condition)
        if after is not None:
            query = query.where(sa.tuple_(*columns) > sa.tuple_(*(sa.literal(a) for a in after)))
        rows = conn.execute(query.order_by(*columns).limit(PAGE)).all()
        yield from rows
        if len(rows) < PAGE:
            return
        after = tuple(rows[-1]._mapping[k] for k in key)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode()


# -- export: seed 002's graph.json ------------------------------------------------

def _write_export(conn: Connection, store: GraphStore, out: IO[bytes]) -> None:
    info = conn.execute(sa.select(graphs.c.created_at, graphs.c.modified_at,
                                  graphs.c.node_count, graphs.c.edge_count)
                        .where(store._graph_key())).one()
    out.write(b'{"nodes": {')
    for n, row in enumerate(_pages(conn, graph_nodes, store._in_graph(graph_nodes), ["id"])):
        node = {"id": row.id, "type": row.type, "data": row.data or {},
                "created_at": _iso(row.created_at)}
        out.write((b", " if n else b"") + _dumps(row.id) + b": " + _dumps(node))
    out.write(b'}, "edges": [')
    for n, row in enumerate(_pages(conn, graph_edges, store._in_graph(graph_edges),
                                   ["src", "dst", "type"])):
        edge: dict[str, Any] = {"from": row.src, "to": row.dst, "type": row.type,
                                "strength": row.strength, "created_at": _iso(row.created_at)}
        if row.data:
            edge["data"] = row.data
        out.write((b", " if n else b"") + _dumps(edge))
    out.write(b'], "patterns": {')
    for n, row in enumerate(_pages(conn, graph_patterns, store._in_graph(graph_patterns),
                                   ["id"])):
        # Seed 002's patterns carry no id (it is the key) and no timestamps.
        pattern: dict[str, Any] = {"type": row.type, "description": row.description,
                                   "trigger_conditions": row.trigger_conditions or [],
                                   "confidence": row.confidence}
        if row.match is not None:
            pattern["match"] = row.match
        if row.data:
            pattern["data"] = row.data
        out.write((b", " if n else b"") + _dumps(row.id) + b": " + _dumps(pattern))
    metadata = {"created": _iso(info.created_at), "modified": _iso(info.modified_at),
                "stats": {"nodes": info.node_count, "edges": info.edge_count}}
    out.write(b'}, "metadata": ' + _dumps(metadata) + b"}")


def _read_pieces(file: IO[bytes]) -> Iterator[bytes]:
    try:
        while block := file.read(PIECE):
            yield block
    finally:
        file.close()


def export_graph(store: GraphStore) -> Iterator[bytes]:
    """The graph in seed 002's ``graph.json`` format, as bytes in pieces.

    Raises:
        NotFound: no such graph (before any byte is returned).
    """
    # Unlinked at once (0600, in the blob store's private temp dir): nothing to
    # clean up after a crash.
    file = tempfile.TemporaryFile(dir=store._ctx.blobs.tmp, prefix="export-")  # noqa: SIM115
    try:
        with store._db.write() as conn:
            store._open(conn, create=False)
            _write_export(conn, store, file)
        file.flush()
        file.seek(0)
    except BaseException:
        file.close()
        raise
    return _read_pieces(file)


# -- import -------------------------------------------------------------------------

def _time(value: Any, field: str) -> datetime | None:
    """An ISO 8601 timestamp (naive ones are UTC, as seed 002 wrote local
    ``isoformat()`` without a zone), or ``None`` when absent."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise Invalid(f"{field} must be an ISO 8601 timestamp", field=field)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _named(where: str, check: Any, item: Any) -> Any:
    """``check(item)``, with an ``Invalid`` renamed to ``where.field``."""
    try:
        if not isinstance(item, Mapping):
            raise Invalid("must be an object", field="")
        return check(item)
    except Invalid as exc:
        name = where + (f".{exc.field}" if exc.field else "")
        raise Invalid(f"{name}: {exc.detail}", field=name) from None


def _with_extras(item: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    """Unknown top-level keys (seed 002 allowed any) are kept in ``data``."""
    extras = {k: v for k, v in item.items() if k not in known}
    data = item.get("data")
    if extras and (data is None or isinstance(data, dict)):
        return {**item, "data": {**extras, **(data or {})}}
    return dict(item)


def _section(document: Mapping[str, Any], name: str, kind_: type) -> Any:
    value = document.get(name)
    if value is None:
        return kind_()
    if not isinstance(value, kind_):
        what = "an object" if kind_ is dict else "a list"
        raise Invalid(f"{name} must be {what}", field=name)
    return value


def _parse(source: BinaryIO | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    try:
        document = json.loads(source) if isinstance(source, bytes) else json.load(source)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the graph is not valid JSON", field="body") from None
    if not isinstance(document, dict):
        raise Invalid("the graph must be a JSON object", field="body")
    return document


def import_graph(store: GraphStore, source: BinaryIO | bytes | Mapping[str, Any],
                 mode: Literal["merge", "replace"] = "merge") -> ImportResult:
    """Load a graph in seed 002's ``graph.json`` format, in one transaction.

    ``merge`` upserts the file's nodes, edges and patterns into the graph;
    ``replace`` first removes every node, edge and pattern (not snapshots, nor
    the graph's description). Timestamps in the file are kept; an item without
    one is stamped now. A graph the import creates takes the file's
    ``metadata.created``.

    Raises:
        Invalid: malformed input, naming the item (``nodes.AAPL.type``,
            ``edges[3].to``); nothing is written.
    """
    if mode not in ("merge", "replace"):
        raise Invalid("mode must be merge or replace", field="mode")
    document = _parse(source)
    nodes, patterns = _section(document, "nodes", dict), _section(document, "patterns", dict)
    edges = _section(document, "edges", list)
    node_items, node_times = [], []
    for key, node in nodes.items():
        where = f"nodes.{key}"
        if isinstance(node, Mapping) and node.get("id", key) != key:
            raise Invalid(f"{where}.id: differs from its key", field=f"{where}.id")
        body = _with_extras({**node, "id": key} if isinstance(node, Mapping) else node,
                            _NODE_KEYS)
        node_items.append(_named(where, _node_item, body))
        node_times.append(_named(where, lambda n: _time(n.get("created_at"), "created_at"),
                                 body))
    edge_items, edge_times = [], []
    for index, edge in enumerate(edges):
        where = f"edges[{index}]"
        body = _with_extras(edge, _EDGE_KEYS) if isinstance(edge, Mapping) else edge
        edge_items.append(_named(where, _edge_item, body))
        edge_times.append(_named(where, lambda e: _time(e.get("created_at"), "created_at"),
                                 body))
    pattern_items, pattern_times = [], []
    for key, pattern in patterns.items():
        where = f"patterns.{key}"
        if isinstance(pattern, Mapping) and pattern.get("id", key) != key:
            raise Invalid(f"{where}.id: differs from its key", field=f"{where}.id")
        body = (_with_extras({**pattern, "id": key}, _PATTERN_KEYS)
                if isinstance(pattern, Mapping) else pattern)
        pattern_items.append(_named(where, store._pattern_item, body))
        pattern_times.append(_named(where, lambda p: _time(p.get("created_at"), "created_at"),
                                    body))
    meta = document.get("metadata")
    created = None
    if isinstance(meta, Mapping):
        created = _time(meta.get("created"), "metadata.created")
    now = utcnow()
    with store._db.write() as conn:
        current, _ = store._open(conn, now=created or now)
        if mode == "replace":
            for table in (graph_edges, graph_nodes, graph_patterns):
                conn.execute(table.delete().where(store._in_graph(table)))
            current = {"node_count": 0, "edge_count": 0, "pattern_count": 0,
                       "node_types": {}, "edge_types": {}}
        tally = _Tally()
        store._write_nodes(conn, tally, node_items, now)
        store._write_edges(conn, tally, edge_items, now, field_name="edges")
        store._write_patterns(conn, tally, pattern_items, now)
        _keep_times(conn, store, node_items, node_times, edge_items, edge_times,
                    pattern_items, pattern_times)
        store._close(conn, current, tally, now)
    return ImportResult(mode=mode, nodes=len(node_items), edges=len(edge_items),
                        patterns=len(pattern_items))


def _keep_times(conn: Connection, store: GraphStore, node_items: Sequence[Any],
                node_times: Sequence[datetime | None], edge_items: Sequence[Any],
                edge_times: Sequence[datetime | None], pattern_items: Sequence[Any],
                pattern_times: Sequence[datetime | None]) -> None:
    """Set ``created_at`` to the file's where it gives one (the upserts stamp now)."""
    nodes = [{"b_id": item[0], "v_created": t} for item, t in zip(node_items, node_times,
                                                                   strict=True) if t]
    if nodes:
        conn.execute(graph_nodes.update().where(
            store._in_graph(graph_nodes), graph_nodes.c.id == sa.bindparam("b_id"))
            .values(created_at=sa.bindparam("v_created")), nodes)
    edges = [{"b_src": e.src, "b_dst": e.dst, "b_type": e.type, "v_created": t}
             for e, t in zip(edge_items, edge_times, strict=True) if t]
    if edges:
        conn.execute(graph_edges.update().where(
            store._in_graph(graph_edges), graph_edges.c.src == sa.bindparam("b_src"),
            graph_edges.c.dst == sa.bindparam("b_dst"),
            graph_edges.c.type == sa.bindparam("b_type"))
            .values(created_at=sa.bindparam("v_created")), edges)
    patterns = [{"b_id": p["id"], "v_created": t}
                for p, t in zip(pattern_items, pattern_times, strict=True) if t]
    if patterns:
        conn.execute(graph_patterns.update().where(
            store._in_graph(graph_patterns), graph_patterns.c.id == sa.bindparam("b_id"))
            .values(created_at=sa.bindparam("v_created")), patterns)


# -- snapshots ------------------------------------------------------------------------

_TABLES = {"n": (graph_nodes, ["id"]), "e": (graph_edges, ["src", "dst", "type"]),
           "p": (graph_patterns, ["id"])}
_KINDS = {"n": "graph_nodes", "e": "graph_edges", "p": "graph_patterns"}


def _snapshot_bytes(conn: Connection, store: GraphStore) -> Iterator[bytes]:
    """The graph as gzip'd JSON lines: a header, then every node, edge and
    pattern with all its columns (the kinds' codec), in key order. The same
    graph always gives the same bytes (no gzip timestamp), so identical
    versions share one blob."""
    info = conn.execute(sa.select(graphs.c.description, graphs.c.metadata)
                        .where(store._graph_key())).one()
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    header = {"format": _SNAPSHOT_FORMAT, "version": 1, "description": info.description,
              "metadata": info.metadata or {}}
    pending = [_dumps(header) + b"\n"]
    size = len(pending[0])
    for tag, (table, key) in _TABLES.items():
        codec = kind(_KINDS[tag])
        for row in _pages(conn, table, store._in_graph(table), key):
            record = codec.encode(dict(row._mapping))
            del record["owner_id"], record["graph"]
            line = _dumps({"k": tag, "r": record}) + b"\n"
            pending.append(line)
            size += len(line)
            if size >= PIECE:
                yield packer.compress(b"".join(pending))
                pending, size = [], 0
    yield packer.compress(b"".join(pending)) + packer.flush()


def _snapshot_lines(pieces: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    unpacker = zlib.decompressobj(31)
    rest = b""
    for piece in pieces:
        rest += unpacker.decompress(piece)
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield json.loads(line)
    rest += unpacker.flush()
    if rest.strip():
        yield json.loads(rest)


def _snapshot(row: Any) -> GraphSnapshot:
    return GraphSnapshot(id=row.id, label=row.label, created_at=row.created_at,
                         node_count=row.node_count, edge_count=row.edge_count,
                         pattern_count=row.pattern_count)


def _snapshot_key(store: GraphStore, snapshot_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(store._in_graph(graph_snapshots), graph_snapshots.c.id == snapshot_id)


def _snapshot_missing(snapshot_id: str) -> NotFound:
    return NotFound(f"snapshot {snapshot_id!r} not found")


def release_snapshots(ctx: StoreContext, conn: Connection,
                      condition: sa.ColumnElement[bool]) -> int:
    """Delete the snapshot rows under ``condition`` and release their blobs,
    inside the caller's transaction; returns how many went."""
    shas = conn.execute(graph_snapshots.delete().where(condition)
                        .returning(graph_snapshots.c.sha256)).scalars().all()
    release_blobs(ctx, conn, shas)
    return len(shas)


def create_snapshot(store: GraphStore, label: str | None = None) -> GraphSnapshot:
    """Save the graph as it is now; keeps the newest
    ``MEMVAULT_GRAPH_SNAPSHOTS_KEEP`` snapshots of the graph.

    Raises:
        NotFound: no such graph.
    """
    if label is not None:
        if not isinstance(label, str) or len(label) > 256:
            raise Invalid("label must be a string of at most 256 characters", field="label")
        check_text(label, "label")
    ctx, db = store._ctx, store._db
    now = utcnow()
    staged = None
    published = False
    try:
        with db.write() as conn:
            current, _ = store._open(conn, create=False)
            staged = ctx.blobs.stage(_snapshot_bytes(conn, store), _NO_LIMIT)
            conn.execute(db.backend.upsert(
                blobs, {"sha256": staged.sha256, "size": staged.size, "refcount": 1,
                        "created_at": now},
                keys=["sha256"], set_={"refcount": blobs.c.refcount + 1}))
            # After the upsert: its row lock orders us with a collector of the
            # same blob (see stores/files.py).
            ctx.blobs.publish(conn, staged)
            published = True
            row = {"owner_id": store._owner, "graph": store.name, "id": new_id(),
                   "label": label, "sha256": staged.sha256, "size": staged.size,
                   "node_count": current["node_count"], "edge_count": current["edge_count"],
                   "pattern_count": current["pattern_count"], "created_at": now}
            conn.execute(graph_snapshots.insert(), row)
            _prune(conn, store, ctx.settings.graph_snapshots_keep)
    except BaseException:
        if published and staged is not None:  # the commit failed: maybe an orphan
            collect_quietly(db, ctx.blobs, staged.sha256)
        raise
    finally:
        if staged is not None:
            staged.discard()
    return GraphSnapshot.model_validate(row)


def _prune(conn: Connection, store: GraphStore, keep: int) -> None:
    """Drop all but the newest ``keep`` snapshots (ids are time-ordered)."""
    old = conn.execute(sa.select(graph_snapshots.c.id).where(store._in_graph(graph_snapshots))
                       .order_by(graph_snapshots.c.id.desc()).offset(keep)).scalars().all()
    for start in range(0, len(old), 500):
        release_snapshots(store._ctx, conn, sa.and_(
            store._in_graph(graph_snapshots), graph_snapshots.c.id.in_(old[start:start + 500])))


def list_snapshots(store: GraphStore, limit: int = DEFAULT_LIMIT,
                   cursor: str | None = None) -> Page[GraphSnapshot]:
    """Newest first.

    Raises:
        NotFound: no such graph.
    """
    query = sa.select(graph_snapshots).where(store._in_graph(graph_snapshots))
    with store._db.read() as conn:
        store._require_graph(conn)
        return keyset_page(conn, query, graph_snapshots.c.id, limit, cursor, _snapshot)


def delete_snapshot(store: GraphStore, snapshot_id: str) -> None:
    """Raises: NotFound: no such graph or snapshot."""
    with store._db.write() as conn:
        store._open(conn, create=False)
        if not release_snapshots(store._ctx, conn, _snapshot_key(store, snapshot_id)):
            raise _snapshot_missing(snapshot_id)


def restore_snapshot(store: GraphStore, snapshot_id: str) -> None:
    """Put the graph back exactly as the snapshot saved it (nodes, edges and
    patterns with their timestamps, description, metadata, counts), in one
    transaction. Other snapshots are kept.

    Raises:
        NotFound: no such graph or snapshot.
    """
    now = utcnow()
    with store._db.write() as conn:
        store._open(conn, create=False)
        sha = conn.execute(sa.select(graph_snapshots.c.sha256)
                           .where(_snapshot_key(store, snapshot_id))).scalar_one_or_none()
        if sha is None:
            raise _snapshot_missing(snapshot_id)
        for table in (graph_edges, graph_nodes, graph_patterns):
            conn.execute(table.delete().where(store._in_graph(table)))
        counts: dict[str, int] = Counter()
        node_types: Counter[str] = Counter()
        edge_types: Counter[str] = Counter()
        header: dict[str, Any] = {}
        batch: list[dict[str, Any]] = []
        batch_tag = ""

        def flush() -> None:
            if batch:
                conn.execute(_TABLES[batch_tag][0].insert(), batch)
                batch.clear()

        for line in _snapshot_lines(store._ctx.blobs.open(sha)):
            if "format" in line:
                header = line
                continue
            tag = line["k"]
            if tag != batch_tag or len(batch) >= PAGE:
                flush()
                batch_tag = tag
            batch.append(kind(_KINDS[tag]).decode(
                {**line["r"], "owner_id": store._owner, "graph": store.name}))
            counts[tag] += 1
            if tag == "n":
                node_types[line["r"]["type"]] += 1
            elif tag == "e":
                edge_types[line["r"]["type"]] += 1
        flush()
        conn.execute(graphs.update().where(store._graph_key()).values(
            description=header.get("description"), metadata=header.get("metadata") or {},
            node_count=counts["n"], edge_count=counts["e"], pattern_count=counts["p"],
            node_types=dict(sorted(node_types.items())),
            edge_types=dict(sorted(edge_types.items())), modified_at=now))
