"""Stateful property test: a knowledge graph against networkx.

A hypothesis state machine drives one graph (nodes, edges, patches, deletes,
batches — valid and not — and close-and-reopen) through the library, mirrors
each step on a networkx ``MultiDiGraph`` (one edge key per edge type), and
checks after every step: counts, neighbours and influences, shortest-path
lengths (and that the path returned is the strongest of the shortest), and
subgraphs. Runs on every backend; each example starts from an empty vault.
Export/import and snapshots are not covered here (not built yet).

``MEMVAULT_SLOW=1`` runs many more and longer examples.
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import hypothesis
import networkx as nx
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import memvault
from memvault import Invalid, NotFound, Settings, Vault
from memvault.stores.graphs import GraphStore

from ..conftest import PgDatabases

SLOW = bool(os.environ.get("MEMVAULT_SLOW"))
RUN = hypothesis.settings(
    max_examples=100 if SLOW else 8,
    stateful_step_count=50 if SLOW else 20,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much],
)

IDS = st.sampled_from(["A", "B", "C", "D", "E", "F"])
NODE_TYPES = st.sampled_from(["stock", "regime"])
EDGE_TYPES = st.sampled_from(["favors", "affects"])
STRENGTHS = st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0, 2.0])
DATA = st.dictionaries(st.sampled_from(["p", "q"]), st.integers(-3, 3) | st.none(), max_size=2)


class GraphMachine(RuleBasedStateMachine):
    fresh: Callable[[], tuple[Settings, Callable[[], None]]]

    @initialize()
    def start(self) -> None:
        self.settings, self.cleanup = self.fresh()
        self.vault: Vault = memvault.open(self.settings)
        self.user = self.vault.users.register("g@example.com", "password-1").id
        self.model: nx.MultiDiGraph[str] = nx.MultiDiGraph()
        self.graph.put()

    def teardown(self) -> None:
        if hasattr(self, "vault"):
            self.vault.close()
            self.cleanup()

    @property
    def graph(self) -> GraphStore:
        return self.vault.for_user(self.user).graph("kg")

    # -- rules -----------------------------------------------------------------

    @rule(node=IDS, type_=NODE_TYPES, data=DATA)
    def put_node(self, node: str, type_: str, data: dict[str, Any]) -> None:
        clean = {k: v for k, v in data.items() if v is not None}
        self.graph.put_node(node, type_, clean)
        self.model.add_node(node)
        self.model.nodes[node].clear()
        self.model.nodes[node].update(type=type_, data=clean)

    @rule(node=IDS, data=DATA)
    def patch_node(self, node: str, data: dict[str, Any]) -> None:
        if node not in self.model:
            with pytest.raises(NotFound):
                self.graph.patch_node(node, data=data)
            return
        self.graph.patch_node(node, data=data)
        merged = dict(self.model.nodes[node]["data"])
        for k, v in data.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        self.model.nodes[node]["data"] = merged

    @rule(node=IDS)
    def delete_node(self, node: str) -> None:
        if node not in self.model:
            with pytest.raises(NotFound):
                self.graph.delete_node(node)
            return
        self.graph.delete_node(node)
        self.model.remove_node(node)

    @rule(src=IDS, dst=IDS, type_=EDGE_TYPES, strength=STRENGTHS)
    def put_edge(self, src: str, dst: str, type_: str, strength: float) -> None:
        if src not in self.model or dst not in self.model:
            with pytest.raises(Invalid):
                self.graph.put_edge(src, dst, type_, strength)
            return
        self.graph.put_edge(src, dst, type_, strength)
        self.model.add_edge(src, dst, key=type_, strength=strength)

    @rule(src=IDS, dst=IDS, type_=EDGE_TYPES)
    def delete_edge(self, src: str, dst: str, type_: str) -> None:
        if not self.model.has_edge(src, dst, key=type_):
            with pytest.raises(NotFound):
                self.graph.delete_edge(src, dst, type_)
            return
        self.graph.delete_edge(src, dst, type_)
        self.model.remove_edge(src, dst, key=type_)

    @rule(nodes=st.lists(st.tuples(IDS, NODE_TYPES), max_size=3),
          edges=st.lists(st.tuples(IDS, IDS, EDGE_TYPES, STRENGTHS), max_size=4),
          delete=st.lists(IDS, max_size=2, unique=True))
    def batch(self, nodes: list[tuple[str, str]],
              edges: list[tuple[str, str, str, float]], delete: list[str]) -> None:
        """Valid batches apply whole; an invalid one (an edge to a missing
        node, deleting a missing node) changes nothing."""
        known = set(self.model) | {n for n, _ in nodes}
        valid = (all(s in known and d in known for s, d, _, _ in edges)
                 and all(n in known for n in delete))
        call = {"nodes": [{"id": n, "type": t} for n, t in nodes],
                "edges": [{"from": s, "to": d, "type": t, "strength": w}
                          for s, d, t, w in edges],
                "delete_nodes": delete}
        if not valid:
            with pytest.raises(Invalid):
                self.graph.batch(**call)
            return
        self.graph.batch(**call)
        for n, t in nodes:
            self.model.add_node(n)
            self.model.nodes[n].clear()
            self.model.nodes[n].update(type=t, data={})
        for s, d, t, w in edges:
            self.model.add_edge(s, d, key=t, strength=w)
        self.model.remove_nodes_from(delete)

    @rule()
    def reopen(self) -> None:
        self.vault.close()
        self.vault = memvault.open(self.settings)

    # -- checks ----------------------------------------------------------------

    def _simple(self, undirected: bool) -> nx.Graph[str]:
        """The model as a simple graph (one edge per pair; the strongest)."""
        simple: nx.Graph[str] = nx.Graph() if undirected else nx.DiGraph()
        simple.add_nodes_from(self.model)
        for s, d, w in self.model.edges(data="strength"):
            if not simple.has_edge(s, d) or simple[s][d]["strength"] < w:
                simple.add_edge(s, d, strength=w)
        return simple

    @invariant()
    def counts_match(self) -> None:
        if not hasattr(self, "vault"):
            return
        info = self.graph.get()
        assert info.node_count == self.model.number_of_nodes()
        assert info.edge_count == self.model.number_of_edges()
        assert info.node_types == dict(Counter(t for _, t in self.model.nodes(data="type")))
        assert info.edge_types == dict(Counter(k for _, _, k in self.model.edges(keys=True)))
        listed = {n.id: (n.type, n.data) for n in self.graph.nodes(limit=200).items}
        assert listed == {n: (a["type"], a["data"]) for n, a in self.model.nodes(data=True)}

    @invariant()
    def neighbourhoods_match(self) -> None:
        if not hasattr(self, "vault"):
            return
        for node in self.model:
            out = self.graph.neighbors(node, "out")
            assert sorted((n.node.id, n.edge.type, n.edge.strength) for n in out) == sorted(
                (d, k, w) for _, d, k, w in self.model.out_edges(node, keys=True,
                                                                 data="strength"))
            assert [n.edge.strength for n in out] == sorted(
                (n.edge.strength for n in out), reverse=True)
            influences = self.graph.influences(node)
            assert sorted((i.from_, i.type, i.strength) for i in influences) == sorted(
                (s, k, w) for s, _, k, w in self.model.in_edges(node, keys=True,
                                                                data="strength"))
            both = self.graph.neighbors(node, "both")
            edges = {(s, d, k) for s, d, k in itertools.chain(
                self.model.out_edges(node, keys=True), self.model.in_edges(node, keys=True))}
            assert {(n.edge.from_, n.edge.to, n.edge.type) for n in both} == edges

    @invariant()
    def paths_match(self) -> None:
        if not hasattr(self, "vault"):
            return
        for direction, undirected in (("out", False), ("both", True)):
            simple = self._simple(undirected)
            for s, t in itertools.product(sorted(self.model), repeat=2):
                try:
                    want = nx.shortest_path_length(simple, s, t)
                except nx.NetworkXNoPath:
                    want = None
                if want is None or want > 4:
                    with pytest.raises(NotFound):
                        self.graph.path(s, t, max_depth=4, direction=direction)
                    continue
                got = self.graph.path(s, t, max_depth=4, direction=direction)
                assert got.length == want and got.nodes[0] == s and got.nodes[-1] == t
                best = max(sum(simple[a][b]["strength"] for a, b in itertools.pairwise(p))
                           for p in nx.all_shortest_paths(simple, s, t))
                assert sum(e.strength for e in got.edges) == pytest.approx(best)

    @invariant()
    def subgraphs_match(self) -> None:
        if not hasattr(self, "vault"):
            return
        for node in self.model:
            for direction, depth in (("out", 2), ("both", 1), ("in", 2)):
                view = self.model.reverse(copy=False) if direction == "in" else self.model
                ego = nx.ego_graph(view, node, radius=depth, undirected=direction == "both")
                got = self.graph.subgraph(node, depth=depth, direction=direction)
                assert {n.id for n in got.nodes} == set(ego) and not got.truncated
                assert {(e.from_, e.to, e.type) for e in got.edges} == set(
                    self.model.subgraph(ego).edges(keys=True))


@pytest.mark.timeout(7200 if SLOW else 600)
def test_graph_matches_networkx(settings: Settings, backend: str,
                                request: pytest.FixtureRequest) -> None:
    base = settings.data_dir.parent / "examples"
    dbs = PgDatabases(request.getfixturevalue("pg_url")) if backend == "postgresql" else None

    def fresh() -> tuple[Settings, Callable[[], None]]:
        folder = base / uuid.uuid4().hex[:12]
        update: dict[str, Any] = {"data_dir": folder / "data"}
        if dbs is not None:
            update["database_url"] = dbs.create()

        def cleanup() -> None:
            try:
                if dbs is not None:
                    dbs.drop_all()
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        return settings.model_copy(update=update), cleanup

    machine = type("GraphModel", (GraphMachine,), {"fresh": staticmethod(fresh)})
    try:
        hypothesis.stateful.run_state_machine_as_test(machine, settings=RUN)
    finally:
        if dbs is not None:
            dbs.drop_all()
