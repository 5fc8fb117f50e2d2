"""``/api/graphs``: knowledge graphs (seed 002) — graphs, nodes, edges,
traversal, patterns, batches, export/import and snapshots.

Thin: each route calls one method of ``scope.graph(name)``, which owns names,
ids, counts, isolation and traversal. Node filters on data fields arrive as
query parameters ``data.<field>=<value>`` and are parsed here into the store's
``where`` mapping (``parse_filter_value`` says what a value means). The import
route is the one ``async`` route: it spools the body (JSON, or the multipart
part ``file``) to a temp file, bounded by ``MAX_UPLOAD_MB``, then hands it to
the store in the thread pool.
"""

from __future__ import annotations

import contextlib
import tempfile
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ...errors import Invalid, PayloadTooLarge
from ...models import Page
from ...stores.graph_io import GraphSnapshot, ImportResult
from ...stores.graph_records import (
    BatchResult,
    GraphEdge,
    GraphInfo,
    GraphNode,
    GraphPath,
    Influence,
    Neighbor,
    Pattern,
    Subgraph,
)
from ...stores.graphs import MAX_DEPTH, MAX_NEIGHBORS, parse_filter_value
from ..deps import DEFAULT, Cursor, Limit, UserScope
from ..schemas import (
    GraphBatchIn,
    GraphEdgeIn,
    GraphIn,
    GraphNodeIn,
    GraphNodePatch,
    GraphPatternIn,
)

router = APIRouter(prefix="/api/graphs", tags=["graphs"])

_NODE = "/{graph}/nodes/{node_id}"
_PATTERN = "/{graph}/patterns/{pattern_id}"
Id = Annotated[str | None, Query(max_length=256)]
From = Annotated[str | None, Query(alias="from", max_length=256)]
Type = Annotated[str | None, Query(max_length=64)]
Strength = Annotated[float | None, Query()]


def _status(response: Response, created: bool) -> None:
    response.status_code = 201 if created else 200


def _where(request: Request) -> dict[str, Any]:
    """``data.<field>=<value>`` query parameters as ``{field: value}``."""
    return {key[5:]: parse_filter_value(value)
            for key, value in request.query_params.multi_items() if key.startswith("data.")}


# -- graphs ---------------------------------------------------------------------

@router.get("", response_model=Page[GraphInfo])
def list_graphs(scope: UserScope, limit: Limit = DEFAULT, cursor: Cursor = None
                ) -> Page[GraphInfo]:
    return scope.graph().list_graphs(limit, cursor)


@router.put("/{graph}", response_model=GraphInfo)
def put_graph(graph: str, body: GraphIn, scope: UserScope, response: Response) -> GraphInfo:
    info, created = scope.graph(graph).put(body.description, body.metadata)
    _status(response, created)
    return info


@router.get("/{graph}", response_model=GraphInfo)
def get_graph(graph: str, scope: UserScope) -> GraphInfo:
    return scope.graph(graph).get()


@router.delete("/{graph}", status_code=204)
def delete_graph(graph: str, scope: UserScope) -> Response:
    scope.graph(graph).delete()
    return Response(status_code=204)


# -- nodes ----------------------------------------------------------------------

@router.get("/{graph}/nodes", response_model=Page[GraphNode])
def list_nodes(graph: str, request: Request, scope: UserScope, type: Type = None,
               limit: Limit = DEFAULT, cursor: Cursor = None) -> Page[GraphNode]:
    return scope.graph(graph).nodes(type=type, where=_where(request), limit=limit,
                                    cursor=cursor)


@router.put(_NODE, response_model=GraphNode)
def put_node(graph: str, node_id: str, body: GraphNodeIn, scope: UserScope,
             response: Response) -> GraphNode:
    node, created = scope.graph(graph).put_node(node_id, body.type, body.data)
    _status(response, created)
    return node


@router.patch(_NODE, response_model=GraphNode)
def patch_node(graph: str, node_id: str, body: GraphNodePatch, scope: UserScope) -> GraphNode:
    return scope.graph(graph).patch_node(node_id, body.type, body.data)


@router.get(_NODE, response_model=GraphNode)
def get_node(graph: str, node_id: str, scope: UserScope) -> GraphNode:
    return scope.graph(graph).get_node(node_id)


@router.delete(_NODE, status_code=204)
def delete_node(graph: str, node_id: str, scope: UserScope) -> Response:
    scope.graph(graph).delete_node(node_id)
    return Response(status_code=204)


@router.get(_NODE + "/neighbors")
def neighbors(graph: str, node_id: str, scope: UserScope,
              direction: Literal["out", "in", "both"] = "out", type: Type = None,
              min_strength: Strength = None,
              limit: Annotated[int, Query(ge=1, le=MAX_NEIGHBORS)] = 100
              ) -> dict[str, list[Neighbor]]:
    return {"items": scope.graph(graph).neighbors(node_id, direction, type, min_strength,
                                                  limit)}


@router.get(_NODE + "/influences")
def influences(graph: str, node_id: str, scope: UserScope,
               limit: Annotated[int, Query(ge=1, le=MAX_NEIGHBORS)] = 1000
               ) -> dict[str, list[Influence]]:
    return {"items": scope.graph(graph).influences(node_id, limit)}


@router.get(_NODE + "/subgraph", response_model=Subgraph)
def subgraph(graph: str, node_id: str, scope: UserScope,
             depth: Annotated[int, Query(ge=0, le=MAX_DEPTH)] = 2,
             direction: Literal["out", "in", "both"] = "both", type: Type = None,
             limit: Annotated[int, Query(ge=1, le=MAX_NEIGHBORS)] = 1000) -> Subgraph:
    return scope.graph(graph).subgraph(node_id, depth, direction, type, limit)


# -- edges ----------------------------------------------------------------------

@router.put("/{graph}/edges", response_model=GraphEdge)
def put_edge(graph: str, body: GraphEdgeIn, scope: UserScope, response: Response) -> GraphEdge:
    edge, created = scope.graph(graph).put_edge(body.from_, body.to, body.type, body.strength,
                                                body.data)
    _status(response, created)
    return edge


@router.get("/{graph}/edges", response_model=Page[GraphEdge])
def list_edges(graph: str, scope: UserScope, from_: From = None, to: Id = None,
               type: Type = None, min_strength: Strength = None, limit: Limit = DEFAULT,
               cursor: Cursor = None) -> Page[GraphEdge]:
    return scope.graph(graph).edges(from_, to, type, min_strength, limit, cursor)


@router.delete("/{graph}/edges", status_code=204)
def delete_edge(graph: str, scope: UserScope,
                from_: Annotated[str, Query(alias="from", max_length=256)],
                to: Annotated[str, Query(max_length=256)],
                type: Annotated[str, Query(max_length=64)]) -> Response:
    scope.graph(graph).delete_edge(from_, to, type)
    return Response(status_code=204)


@router.get("/{graph}/path", response_model=GraphPath)
def path(graph: str, scope: UserScope,
         from_: Annotated[str, Query(alias="from", max_length=256)],
         to: Annotated[str, Query(max_length=256)],
         max_depth: Annotated[int, Query(ge=0, le=MAX_DEPTH)] = 6,
         direction: Literal["out", "both"] = "out", type: Type = None) -> GraphPath:
    return scope.graph(graph).path(from_, to, max_depth, direction, type)


# -- patterns -------------------------------------------------------------------

@router.get("/{graph}/patterns", response_model=Page[Pattern])
def list_patterns(graph: str, scope: UserScope, type: Type = None, limit: Limit = DEFAULT,
                  cursor: Cursor = None) -> Page[Pattern]:
    return scope.graph(graph).patterns(type, limit, cursor)


@router.put(_PATTERN, response_model=Pattern)
def put_pattern(graph: str, pattern_id: str, body: GraphPatternIn, scope: UserScope,
                response: Response) -> Pattern:
    pattern, created = scope.graph(graph).put_pattern(
        pattern_id, body.type, body.description, body.trigger_conditions, body.confidence,
        body.match.model_dump(exclude_none=True) if body.match else None, body.data)
    _status(response, created)
    return pattern


@router.get(_PATTERN, response_model=Pattern)
def get_pattern(graph: str, pattern_id: str, scope: UserScope) -> Pattern:
    return scope.graph(graph).get_pattern(pattern_id)


@router.delete(_PATTERN, status_code=204)
def delete_pattern(graph: str, pattern_id: str, scope: UserScope) -> Response:
    scope.graph(graph).delete_pattern(pattern_id)
    return Response(status_code=204)


@router.get(_PATTERN + "/nodes", response_model=Page[GraphNode])
def pattern_nodes(graph: str, pattern_id: str, scope: UserScope, limit: Limit = DEFAULT,
                  cursor: Cursor = None) -> Page[GraphNode]:
    return scope.graph(graph).pattern_nodes(pattern_id, limit, cursor)


# -- batches --------------------------------------------------------------------

@router.post("/{graph}/batch", response_model=BatchResult)
def batch(graph: str, body: GraphBatchIn, scope: UserScope) -> BatchResult:
    return scope.graph(graph).batch(
        nodes=[n.model_dump(exclude_none=True) for n in body.nodes],
        edges=[e.model_dump(by_alias=True, exclude_none=True) for e in body.edges],
        patterns=[p.model_dump(exclude_none=True) for p in body.patterns],
        delete_nodes=body.delete_nodes,
        delete_edges=[e.model_dump(by_alias=True) for e in body.delete_edges])


# -- export, import, snapshots ------------------------------------------------------

class GraphSnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: StrictStr | None = Field(None, max_length=256)


@router.get("/{graph}/export")
def export_graph(graph: str, scope: UserScope) -> StreamingResponse:
    pieces = scope.graph(graph).export()  # NotFound here, before the response starts
    return StreamingResponse(pieces, media_type="application/json", headers={
        "Content-Disposition": f'attachment; filename="{graph}.json"'})


async def _import_body(request: Request, limit: int, into: Any) -> Any:
    """The graph file: the multipart part ``file`` (the form is closed by the
    caller's ``into`` stack), or the whole body spooled to a temp file (memory
    only up to 1 MB); refused past ``limit`` bytes."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        into.push_async_callback(form.close)
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise Invalid("the multipart part 'file' is required", field="file")
        if part.size is not None and part.size > limit:
            raise PayloadTooLarge(f"file is larger than {limit} bytes")
        return part.file
    spool = into.enter_context(tempfile.SpooledTemporaryFile(max_size=1 << 20))  # noqa: SIM115
    size = 0
    async for block in request.stream():
        size += len(block)
        if size > limit:
            raise PayloadTooLarge(f"graph is larger than {limit} bytes")
        spool.write(block)
    spool.seek(0)
    return spool


@router.post("/{graph}/import", response_model=ImportResult)
async def import_graph(graph: str, request: Request, scope: UserScope,
                       mode: Literal["merge", "replace"] = "merge") -> ImportResult:
    store = scope.graph(graph)
    async with contextlib.AsyncExitStack() as stack:
        body = await _import_body(request, scope.ctx.settings.max_upload_mb << 20, stack)
        return await run_in_threadpool(store.import_json, body, mode)


@router.post("/{graph}/snapshots", status_code=201, response_model=GraphSnapshot)
def create_snapshot(graph: str, scope: UserScope, body: GraphSnapshotIn | None = None
                    ) -> GraphSnapshot:
    return scope.graph(graph).snapshot(body.label if body else None)


@router.get("/{graph}/snapshots", response_model=Page[GraphSnapshot])
def list_snapshots(graph: str, scope: UserScope, limit: Limit = DEFAULT, cursor: Cursor = None
                   ) -> Page[GraphSnapshot]:
    return scope.graph(graph).snapshots(limit, cursor)


@router.post("/{graph}/snapshots/{snapshot_id}/restore", response_model=GraphInfo)
def restore_snapshot(graph: str, snapshot_id: str, scope: UserScope) -> GraphInfo:
    store = scope.graph(graph)
    store.restore(snapshot_id)
    return store.get()


@router.delete("/{graph}/snapshots/{snapshot_id}", status_code=204)
def delete_snapshot(graph: str, snapshot_id: str, scope: UserScope) -> Response:
    scope.graph(graph).delete_snapshot(snapshot_id)
    return Response(status_code=204)
