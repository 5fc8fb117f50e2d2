"""Knowledge graph (issue 7): a power-law graph of 100,000 nodes and 1,000,000
edges in memvault's graph store, beside networkx holding the same graph in memory.

Measured, one call at a time, p50/p99 each:

- bulk import through ``graph.batch()`` in chunks of 10,000 items (nodes first);
- node get; out-neighbours (``limit=100``, strongest first) of median-degree nodes
  and of the node with the most out-edges; influences (``limit=1000``) of
  median-in-degree nodes and of the node with the most in-edges;
- a 3-hop subgraph (``direction=both``) capped at 1,000 nodes from random nodes;
- the shortest path within 6 hops (``direction=out``) between random pairs.

networkx runs the same semantics on a ``DiGraph``: neighbours and influences are
sorted by strength and cut at the limit; the subgraph is the same breadth-first
walk as ``stores/graph_walk.py`` (strongest edges first within a level, capped);
the path is shown both as the same level-by-level walk and as networkx's own
``bidirectional_shortest_path`` (fewest edges, no strength tie-break), the
answer one would write with networkx.

The graph: ids ``n000000``…; each edge's ends are drawn from a Zipf-like
distribution (weight of the node of rank r ∝ r^-0.8, one random rank order for
both ends, so hubs have many in- and out-edges), pairs deduplicated, no
self-loops, one of 4 edge types and a strength in (0, 1] each. Seeded.

Memory: networkx's graph is measured with ``tracemalloc`` (bytes Python holds
for it) and as the process RSS delta; memvault's as the RSS delta and the
``tracemalloc`` peak over its query phase (the SQLite page cache is C memory:
16 MB per connection; PostgreSQL's buffers live in the server process).

Run alone (one backend, prints the table and writes markdown)::

    python bench/graphs.py --backend sqlite|postgresql [--nodes 100000] [--edges 1000000]
                           [--output /work/notes/bench_graphs.md]

or as the ``graphs`` section of ``bench/run.py`` (10k nodes / 100k edges with ``--quick``).
The process pins itself to one core (the embedded PostgreSQL it starts inherits it).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/graphs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import (  # noqa: E402
    Env,
    Result,
    Stats,
    fmt_ms,
    fmt_rate,
    open_env,
    pin_one_cpu,
    settle,
    stats,
)
from memvault.errors import NotFound  # noqa: E402

SECTION = "graphs"
SEED = 7
ALPHA = 0.8
EDGE_TYPES = ("CAUSES", "CORRELATES", "AFFECTS", "HOLDS")
NODE_TYPES = ("stock", "sector", "indicator", "regime")
CHUNK = 10_000
NEIGHBOR_LIMIT = 100
INFLUENCE_LIMIT = 1000
SUBGRAPH_DEPTH = 3
SUBGRAPH_LIMIT = 1000
PATH_DEPTH = 6


# -- the graph --------------------------------------------------------------------

@dataclass
class Graph:
    """Node ids and ``(src, dst, type, strength)`` edges, plus what the queries pick."""

    ids: list[str]
    types: list[str]
    src: list[int]
    dst: list[int]
    etype: list[str]
    strength: list[float]
    out_deg: list[int] = field(default_factory=list)
    in_deg: list[int] = field(default_factory=list)


def generate(nodes: int, edges: int, seed: int = SEED) -> Graph:
    rng = np.random.default_rng(seed)
    weights = np.arange(1, nodes + 1, dtype=np.float64) ** -ALPHA
    weights /= weights.sum()
    rank_to_node = rng.permutation(nodes)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < edges:  # oversample, drop self-loops and repeated pairs
        want = int((edges - len(keys)) * 1.3) + 1000
        s = rank_to_node[rng.choice(nodes, size=want, p=weights)]
        d = rank_to_node[rng.choice(nodes, size=want, p=weights)]
        fresh = (s * nodes + d)[s != d]
        keys = np.concatenate([keys, fresh])
        _, first = np.unique(keys, return_index=True)
        keys = keys[np.sort(first)]
    keys = keys[:edges]
    src = (keys // nodes).astype(np.int64)
    dst = (keys % nodes).astype(np.int64)
    etype = rng.integers(0, len(EDGE_TYPES), size=edges)
    strength = np.round(rng.uniform(0.001, 1.0, size=edges), 3)
    ntype = rng.integers(0, len(NODE_TYPES), size=nodes)
    graph = Graph(ids=[f"n{i:06d}" for i in range(nodes)],
                  types=[NODE_TYPES[t] for t in ntype],
                  src=src.tolist(), dst=dst.tolist(),
                  etype=[EDGE_TYPES[t] for t in etype], strength=strength.tolist())
    graph.out_deg = np.bincount(src, minlength=nodes).tolist()
    graph.in_deg = np.bincount(dst, minlength=nodes).tolist()
    return graph


def _node_items(g: Graph) -> Iterator[dict[str, Any]]:
    for i, (node_id, type_) in enumerate(zip(g.ids, g.types, strict=True)):
        yield {"id": node_id, "type": type_, "data": {"i": i, "name": f"node {i}"}}


def _edge_items(g: Graph) -> Iterator[dict[str, Any]]:
    ids = g.ids
    for s, d, t, w in zip(g.src, g.dst, g.etype, g.strength, strict=True):
        yield {"from": ids[s], "to": ids[d], "type": t, "strength": w}


def _chunked(items: Iterator[dict[str, Any]], size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_networkx(g: Graph) -> nx.DiGraph:
    graph = nx.DiGraph()
    for i, (node_id, type_) in enumerate(zip(g.ids, g.types, strict=True)):
        graph.add_node(node_id, type=type_, data={"i": i, "name": f"node {i}"})
    ids = g.ids
    for s, d, t, w in zip(g.src, g.dst, g.etype, g.strength, strict=True):
        graph.add_edge(ids[s], ids[d], type=t, strength=w, data={})
    return graph


# -- networkx versions of the queries (same semantics as the store) ----------------

def nx_neighbors(graph: nx.DiGraph, node: str, limit: int = NEIGHBOR_LIMIT) -> list[Any]:
    items = sorted(graph.succ[node].items(),
                   key=lambda kv: (-kv[1]["strength"], kv[0], kv[1]["type"]))[:limit]
    return [(graph.nodes[n], e) for n, e in items]


def nx_influences(graph: nx.DiGraph, node: str, limit: int = INFLUENCE_LIMIT) -> list[Any]:
    items = sorted(graph.pred[node].items(),
                   key=lambda kv: (-kv[1]["strength"], kv[0], kv[1]["type"]))[:limit]
    return [(n, e["type"], e["strength"]) for n, e in items]


def _nx_expand(graph: nx.DiGraph, frontier: Sequence[str], both: bool
               ) -> list[tuple[str, str, dict[str, Any]]]:
    found = [(n, m, e) for n in frontier for m, e in graph.succ[n].items()]
    if both:
        found += [(n, m, e) for n in frontier for m, e in graph.pred[n].items()]
    return found


def nx_subgraph(graph: nx.DiGraph, root: str, depth: int = SUBGRAPH_DEPTH,
                limit: int = SUBGRAPH_LIMIT) -> tuple[list[Any], list[Any], bool]:
    """``Walker.subgraph`` on the in-memory graph (direction both)."""
    included: dict[str, None] = {root: None}
    frontier = [root]
    truncated = False
    for _ in range(depth):
        if not frontier or truncated:
            break
        found = _nx_expand(graph, frontier, both=True)
        found.sort(key=lambda item: (-item[2]["strength"], item[1], item[2]["type"]))
        level = []
        for _near, far, _e in found:
            if far not in included:
                if len(included) >= limit:
                    truncated = True
                    continue
                included[far] = None
                level.append(far)
        frontier = level
    sub = graph.subgraph(included)
    return ([graph.nodes[n] for n in included], sorted(sub.edges(data=True)), truncated)


def nx_level_path(graph: nx.DiGraph, source: str, target: str,
                  max_depth: int = PATH_DEPTH) -> list[str] | None:
    """``Walker.shortest_path`` on the in-memory graph (direction out)."""
    if source == target:
        return [source]
    best: dict[str, float] = {source: 0.0}
    via: dict[str, tuple[str, str]] = {}
    frontier = [source]
    for _ in range(max_depth):
        level: dict[str, float] = {}
        for near in frontier:
            for far, e in graph.succ[near].items():
                if far in best:
                    continue
                total = best[near] + e["strength"]
                if far not in level or total > level[far] or (
                        total == level[far] and (near, e["type"]) < via[far]):
                    level[far] = total
                    via[far] = (near, e["type"])
        if not level:
            return None
        best.update(level)
        if target in level:
            path = [target]
            while path[-1] != source:
                path.append(via[path[-1]][0])
            return path[::-1]
        frontier = sorted(level)
    return None


def nx_bidirectional(graph: nx.DiGraph, source: str, target: str) -> list[str] | None:
    try:
        path: list[str] = nx.bidirectional_shortest_path(graph, source, target)
    except nx.NetworkXNoPath:
        return None
    return path if len(path) - 1 <= PATH_DEPTH else None


# -- timing -------------------------------------------------------------------------

def timed(fn: Callable[[Any], Any], args: Sequence[Any], budget_s: float = 120.0,
          warmup: int = 3) -> Stats:
    """Per-call latency of ``fn(a)`` for each of ``args`` (stops early after
    ``budget_s`` seconds, keeping at least 5 samples)."""
    for a in args[:warmup]:
        fn(a)
    gc.collect()
    out: list[int] = []
    clock = time.perf_counter_ns
    deadline = time.monotonic() + budget_s
    for a in args:
        t0 = clock()
        fn(a)
        out.append(clock() - t0)
        if len(out) >= 5 and time.monotonic() > deadline:
            break
    return stats(out)


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


@dataclass
class Picks:
    """The arguments of each query, chosen once and used for both sides."""

    gets: list[str]
    median_out: list[str]
    hub_out: str
    median_in: list[str]
    hub_in: str
    roots: list[str]
    pairs: list[tuple[str, str]]
    median_out_deg: int
    median_in_deg: int


def pick(g: Graph, seed: int = SEED) -> Picks:
    rnd = random.Random(seed)
    n = len(g.ids)
    med_out = sorted(g.out_deg)[n // 2]
    med_in = sorted(g.in_deg)[n // 2]
    at_med_out = [g.ids[i] for i in range(n) if g.out_deg[i] == med_out]
    at_med_in = [g.ids[i] for i in range(n) if g.in_deg[i] == med_in]
    with_out = [g.ids[i] for i in range(n) if g.out_deg[i] > 0]
    with_in = [g.ids[i] for i in range(n) if g.in_deg[i] > 0]
    return Picks(
        gets=[rnd.choice(g.ids) for _ in range(2000)],
        median_out=[rnd.choice(at_med_out) for _ in range(1000)],
        hub_out=g.ids[max(range(n), key=g.out_deg.__getitem__)],
        median_in=[rnd.choice(at_med_in) for _ in range(1000)],
        hub_in=g.ids[max(range(n), key=g.in_deg.__getitem__)],
        roots=[rnd.choice(g.ids) for _ in range(200)],
        pairs=[(rnd.choice(with_out), rnd.choice(with_in)) for _ in range(200)],
        median_out_deg=med_out, median_in_deg=med_in)


# -- the measurement ----------------------------------------------------------------

@dataclass
class Row:
    operation: str
    vault: Stats | None
    networkx: Stats | None = None
    networkx_label: str = "networkx"
    note: str = ""


@dataclass
class Report:
    backend: str
    nodes: int
    edges: int
    import_s: float = 0.0
    node_import_s: float = 0.0
    rows: list[Row] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)


def _try_path(store: Any, pair: tuple[str, str]) -> Any:
    try:
        return store.path(pair[0], pair[1], max_depth=PATH_DEPTH, direction="out")
    except NotFound:
        return None


def measure_all(env: Env, nodes: int, edges: int, log: Callable[[str], None] = print,
                budget_s: float = 120.0) -> Report:
    t0 = time.perf_counter()
    g = generate(nodes, edges)
    picks = pick(g)
    report = Report(env.backend, nodes, edges)
    log(f"  generated {nodes:,} nodes / {len(g.src):,} edges in {time.perf_counter() - t0:.1f}s; "
        f"out-degree median {picks.median_out_deg}, max {max(g.out_deg):,} ({picks.hub_out}); "
        f"in-degree median {picks.median_in_deg}, max {max(g.in_deg):,} ({picks.hub_in})")
    report.facts["degrees"] = (
        f"out-degree median {picks.median_out_deg}, max {max(g.out_deg):,}; in-degree median "
        f"{picks.median_in_deg}, max {max(g.in_deg):,}; nodes without out-edges "
        f"{sum(1 for d in g.out_deg if d == 0):,}")

    with env.vault() as vault:
        store = vault.for_user(env.user(vault)).graph("bench")
        rss0 = rss_bytes()
        started = time.perf_counter()
        for chunk in _chunked(_node_items(g)):
            store.batch(nodes=chunk)
        report.node_import_s = time.perf_counter() - started
        done = 0
        for chunk in _chunked(_edge_items(g)):
            store.batch(edges=chunk)
            done += len(chunk)
            if done % 100_000 == 0:
                log(f"    {done:,} edges, {time.perf_counter() - started:.0f}s")
        report.import_s = time.perf_counter() - started
        settle(vault)
        info = store.get()
        log(f"  imported in {report.import_s:.1f}s (nodes {report.node_import_s:.1f}s); "
            f"graph says {info.node_count:,} nodes / {info.edge_count:,} edges")
        report.facts["vault size"] = _store_size(vault)

        gc.collect()
        tracemalloc.start()
        rss1 = rss_bytes()
        vrows = {
            "node get": timed(store.get_node, picks.gets, budget_s),
            "neighbours, median node": timed(
                lambda n: store.neighbors(n, limit=NEIGHBOR_LIMIT), picks.median_out, budget_s),
            "neighbours, top hub": timed(
                lambda n: store.neighbors(n, limit=NEIGHBOR_LIMIT), [picks.hub_out] * 100,
                budget_s),
            "influences, median node": timed(
                lambda n: store.influences(n, limit=INFLUENCE_LIMIT), picks.median_in, budget_s),
            "influences, top hub": timed(
                lambda n: store.influences(n, limit=INFLUENCE_LIMIT), [picks.hub_in] * 100,
                budget_s),
            "3-hop subgraph ≤1,000 nodes": timed(
                lambda n: store.subgraph(n, depth=SUBGRAPH_DEPTH, limit=SUBGRAPH_LIMIT),
                picks.roots, budget_s),
            "path ≤6 hops, random pair": timed(lambda p: _try_path(store, p), picks.pairs,
                                                budget_s),
        }
        _, vault_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss2 = rss_bytes()
        found = sum(1 for p in picks.pairs[:vrows["path ≤6 hops, random pair"].n]
                    if _try_path(store, p) is not None)
        report.facts["paths found (vault)"] = f"{found} of {vrows['path ≤6 hops, random pair'].n}"
        sub = store.subgraph(picks.roots[0], depth=SUBGRAPH_DEPTH, limit=SUBGRAPH_LIMIT)
        report.facts["subgraph example"] = (f"{len(sub.nodes)} nodes, {len(sub.edges):,} edges, "
                                            f"truncated={sub.truncated}")
        report.facts["vault memory"] = (
            f"RSS {_mib(rss2)} after queries (+{_mib(rss2 - rss0)} since before the import, "
            f"+{_mib(rss2 - rss1)} over the queries); Python heap peak during queries "
            f"{_mib(vault_peak)}")
        log(f"  vault done; {report.facts['vault memory']}")

    del vault
    gc.collect()
    rss_before = rss_bytes()
    tracemalloc.start()
    t0 = time.perf_counter()
    graph = build_networkx(g)
    build_s = time.perf_counter() - t0
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    rss_after = rss_bytes()
    report.facts["networkx memory"] = (
        f"{_mib(held)} held by the DiGraph (tracemalloc), RSS +{_mib(rss_after - rss_before)}; "
        f"built in {build_s:.1f}s (under tracemalloc)")
    log(f"  {report.facts['networkx memory']}")
    x = {
        "node get": timed(lambda n: graph.nodes[n], picks.gets, budget_s),
        "neighbours, median node": timed(lambda n: nx_neighbors(graph, n), picks.median_out,
                                         budget_s),
        "neighbours, top hub": timed(lambda n: nx_neighbors(graph, n), [picks.hub_out] * 100,
                                     budget_s),
        "influences, median node": timed(lambda n: nx_influences(graph, n), picks.median_in,
                                         budget_s),
        "influences, top hub": timed(lambda n: nx_influences(graph, n), [picks.hub_in] * 100,
                                     budget_s),
        "3-hop subgraph ≤1,000 nodes": timed(lambda n: nx_subgraph(graph, n), picks.roots,
                                              budget_s),
        "path ≤6 hops, random pair": timed(lambda p: nx_level_path(graph, *p), picks.pairs,
                                            budget_s),
    }
    bidi = timed(lambda p: nx_bidirectional(graph, *p), picks.pairs, budget_s)
    tried = picks.pairs[:vrows["path ≤6 hops, random pair"].n]
    agree = sum(1 for p in tried if nx_level_path(graph, *p) is not None)
    report.facts["paths found (networkx, same pairs)"] = f"{agree} of {len(tried)}"
    for op, v in vrows.items():
        report.rows.append(Row(op, v, x[op],
                               "networkx (same BFS)" if op.startswith("path") else "networkx"))
    report.rows.append(Row("path ≤6 hops, random pair", None, bidi,
                           "networkx bidirectional_shortest_path"))
    return report


def _store_size(vault: Any) -> str:
    if vault.backend == "sqlite":
        path = Path(vault.db.backend.path)
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        return f"SQLite file {_mib(size)}"
    with vault.db.engine.connect() as conn:
        size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar()
    return f"PostgreSQL database {_mib(size or 0)}"


# -- output -------------------------------------------------------------------------

def _ratio(v: Stats | None, x: Stats | None) -> str:
    if v is None or x is None or x.p50_ns == 0:
        return ""
    return f"{v.p50_ns / x.p50_ns:,.1f}x"


def to_results(report: Report) -> list[Result]:
    label = f"{report.nodes // 1000}k nodes / {report.edges // 1000}k edges"
    out = [Result(SECTION, f"graph import {label} (batch of 10k)",
                  throughput=fmt_rate(report.edges + report.nodes, report.import_s, "items"),
                  note=f"{report.import_s:.0f}s total, nodes {report.node_import_s:.1f}s")]
    for row in report.rows:
        if row.vault is not None:
            out.append(Result(SECTION, f"graph {row.operation}", row.vault,
                              note=f"{_ratio(row.vault, row.networkx)} networkx p50"))
        if row.networkx is not None:
            out.append(Result(SECTION, f"graph {row.operation} ({row.networkx_label})",
                              row.networkx))
    out += [Result(SECTION, f"graph: {k}", note=v) for k, v in report.facts.items()]
    return out


def markdown(report: Report) -> str:
    lines = [f"### {report.backend}: {report.nodes:,} nodes / {report.edges:,} edges", "",
             f"- import through `batch()` (10,000 items a call): {report.import_s:.1f} s "
             f"({fmt_rate(report.nodes + report.edges, report.import_s, 'items')}; "
             f"nodes {report.node_import_s:.1f} s)"]
    lines += [f"- {k}: {v}" for k, v in report.facts.items()]
    lines += ["", "| query | calls | vault p50 | vault p99 | networkx p50 | networkx p99 "
              "| vault / networkx (p50) |", "|---|--:|--:|--:|--:|--:|--:|"]
    for r in report.rows:
        v, x = r.vault, r.networkx
        name = r.operation if v is not None else f"{r.operation} — {r.networkx_label}"
        lines.append(f"| {name} | {(v or x).n if (v or x) else 0:,} | "
                     f"{fmt_ms(v.p50_ns) if v else '—'} | {fmt_ms(v.p99_ns) if v else '—'} | "
                     f"{fmt_ms(x.p50_ns) if x else ''} | {fmt_ms(x.p99_ns) if x else ''} | "
                     f"{_ratio(v, x)} |")
    return "\n".join(lines)


def run(env: Env) -> list[Result]:
    """The ``graphs`` section of bench/run.py."""
    nodes, edges = (10_000, 100_000) if env.config.quick else (100_000, 1_000_000)
    return to_results(measure_all(env, nodes, edges, log=lambda s: print(s, flush=True)))



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds at most per measured query kind (default 120)")
    parser.add_argument("--output", type=Path, default=None,
                        help="append the markdown table to this file")
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError, OSError):
        pin_one_cpu()
    from memvault.logs import configure_logging
    from memvault.settings import load_settings
    configure_logging(load_settings(log_level="WARNING"))
    with open_env(args.backend) as env:
        report = measure_all(env, args.nodes, args.edges,
                             log=lambda s: print(s, flush=True), budget_s=args.budget)
    text = markdown(report)
    print(text)
    if args.output is not None:
        with args.output.open("a") as fh:
            fh.write(text + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
