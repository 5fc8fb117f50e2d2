"""Records of the knowledge-graph store (``stores/graphs.py``). They double as
the HTTP response bodies, like those of ``memvault.models``.

An edge's ends are ``from`` and ``to`` on the wire (seed 002's names); ``from``
is a Python keyword, so the attribute is ``from_``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GraphInfo", "GraphNode", "GraphEdge", "Neighbor", "Influence", "GraphPath",
           "Subgraph", "Pattern", "BatchResult", "node_record", "edge_record"]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class _Aliased(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)


class GraphInfo(_Record):
    """A graph with its counts (kept up to date by every write, never counted)."""

    name: str
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    node_count: int = 0
    edge_count: int = 0
    pattern_count: int = 0
    node_types: dict[str, int] = Field(default_factory=dict)
    edge_types: dict[str, int] = Field(default_factory=dict)
    created_at: datetime
    modified_at: datetime


class GraphNode(_Record):
    id: str
    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    modified_at: datetime


class GraphEdge(_Aliased):
    from_: str = Field(alias="from")
    to: str
    type: str
    strength: float = 1.0
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    modified_at: datetime


class Neighbor(_Record):
    """A node next to another, with the edge between them."""

    node: GraphNode
    edge: GraphEdge


class Influence(_Aliased):
    """An incoming edge, as seed 002's ``find_influences`` lists it."""

    from_: str = Field(alias="from")
    type: str
    strength: float


class GraphPath(_Record):
    nodes: list[str]
    edges: list[GraphEdge]
    length: int


class Subgraph(_Record):
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    truncated: bool = False


class Pattern(_Record):
    id: str
    type: str
    description: str = ""
    trigger_conditions: list[str] = Field(default_factory=list)
    confidence: float
    match: dict[str, Any] | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    modified_at: datetime


class BatchResult(_Record):
    """How many items of each kind a batch wrote or deleted."""

    nodes: int = 0
    edges: int = 0
    patterns: int = 0
    deleted_nodes: int = 0
    deleted_edges: int = 0


def node_record(row: Sequence[Any]) -> GraphNode:
    """A node from ``(id, type, data, created_at, modified_at, …)``."""
    node_id, type_, data, created, modified = row[:5]
    return GraphNode(id=node_id, type=type_, data=data or {}, created_at=created,
                     modified_at=modified)


def edge_record(row: Sequence[Any]) -> GraphEdge:
    """An edge from ``(src, dst, type, strength, data, created_at, modified_at, …)``."""
    src, dst, type_, strength, data, created, modified = row[:7]
    return GraphEdge.model_validate({"from": src, "to": dst, "type": type_,
                                     "strength": strength, "data": data or {},
                                     "created_at": created, "modified_at": modified})
