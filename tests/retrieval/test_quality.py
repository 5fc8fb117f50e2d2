"""Search quality on the labelled set (tests/retrieval/quality/), both backends.

Only loose floors are asserted; the measured figures are in the README
("Search quality") and come from ``python -m tests.retrieval.quality_eval``.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

import memvault
from memvault import Settings, Vault

from .quality_eval import (
    Run,
    Scores,
    format_table,
    load_into,
    load_passages,
    load_queries,
    recall_at,
    reciprocal_rank,
    run_modes,
)

#: Differences smaller than this are noise on ~180 queries.
NOISE = 0.05


def test_the_set_is_well_formed() -> None:
    passages, queries = load_passages(), load_queries()
    ids = [p.id for p in passages]
    assert len(passages) >= 240 and len(set(ids)) == len(ids)
    topics = Counter(p.topic for p in passages)
    assert len(topics) >= 40 and all(5 <= n <= 7 for n in topics.values()), topics
    for p in passages:
        cjk = len(re.findall(r"[\u4e00-\u9fff]", p.text))
        words = cjk // 2 if cjk else len(p.text.split())
        assert 40 <= words <= 120, (p.id, words)
    assert len(queries) >= 60 and len({q.id for q in queries}) == len(queries)
    assert {q.kind for q in queries} == {"keyword", "paraphrase", "mixed"}
    known = set(ids)
    for q in queries:
        assert 1 <= len(q.relevant) <= 3 and set(q.relevant) <= known, q.id


def test_measures() -> None:
    assert recall_at(["a", "b", "c"], ["c", "z"], k=3) == 0.5
    assert recall_at(["a", "b", "c"], ["c"], k=2) == 0.0
    assert reciprocal_rank(["a", "b", "c"], ["c", "b"]) == 0.5
    assert reciprocal_rank(["a"], ["z"]) == 0.0


#: The local model's vectors of the passages, by id: computed by the first
#: backend's vault, given as the records' embeddings to the second (the same
#: model, so the same vectors; the model is most of this test's time).
_LOCAL_VECTORS: dict[str, list[float]] = {}


def _scores(vault: Vault, modes: tuple[str, ...]) -> dict[str, Scores]:
    name = vault.settings.embedder
    uid = vault.users.register(f"quality-{name}@example.com", "password-1").id
    scope = vault.for_user(uid)
    entity_id = scope.entities.create(f"quality {name}").entity_id
    passages = load_passages()
    if name != "local":
        load_into(scope, entity_id, passages)
    else:
        if not _LOCAL_VECTORS:
            vectors = vault.embedder.embed([p.text for p in passages])
            _LOCAL_VECTORS.update((p.id, v.tolist()) for p, v in zip(passages, vectors,
                                                                    strict=True))
        load_into(scope, entity_id, passages, vectors=_LOCAL_VECTORS)
    return {run.label: run.scores
            for run in run_modes(scope, entity_id, load_queries(), modes=modes)}


# Both backends on one xdist worker, so the second re-uses the first's vectors.
@pytest.mark.xdist_group("quality")
def test_search_quality_floors(vault: Vault, settings: Settings) -> None:
    """The local model's three modes, and the hash embedder's vectors (the
    suite's default vault) for comparison: full text is the same for both."""
    with memvault.open(settings, embedder="local") as local_vault:
        local = _scores(local_vault, ("vector", "text", "hybrid"))
    hash_ = _scores(vault, ("vector",))
    table = format_table([*_runs("local", local), *_runs("hash", hash_)])
    vector, text, hybrid = local["vector"], local["text"], local["hybrid"]
    assert hybrid.recall >= 0.8, table
    assert vector.recall >= 0.75, table
    assert text.recall >= 0.5, table
    assert hybrid.recall >= max(vector.recall, text.recall) - NOISE, table
    assert hybrid.mrr >= max(vector.mrr, text.mrr) - NOISE, table
    assert vector.recall >= hash_["vector"].recall + 0.15, table
    assert vector.mrr >= hash_["vector"].mrr + 0.15, table


def _runs(label: str, scores: dict[str, Scores]) -> list[Run]:
    return [Run(f"{label} {mode}", s) for mode, s in scores.items()]
