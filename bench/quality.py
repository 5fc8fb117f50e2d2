"""Search quality on the labelled set, per backend, with the fusion sweep.

    python bench/quality.py [--backend sqlite|postgresql|all] [--embedders local,hash]
                            [--no-sweep] [--output FILE]

Loads tests/retrieval/quality/ (242 passages, 181 queries) into one entity per
embedder as vector records and prints recall@10 and MRR for ``vector``,
``text`` and ``hybrid`` search, overall and per query kind; then (``local``
only) hybrid at each ``rrf_k`` × ``{vector, text}`` weight pair, best first,
so the defaults can be chosen. Nothing is asserted (tests/retrieval/
test_quality.py holds the floors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/quality.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

from tests.retrieval.quality_eval import format_table, measure_vault  # noqa: E402

from bench.common import PostgresServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="all", choices=["sqlite", "postgresql", "all"])
    parser.add_argument("--embedders", default="local,hash")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    out: list[str] = []
    pg = PostgresServer() if "postgresql" in backends else None
    try:
        for backend in backends:
            overrides = {}
            if backend == "postgresql":
                assert pg is not None
                overrides["database_url"] = pg.database()
            runs = measure_vault(overrides, args.embedders.split(","), sweep=not args.no_sweep)
            modes = [r for r in runs if "rrf_k=" not in r.label]
            sweep = sorted((r for r in runs if "rrf_k=" in r.label),
                           key=lambda r: (-r.scores.mrr, -r.scores.recall))
            out.append(f"## {backend}\n\n{format_table(modes)}\n")
            if sweep:
                out.append(f"### {backend}: hybrid fusion sweep (local), best MRR first\n\n"
                           f"{format_table(sweep)}\n")
            print("\n".join(out[-2:]) if sweep else out[-1], flush=True)
    finally:
        if pg is not None:
            pg.stop()
    if args.output:
        args.output.write_text("\n".join(out), encoding="utf-8")


if __name__ == "__main__":
    main()
