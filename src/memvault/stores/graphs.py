"""Knowledge graphs (seed 002): named graphs of typed nodes, weighted typed
edges and patterns, owner-scoped, on every backend.

Seed 002 rewrote one ``graph.json`` on every change and walked it by scanning
every edge. Here each node, edge and pattern is a row; a write touches only its
rows plus the graph's row, which keeps the counts (per type too) in the same
transaction, so reading them never scans. Every write locks the graph row first:
writes to one graph are serialised, which keeps the counts exact and lets a
write check what exists before changing it. Traversal (``stores/graph_walk.py``)
reads the edges of the visited nodes only, by index.

Routes (``service/routes/graphs.py``) are thin calls to ``GraphStore``.
Export, import and snapshots live in ``stores/graph_io.py``; the methods here
call it.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..backends.schema import graph_edges, graph_nodes, graph_patterns, graph_snapshots, graphs
from ..errors import Invalid, NotFound
from ..ids import decode_cursor, encode_cursor, utcnow
from ..models import Page
from . import graph_walk
from ._context import StoreContext
from ._paging import DEFAULT_LIMIT, check_limit, keyset_page
from ._text import check_json, check_text
from .graph_records import (
    BatchResult,
    GraphEdge,
    GraphInfo,
    GraphNode,
    GraphPath,
    Influence,
    Neighbor,
    Pattern,
    Subgraph,
    edge_record,
    node_record,
)

if TYPE_CHECKING:
    from .graph_io import GraphSnapshot, ImportResult

__all__ = ["GraphStore", "GRAPH_NAME_PATTERN", "MAX_BATCH", "MAX_DEPTH", "check_graph_name",
           "merge_patch", "parse_filter_value", "UNSET"]

GRAPH_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
_GRAPH_NAME = re.compile(GRAPH_NAME_PATTERN)
MAX_ID = 256
MAX_TYPE = 64
#: Items (of every kind together) one batch may hold.
MAX_BATCH = 10_000
#: Deepest path search or subgraph.
MAX_DEPTH = 10
#: Most neighbours, influences or subgraph nodes one call returns.
MAX_NEIGHBORS = 10_000
#: Ids per ``IN (…)`` list: well under every backend's parameter limit.
IN_CHUNK = 500
UNSET: Any = object()
Direction = Literal["out", "in", "both"]


# -- validation ---------------------------------------------------------------

def check_graph_name(name: Any) -> str:
    if not isinstance(name, str) or not _GRAPH_NAME.match(name):
        raise Invalid("graph name must be 1-64 letters, digits or _ - .", field="graph")
    return name


def _check_str(value: Any, field: str, most: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= most:
        raise Invalid(f"{field} must be a string of 1-{most} characters", field=field)
    return check_text(value, field)


def _check_id(value: Any, field: str = "id") -> str:
    return _check_str(value, field, MAX_ID)


def _check_type(value: Any, field: str = "type") -> str:
    return _check_str(value, field, MAX_TYPE)


def _check_object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{field} must be an object", field=field)
    return dict(check_json(value, field))


def _check_number(value: Any, field: str, lo: float | None = None,
                  hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(f"{field} must be a finite number", field=field)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise Invalid(f"{field} must be between {lo} and {hi}", field=field)
    return float(value)


def _check_where(where: Mapping[str, Any] | None, field: str = "data") -> dict[str, Any]:
    """Equality filters on top-level data fields: scalar JSON values only."""
    if where is None:
        return {}
    if not isinstance(where, Mapping):
        raise Invalid(f"{field} filter must be an object", field=field)
    for key, value in where.items():
        _check_str(key, f"{field} field", MAX_ID)
        if isinstance(value, dict | list | tuple):
            raise Invalid(f"{field} filter values must be strings, numbers, booleans or null",
                          field=field)
        check_json(value, field)
    return dict(where)


def _check_match(match: Any) -> dict[str, Any] | None:
    if match is None:
        return None
    if not isinstance(match, Mapping) or set(match) - {"type", "data"}:
        raise Invalid("match must be an object with type and/or data", field="match")
    out: dict[str, Any] = {}
    if match.get("type") is not None:
        out["type"] = _check_type(match["type"], "match.type")
    if match.get("data") is not None:
        out["data"] = _check_where(match["data"], "match.data")
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge key by key, ``null`` removes a
    key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def parse_filter_value(text: str) -> Any:
    """A query-string filter value: a JSON number, ``true``, ``false`` or ``null``
    compares as that JSON value; anything else as the string itself."""
    if text in ("true", "false", "null"):
        return json.loads(text)
    try:
        value = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError:
        return text
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return text


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# -- rows to records -----------------------------------------------------------

_GRAPH_COLS = (graphs.c.name, graphs.c.description, graphs.c.metadata, graphs.c.node_count,
               graphs.c.edge_count, graphs.c.pattern_count, graphs.c.node_types,
               graphs.c.edge_types, graphs.c.created_at, graphs.c.modified_at)
NODE_COLS = (graph_nodes.c.id, graph_nodes.c.type, graph_nodes.c.data,
             graph_nodes.c.created_at, graph_nodes.c.modified_at)
EDGE_COLS = (graph_edges.c.src, graph_edges.c.dst, graph_edges.c.type, graph_edges.c.strength,
             graph_edges.c.data, graph_edges.c.created_at, graph_edges.c.modified_at)
_PATTERN_COLS = (graph_patterns.c.id, graph_patterns.c.type, graph_patterns.c.description,
                 graph_patterns.c.trigger_conditions, graph_patterns.c.confidence,
                 graph_patterns.c.match, graph_patterns.c.data, graph_patterns.c.created_at,
                 graph_patterns.c.modified_at)


def _graph(row: Any) -> GraphInfo:
    (name, description, metadata, nodes, edges, patterns, node_types, edge_types,
     created, modified) = row
    return GraphInfo(name=name, description=description, metadata=metadata or {},
                     node_count=nodes, edge_count=edges, pattern_count=patterns,
                     node_types=node_types or {}, edge_types=edge_types or {},
                     created_at=created, modified_at=modified)


def _pattern(row: Any) -> Pattern:
    pid, type_, description, triggers, confidence, match, data, created, modified = row
    return Pattern(id=pid, type=type_, description=description,
                   trigger_conditions=triggers or [], confidence=confidence, match=match,
                   data=data or {}, created_at=created, modified_at=modified)


# -- what a write changes in the graph row -------------------------------------

@dataclass
class _Tally:
    """Changes to the graph's counts made by one transaction."""

    nodes: int = 0
    edges: int = 0
    patterns: int = 0
    node_types: Counter[str] = field(default_factory=Counter)
    edge_types: Counter[str] = field(default_factory=Counter)


def _apply_counts(current: Mapping[str, Any] | None, delta: Counter[str]) -> dict[str, int]:
    counts: Counter[str] = Counter(current or {})
    counts.update(delta)
    return {k: v for k, v in sorted(counts.items()) if v > 0}


@dataclass(frozen=True)
class _EdgeIn:
    src: str
    dst: str
    type: str
    strength: float
    data: dict[str, Any]


class GraphStore:
    """One owner's graph called ``name``. Obtain through ``scope.graph(name)``.

    Writes create the graph when it does not exist yet (except an edge, whose
    nodes must exist, and so must their graph).
    """

    def __init__(self, ctx: StoreContext, owner_id: str, name: str = "default") -> None:
        self._ctx = ctx
        self._db = ctx.db
        self._owner = owner_id
        self.name = check_graph_name(name)

    # -- helpers ---------------------------------------------------------------

    def _in_graph(self, table: sa.Table) -> sa.ColumnElement[bool]:
        return sa.and_(table.c.owner_id == self._owner, table.c.graph == self.name)

    def _graph_key(self) -> sa.ColumnElement[bool]:
        return sa.and_(graphs.c.owner_id == self._owner, graphs.c.name == self.name)

    def _not_found(self) -> NotFound:
        return NotFound(f"graph {self.name!r} not found")

    def _require_graph(self, conn: Connection) -> None:
        if conn.execute(sa.select(graphs.c.name).where(self._graph_key())).first() is None:
            raise self._not_found()

    def _open(self, conn: Connection, create: bool = True,
              now: datetime | None = None) -> tuple[dict[str, Any], bool]:
        """Lock the graph row for this transaction (creating it if asked);
        returns its counts and whether it was created now."""
        created = False
        if create:
            now = now or utcnow()
            insert = self._db.backend.insert_ignore(graphs, ["owner_id", "name"])
            assert isinstance(insert, sa.Insert)  # both backends: INSERT … ON CONFLICT
            # RETURNING says whether this insert made the row (rowcount does
            # not, for ON CONFLICT DO NOTHING, on every driver).
            result = conn.execute(
                insert.returning(graphs.c.name),
                {"owner_id": self._owner, "name": self.name, "description": None,
                 "metadata": {}, "node_count": 0, "edge_count": 0, "pattern_count": 0,
                 "node_types": {}, "edge_types": {}, "created_at": now, "modified_at": now})
            created = result.first() is not None
        row = conn.execute(
            sa.select(graphs.c.node_count, graphs.c.edge_count, graphs.c.pattern_count,
                      graphs.c.node_types, graphs.c.edge_types)
            .where(self._graph_key()).with_for_update()).first()
        if row is None:
            raise self._not_found()
        return dict(row._mapping), created

    def _close(self, conn: Connection, current: Mapping[str, Any], tally: _Tally,
               now: datetime) -> None:
        """Write the graph row's new counts (same transaction as the change)."""
        conn.execute(graphs.update().where(self._graph_key()).values(
            node_count=current["node_count"] + tally.nodes,
            edge_count=current["edge_count"] + tally.edges,
            pattern_count=current["pattern_count"] + tally.patterns,
            node_types=_apply_counts(current["node_types"], tally.node_types),
            edge_types=_apply_counts(current["edge_types"], tally.edge_types),
            modified_at=now))

    # -- graphs ----------------------------------------------------------------

    def put(self, description: str | None = None,
            metadata: dict[str, Any] | None = None) -> tuple[GraphInfo, bool]:
        """Create the graph, or replace its description and metadata.

        Returns:
            The graph, and whether it was created by this call.
        """
        if description is not None:
            check_text(description, "description")
        metadata = _check_object(metadata, "metadata")
        now = utcnow()
        with self._db.write() as conn:
            _, created = self._open(conn, now=now)
            conn.execute(graphs.update().where(self._graph_key()).values(
                description=description, metadata=metadata, modified_at=now))
            row = conn.execute(sa.select(*_GRAPH_COLS).where(self._graph_key())).one()
        return _graph(row), created

    def get(self) -> GraphInfo:
        """The graph with its counts.

        Raises:
            NotFound: no such graph.
        """
        with self._db.read() as conn:
            row = conn.execute(sa.select(*_GRAPH_COLS).where(self._graph_key())).first()
        if row is None:
            raise self._not_found()
        return _graph(row)

    def list_graphs(self, limit: int = DEFAULT_LIMIT,
                    cursor: str | None = None) -> Page[GraphInfo]:
        """Every graph of the owner, by name."""
        query = sa.select(*_GRAPH_COLS).where(graphs.c.owner_id == self._owner)
        with self._db.read() as conn:
            return keyset_page(conn, query, graphs.c.name, limit, cursor, _graph,
                               newest_first=False)

    def delete(self) -> None:
        """Delete the graph with everything in it (ON DELETE CASCADE), its
        snapshots' blobs released first."""
        from .graph_io import release_snapshots  # graph_io builds on this module

        with self._db.write() as conn:
            release_snapshots(self._ctx, conn, self._in_graph(graph_snapshots))
            if conn.execute(graphs.delete().where(self._graph_key())).rowcount == 0:
                raise self._not_found()

    # -- nodes -----------------------------------------------------------------

    def _node_key(self, node_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(self._in_graph(graph_nodes), graph_nodes.c.id == node_id)

    def _existing_nodes(self, conn: Connection,
                        ids: Iterable[str]) -> dict[str, tuple[str, datetime, dict[str, Any]]]:
        """``{id: (type, created_at, data)}`` of those of ``ids`` that exist."""
        found: dict[str, tuple[str, datetime, dict[str, Any]]] = {}
        for chunk in _chunks(sorted(set(ids))):
            query = (sa.select(graph_nodes.c.id, graph_nodes.c.type, graph_nodes.c.created_at,
                               graph_nodes.c.data)
                     .where(self._in_graph(graph_nodes), graph_nodes.c.id.in_(chunk)))
            for node_id, type_, created, data in conn.execute(query):
                found[node_id] = (type_, created, data or {})
        return found

    def _write_nodes(self, conn: Connection, tally: _Tally,
                     items: Sequence[tuple[str, str, dict[str, Any]]],
                     now: datetime) -> list[tuple[GraphNode, bool]]:
        """Upsert ``(id, type, data)`` items (a later item with the same id wins);
        ``created_at`` of a replaced node is kept."""
        existing = self._existing_nodes(conn, (i for i, _, _ in items))
        types = {i: t for i, (t, _, _) in existing.items()}
        inserts: dict[str, dict[str, Any]] = {}
        updates: dict[str, dict[str, Any]] = {}
        out: list[tuple[GraphNode, bool]] = []
        for node_id, type_, data in items:
            old = types.get(node_id)
            if old is None:
                tally.nodes += 1
                created_at = now
            else:
                tally.node_types[old] -= 1
                created_at = existing[node_id][1] if node_id in existing else now
            tally.node_types[type_] += 1
            types[node_id] = type_
            if node_id in existing:
                updates[node_id] = {"b_id": node_id, "v_type": type_, "v_data": data}
            else:
                inserts[node_id] = {"owner_id": self._owner, "graph": self.name, "id": node_id,
                                    "type": type_, "data": data, "created_at": now,
                                    "modified_at": now}
            out.append((GraphNode(id=node_id, type=type_, data=data, created_at=created_at,
                                  modified_at=now), old is None))
        if inserts:
            conn.execute(graph_nodes.insert(), list(inserts.values()))
        if updates:
            statement = (graph_nodes.update()
                         .where(self._in_graph(graph_nodes),
                                graph_nodes.c.id == sa.bindparam("b_id"))
                         .values(type=sa.bindparam("v_type"), data=sa.bindparam("v_data"),
                                 modified_at=now))
            conn.execute(statement, list(updates.values()))
        return out

    def _delete_nodes(self, conn: Connection, tally: _Tally, ids: Sequence[str],
                      field_name: str | None = None) -> int:
        """Delete nodes with their edges. A missing id is ``NotFound`` (or, in a
        batch, ``Invalid`` naming its index under ``field_name``)."""
        existing = self._existing_nodes(conn, ids)
        seen: set[str] = set()
        for index, node_id in enumerate(ids):
            if node_id not in existing or node_id in seen:
                why = "listed twice" if node_id in seen else "not found"
                if field_name is None:
                    raise NotFound(f"node {node_id!r} not found")
                raise Invalid(f"{field_name}[{index}]: node {node_id!r} {why}",
                              field=f"{field_name}[{index}]")
            seen.add(node_id)
        for chunk in _chunks(list(seen)):
            touching = sa.and_(self._in_graph(graph_edges), sa.or_(
                graph_edges.c.src.in_(chunk), graph_edges.c.dst.in_(chunk)))
            # Counted, then deleted, chunk by chunk: an edge between two chunks
            # is counted once, by the first chunk that deletes it.
            for type_, count in conn.execute(
                    sa.select(graph_edges.c.type, sa.func.count())
                    .where(touching).group_by(graph_edges.c.type)):
                tally.edges -= count
                tally.edge_types[type_] -= count
            conn.execute(graph_edges.delete().where(touching))
            conn.execute(graph_nodes.delete().where(self._in_graph(graph_nodes),
                                                    graph_nodes.c.id.in_(chunk)))
        for node_id in seen:
            tally.nodes -= 1
            tally.node_types[existing[node_id][0]] -= 1
        return len(seen)

    def put_node(self, node_id: str, type: str,
                 data: dict[str, Any] | None = None) -> tuple[GraphNode, bool]:
        """Create or replace a node (``created_at`` kept on replace).

        Returns:
            The node, and whether it was created by this call.
        """
        item = (_check_id(node_id), _check_type(type), _check_object(data, "data"))
        now = utcnow()
        with self._db.write() as conn:
            current, _ = self._open(conn, now=now)
            tally = _Tally()
            [(node, created)] = self._write_nodes(conn, tally, [item], now)
            self._close(conn, current, tally, now)
        return node, created

    def patch_node(self, node_id: str, type: str | None = None,
                   data: dict[str, Any] | None = None) -> GraphNode:
        """Change a node's type and/or merge ``data`` into its data as an RFC 7396
        merge patch (a key set to ``None`` is removed).

        Raises:
            NotFound: no such node.
        """
        if type is not None:
            _check_type(type)
        patch = _check_object(data, "data")
        now = utcnow()
        with self._db.write() as conn:
            # Locked before reading the node: a concurrent patch waits, never lost.
            current, _ = self._open(conn, create=False)
            found = self._existing_nodes(conn, [node_id]).get(node_id)
            if found is None:
                raise NotFound(f"node {node_id!r} not found")
            old_type, _, old_data = found
            merged = merge_patch(old_data, patch)
            tally = _Tally()
            [(node, _)] = self._write_nodes(conn, tally, [(node_id, type or old_type, merged)],
                                            now)
            self._close(conn, current, tally, now)
        return node

    def get_node(self, node_id: str) -> GraphNode:
        with self._db.read() as conn:
            node = self._walker(conn).node(node_id)  # a statement built once
        if node is None:
            raise NotFound(f"node {node_id!r} not found")
        return node

    def delete_node(self, node_id: str) -> None:
        """Delete a node and every edge to or from it."""
        now = utcnow()
        with self._db.write() as conn:
            current, _ = self._open(conn, create=False)
            tally = _Tally()
            self._delete_nodes(conn, tally, [node_id])
            self._close(conn, current, tally, now)

    def _node_conditions(self, type: str | None,
                         where: Mapping[str, Any] | None) -> list[sa.ColumnElement[bool]]:
        conditions = [self._in_graph(graph_nodes)]
        if type is not None:
            conditions.append(graph_nodes.c.type == _check_type(type))
        for key, value in _check_where(where).items():
            conditions.append(self._db.backend.json_equals(graph_nodes.c.data, key, value))
        return conditions

    def nodes(self, type: str | None = None, where: Mapping[str, Any] | None = None,
              limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[GraphNode]:
        """Nodes by id, optionally of one ``type`` and with ``data[field] == value``
        for every item of ``where`` (evaluated by the database).

        Raises:
            NotFound: no such graph.
        """
        query = sa.select(*NODE_COLS).where(*self._node_conditions(type, where))
        with self._db.read() as conn:
            self._require_graph(conn)
            return keyset_page(conn, query, graph_nodes.c.id, limit, cursor, node_record,
                               newest_first=False)

    # -- edges -----------------------------------------------------------------

    def _edge_key(self, src: str, dst: str, type_: str) -> sa.ColumnElement[bool]:
        return sa.and_(self._in_graph(graph_edges), graph_edges.c.src == src,
                       graph_edges.c.dst == dst, graph_edges.c.type == type_)

    def _write_edges(self, conn: Connection, tally: _Tally, items: Sequence[_EdgeIn],
                     now: datetime, field_name: str | None = None
                     ) -> list[tuple[GraphEdge, bool]]:
        """Upsert edges whose nodes must exist (``Invalid`` naming the missing one)."""
        # Keys only, each looked up by primary key (graph_walk): no node data
        # decoded, no scan of the graph's edges.
        ends = graph_walk.existing_node_ids(conn, self._owner, self.name,
                                            (n for e in items for n in (e.src, e.dst)))
        for index, edge in enumerate(items):
            for end, name in ((edge.src, "from"), (edge.dst, "to")):
                if end not in ends:
                    where = name if field_name is None else f"{field_name}[{index}].{name}"
                    raise Invalid(f"{where}: node {end!r} does not exist", field=where)
        latest: dict[tuple[str, str, str], _EdgeIn] = {}
        for edge in items:
            latest[(edge.src, edge.dst, edge.type)] = edge  # a later item wins
        # New edges are inserted with ON CONFLICT DO NOTHING, answered from the
        # primary key whatever the planner's statistics (a key list looked up
        # first was planned as a scan of the graph by PostgreSQL before ANALYZE,
        # and by SQLite); RETURNING names the rows inserted. Only the others
        # (they existed: the graph row is locked) are looked up, for created_at.
        inserted: set[tuple[str, str, str]] = set()
        if latest:
            insert = self._db.backend.insert_ignore(graph_edges,
                                                    ["owner_id", "graph", "src", "dst", "type"])
            assert isinstance(insert, sa.Insert)  # both backends: INSERT … ON CONFLICT
            rows = conn.execute(
                insert.returning(graph_edges.c.src, graph_edges.c.dst, graph_edges.c.type),
                [{"owner_id": self._owner, "graph": self.name, "src": e.src, "dst": e.dst,
                  "type": e.type, "strength": e.strength, "data": e.data, "created_at": now,
                  "modified_at": now} for e in latest.values()])
            inserted = {(src, dst, type_) for src, dst, type_ in rows}
        existing = graph_walk.existing_edges(conn, self._owner, self.name,
                                             (k for k in latest if k not in inserted))
        out: list[tuple[GraphEdge, bool]] = []
        counted: set[tuple[str, str, str]] = set()
        for edge in items:
            key = (edge.src, edge.dst, edge.type)
            new = key in inserted and key not in counted
            if new:
                counted.add(key)
                tally.edges += 1
                tally.edge_types[edge.type] += 1
            record = edge_record((edge.src, edge.dst, edge.type, edge.strength, edge.data,
                                  existing.get(key, now), now))
            out.append((record, new))
        updates = [{"b_src": e.src, "b_dst": e.dst, "b_type": e.type, "v_strength": e.strength,
                    "v_data": e.data} for k, e in latest.items() if k not in inserted]
        if updates:
            statement = (graph_edges.update()
                         .where(self._in_graph(graph_edges),
                                graph_edges.c.src == sa.bindparam("b_src"),
                                graph_edges.c.dst == sa.bindparam("b_dst"),
                                graph_edges.c.type == sa.bindparam("b_type"))
                         .values(strength=sa.bindparam("v_strength"),
                                 data=sa.bindparam("v_data"), modified_at=now))
            conn.execute(statement, updates)
        return out

    def _delete_edges(self, conn: Connection, tally: _Tally,
                      keys: Sequence[tuple[str, str, str]], field_name: str | None = None
                      ) -> int:
        for index, (src, dst, type_) in enumerate(keys):
            if conn.execute(graph_edges.delete().where(
                    self._edge_key(src, dst, type_))).rowcount == 0:
                if field_name is None:
                    raise NotFound(f"edge {src!r} -> {dst!r} ({type_}) not found")
                raise Invalid(f"{field_name}[{index}]: edge {src!r} -> {dst!r} ({type_}) "
                              "not found", field=f"{field_name}[{index}]")
            tally.edges -= 1
            tally.edge_types[type_] -= 1
        return len(keys)

    def put_edge(self, from_: str, to: str, type: str, strength: float = 1.0,
                 data: dict[str, Any] | None = None) -> tuple[GraphEdge, bool]:
        """Create or replace the edge ``(from_, to, type)``.

        Raises:
            NotFound: no such graph.
            Invalid: a node does not exist (named), or a malformed value.
        """
        edge = _EdgeIn(_check_id(from_, "from"), _check_id(to, "to"), _check_type(type),
                       _check_number(strength, "strength"), _check_object(data, "data"))
        now = utcnow()
        with self._db.write() as conn:
            current, _ = self._open(conn, create=False)
            tally = _Tally()
            [(record, created)] = self._write_edges(conn, tally, [edge], now)
            self._close(conn, current, tally, now)
        return record, created

    def get_edge(self, from_: str, to: str, type: str) -> GraphEdge:
        with self._db.read() as conn:
            row = conn.execute(sa.select(*EDGE_COLS)
                               .where(self._edge_key(from_, to, type))).first()
        if row is None:
            raise NotFound(f"edge {from_!r} -> {to!r} ({type}) not found")
        return edge_record(row)

    def delete_edge(self, from_: str, to: str, type: str) -> None:
        """Raises: NotFound: no such edge."""
        now = utcnow()
        with self._db.write() as conn:
            current, _ = self._open(conn, create=False)
            tally = _Tally()
            self._delete_edges(conn, tally, [(from_, to, type)])
            self._close(conn, current, tally, now)

    def edges(self, from_: str | None = None, to: str | None = None, type: str | None = None,
              min_strength: float | None = None, limit: int = DEFAULT_LIMIT,
              cursor: str | None = None) -> Page[GraphEdge]:
        """Edges ordered by ``(from, to, type)``, optionally filtered.

        Raises:
            NotFound: no such graph.
        """
        check_limit(limit)
        conditions = [self._in_graph(graph_edges)]
        if from_ is not None:
            conditions.append(graph_edges.c.src == from_)
        if to is not None:
            conditions.append(graph_edges.c.dst == to)
        if type is not None:
            conditions.append(graph_edges.c.type == type)
        if min_strength is not None:
            conditions.append(graph_edges.c.strength >= _check_number(min_strength,
                                                                      "min_strength"))
        key = sa.tuple_(graph_edges.c.src, graph_edges.c.dst, graph_edges.c.type)
        if cursor is not None:
            after = decode_cursor(cursor)
            if (not isinstance(after, list) or len(after) != 3
                    or not all(isinstance(a, str) and len(a) <= MAX_ID for a in after)):
                raise Invalid("malformed cursor", field="cursor")
            conditions.append(key > sa.tuple_(*(sa.literal(check_text(a, "cursor"))
                                                for a in after)))
        query = (sa.select(*EDGE_COLS).where(*conditions)
                 .order_by(graph_edges.c.src, graph_edges.c.dst, graph_edges.c.type)
                 .limit(limit + 1))
        with self._db.read() as conn:
            self._require_graph(conn)
            rows = conn.execute(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(list(rows[-1][:3])) if more and rows else None
        return Page(items=[edge_record(r) for r in rows], next_cursor=next_cursor)

    # -- neighbourhoods and traversal (graph_walk.py) ---------------------------

    def _walker(self, conn: Connection) -> graph_walk.Walker:
        return graph_walk.Walker(conn, self._owner, self.name)

    def _require_node(self, conn: Connection, node_id: str) -> None:
        if not self._walker(conn).has_node(node_id):
            raise NotFound(f"node {node_id!r} not found")

    def neighbors(self, node_id: str, direction: Direction = "out", type: str | None = None,
                  min_strength: float | None = None, limit: int = 100) -> list[Neighbor]:
        """The nodes next to ``node_id`` with the edge between, strongest first.

        Raises:
            NotFound: no such node.
        """
        graph_walk.check_direction(direction, ("out", "in", "both"))
        _check_count(limit, "limit", MAX_NEIGHBORS)
        if min_strength is not None:
            _check_number(min_strength, "min_strength")
        with self._db.read() as conn:
            self._require_node(conn, node_id)
            return self._walker(conn).neighbors(node_id, direction, type, min_strength, limit)

    def influences(self, node_id: str, limit: int = 1000) -> list[Influence]:
        """Seed 002's ``find_influences``: incoming edges, strongest first."""
        _check_count(limit, "limit", MAX_NEIGHBORS)
        with self._db.read() as conn:
            self._require_node(conn, node_id)
            return self._walker(conn).influences(node_id, limit)

    def path(self, from_: str, to: str, max_depth: int = 6,
             direction: Literal["out", "both"] = "out", type: str | None = None) -> GraphPath:
        """The shortest path (fewest edges; of those, the greatest total strength).

        Raises:
            NotFound: either node is missing, or no path within ``max_depth``.
        """
        graph_walk.check_direction(direction, ("out", "both"))
        _check_count(max_depth, "max_depth", MAX_DEPTH, lo=0)
        with self._db.read() as conn:
            self._require_node(conn, from_)
            self._require_node(conn, to)
            found = self._walker(conn).shortest_path(from_, to, max_depth, direction, type)
        if found is None:
            raise NotFound(f"no path from {from_!r} to {to!r} within {max_depth} edges")
        return found

    def subgraph(self, node_id: str, depth: int = 2, direction: Direction = "both",
                 type: str | None = None, limit: int = 1000) -> Subgraph:
        """The nodes within ``depth`` edges of ``node_id`` (breadth-first, at most
        ``limit``; ``truncated`` when some were left out) and the edges among them.
        """
        graph_walk.check_direction(direction, ("out", "in", "both"))
        _check_count(depth, "depth", MAX_DEPTH, lo=0)
        _check_count(limit, "limit", MAX_NEIGHBORS)
        with self._db.read() as conn:
            self._require_node(conn, node_id)
            return self._walker(conn).subgraph(node_id, depth, direction, type, limit)

    # -- patterns --------------------------------------------------------------

    def _pattern_key(self, pattern_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(self._in_graph(graph_patterns), graph_patterns.c.id == pattern_id)

    @staticmethod
    def _pattern_item(item: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        triggers = item.get("trigger_conditions") or []
        if not isinstance(triggers, list | tuple) or not all(isinstance(t, str)
                                                             for t in triggers):
            raise Invalid(f"{prefix}trigger_conditions must be a list of strings",
                          field=f"{prefix}trigger_conditions")
        description = item.get("description") or ""
        return {"id": _check_id(item.get("id"), f"{prefix}id"),
                "type": _check_type(item.get("type"), f"{prefix}type"),
                "description": check_text(description, f"{prefix}description"),
                "trigger_conditions": [check_text(t, f"{prefix}trigger_conditions")
                                       for t in triggers],
                "confidence": _check_number(item.get("confidence", 1.0), f"{prefix}confidence",
                                            0.0, 1.0),
                "match": _check_match(item.get("match")),
                "data": _check_object(item.get("data"), f"{prefix}data")}

    def _write_patterns(self, conn: Connection, tally: _Tally, items: Sequence[dict[str, Any]],
                        now: datetime) -> list[tuple[Pattern, bool]]:
        out: list[tuple[Pattern, bool]] = []
        for item in items:
            values = {k: v for k, v in item.items() if k != "id"}
            row = conn.execute(sa.select(graph_patterns.c.created_at)
                               .where(self._pattern_key(item["id"]))).first()
            if row is None:
                conn.execute(graph_patterns.insert(), {
                    "owner_id": self._owner, "graph": self.name, "id": item["id"], **values,
                    "created_at": now, "modified_at": now})
                tally.patterns += 1
                created_at = now
            else:
                conn.execute(graph_patterns.update().where(self._pattern_key(item["id"]))
                             .values(**values, modified_at=now))
                created_at = row[0]
            out.append((Pattern(**item, created_at=created_at, modified_at=now), row is None))
        return out

    def put_pattern(self, pattern_id: str, type: str, description: str = "",
                    trigger_conditions: Sequence[str] = (), confidence: float = 1.0,
                    match: Mapping[str, Any] | None = None,
                    data: dict[str, Any] | None = None) -> tuple[Pattern, bool]:
        """Create or replace a pattern. ``match`` (``{type?, data?}``) selects the
        nodes ``pattern_nodes`` returns, with the node filter's semantics."""
        item = self._pattern_item({"id": pattern_id, "type": type, "description": description,
                                   "trigger_conditions": list(trigger_conditions),
                                   "confidence": confidence, "match": match, "data": data})
        now = utcnow()
        with self._db.write() as conn:
            current, _ = self._open(conn, now=now)
            tally = _Tally()
            [(pattern, created)] = self._write_patterns(conn, tally, [item], now)
            self._close(conn, current, tally, now)
        return pattern, created

    def get_pattern(self, pattern_id: str) -> Pattern:
        with self._db.read() as conn:
            row = conn.execute(sa.select(*_PATTERN_COLS)
                               .where(self._pattern_key(pattern_id))).first()
        if row is None:
            raise NotFound(f"pattern {pattern_id!r} not found")
        return _pattern(row)

    def delete_pattern(self, pattern_id: str) -> None:
        now = utcnow()
        with self._db.write() as conn:
            current, _ = self._open(conn, create=False)
            if conn.execute(graph_patterns.delete().where(
                    self._pattern_key(pattern_id))).rowcount == 0:
                raise NotFound(f"pattern {pattern_id!r} not found")
            self._close(conn, current, _Tally(patterns=-1), now)

    def patterns(self, type: str | None = None, limit: int = DEFAULT_LIMIT,
                 cursor: str | None = None) -> Page[Pattern]:
        """Patterns by id, optionally of one ``type``.

        Raises:
            NotFound: no such graph.
        """
        query = sa.select(*_PATTERN_COLS).where(self._in_graph(graph_patterns))
        if type is not None:
            query = query.where(graph_patterns.c.type == _check_type(type))
        with self._db.read() as conn:
            self._require_graph(conn)
            return keyset_page(conn, query, graph_patterns.c.id, limit, cursor, _pattern,
                               newest_first=False)

    def pattern_nodes(self, pattern_id: str, limit: int = DEFAULT_LIMIT,
                      cursor: str | None = None) -> Page[GraphNode]:
        """Seed 002's ``get_nodes_by_pattern``: the nodes the pattern's ``match``
        selects (every node when it has none)."""
        match = self.get_pattern(pattern_id).match or {}
        return self.nodes(type=match.get("type"), where=match.get("data"), limit=limit,
                          cursor=cursor)

    # -- batches -----------------------------------------------------------------

    def batch(self, nodes: Sequence[Mapping[str, Any]] = (),
              edges: Sequence[Mapping[str, Any]] = (),
              patterns: Sequence[Mapping[str, Any]] = (),
              delete_nodes: Sequence[str] = (),
              delete_edges: Sequence[Mapping[str, Any]] = ()) -> BatchResult:
        """Apply everything in one transaction, all or nothing: node upserts, then
        edge upserts (their nodes may come from this batch), pattern upserts,
        edge deletions, node deletions (with their edges). Items are the bodies
        of the single-item calls (``{id, type, data?}``, ``{from, to, type,
        strength?, data?}``, …).

        Raises:
            Invalid: more than ``MAX_BATCH`` items, or an invalid item (its
                list and index named: ``edges[3].to``); nothing is written.
        """
        total = len(nodes) + len(edges) + len(patterns) + len(delete_nodes) + len(delete_edges)
        if total > MAX_BATCH:
            raise Invalid(f"a batch holds at most {MAX_BATCH} items", field="batch")
        node_items = [_batch_item(i, "nodes", _node_item, n) for i, n in enumerate(nodes)]
        edge_items = [_batch_item(i, "edges", _edge_item, e) for i, e in enumerate(edges)]
        pattern_items = [_batch_item(i, "patterns", self._pattern_item, p)
                         for i, p in enumerate(patterns)]
        node_deletes = [_batch_item(i, "delete_nodes", _check_id, n)
                        for i, n in enumerate(delete_nodes)]
        edge_deletes = [_batch_item(i, "delete_edges", _edge_key_item, e)
                        for i, e in enumerate(delete_edges)]
        now = utcnow()
        with self._db.write() as conn:
            current, _ = self._open(conn, now=now)
            tally = _Tally()
            self._write_nodes(conn, tally, node_items, now)
            self._write_edges(conn, tally, edge_items, now, field_name="edges")
            self._write_patterns(conn, tally, pattern_items, now)
            self._delete_edges(conn, tally, edge_deletes, field_name="delete_edges")
            self._delete_nodes(conn, tally, node_deletes, field_name="delete_nodes")
            self._close(conn, current, tally, now)
        return BatchResult(nodes=len(node_items), edges=len(edge_items),
                           patterns=len(pattern_items), deleted_nodes=len(node_deletes),
                           deleted_edges=len(edge_deletes))

    # -- export, import, snapshots (graph_io.py) ------------------------------------

    def export(self) -> Iterator[bytes]:
        """The graph in seed 002's ``graph.json`` format, in pieces (dumped under
        the graph's lock, streamed from a temp file).

        Raises:
            NotFound: no such graph.
        """
        from . import graph_io
        return graph_io.export_graph(self)

    def import_json(self, source: BinaryIO | bytes | Mapping[str, Any],
                    mode: Literal["merge", "replace"] = "merge") -> ImportResult:
        """Load seed 002's ``graph.json`` format (merge or replace), in one
        transaction; see ``graph_io.import_graph``."""
        from . import graph_io
        return graph_io.import_graph(self, source, mode)

    def snapshot(self, label: str | None = None) -> GraphSnapshot:
        """Save the graph as it is now (a content-addressed blob)."""
        from . import graph_io
        return graph_io.create_snapshot(self, label)

    def snapshots(self, limit: int = DEFAULT_LIMIT,
                  cursor: str | None = None) -> Page[GraphSnapshot]:
        """The graph's snapshots, newest first."""
        from . import graph_io
        return graph_io.list_snapshots(self, limit, cursor)

    def restore(self, snapshot_id: str) -> None:
        """Put the graph back exactly as snapshot ``snapshot_id`` saved it."""
        from . import graph_io
        graph_io.restore_snapshot(self, snapshot_id)

    def delete_snapshot(self, snapshot_id: str) -> None:
        from . import graph_io
        graph_io.delete_snapshot(self, snapshot_id)


def _check_count(value: Any, field: str, most: int, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= most:
        raise Invalid(f"{field} must be between {lo} and {most}", field=field)
    return value


def _batch_item(index: int, list_name: str, check: Any, item: Any) -> Any:
    """``check(item)``, with an ``Invalid`` renamed to ``list[index].field``."""
    try:
        if list_name in ("nodes", "edges", "patterns", "delete_edges") and not isinstance(
                item, Mapping):
            raise Invalid("must be an object", field="")
        return check(item)
    except Invalid as exc:
        where = f"{list_name}[{index}]" + (f".{exc.field}" if exc.field else "")
        raise Invalid(f"{where}: {exc.detail}", field=where) from None


def _node_item(item: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return (_check_id(item.get("id")), _check_type(item.get("type")),
            _check_object(item.get("data"), "data"))


def _edge_item(item: Mapping[str, Any]) -> _EdgeIn:
    return _EdgeIn(_check_id(item.get("from"), "from"), _check_id(item.get("to"), "to"),
                   _check_type(item.get("type")),
                   _check_number(item.get("strength", 1.0), "strength"),
                   _check_object(item.get("data"), "data"))


def _edge_key_item(item: Mapping[str, Any]) -> tuple[str, str, str]:
    return (_check_id(item.get("from"), "from"), _check_id(item.get("to"), "to"),
            _check_type(item.get("type")))
