"""Seed 002's layout: ``storage/graph.json`` (its knowledge graph: nodes,
edges, patterns, metadata) and ``storage/workflow_history.json`` (a list of
workflow executions with their steps). Nothing in it names a user: everything
goes to the ``--user`` account.

- ``graph.json`` becomes the graph called ``graph`` (the file's name), loaded
  by ``graph_io.import_graph`` in one transaction, timestamps kept. Only items
  the graph lacks are loaded (a second run changes nothing, and edits made
  since the first import stay). An item ``import_graph`` refuses is reported
  and left out, and the rest loaded.
- Each workflow execution becomes a finished run with its steps (numbered in
  their order), started at the execution's timestamp. Its key, the sha256 of
  the entry, is kept in the run's metadata (``legacy_key``): that is how a
  second run knows it; a run left unfinished by an interrupted import is
  replaced.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from ...errors import Invalid, NotFound
from ...ids import utcnow
from ...scope import Scope
from ...stores.runs import STEP_STATUSES, RunStore
from ._common import (
    ALREADY,
    RECORD_ERRORS,
    LegacyReport,
    describe,
    page_all,
    parse_time,
    read_json,
)

__all__ = ["locate", "run", "GRAPH_NAME"]

GRAPH_NAME = "graph"
_EDGE_FIELD = re.compile(r"^edges\[(\d+)\]")


def locate(root: Path) -> Path:
    """The seed's ``storage`` folder under ``root`` (``root`` itself may be it).

    Raises:
        NotFound: it holds neither ``graph.json`` nor ``workflow_history.json``.
    """
    for base in (root / "storage", root):
        if (base / "graph.json").exists() or (base / "workflow_history.json").exists():
            return base
    raise NotFound(f"no seed002 data under {root} "
                   "(expected storage/graph.json or storage/workflow_history.json)")


def run(scope: Scope, root: Path, report: LegacyReport) -> None:
    base = locate(root)
    for name, step in (("graph.json", _graph), ("workflow_history.json", _history)):
        path = base / name
        if path.exists():
            step(scope, path, report)
        else:
            report.notes.append(f"{path} is missing: nothing of it imported")


# -- the graph ------------------------------------------------------------------------------

def _edge_key(edge: Any) -> tuple[str, str, str] | None:
    """``(from, to, type)``, or ``None`` for a malformed edge (left for
    ``import_graph`` to name)."""
    if not isinstance(edge, Mapping):
        return None
    key = (edge.get("from"), edge.get("to"), edge.get("type"))
    return key if all(isinstance(k, str) for k in key) else None  # type: ignore[return-value]


def _graph(scope: Scope, path: Path, report: LegacyReport) -> None:
    document = read_json(path, report, dict)
    if document is None:
        return
    sections: dict[str, Any] = {}
    for name, shape in (("nodes", dict), ("edges", list), ("patterns", dict)):
        value = document.get(name)
        if value is not None and not isinstance(value, shape):
            report.problem(path, f"malformed section: {name} is not "
                           f"{'an object' if shape is dict else 'a list'}")
            value = None
        sections[name] = value or shape()
    nodes: dict[str, Any] = dict(sections["nodes"])
    patterns: dict[str, Any] = dict(sections["patterns"])
    edges: list[Any] = list(sections["edges"])
    report.expect(len(nodes) + len(edges) + len(patterns))
    graph = scope.graph(GRAPH_NAME)
    have_nodes: set[str] = set()
    have_edges: set[tuple[str, str, str] | None] = set()
    have_patterns: set[str] = set()
    try:
        graph.get()
    except NotFound:
        pass
    else:
        have_nodes = {n.id for n in page_all(lambda c: graph.nodes(limit=200, cursor=c))}
        have_edges = {(e.from_, e.to, e.type) for e in
                      page_all(lambda c: graph.edges(limit=200, cursor=c))}
        have_patterns = {p.id for p in page_all(lambda c: graph.patterns(limit=200, cursor=c))}
    for key in [k for k in nodes if k in have_nodes]:
        del nodes[key]
        report.skipped("nodes", ALREADY)
    for key in [k for k in patterns if k in have_patterns]:
        del patterns[key]
        report.skipped("patterns", ALREADY)
    kept: list[Any] = []
    in_file: set[tuple[str, str, str]] = set()
    for edge in edges:
        edge_key = _edge_key(edge)
        if edge_key is not None and edge_key in have_edges:
            report.skipped("edges", ALREADY)
        elif edge_key is not None and edge_key in in_file:
            src, dst, type_ = edge_key
            report.skipped("edges", "the same edge again in the file", path=path,
                           record=f"{src}->{dst} ({type_})")
        else:
            if edge_key is not None:
                in_file.add(edge_key)
            kept.append(edge)
    edges = kept
    # import_graph is all or nothing: drop each item it names as invalid and retry.
    while nodes or edges or patterns:
        body = {**document, "nodes": nodes, "edges": edges, "patterns": patterns}
        try:
            result = graph.import_json(body, mode="merge")
        except Invalid as exc:
            if not _drop(exc, nodes, edges, patterns, path, report):
                for name, n in (("nodes", len(nodes)), ("edges", len(edges)),
                                ("patterns", len(patterns))):
                    report.skipped(name, "graph.json refused", n)
                report.problem(path, describe(exc))
                break
            continue
        report.imported("nodes", result.nodes)
        report.imported("edges", result.edges)
        report.imported("patterns", result.patterns)
        break
    report.advance(len(sections["nodes"]) + len(sections["edges"]) + len(sections["patterns"]))


def _drop(exc: Invalid, nodes: dict[str, Any], edges: list[Any], patterns: dict[str, Any],
          path: Path, report: LegacyReport) -> bool:
    """Remove the item ``exc`` names (``nodes.AAPL.type``, ``edges[3].to``,
    ``patterns.p1``), reporting it; ``False`` when it names none of them."""
    name = exc.field or ""
    reason = describe(exc)
    if match := _EDGE_FIELD.match(name):
        index = int(match.group(1))
        if index < len(edges):
            edges.pop(index)
            report.skipped("edges", reason, path=path, record=name)
            return True
        return False
    for kind, section in (("nodes", nodes), ("patterns", patterns)):
        # Ids may hold dots: the longest id the field starts with is the item.
        found = [k for k in section if name == f"{kind}.{k}" or name.startswith(f"{kind}.{k}.")]
        if found:
            key = max(found, key=len)
            del section[key]
            report.skipped(kind, reason, path=path, record=f"{kind}.{key}")
            return True
    return False


# -- the workflow history --------------------------------------------------------------------

def _history(scope: Scope, path: Path, report: LegacyReport) -> None:
    history = read_json(path, report, list)
    if history is None:
        return
    report.expect(len(history))
    known: dict[str, Any] = {}
    for r in page_all(lambda c: scope.runs.list(limit=200, cursor=c)):
        key = r.metadata.get("legacy_key")
        if isinstance(key, str):
            known[key] = r
    occurrences: Counter[str] = Counter()
    for index, entry in enumerate(history):
        report.advance()
        where = f"[{index}]"
        if not isinstance(entry, dict):
            report.skipped("runs", "malformed record: not an object", path=path, record=where)
            continue
        digest = hashlib.sha256(json.dumps(entry, sort_keys=True, ensure_ascii=False,
                                           default=str).encode()).hexdigest()
        occurrences[digest] += 1  # identical entries are distinct runs
        key = f"{digest}#{occurrences[digest]}"
        found = known.get(key)
        if found is not None and found.status != "running":
            report.skipped("runs", ALREADY)
            report.skipped("run_steps", ALREADY, found.step_count)
            continue
        try:
            if found is not None:  # left unfinished by an interrupted import
                scope.runs.delete(found.id)
            steps = _import_run(scope, entry, key)
        except RECORD_ERRORS as exc:
            report.skipped("runs", describe(exc), path=path, record=where)
            continue
        report.imported("runs")
        report.imported("run_steps", steps)


def _import_run(scope: Scope, entry: dict[str, Any], key: str) -> int:
    """One execution as a finished run; returns how many steps it got."""
    started: datetime = parse_time(entry.get("timestamp")) or utcnow()
    # The run store stamps times with its context's clock: the legacy time here.
    store = RunStore(replace(scope.ctx, clock=lambda: started), scope.owner_id)
    steps = entry.get("steps") or []
    if not isinstance(steps, list):
        raise Invalid("steps must be a list", field="steps")
    workflow = entry.get("workflow") or "workflow"
    known = {"workflow", "timestamp", "steps", "result", "output", "error"}
    extras = {k: v for k, v in entry.items() if k not in known}
    run = store.create(workflow, metadata={"legacy_key": key, "imported_from": "seed002",
                                           **({"legacy": extras} if extras else {})})
    try:
        for number, step in enumerate(steps, start=1):
            if not isinstance(step, dict):
                raise Invalid(f"steps[{number - 1}] is not an object", field="steps")
            result = step.get("result")
            status = result.get("status") if isinstance(result, dict) else None
            agent = step.get("agent")
            store.append_step(run.id, str(step.get("action") or f"step {number}"),
                              agent=agent if isinstance(agent, str) else None,
                              status=status if status in STEP_STATUSES else "completed",
                              result=result, step=number)
        error = entry.get("error")
        store.complete(run.id, "failed" if error else "completed",
                       output=entry.get("output", entry.get("result")),
                       error=error if isinstance(error, str) else None)
    except BaseException:
        store.delete(run.id)  # all or nothing; the next run tries again
        raise
    return len(steps)
