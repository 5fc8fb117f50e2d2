"""The labelled retrieval set (tests/retrieval/quality/) and its measures.

The set: 242 short passages written for memvault on 40 topics, 5–7 per topic
that share vocabulary but state different facts (each other's hard
negatives), a few in German, French and Chinese; and 125 queries, each with
the 1–3 passages that answer it. Queries come in three kinds, so that each
search mode has something to be good at:

- ``keyword``: rare terms shared with the passage (names, jargon) — full text;
- ``paraphrase``: the same question in other words — vectors;
- ``mixed``: some shared words, some not.

This module loads the set, measures recall@k and MRR for any
``search(query) -> list[passage_id]``, and runs the whole table against a
vault's collections (``python -m tests.retrieval.quality_eval``, or
``bench/quality.py`` for both backends and the fusion sweep). It asserts
nothing; ``test_quality.py`` holds the floors.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memvault.stores.collections import DEFAULT_RRF_K, FUSION_CANDIDATES

__all__ = [
    "DATA", "Passage", "Query", "Scores", "load_passages", "load_queries", "evaluate",
    "recall_at", "reciprocal_rank", "load_into", "vault_search", "Run", "run_modes",
    "fuse", "sweep_fusion", "format_table", "RRF_KS", "WEIGHTS",
]

DATA = Path(__file__).with_name("quality")
#: Fusion constants and {vector, text} weights the sweep tries.
RRF_KS = (1, 5, 10, 20, 30, 60, 100)
WEIGHTS = ((1.0, 1.0), (2.0, 1.0), (1.5, 1.0), (1.0, 1.5), (1.0, 2.0), (3.0, 1.0), (1.0, 3.0))

Search = Callable[[str], Sequence[str]]


@dataclass(frozen=True)
class Passage:
    id: str
    topic: str
    text: str


@dataclass(frozen=True)
class Query:
    id: str
    kind: str  # keyword | paraphrase | mixed
    query: str
    relevant: tuple[str, ...]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_passages(data: Path = DATA) -> list[Passage]:
    return [Passage(r["id"], r["topic"], r["text"]) for r in _jsonl(data / "passages.jsonl")]


def load_queries(data: Path = DATA) -> list[Query]:
    return [Query(r["id"], r.get("kind", "mixed"), r["query"], tuple(r["relevant"]))
            for r in _jsonl(data / "queries.jsonl")]


# --- measures -------------------------------------------------------------------------------


def recall_at(found: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """Share of the relevant passages among the first ``k`` found."""
    wanted = set(relevant)
    return len(wanted.intersection(found[:k])) / len(wanted)


def reciprocal_rank(found: Sequence[str], relevant: Iterable[str]) -> float:
    """1 / rank of the first relevant passage found; 0 when none is."""
    wanted = set(relevant)
    for rank, pid in enumerate(found, start=1):
        if pid in wanted:
            return 1.0 / rank
    return 0.0


@dataclass
class Scores:
    """Mean recall@k and MRR over queries, overall and per query kind, and the
    queries whose relevant passages were all missed (for reading, not asserting)."""

    recall: float
    mrr: float
    by_kind: dict[str, tuple[float, float]] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)
    n: int = 0

    def __str__(self) -> str:
        return f"recall@10 {self.recall:.3f}  MRR {self.mrr:.3f}  (n={self.n})"


def evaluate(search: Search, queries: Sequence[Query], k: int = 10) -> Scores:
    """Run ``search`` for every query and average recall@k and MRR (MRR over
    the first ``k`` results too)."""
    per: dict[str, list[tuple[float, float]]] = {}
    missed = []
    for q in queries:
        found = list(search(q.query))[:k]
        r, rr = recall_at(found, q.relevant, k), reciprocal_rank(found, q.relevant)
        per.setdefault(q.kind, []).append((r, rr))
        if r == 0:
            missed.append(q.id)
    every = [x for xs in per.values() for x in xs]

    def mean(xs: list[tuple[float, float]]) -> tuple[float, float]:
        return (sum(x[0] for x in xs) / len(xs), sum(x[1] for x in xs) / len(xs))

    recall, mrr = mean(every)
    return Scores(recall, mrr, {kind: mean(xs) for kind, xs in sorted(per.items())}, missed,
                  len(every))


# --- against a vault --------------------------------------------------------------------------


def load_into(scope: Any, entity_id: str, passages: Sequence[Passage],
              vectors: Mapping[str, Any] | None = None) -> None:
    """Store the passages as the entity's vector records (chunk_id = passage id),
    embedded by the vault, or given their ``vectors`` (by passage id)."""
    items: list[dict[str, Any]] = [{"id": p.id, "text": p.text, "metadata": {"topic": p.topic}}
                                   for p in passages]
    if vectors is not None:
        for item in items:
            item["embedding"] = vectors[item["id"]]
    for start in range(0, len(items), 1000):
        scope.collections.add(entity_id, items[start:start + 1000])


def vault_search(scope: Any, entity_id: str, mode: str, k: int = 10,
                 **options: Any) -> Search:
    """``search(query)`` over the entity's collection, giving chunk ids."""
    def search(query: str) -> list[str]:
        results = scope.collections.search(entity_id, query=query, k=k, mode=mode, **options)
        return [hit.chunk_id for hit in results.results]
    return search


@dataclass
class Run:
    label: str
    scores: Scores


def run_modes(scope: Any, entity_id: str, queries: Sequence[Query], label: str = "",
              modes: Sequence[str] = ("vector", "text", "hybrid")) -> list[Run]:
    return [Run(f"{label}{mode}", evaluate(vault_search(scope, entity_id, mode), queries))
            for mode in modes]


def fuse(ranked: Mapping[str, Sequence[str]], rrf_k: float,
         weights: Mapping[str, float]) -> list[str]:
    """Reciprocal rank fusion as ``collections.search`` does it: each mode adds
    ``weight / (rrf_k + rank)``, ranks from 1; ties go to the earlier id (the
    store breaks them by row id, and the set is stored in id order)."""
    scores: dict[str, float] = {}
    for mode, ids in ranked.items():
        for rank, pid in enumerate(ids, start=1):
            scores[pid] = scores.get(pid, 0.0) + weights[mode] / (rrf_k + rank)
    return sorted(scores, key=lambda pid: (-scores[pid], pid))


def sweep_fusion(scope: Any, entity_id: str, queries: Sequence[Query], label: str = "",
                 rrf_ks: Sequence[float] = RRF_KS,
                 weights: Sequence[tuple[float, float]] = WEIGHTS,
                 candidates: int = FUSION_CANDIDATES) -> list[Run]:
    """Hybrid search at each fusion constant × {vector, text} weight pair.

    Each mode's ranking is fetched once (``candidates`` deep, what hybrid
    search fuses for k=10) and fused here, so a grid of 49 costs two searches
    per query; first it checks that this fusion gives the vault's own hybrid
    results at the default and one other setting.
    """
    ranked = {q.id: {m: vault_search(scope, entity_id, m, k=candidates)(q.query)
                     for m in ("vector", "text")} for q in queries}
    for rrf_k, (wv, wt) in ((None, (1.0, 1.0)), (10.0, (2.0, 1.0))):
        check = vault_search(scope, entity_id, "hybrid", rrf_k=rrf_k,
                             weights={"vector": wv, "text": wt})
        for q in queries[::7]:
            mine = fuse(ranked[q.id], DEFAULT_RRF_K if rrf_k is None else rrf_k,
                        {"vector": wv, "text": wt})[:10]
            theirs = list(check(q.query))
            if mine != theirs:
                raise AssertionError(f"local fusion differs from the vault's for {q.id}: "
                                     f"{mine} != {theirs}")
    by_text = {q.query: q.id for q in queries}
    runs = []
    for rrf_k in rrf_ks:
        for wv, wt in weights:
            w = {"vector": wv, "text": wt}
            fused = {qid: fuse(r, rrf_k, w) for qid, r in ranked.items()}
            runs.append(Run(f"{label}hybrid rrf_k={rrf_k:g} w={wv:g}:{wt:g}",
                            evaluate(lambda text, f=fused: f[by_text[text]], queries)))
    return runs


def format_table(runs: Sequence[Run]) -> str:
    """A markdown table: overall recall@10/MRR, then per query kind."""
    kinds = sorted({kind for run in runs for kind in run.scores.by_kind})
    head = "| run | recall@10 | MRR | " + " | ".join(f"{k} R@10 / MRR" for k in kinds) + " |"
    lines = [head, "|" + "---|" * (3 + len(kinds))]
    for run in runs:
        s = run.scores
        cells = [f"{s.by_kind[k][0]:.3f} / {s.by_kind[k][1]:.3f}" if k in s.by_kind else ""
                 for k in kinds]
        lines.append(f"| {run.label} | {s.recall:.3f} | {s.mrr:.3f} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def measure_vault(settings_overrides: Mapping[str, Any], embedders: Sequence[str] = ("local",
                  "hash"), sweep: bool = False) -> list[Run]:
    """Open a fresh vault per embedder (in a temp dir unless ``data_dir`` or
    ``database_url`` is given), load the set into one entity, run the table."""
    import memvault

    passages, queries = load_passages(), load_queries()
    runs: list[Run] = []
    for name in embedders:
        overrides = dict(settings_overrides)
        with tempfile.TemporaryDirectory(prefix="memvault-quality-") as tmp:
            overrides.setdefault("data_dir", Path(tmp) / "data")
            overrides.setdefault("password_hash", "owasp")
            overrides.setdefault("log_level", "WARNING")
            vault = memvault.open(None, embedder=name, **overrides)
            try:
                uid = vault.users.register(f"q{uuid.uuid4().hex[:8]}@example.com",
                                           "password-1").id
                scope = vault.for_user(uid)
                entity_id = scope.entities.create("quality").entity_id
                load_into(scope, entity_id, passages)
                runs += run_modes(scope, entity_id, queries, label=f"{name} ")
                if sweep and name == "local":
                    runs += sweep_fusion(scope, entity_id, queries, label=f"{name} ")
            finally:
                vault.close()
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--embedders", default="local,hash")
    parser.add_argument("--sweep", action="store_true",
                        help="also sweep rrf_k and weights for hybrid (local embedder)")
    parser.add_argument("--missed", action="store_true", help="list queries each run missed")
    args = parser.parse_args(argv)
    overrides = {"database_url": args.database_url} if args.database_url else {}
    runs = measure_vault(overrides, args.embedders.split(","), sweep=args.sweep)
    print(format_table(runs))
    if args.missed:
        queries = {q.id: q for q in load_queries()}
        for run in runs[:6]:
            print(f"\n{run.label} missed:")
            for qid in run.scores.missed:
                print(f"  {qid} {queries[qid].query!r} -> {', '.join(queries[qid].relevant)}")


if __name__ == "__main__":
    main()
