"""Knowledge graphs (issue 7, seed 002): graphs, nodes, edges, traversal,
patterns and batches through the library, on every backend."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from memvault import Invalid, NotFound, Vault
from memvault.backends.schema import graph_edges, graph_nodes
from memvault.stores.graphs import GraphStore, merge_patch, parse_filter_value


@pytest.fixture
def graph(vault: Vault, user_id: str) -> GraphStore:
    return vault.for_user(user_id).graph("markets")


def _seed(g: GraphStore) -> None:
    """Seed 002's example: stocks, an economic regime, a sector."""
    g.put_node("AAPL", "stock", {"symbol": "AAPL", "price": 255.53, "pe": 35.2})
    g.put_node("MSFT", "stock", {"symbol": "MSFT", "price": 410, "dividend": True})
    g.put_node("GDP", "indicator", {"value": 2.8, "unit": None})
    g.put_node("ECONOMIC_REGIME", "regime", {"current_state": "GOLDILOCKS"})
    g.put_node("TECHNOLOGY", "sector", {})
    g.put_edge("GDP", "ECONOMIC_REGIME", "indicates_growth", 0.9)
    g.put_edge("ECONOMIC_REGIME", "TECHNOLOGY", "favors", 0.8)
    g.put_edge("TECHNOLOGY", "AAPL", "contains", 0.7)
    g.put_edge("TECHNOLOGY", "MSFT", "contains", 0.6)
    g.put_edge("GDP", "AAPL", "affects", 0.2)


def _counts_match_rows(vault: Vault, g: GraphStore, owner: str) -> None:
    """The graph row's counts equal what a scan of the rows finds."""
    info = g.get()
    with vault.db.read() as conn:
        nodes = Counter(t for (t,) in conn.execute(sa.select(graph_nodes.c.type).where(
            graph_nodes.c.owner_id == owner, graph_nodes.c.graph == g.name)))
        edges = Counter(t for (t,) in conn.execute(sa.select(graph_edges.c.type).where(
            graph_edges.c.owner_id == owner, graph_edges.c.graph == g.name)))
    assert info.node_count == sum(nodes.values()) and info.node_types == dict(nodes)
    assert info.edge_count == sum(edges.values()) and info.edge_types == dict(edges)


# -- graphs -------------------------------------------------------------------------

def test_graph_put_get_list_delete(vault: Vault, user_id: str) -> None:
    scope = vault.for_user(user_id)
    g = scope.graph("markets")
    with pytest.raises(NotFound):
        g.get()
    info, created = g.put("finance", {"owner": "dawsos"})
    assert created and info.name == "markets" and info.node_count == 0
    again, created = g.put("renamed")
    assert not created and again.description == "renamed" and again.metadata == {}
    assert again.created_at == info.created_at
    scope.graph("b.2").put_node("n", "t")  # any write creates its graph
    page = g.list_graphs(limit=1)
    assert [x.name for x in page.items] == ["b.2"] and page.next_cursor
    assert [x.name for x in g.list_graphs(cursor=page.next_cursor).items] == ["markets"]
    g.delete()
    with pytest.raises(NotFound):
        g.get()
    with pytest.raises(NotFound):
        g.delete()
    assert scope.graph("b.2").get_node("n").type == "t"


@pytest.mark.parametrize("bad", ["", "x" * 65, "a/b", "with space", "é", "\x00"])
def test_malformed_graph_names(vault: Vault, user_id: str, bad: str) -> None:
    with pytest.raises(Invalid):
        vault.for_user(user_id).graph(bad)


def test_counts_follow_every_write(vault: Vault, user_id: str, graph: GraphStore) -> None:
    _seed(graph)
    info = graph.get()
    assert (info.node_count, info.edge_count, info.pattern_count) == (5, 5, 0)
    assert info.node_types == {"stock": 2, "indicator": 1, "regime": 1, "sector": 1}
    assert info.edge_types == {"indicates_growth": 1, "favors": 1, "contains": 2, "affects": 1}
    graph.put_node("GDP", "macro")  # type changes: counts move
    graph.put_edge("GDP", "AAPL", "affects", 0.3)  # replaced: counts stay
    graph.delete_node("TECHNOLOGY")  # with its three edges
    graph.put_pattern("p", "REGIME_SHIFT")
    info = graph.get()
    assert (info.node_count, info.edge_count, info.pattern_count) == (4, 2, 1)
    assert info.node_types == {"stock": 2, "macro": 1, "regime": 1}
    assert info.edge_types == {"indicates_growth": 1, "affects": 1}
    _counts_match_rows(vault, graph, user_id)


def test_deleting_a_graph_removes_everything(vault: Vault, user_id: str,
                                             graph: GraphStore) -> None:
    _seed(graph)
    graph.put_pattern("p", "X")
    graph.delete()
    with vault.db.read() as conn:
        for table in (graph_nodes, graph_edges):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0
    info, created = graph.put()
    assert created and info.node_count == 0 and info.pattern_count == 0


# -- nodes ----------------------------------------------------------------------

def test_node_put_replace_patch_get_delete(graph: GraphStore) -> None:
    node, created = graph.put_node("TSLA", "stock", {"symbol": "TSLA", "price": 460})
    assert created and node.id == "TSLA" and node.data["price"] == 460
    again, created = graph.put_node("TSLA", "equity", {"price": 470})
    assert not created and again.created_at == node.created_at
    assert again.data == {"price": 470} and again.type == "equity"
    patched = graph.patch_node("TSLA", data={"price": 480, "pe": {"ttm": 60}, "gone": None})
    assert patched.data == {"price": 480, "pe": {"ttm": 60}} and patched.type == "equity"
    patched = graph.patch_node("TSLA", type="stock", data={"pe": {"ttm": None, "fwd": 50}})
    assert patched.data == {"price": 480, "pe": {"fwd": 50}} and patched.type == "stock"
    assert graph.get_node("TSLA") == patched
    graph.delete_node("TSLA")
    for call in (lambda: graph.get_node("TSLA"), lambda: graph.delete_node("TSLA"),
                 lambda: graph.patch_node("TSLA", data={"a": 1})):
        with pytest.raises(NotFound):
            call()


@pytest.mark.parametrize("call", [
    lambda g: g.put_node("", "t"), lambda g: g.put_node("x" * 257, "t"),
    lambda g: g.put_node("a", ""), lambda g: g.put_node("a", "t" * 65),
    lambda g: g.put_node("a", "t", {"x": float("nan")}),
    lambda g: g.put_node("a", "t", [1]),  # data must be an object
    lambda g: g.put_node("a\x00", "t"),
    lambda g: g.nodes(where={"x": [1]}),
])
def test_node_validation(graph: GraphStore, call: Any) -> None:
    graph.put()
    with pytest.raises(Invalid):
        call(graph)
    assert graph.get().node_count == 0


def test_node_filters_run_in_the_database(graph: GraphStore) -> None:
    _seed(graph)
    assert [n.id for n in graph.nodes(type="stock").items] == ["AAPL", "MSFT"]
    assert [n.id for n in graph.nodes(where={"price": 410}).items] == ["MSFT"]
    assert [n.id for n in graph.nodes(where={"price": 410.0}).items] == ["MSFT"]
    assert [n.id for n in graph.nodes(where={"dividend": True}).items] == ["MSFT"]
    assert [n.id for n in graph.nodes(where={"unit": None}).items] == ["GDP"]
    assert [n.id for n in graph.nodes(where={"symbol": "AAPL", "pe": 35.2}).items] == ["AAPL"]
    assert graph.nodes(where={"symbol": "AAPL", "pe": 1}).items == []
    assert graph.nodes(type="regime", where={"price": 410}).items == []
    page = graph.nodes(limit=2)
    ids = [n.id for n in page.items]
    while page.next_cursor:
        page = graph.nodes(limit=2, cursor=page.next_cursor)
        ids += [n.id for n in page.items]
    assert ids == sorted(["AAPL", "MSFT", "GDP", "ECONOMIC_REGIME", "TECHNOLOGY"])


def test_lists_of_a_missing_graph_are_404(graph: GraphStore) -> None:
    for call in (graph.nodes, graph.edges, graph.patterns):
        with pytest.raises(NotFound):
            call()


def test_filter_values_parse_as_the_issue_says() -> None:
    assert parse_filter_value("1") == 1 and parse_filter_value("2.5") == 2.5
    assert parse_filter_value("true") is True and parse_filter_value("null") is None
    assert parse_filter_value("NaN") == "NaN" and parse_filter_value("1e999") == "1e999"
    assert parse_filter_value('"x"') == '"x"' and parse_filter_value("abc") == "abc"
    assert merge_patch({"a": {"b": 1}}, {"a": {"b": None, "c": 2}}) == {"a": {"c": 2}}
    assert merge_patch({"a": 1}, {"a": [1, None]}) == {"a": [1, None]}


# -- edges ----------------------------------------------------------------------

def test_edges_upsert_list_delete(graph: GraphStore) -> None:
    _seed(graph)
    edge, created = graph.put_edge("GDP", "AAPL", "affects", 0.5, {"lag": "1q"})
    assert not created and edge.strength == 0.5 and edge.data == {"lag": "1q"}
    assert edge.model_dump()["from"] == "GDP"
    new, created = graph.put_edge("AAPL", "AAPL", "self")
    assert created and new.strength == 1.0
    assert [(e.from_, e.to) for e in graph.edges(from_="TECHNOLOGY").items] == [
        ("TECHNOLOGY", "AAPL"), ("TECHNOLOGY", "MSFT")]
    assert [e.from_ for e in graph.edges(to="AAPL").items] == ["AAPL", "GDP", "TECHNOLOGY"]
    assert [e.type for e in graph.edges(type="contains", min_strength=0.65).items] == [
        "contains"]
    page, seen = graph.edges(limit=2), []
    seen += page.items
    while page.next_cursor:
        page = graph.edges(limit=2, cursor=page.next_cursor)
        seen += page.items
    assert len(seen) == 6 == graph.get().edge_count
    graph.delete_edge("AAPL", "AAPL", "self")
    with pytest.raises(NotFound):
        graph.delete_edge("AAPL", "AAPL", "self")
    with pytest.raises(Invalid):
        graph.edges(cursor="bm90IGEgY3Vyc29y")


def test_edge_needs_both_nodes(graph: GraphStore) -> None:
    with pytest.raises(NotFound):  # no graph yet
        graph.put_edge("A", "B", "x")
    graph.put_node("A", "t")
    with pytest.raises(Invalid, match="'B'") as caught:
        graph.put_edge("A", "B", "x")
    assert caught.value.field == "to"
    with pytest.raises(Invalid, match="'Z'"):
        graph.put_edge("Z", "A", "x")
    with pytest.raises(Invalid):
        graph.put_edge("A", "A", "x", float("inf"))
    assert graph.get().edge_count == 0


def test_neighbors_and_influences(graph: GraphStore) -> None:
    _seed(graph)
    out = graph.neighbors("TECHNOLOGY")
    assert [(n.node.id, n.edge.strength) for n in out] == [("AAPL", 0.7), ("MSFT", 0.6)]
    inbound = graph.neighbors("AAPL", direction="in")
    assert [n.node.id for n in inbound] == ["TECHNOLOGY", "GDP"]
    both = graph.neighbors("ECONOMIC_REGIME", direction="both")
    assert [n.node.id for n in both] == ["GDP", "TECHNOLOGY"]
    assert [n.node.id for n in graph.neighbors("GDP", type="affects")] == ["AAPL"]
    assert [n.node.id for n in graph.neighbors("GDP", min_strength=0.5)] == ["ECONOMIC_REGIME"]
    assert len(graph.neighbors("TECHNOLOGY", limit=1)) == 1
    influences = graph.influences("AAPL")
    assert [(i.from_, i.type, i.strength) for i in influences] == [
        ("TECHNOLOGY", "contains", 0.7), ("GDP", "affects", 0.2)]
    assert influences[0].model_dump() == {"from": "TECHNOLOGY", "type": "contains",
                                          "strength": 0.7}
    for call in (lambda: graph.neighbors("NOPE"), lambda: graph.influences("NOPE")):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(Invalid):
        graph.neighbors("GDP", direction="sideways")  # type: ignore[arg-type]


def test_deleting_a_node_takes_its_edges(vault: Vault, user_id: str,
                                         graph: GraphStore) -> None:
    _seed(graph)
    graph.put_edge("AAPL", "AAPL", "loop")
    graph.delete_node("AAPL")
    assert graph.edges(to="AAPL").items == [] and graph.edges(from_="AAPL").items == []
    _counts_match_rows(vault, graph, user_id)


# -- traversal ------------------------------------------------------------------

def test_shortest_path(graph: GraphStore) -> None:
    _seed(graph)
    found = graph.path("GDP", "MSFT")
    assert found.nodes == ["GDP", "ECONOMIC_REGIME", "TECHNOLOGY", "MSFT"]
    assert found.length == 3 and [e.type for e in found.edges] == [
        "indicates_growth", "favors", "contains"]
    assert graph.path("GDP", "AAPL").nodes == ["GDP", "AAPL"]  # fewest edges wins
    assert graph.path("GDP", "GDP").length == 0
    with pytest.raises(NotFound):
        graph.path("MSFT", "GDP")  # edges point the other way
    assert graph.path("MSFT", "GDP", direction="both").length == 3
    with pytest.raises(NotFound):
        graph.path("GDP", "MSFT", max_depth=2)
    with pytest.raises(NotFound):
        graph.path("GDP", "MSFT", type="contains")
    with pytest.raises(NotFound):
        graph.path("GDP", "NOPE")
    with pytest.raises(Invalid):
        graph.path("GDP", "MSFT", max_depth=11)


def test_shortest_path_prefers_the_strongest_of_equal_length(graph: GraphStore) -> None:
    graph.batch(nodes=[{"id": n, "type": "t"} for n in "SABCT"],
                edges=[{"from": "S", "to": "A", "type": "e", "strength": 0.9},
                       {"from": "A", "to": "T", "type": "e", "strength": 0.1},
                       {"from": "S", "to": "B", "type": "e", "strength": 0.2},
                       {"from": "B", "to": "T", "type": "e", "strength": 0.9},
                       {"from": "S", "to": "C", "type": "e", "strength": 0.5},
                       {"from": "C", "to": "T", "type": "e", "strength": 0.5},
                       {"from": "C", "to": "T", "type": "f", "strength": 0.7}])
    found = graph.path("S", "T")
    assert found.nodes == ["S", "C", "T"] and found.edges[1].type == "f"


def test_subgraph(graph: GraphStore) -> None:
    _seed(graph)
    sub = graph.subgraph("ECONOMIC_REGIME", depth=1)
    assert [n.id for n in sub.nodes] == ["ECONOMIC_REGIME", "GDP", "TECHNOLOGY"]
    assert {(e.from_, e.to) for e in sub.edges} == {("GDP", "ECONOMIC_REGIME"),
                                                   ("ECONOMIC_REGIME", "TECHNOLOGY")}
    assert not sub.truncated
    full = graph.subgraph("ECONOMIC_REGIME", depth=2)
    assert len(full.nodes) == 5 and len(full.edges) == 5  # GDP->AAPL among them
    out = graph.subgraph("TECHNOLOGY", depth=3, direction="out")
    assert [n.id for n in out.nodes] == ["TECHNOLOGY", "AAPL", "MSFT"]
    capped = graph.subgraph("ECONOMIC_REGIME", depth=2, limit=2)
    assert capped.truncated and len(capped.nodes) == 2 and len(capped.edges) == 1
    assert graph.subgraph("GDP", depth=0).nodes[0].id == "GDP"
    with pytest.raises(NotFound):
        graph.subgraph("NOPE")


# -- patterns -------------------------------------------------------------------

def test_patterns(graph: GraphStore) -> None:
    _seed(graph)
    pattern, created = graph.put_pattern(
        "pattern_001", "REGIME_SHIFT", "Goldilocks to Overheating",
        ["CPI > 4%", "GDP > 3%"], 0.75, match={"type": "stock", "data": {"dividend": True}})
    assert created and pattern.confidence == 0.75 and pattern.trigger_conditions[0] == "CPI > 4%"
    assert [n.id for n in graph.pattern_nodes("pattern_001").items] == ["MSFT"]
    again, created = graph.put_pattern("pattern_001", "REGIME_SHIFT", match={"type": "stock"})
    assert not created and again.created_at == pattern.created_at
    assert [n.id for n in graph.pattern_nodes("pattern_001", limit=1).items] == ["AAPL"]
    graph.put_pattern("all", "OTHER")
    assert len(graph.pattern_nodes("all").items) == 5
    assert [p.id for p in graph.patterns().items] == ["all", "pattern_001"]
    assert [p.id for p in graph.patterns(type="OTHER").items] == ["all"]
    assert graph.get_pattern("all").match is None
    graph.delete_pattern("all")
    assert graph.get().pattern_count == 1
    for call in (lambda: graph.get_pattern("all"), lambda: graph.delete_pattern("all"),
                 lambda: graph.pattern_nodes("all")):
        with pytest.raises(NotFound):
            call()
    for bad in ({"confidence": 1.5}, {"confidence": -0.1}, {"match": {"kind": "x"}},
                {"trigger_conditions": ["ok", 1]}, {"match": {"data": {"a": {"b": 1}}}}):
        with pytest.raises(Invalid):
            graph.put_pattern("bad", "T", **bad)


# -- batches --------------------------------------------------------------------

def _snapshot(g: GraphStore) -> tuple[Any, ...]:
    info = g.get()
    return (info.node_count, info.edge_count, info.pattern_count, info.node_types,
            info.edge_types, [n.model_dump() for n in g.nodes(limit=200).items],
            [e.model_dump() for e in g.edges(limit=200).items],
            [p.model_dump() for p in g.patterns(limit=200).items])


def test_batch_applies_everything(vault: Vault, user_id: str, graph: GraphStore) -> None:
    _seed(graph)
    result = graph.batch(
        nodes=[{"id": "NVDA", "type": "stock", "data": {"price": 1}},
               {"id": "AAPL", "type": "stock", "data": {"price": 260}}],
        edges=[{"from": "TECHNOLOGY", "to": "NVDA", "type": "contains", "strength": 0.95}],
        patterns=[{"id": "p", "type": "T", "confidence": 0.5}],
        delete_edges=[{"from": "GDP", "to": "AAPL", "type": "affects"}],
        delete_nodes=["MSFT"])
    assert result.model_dump() == {"nodes": 2, "edges": 1, "patterns": 1,
                                   "deleted_nodes": 1, "deleted_edges": 1}
    assert graph.get_node("AAPL").data == {"price": 260}
    assert [n.node.id for n in graph.neighbors("TECHNOLOGY")] == ["NVDA", "AAPL"]
    _counts_match_rows(vault, graph, user_id)
    assert graph.get().pattern_count == 1


@pytest.mark.parametrize("bad, where", [
    ({"edges": [{"from": "AAPL", "to": "NOPE", "type": "x"}]}, "edges[1].to"),
    ({"nodes": [{"id": "", "type": "t"}]}, "nodes[1].id"),
    ({"patterns": [{"id": "p2", "type": "T", "confidence": 2}]}, "patterns[1].confidence"),
    ({"delete_nodes": ["NOPE"]}, "delete_nodes[1]"),
    ({"delete_edges": [{"from": "GDP", "to": "MSFT", "type": "x"}]}, "delete_edges[1]"),
])
def test_batch_is_all_or_nothing(graph: GraphStore, bad: dict[str, list[Any]],
                                 where: str) -> None:
    _seed(graph)
    before = _snapshot(graph)
    good: dict[str, list[Any]] = {
        "nodes": [{"id": "NEW", "type": "stock"}],
        "edges": [{"from": "NEW", "to": "AAPL", "type": "x"}],
        "patterns": [{"id": "p1", "type": "T"}],
        "delete_nodes": ["GDP"],
        "delete_edges": [{"from": "TECHNOLOGY", "to": "MSFT", "type": "contains"}],
    }
    for key, items in bad.items():  # the invalid item comes after a valid one
        good[key] = good[key][:1] + items + [good[key][0]]
    with pytest.raises(Invalid) as caught:
        graph.batch(**good)
    assert caught.value.field is not None and caught.value.field.startswith(where)
    assert _snapshot(graph) == before


def test_batch_limit(vault: Vault, user_id: str, graph: GraphStore) -> None:
    with pytest.raises(Invalid):
        graph.batch(delete_nodes=["x"] * 10_001)
    nodes = [{"id": f"n{i}", "type": "t"} for i in range(3000)]
    edges = [{"from": f"n{i}", "to": f"n{(i * 7) % 3000}", "type": "e"} for i in range(3000)]
    graph.batch(nodes=nodes, edges=edges)
    info = graph.get()
    assert info.node_count == 3000 and info.edge_count == 3000
    graph.batch(delete_nodes=[f"n{i}" for i in range(0, 3000, 2)])
    assert graph.get().node_count == 1500
    _counts_match_rows(vault, graph, user_id)


def test_other_owners_see_nothing(vault: Vault, user_id: str, graph: GraphStore) -> None:
    _seed(graph)
    other = vault.for_user(vault.users.register("o@example.com", "password-1").id)
    theirs = other.graph("markets")
    for call in (theirs.get, theirs.nodes, theirs.edges, theirs.patterns, theirs.delete,
                 lambda: theirs.get_node("AAPL"), lambda: theirs.delete_node("AAPL"),
                 lambda: theirs.patch_node("AAPL", data={}),
                 lambda: theirs.put_edge("GDP", "AAPL", "x"),
                 lambda: theirs.delete_edge("GDP", "AAPL", "affects"),
                 lambda: theirs.neighbors("GDP"), lambda: theirs.influences("AAPL"),
                 lambda: theirs.path("GDP", "AAPL"), lambda: theirs.subgraph("GDP")):
        with pytest.raises(NotFound):
            call()
    assert theirs.list_graphs().items == []
    assert graph.get().node_count == 5
