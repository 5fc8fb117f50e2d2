"""Knowledge graphs' export, import and snapshots (issue 7, seed 002), through
the library on every backend: seed 002's graph.json round trip, export →
import → export, restore puts a graph back exactly, keep-N pruning with blob
reference counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import memvault
from memvault import Invalid, NotFound, Settings, Vault
from memvault.backends.schema import blobs, graph_snapshots
from memvault.stores.graphs import GraphStore

#: seed 002's graph.json as ../shared/fixtures/make_legacy.py writes it
#: (``seed002(root, random.Random("1-seed002"), 1, 2025-01-06T09:00Z)``), kept
#: in the repository so the suite needs nothing outside it.
_SEED002_GRAPH = Path(__file__).resolve().parents[1] / "fixtures" / "seed002_graph.json"


def _seed002_graph(tmp_path: Path, scale: int = 1) -> dict[str, Any]:
    """The graph.json seed 002 wrote."""
    assert scale == 1, "only the scale-1 sample is kept"
    data: dict[str, Any] = json.loads(_SEED002_GRAPH.read_text("utf-8"))
    return data


def _export(g: GraphStore) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(b"".join(g.export()))
    return data


def _content(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in ("nodes", "edges", "patterns")}


def _fill(g: GraphStore) -> None:
    g.batch(nodes=[{"id": "AAPL", "type": "stock", "data": {"price": 255.53, "tags": ["a"]}},
                   {"id": "GDP", "type": "indicator", "data": {"v": None, "ü": "数据"}},
                   {"id": "R", "type": "regime"}],
            edges=[{"from": "GDP", "to": "R", "type": "indicates", "strength": 0.9},
                   {"from": "R", "to": "AAPL", "type": "favors", "data": {"why": "growth"}}],
            patterns=[{"id": "p1", "type": "REGIME_SHIFT", "description": "d",
                       "trigger_conditions": ["CPI > 4%"], "confidence": 0.75,
                       "match": {"type": "stock"}, "data": {"k": 1}}])


def test_seed002_graph_json_imports_and_exports_unchanged(vault: Vault, user_id: str,
                                                           tmp_path: Path) -> None:
    legacy = _seed002_graph(tmp_path)
    g = vault.for_user(user_id).graph("legacy")
    result = g.import_json(json.dumps(legacy).encode(), mode="replace")
    assert (result.nodes, result.edges, result.patterns) == (
        len(legacy["nodes"]), len(legacy["edges"]), len(legacy["patterns"]))
    out = _export(g)
    assert list(out) == ["nodes", "edges", "patterns", "metadata"]
    assert out["nodes"] == legacy["nodes"]
    assert out["patterns"] == legacy["patterns"]
    # Edges come out in (from, to, type) order; seed 002 kept insertion order.
    # An edge seed 002 wrote without created_at is stamped at import.
    key = lambda e: (e["from"], e["to"], e["type"])  # noqa: E731
    imported_at = g.get().modified_at
    expected = []
    for edge in sorted(legacy["edges"], key=key):
        expected.append({**edge, "created_at": edge.get("created_at", imported_at.isoformat())})
    assert sorted(out["edges"], key=key) == expected
    assert out["metadata"]["created"] == legacy["metadata"]["created"]
    assert out["metadata"]["stats"] == legacy["metadata"]["stats"]
    info = g.get()
    assert (info.node_count, info.edge_count, info.pattern_count) == (
        len(legacy["nodes"]), len(legacy["edges"]), len(legacy["patterns"]))
    # And the export imports again unchanged, timestamps included.
    again = vault.for_user(user_id).graph("again")
    again.import_json(b"".join(g.export()))
    assert _content(_export(again)) == _content(out)


def test_export_import_into_new_graph_exports_the_same(vault: Vault, user_id: str) -> None:
    scope = vault.for_user(user_id)
    first = scope.graph("first")
    _fill(first)
    exported = _export(first)
    assert exported["nodes"]["R"] == {"id": "R", "type": "regime", "data": {},
                                      "created_at": exported["nodes"]["R"]["created_at"]}
    assert exported["patterns"]["p1"]["match"] == {"type": "stock"}
    second = scope.graph("second")
    second.import_json(exported)
    assert _content(_export(second)) == _content(exported)
    assert second.get().node_types == first.get().node_types
    assert [n.node.id for n in second.neighbors("R")] == ["AAPL"]


def test_merge_keeps_and_replace_removes(vault: Vault, user_id: str) -> None:
    g = vault.for_user(user_id).graph("g")
    _fill(g)
    extra = {"nodes": {"X": {"id": "X", "type": "stock", "data": {}}},
             "edges": [{"from": "X", "to": "X", "type": "t", "strength": 0.5}]}
    g.import_json(extra, mode="merge")
    assert g.get().node_count == 4 and g.get().edge_count == 3
    g.import_json(extra, mode="replace")
    info = g.get()
    assert (info.node_count, info.edge_count, info.pattern_count) == (1, 1, 0)
    assert info.node_types == {"stock": 1} and info.edge_types == {"t": 1}


def test_invalid_import_names_the_item_and_writes_nothing(vault: Vault, user_id: str) -> None:
    g = vault.for_user(user_id).graph("g")
    _fill(g)
    before = _export(g)
    bad = {"nodes": {"N": {"type": "x"}},
           "edges": [{"from": "N", "to": "N", "type": "t"}, {"from": "N", "to": "nope",
                                                            "type": "t"}]}
    with pytest.raises(Invalid) as caught:
        g.import_json(bad, mode="replace")
    assert caught.value.field == "edges[1].to"
    with pytest.raises(Invalid) as caught:
        g.import_json({"nodes": {"A": {"id": "B", "type": "x"}}})
    assert caught.value.field == "nodes.A.id"
    with pytest.raises(Invalid):
        g.import_json(b"{not json")
    assert _export(g) == {**before, "metadata": {**before["metadata"],
                                                 "modified": _export(g)["metadata"]["modified"]}}


def test_export_of_a_missing_graph_is_not_found(vault: Vault, user_id: str) -> None:
    with pytest.raises(NotFound):
        vault.for_user(user_id).graph("nope").export()


def _refcount(vault: Vault, sha: str) -> int | None:
    with vault.db.read() as conn:
        value = conn.execute(sa.select(blobs.c.refcount).where(blobs.c.sha256 == sha)
                             ).scalar_one_or_none()
    return None if value is None else int(value)


def _snapshot_sha(vault: Vault, snapshot_id: str) -> str:
    with vault.db.read() as conn:
        return str(conn.execute(sa.select(graph_snapshots.c.sha256)
                                .where(graph_snapshots.c.id == snapshot_id)).scalar_one())


def test_restore_puts_the_graph_back_exactly(vault: Vault, user_id: str) -> None:
    g = vault.for_user(user_id).graph("g")
    _fill(g)
    g.put(description="before", metadata={"v": 1})
    before_info = g.get()
    before_nodes = g.nodes().items
    before_edges = g.edges().items
    before_patterns = g.patterns().items
    snap = g.snapshot("v1")
    assert (snap.label, snap.node_count, snap.edge_count, snap.pattern_count) == ("v1", 3, 2, 1)
    g.patch_node("AAPL", data={"price": 1})
    g.delete_node("GDP")
    g.put_node("NEW", "other")
    g.delete_pattern("p1")
    g.put(description="after")
    g.restore(snap.id)
    assert g.nodes().items == before_nodes
    assert g.edges().items == before_edges
    assert g.patterns().items == before_patterns
    after = g.get()
    assert after.model_dump(exclude={"modified_at"}) == before_info.model_dump(
        exclude={"modified_at"})
    assert [s.id for s in g.snapshots().items] == [snap.id]
    with pytest.raises(NotFound):
        g.restore("missing")


def test_identical_snapshots_share_one_blob_and_release_it(vault: Vault, user_id: str) -> None:
    g = vault.for_user(user_id).graph("g")
    _fill(g)
    a, b = g.snapshot(), g.snapshot()
    sha = _snapshot_sha(vault, a.id)
    assert _snapshot_sha(vault, b.id) == sha and _refcount(vault, sha) == 2
    assert vault.blobs.read(sha)  # the bytes are in the blob store
    g.delete_snapshot(a.id)
    assert _refcount(vault, sha) == 1
    with pytest.raises(NotFound):
        g.delete_snapshot(a.id)
    g.delete()  # the graph's snapshots go with it, and their blob
    assert _refcount(vault, sha) is None


def test_only_the_newest_snapshots_are_kept(settings: Settings, user_id: str) -> None:
    del user_id  # registered in the default vault; this one has its own setting
    with memvault.open(settings.model_copy(update={"graph_snapshots_keep": 3})) as v:
        owner = v.users.register("keep@example.com", "password-1").id
        g = v.for_user(owner).graph("g")
        made = []
        for i in range(5):
            g.put_node(f"n{i}", "t")
            made.append(g.snapshot(f"s{i}"))
        shas = [_snapshot_sha(v, s.id) for s in made[2:]]
        listed = g.snapshots().items
        assert [s.label for s in listed] == ["s4", "s3", "s2"]
        assert all(_refcount(v, sha) == 1 for sha in shas)
        with v.db.read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(blobs)
                                .where(blobs.c.refcount > 0)).scalar_one() == 3
        g.restore(listed[-1].id)
        assert g.get().node_count == 3


def test_snapshots_of_a_missing_graph_are_not_found(vault: Vault, user_id: str) -> None:
    g = vault.for_user(user_id).graph("nope")
    for call in (g.snapshot, g.snapshots, lambda: g.restore("x"),
                 lambda: g.delete_snapshot("x")):
        with pytest.raises(NotFound):
            call()
