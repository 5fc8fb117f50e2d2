"""The registry of record kinds covers every table, and its codec round-trips
real rows of every kind through JSON on both backends."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import sqlalchemy as sa

from memvault import Vault
from memvault.backends.schema import metadata
from memvault.cache import CacheKey
from memvault.jobs import enqueue
from memvault.kinds import KINDS, UNREGISTERED_TABLES, kind, kinds


def test_every_table_of_the_schema_is_registered_once() -> None:
    registered = [k.table.name for k in KINDS]
    assert len(registered) == len(set(registered)), "a table is registered twice"
    assert set(metadata.tables) == set(registered), (
        "register every table of backends/schema.py in memvault/kinds.py")


def test_every_table_the_migrations_create_is_registered(vault: Vault) -> None:
    with vault.db.read() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert tables - UNREGISTERED_TABLES == {k.table.name for k in KINDS}


def test_parents_come_before_children() -> None:
    order = {k.table.name: i for i, k in enumerate(KINDS)}
    for k in KINDS:
        for fk in k.table.foreign_keys:
            parent = fk.column.table.name
            assert order[parent] < order[k.table.name], f"{parent} must precede {k.name}"


def _fill(vault: Vault, user_id: str) -> None:
    scope = vault.for_user(user_id)
    vault.users.issue_token(user_id)
    scope.entities.create("Research", entity_id="e1", metadata={"team": "r&d", "n": [1, 2.5]})
    doc = scope.files.add("e1", "notes.md", b"# findings\n")
    scope.extractions.create(doc.doc_id, "summary/v1", {"title": "findings", "n": [1, 2.5]},
                             model="m1")
    scope.annotations.create(doc.doc_id, "todo", note="check ✓", start=2, end=10,
                             data={"k": None})
    conv = scope.conversations.create(title="Plan", entity_id="e1", participants=["a", "b"])
    scope.conversations.append(conv.id, "user", "héllo ✓", metadata={"k": None})
    msg = scope.conversations.start_message(conv.id)
    scope.conversations.append_chunks(msg.id, [(1, "part one "), (2, "part two")])
    scope.collections.add("e1", [{"id": "r1", "text": "kept", "metadata": {"n": 1.5}},
                                 {"id": "r2", "text": "deleted"}])
    scope.collections.delete("e1", ["r2"])  # a tombstone (SQLite's ANN catch-up)
    with vault.db.write() as conn:  # a job of the durable queue (memvault/jobs.py)
        enqueue(conn, "test.noop", {"entity": "e1", "n": [1, 2.5], "x": None},
                owner_id=user_id)
    graph = scope.graph("kg")  # a knowledge graph: a node, an edge, a pattern (issue 7)
    graph.batch(nodes=[{"id": "A", "type": "stock", "data": {"p": 1.5}}],
                edges=[{"from": "A", "to": "A", "type": "self", "strength": 0.5}],
                patterns=[{"id": "p1", "type": "T", "match": {"type": "stock"}}])
    graph.snapshot("v1")  # a snapshot: a row referencing a blob
    agent = scope.agents.create("bot", tools=["search"], config={"t": 0.5})  # issue 8
    run = scope.runs.create("wf", agent_id=agent.id, input={"q": "✓"}, metadata={"n": 1.5})
    scope.runs.append_step(run.id, "fetch", agent="bot", result={"data": [1, 2.5, None]})
    scope.cache("api").set("quote", {"p": 1.5}, ttl=600)  # the cache's database tier
    scope.cache("api").set("raw", b"\x00\xff")
    assert vault.caches.tier is not None
    vault.caches.tier.claim(CacheKey(user_id, "api", "slow"), f"holder-{user_id}", 600)


def _plain(row: Any) -> dict[str, Any]:
    """A row with vectors as lists, so rows compare with ``==``."""
    return {name: (v.tolist() if isinstance(v, np.ndarray) else v)
            for name, v in dict(row).items()}


def test_codec_round_trips_every_kind(vault: Vault, user_id: str) -> None:
    _fill(vault, user_id)
    seen = 0
    with vault.db.read() as conn:
        for k in kinds():
            for row in conn.execute(sa.select(k.table)).mappings():
                encoded = json.loads(json.dumps(k.encode(row)))
                assert _plain(k.decode(encoded)) == _plain(row), k.name
                seen += 1
    assert seen >= 8


def test_owner_condition_selects_only_that_users_records(vault: Vault, user_id: str) -> None:
    other = vault.users.register("other@example.com", "password-1").id
    _fill(vault, user_id)
    _fill(vault, other)
    with vault.db.read() as conn:
        for k in kinds():
            if k.owner is None:
                continue
            if k.name == "chunk_tombstones" and vault.backend == "postgresql":
                continue  # written on SQLite only, for its derived ANN index files
            mine = conn.execute(sa.select(sa.func.count()).select_from(k.table)
                                .where(k.owned_by(user_id))).scalar_one()
            total = conn.execute(sa.select(sa.func.count()).select_from(k.table)).scalar_one()
            assert 0 < mine < total, k.name


def test_counts_exact_and_estimated(vault: Vault, user_id: str) -> None:
    _fill(vault, user_id)
    exact = vault.counts()
    assert set(exact) == {k.name for k in KINDS}
    assert exact["users"] == 1 and exact["message_chunks"] == 2 and exact["documents"] == 1
    estimated = vault.counts(exact=False)
    assert set(estimated) == set(exact)
    assert all(isinstance(n, int) and n >= 0 for n in estimated.values())
    assert kind("documents").blob == "sha256"
