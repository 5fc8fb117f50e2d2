"""Walking a knowledge graph by indexed lookups of the visited part only.

Seed 002 walked its graph by scanning every edge. Here a walk goes level by
level: the edges of the current frontier are read through the out-edge index
``(owner, graph, src, strength, dst, type)`` or the in-edge index
``(…, dst, strength, src, type)`` (both cover a step: no table reads),
in ``IN`` lists of a few hundred ids, so the work grows with the part of the
graph visited, never with the graph. ``stores/graphs.py`` checks arguments and
that the start nodes exist; this module only reads.

A walk reads ``(near, far, type, strength)`` only; full rows (data, two
timestamps) are read for what a call returns. Statements are built once with
bound parameters: building SQLAlchemy expressions per call cost more than the
database work for the small lookups (bench/graphs.py).

Also here, for writes in ``graphs.py``: which nodes and edges exist, looked up
by primary key (an ``(src, dst, type) IN (VALUES …)`` list is planned as a scan
of the whole graph by SQLite).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Generator, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..backends.schema import graph_edges, graph_nodes
from ..errors import Invalid
from .graph_records import (
    GraphEdge,
    GraphNode,
    GraphPath,
    Influence,
    Neighbor,
    Subgraph,
    edge_record,
    node_record,
)

__all__ = ["Walker", "check_direction", "existing_node_ids", "existing_edges"]

IN_CHUNK = 500
EdgeKey = tuple[str, str, str]
#: ``(near, far, type, strength)``: an edge as a walk sees it from ``near``.
Step = tuple[str, str, str, float]

_bp = sa.bindparam
_E, _N = graph_edges.c, graph_nodes.c
_EDGE_COLS = (_E.src, _E.dst, _E.type, _E.strength, _E.data, _E.created_at, _E.modified_at)
_NODE_COLS = (_N.id, _N.type, _N.data, _N.created_at, _N.modified_at)
_EDGES_OF = sa.and_(_E.owner_id == _bp("owner"), _E.graph == _bp("graph"))
_NODES_OF = sa.and_(_N.owner_id == _bp("owner"), _N.graph == _bp("graph"))
_IDS: sa.BindParameter[Any] = _bp("ids", expanding=True)
_NODES_BY_ID = sa.select(*_NODE_COLS).where(_NODES_OF, _N.id.in_(_IDS))
_NODE_IDS_BY_ID = sa.select(_N.id).where(_NODES_OF, _N.id.in_(_IDS))
_NODE_GET = sa.select(*_NODE_COLS).where(_NODES_OF, _N.id == _bp("node"))
_NODE_EXISTS = sa.select(_N.id).where(_NODES_OF, _N.id == _bp("node"))
_INFLUENCES = (sa.select(_E.src, _E.type, _E.strength)
               .where(_EDGES_OF, _E.dst == _bp("node"))
               .order_by(_E.strength.desc(), _E.src, _E.type).limit(_bp("lim")))
#: Every edge (full rows) from ``ids`` to ``among``: the edges of a subgraph.
#: ``dst || ''`` keeps SQLite from planning the two lists as |ids| x |among|
#: primary-key searches (0.7 s for 500 x 1000): it reads the out-edges of
#: ``ids`` through the out-index and filters them instead.
_EDGES_AMONG = sa.select(*_EDGE_COLS).where(
    _EDGES_OF, _E.src.in_(_IDS),
    _E.dst.concat(sa.literal_column("''")).in_(_bp("among", expanding=True)))
_EDGES_AMONG_TYPED = _EDGES_AMONG.where(_E.type == _bp("type"))


def check_direction(direction: Any, allowed: Sequence[str]) -> str:
    if direction not in allowed:
        raise Invalid(f"direction must be one of {', '.join(allowed)}", field="direction")
    return str(direction)


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# -- statements, built once per shape ------------------------------------------------

_STEPS: dict[tuple[str, bool, bool], sa.Executable] = {}


def _steps_statement(side: str, typed: bool, ordered: bool) -> sa.Executable:
    """``(near, far, type, strength)`` of the edges whose ``side`` end is in
    ``:ids`` (out: ``src``, in: ``dst``), strongest first when ``ordered``."""
    key = (side, typed, ordered)
    found = _STEPS.get(key)
    if found is None:
        near, far = (_E.src, _E.dst) if side == "out" else (_E.dst, _E.src)
        conditions = [_EDGES_OF, near.in_(_IDS)]
        if typed:
            conditions.append(_E.type == _bp("type"))
        order = [_E.strength.desc()] if ordered else []
        found = _STEPS[key] = (sa.select(near, far, _E.type, _E.strength)
                               .where(*conditions).order_by(*order))
    return found


_NEIGHBORS: dict[tuple[str, bool, bool], sa.Executable] = {}


def _neighbors_statement(side: str, typed: bool, floor: bool) -> sa.Executable:
    """One node's edges on ``side`` joined to the node at the other end,
    strongest first, at most ``:lim``; ``strength >= :floor`` when ``floor``.
    The out-index ``(…, src, strength)`` serves the strength order, so only the
    ties at the limit are sorted by the other end's id and the type."""
    key = (side, typed, floor)
    found = _NEIGHBORS.get(key)
    if found is None:
        near, other = (_E.src, _E.dst) if side == "out" else (_E.dst, _E.src)
        conditions = [_EDGES_OF, near == _bp("node")]
        if typed:
            conditions.append(_E.type == _bp("type"))
        if floor:
            conditions.append(_E.strength >= _bp("floor"))
        found = _NEIGHBORS[key] = (
            sa.select(*_EDGE_COLS, *_NODE_COLS)
            .select_from(graph_edges.join(graph_nodes, sa.and_(
                _N.owner_id == _E.owner_id, _N.graph == _E.graph, _N.id == other)))
            .where(*conditions)
            .order_by(_E.strength.desc(), other, _E.type)
            .limit(_bp("lim")))
    return found


_KEY_CHUNK = 256
_BY_KEY: dict[tuple[bool, int], sa.Executable] = {}


def _by_key_statement(full: bool, size: int) -> sa.Executable:
    """Edges by primary key, ``size`` keys ``:s<i>, :d<i>, :t<i>``. An OR of
    whole-key equalities: SQLite answers each term by a primary-key search
    (a multi-index OR), PostgreSQL by a bitmap OR of index scans."""
    key = (full, size)
    found = _BY_KEY.get(key)
    if found is None:
        columns = _EDGE_COLS if full else (_E.src, _E.dst, _E.type, _E.created_at)
        # The owner and graph are repeated in each term: with them outside the
        # OR, SQLite (no ANALYZE statistics) scans the graph's part of the key.
        found = sa.select(*columns).where(sa.or_(*(
            sa.and_(_EDGES_OF, _E.src == _bp(f"s{i}"), _E.dst == _bp(f"d{i}"),
                    _E.type == _bp(f"t{i}")) for i in range(size))))
        _BY_KEY[key] = found
    return found


def _edges_by_key(conn: Connection, owner: str, graph: str, keys: Sequence[EdgeKey],
                  full: bool) -> Iterator[Sequence[Any]]:
    """The rows of those of ``keys`` that exist (each once)."""
    for chunk in _chunks(sorted(set(keys)), _KEY_CHUNK):
        size = 1
        while size < len(chunk):
            size *= 2  # a few statement shapes only; padded with the last key
        params: dict[str, Any] = {"owner": owner, "graph": graph}
        for i in range(size):
            src, dst, type_ = chunk[min(i, len(chunk) - 1)]
            params[f"s{i}"], params[f"d{i}"], params[f"t{i}"] = src, dst, type_
        yield from conn.execute(_by_key_statement(full, size), params)


def existing_edges(conn: Connection, owner: str, graph: str,
                   keys: Iterable[EdgeKey]) -> dict[EdgeKey, datetime]:
    """``{(src, dst, type): created_at}`` of those of ``keys`` that exist."""
    return {(src, dst, type_): created for src, dst, type_, created
            in _edges_by_key(conn, owner, graph, list(keys), full=False)}


def existing_node_ids(conn: Connection, owner: str, graph: str,
                      ids: Iterable[str]) -> set[str]:
    """Those of ``ids`` that are nodes of the graph (the key only: no data read)."""
    found: set[str] = set()
    for chunk in _chunks(sorted(set(ids))):
        found.update(row[0] for row in conn.execute(
            _NODE_IDS_BY_ID, {"owner": owner, "graph": graph, "ids": list(chunk)}))
    return found


# -- walking -------------------------------------------------------------------------

class Walker:
    """Reads of one owner's graph ``graph`` on one connection."""

    def __init__(self, conn: Connection, owner: str, graph: str) -> None:
        self.conn = conn
        self.owner = owner
        self.graph = graph

    def _params(self, **more: Any) -> dict[str, Any]:
        return {"owner": self.owner, "graph": self.graph, **more}

    @staticmethod
    def _sides(direction: str) -> tuple[str, ...]:
        return {"out": ("out",), "in": ("in",), "both": ("out", "in")}[direction]

    def steps(self, frontier: Sequence[str], direction: str, type_: str | None
              ) -> Iterator[Step]:
        """Every edge of the frontier's nodes in ``direction`` (a self-loop once
        per side), in no particular order."""
        for side in self._sides(direction):
            statement = _steps_statement(side, type_ is not None, ordered=False)
            for chunk in _chunks(frontier):
                yield from self.conn.execute(statement, self._params(ids=list(chunk),
                                                                     type=type_))

    def strongest_steps(self, frontier: Sequence[str], direction: str, type_: str | None
                        ) -> Generator[Step, None, None]:
        """As ``steps``, strongest first: each chunk and side is sorted by the
        database and the streams are merged, so a caller that stops early does
        not turn the rest into Python rows."""
        results = []
        streams: list[Iterable[Step]] = []
        for side in self._sides(direction):
            statement = _steps_statement(side, type_ is not None, ordered=True)
            for chunk in _chunks(frontier):
                result = self.conn.execute(statement, self._params(ids=list(chunk),
                                                                   type=type_))
                results.append(result)
                streams.append(result)
        try:
            yield from heapq.merge(*streams, key=lambda step: -step[3])
        finally:
            for result in results:
                result.close()

    def node(self, node_id: str) -> GraphNode | None:
        row = self.conn.execute(_NODE_GET, self._params(node=node_id)).first()
        return None if row is None else node_record(row)

    def has_node(self, node_id: str) -> bool:
        return self.conn.execute(_NODE_EXISTS, self._params(node=node_id)).first() is not None

    def nodes(self, ids: Sequence[str]) -> dict[str, GraphNode]:
        out: dict[str, GraphNode] = {}
        for chunk in _chunks(ids):
            for row in self.conn.execute(_NODES_BY_ID, self._params(ids=list(chunk))):
                out[row[0]] = node_record(row)
        return out

    # -- queries ---------------------------------------------------------------

    def neighbors(self, node_id: str, direction: str, type_: str | None,
                  min_strength: float | None, limit: int) -> list[Neighbor]:
        """Strongest first (then by the neighbour's id and the edge type): each
        side is read in strength order through its index, ``limit`` rows at most."""
        rows: dict[EdgeKey, tuple[str, Sequence[Any]]] = {}
        params = self._params(node=node_id, lim=limit, type=type_, floor=min_strength)
        for side in self._sides(direction):
            far = 1 if side == "out" else 0
            statement = _neighbors_statement(side, type_ is not None, min_strength is not None)
            for row in self.conn.execute(statement, params):
                rows.setdefault((row[0], row[1], row[2]), (row[far], row))
        # Sorted here too: two sides merge, and ties at equal strength must not
        # depend on the database's collation.
        ordered = sorted(rows.values(), key=lambda item: (-item[1][3], item[0], item[1][2]))
        return [Neighbor(node=node_record(row[7:]), edge=edge_record(row))
                for _, row in ordered[:limit]]

    def influences(self, node_id: str, limit: int) -> list[Influence]:
        """Incoming edges, strongest first (then source, type): the in-index
        covers the query."""
        rows = self.conn.execute(_INFLUENCES, self._params(node=node_id, lim=limit)).all()
        return [Influence.model_validate({"from": s, "type": t, "strength": w})
                for s, t, w in rows]

    def _level(self, frontier: Sequence[str], direction: str, type_: str | None,
               seen: dict[str, float], via: dict[str, tuple[str, str, float]]
               ) -> dict[str, float]:
        """One breadth-first level: the nodes next to ``frontier`` not in
        ``seen``, each with the greatest total strength of a shortest path to it
        (``seen`` holds the totals of the frontier) and its predecessor in
        ``via`` as ``(near, type, strength)``; equal totals: smallest near, type."""
        level: dict[str, float] = {}
        for near, far, type_name, strength in self.steps(frontier, direction, type_):
            if far in seen:
                continue
            total = seen[near] + strength
            old = level.get(far)
            if old is None or total > old or (
                    total == old and (near, type_name) < via[far][:2]):
                level[far] = total
                via[far] = (near, type_name, strength)
        return level

    def shortest_path(self, source: str, target: str, max_depth: int, direction: str,
                      type_: str | None) -> GraphPath | None:
        """Fewest edges, then the greatest total strength; None when ``target``
        is not within ``max_depth``.

        Bidirectional breadth-first search, a whole level at a time, always
        growing the side with the smaller frontier (the backward side follows
        edges the other way). Each side keeps, per node, the greatest total
        strength of a shortest path from its end (over the predecessors of the
        previous level). The first level that reaches a node of the other side
        fixes the length ``d``: every shortest path then crosses that level at
        a node ``v`` seen by both, so the strongest is the one maximising
        ``forward(v) + backward(v)``.
        """
        if source == target:
            return GraphPath(nodes=[source], edges=[], length=0)
        back_direction = {"out": "in", "in": "out", "both": "both"}[direction]
        forward: dict[str, float] = {source: 0.0}
        backward: dict[str, float] = {target: 0.0}
        f_via: dict[str, tuple[str, str, float]] = {}
        b_via: dict[str, tuple[str, str, float]] = {}
        f_front, b_front = [source], [target]
        for _depth in range(max_depth):
            grow_forward = len(f_front) <= len(b_front)
            if grow_forward:
                level = self._level(f_front, direction, type_, forward, f_via)
                forward.update(level)
                f_front, other = sorted(level), backward
            else:
                level = self._level(b_front, back_direction, type_, backward, b_via)
                backward.update(level)
                b_front, other = sorted(level), forward
            if not level:
                return None
            meets = [v for v in level if v in other]
            if meets:
                middle = max(sorted(meets), key=lambda v: forward[v] + backward[v])
                return self._path(source, target, middle, f_via, b_via)
        return None

    def _path(self, source: str, target: str, middle: str,
              f_via: dict[str, tuple[str, str, float]],
              b_via: dict[str, tuple[str, str, float]]) -> GraphPath:
        """The path through ``middle``, its edges read whole (only these)."""
        nodes = [middle]
        # (node nearer the source, nearer the target, type, strength)
        steps: list[tuple[str, str, str, float]] = []
        while nodes[0] != source:
            near, type_name, strength = f_via[nodes[0]]
            steps.insert(0, (near, nodes[0], type_name, strength))
            nodes.insert(0, near)
        while nodes[-1] != target:
            near, type_name, strength = b_via[nodes[-1]]
            steps.append((nodes[-1], near, type_name, strength))
            nodes.append(near)
        # With direction "both" a step may follow its edge backwards; when both
        # edges exist with one type, the one walked has the strength recorded.
        wanted = [k for a, b, t, _ in steps for k in ((a, b, t), (b, a, t))]
        rows = {(r[0], r[1], r[2]): r for r in _edges_by_key(
            self.conn, self.owner, self.graph, wanted, full=True)}
        edges: list[GraphEdge] = []
        for a, b, type_name, strength in steps:
            candidates = [r for r in (rows.get((a, b, type_name)), rows.get((b, a, type_name)))
                          if r is not None]
            row = next((r for r in candidates if r[3] == strength), candidates[0])
            edges.append(edge_record(row))
        return GraphPath(nodes=nodes, edges=edges, length=len(edges))

    def subgraph(self, root: str, depth: int, direction: str, type_: str | None,
                 limit: int) -> Subgraph:
        """Breadth-first from ``root`` to ``depth``; within a level the strongest
        edges are followed first (ties: the far node's id), at most ``limit``
        nodes. The edges returned are every edge (of ``type_``) between two
        nodes returned.

        A level is read strongest first and reading stops as soon as it is known
        whether a node beyond ``limit`` exists; the edges among the nodes are read
        (whole) at the end, in one pass over the nodes' out-edges.
        """
        included: dict[str, None] = {root: None}  # insertion-ordered set
        frontier = [root]
        truncated = False
        for _depth in range(depth):
            if not frontier or truncated:
                break
            level: list[str] = []
            steps = self.strongest_steps(frontier, direction, type_)
            try:
                for _strength, group in itertools.groupby(steps, key=lambda s: s[3]):
                    for far in sorted({s[1] for s in group}):
                        if far in included:
                            continue
                        if len(included) >= limit:
                            truncated = True
                            break
                        included[far] = None
                        level.append(far)
                    if truncated:
                        break
            finally:
                steps.close()
            frontier = level
        ids = list(included)
        records = self.nodes(ids)
        edges: list[Sequence[Any]] = []
        statement = _EDGES_AMONG if type_ is None else _EDGES_AMONG_TYPED
        for chunk in _chunks(ids):
            edges.extend(self.conn.execute(statement, self._params(
                ids=list(chunk), among=ids, type=type_)))
        edges.sort(key=lambda r: (r[0], r[1], r[2]))
        return Subgraph(nodes=[records[n] for n in included if n in records],
                        edges=[edge_record(r) for r in edges], truncated=truncated)
