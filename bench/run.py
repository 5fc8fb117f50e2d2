"""memvault benchmark suite: library calls, timed with ``time.perf_counter_ns``.

    python bench/run.py [--backend sqlite|postgresql|all] [--quick]
                        [--sections entities,files,streams,conversations,vectors,retrieval,
                                    graphs,fanout,runs,cache,ops]
                        [--output bench/RESULTS.md]

Every vault lives in a temporary directory (and, on PostgreSQL, a fresh database
on an embedded server this script starts and stops), with the default
``durability=full``. Prints one table per backend with the ARCHITECTURE.md target
beside each figure and writes the same tables as markdown. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

from bench import (  # noqa: E402
    cache,
    conversations,
    entities,
    fanout,
    files,
    graphs,
    ops,
    retrieval,
    runs,
    streams,
    vector_search,
)
from bench.common import (  # noqa: E402
    Config,
    Env,
    PostgresServer,
    Result,
    fmt_ms,
    machine_info,
)
from memvault.logs import configure_logging  # noqa: E402
from memvault.settings import load_settings  # noqa: E402

SECTIONS: dict[str, Callable[[Env], list[Result]]] = {
    "entities": entities.run,
    "files": files.run,
    "streams": streams.run,
    "conversations": conversations.run,
    "vectors": vector_search.run,
    "retrieval": retrieval.run,
    "graphs": graphs.run,
    "fanout": fanout.run,
    "runs": runs.run,
    "cache": cache.run,
    "ops": ops.run,
}
HEADERS = ["operation", "n", "p50", "p99", "throughput", "target", "", "notes"]


def _row(r: Result) -> list[str]:
    s = r.stats
    return [r.operation, f"{s.n:,}" if s else "", fmt_ms(s.p50_ns) if s else "",
            fmt_ms(s.p99_ns) if s else "", r.throughput, r.target, r.verdict, r.note]


def text_table(results: list[Result]) -> str:
    rows = [HEADERS] + [_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    widths[-1] = min(widths[-1], 90)
    lines = []
    for k, row in enumerate(rows):
        cells = [c.ljust(w) if i in (0, 5, 6, 7) else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(results: list[Result]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")
    lines = ["| " + " | ".join(HEADERS[:6] + ["vs target", "notes"]) + " |",
             "|---|--:|--:|--:|--:|---|---|---|"]
    for r in results:
        row = _row(r)
        if row[6] == "MISS":
            row[6] = "**MISS**"
        lines.append("| " + " | ".join(esc(c) for c in row) + " |")
    return "\n".join(lines)


LOADS: dict[str, list[str]] = {}   # backend -> "section 1-min load average" notes
KEEP_MARKER = "\n## Observations"


def run_backend(backend: str, cfg: Config, names: list[str]) -> tuple[list[Result], str | None]:
    pg: PostgresServer | None = None
    pg_version = None
    if backend == "postgresql":
        print("starting embedded PostgreSQL …", flush=True)
        t0 = time.perf_counter()
        pg = PostgresServer()
        pg_version = pg.version()
        print(f"  PostgreSQL {pg_version} up in {time.perf_counter() - t0:.1f}s", flush=True)
    env = Env(backend=backend, config=cfg, pg=pg)
    results: list[Result] = []
    try:
        for name in names:
            print(f"[{backend}] {name} …", flush=True)
            t0 = time.perf_counter()
            try:
                got = SECTIONS[name](env)
            except Exception as exc:  # noqa: BLE001 - report and go on
                traceback.print_exc()
                got = [Result(name, f"{name}: FAILED", note=f"{type(exc).__name__}: {exc}")]
            for r in got:
                print("   ", " | ".join(c for c in _row(r) if c), flush=True)
            took = time.perf_counter() - t0
            load = os.getloadavg()[0]
            LOADS.setdefault(backend, []).append(f"{name} {took:.0f}s (load {load:.2f})")
            print(f"  ({took:.1f}s, 1-min load average {load:.2f})", flush=True)
            results += got
    finally:
        env.close()
        if pg is not None:
            print("stopping embedded PostgreSQL …", flush=True)
            pg.stop()
    return results, pg_version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~3 minutes)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of: " + ", ".join(SECTIONS))
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).resolve().parent / "RESULTS.md",
                        help="markdown report path ('-' to skip)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")

    configure_logging(load_settings(log_level="WARNING"))
    cfg = Config.make(args.quick)
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    started = time.perf_counter()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    per_backend: dict[str, list[Result]] = {}
    pg_version = None
    for backend in backends:
        results, version = run_backend(backend, cfg, names)
        per_backend[backend] = results
        pg_version = version or pg_version
    elapsed = time.perf_counter() - started

    info = machine_info(pg_version)
    info["load average at start"] = load_start
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["mode"] = "quick" if cfg.quick else "full"
    info["run time"] = f"{elapsed:.0f}s"
    print()
    print("  ".join(f"{k}: {v}" for k, v in info.items()))
    for backend, results in per_backend.items():
        print(f"\n=== {backend} (durability=full) ===")
        print(text_table(results))

    if str(args.output) != "-":
        keep = ""
        if args.output.exists():  # hand-written observations survive a re-run
            old = args.output.read_text()
            if KEEP_MARKER in old:
                keep = old[old.index(KEEP_MARKER):]
        args.output.write_text(render_markdown(per_backend, info, cfg) + keep)
        print(f"\nwrote {args.output}")
    return 0


def render_markdown(per_backend: dict[str, list[Result]], info: dict[str, str],
                    cfg: Config) -> str:
    out = ["# memvault benchmark results", "",
           "Produced by `python bench/run.py" + (" --quick" if cfg.quick else "") + "`. "
           "Library calls, `time.perf_counter_ns` per call, nearest-rank percentiles; "
           "default `durability=full` (SQLite `synchronous=FULL` in WAL, PostgreSQL "
           "`synchronous_commit=on`). Targets are ARCHITECTURE.md's (stated for SQLite on "
           "a 2-core machine); they are shown beside the PostgreSQL figures for comparison.",
           "", "## Machine", ""]
    out += [f"- **{k}**: {v}" for k, v in info.items()]
    for backend, results in per_backend.items():
        out += ["", f"## {backend}", "", md_table(results)]
        if LOADS.get(backend):
            out += ["", "Section wall times (1-min load average after each): "
                    + "; ".join(LOADS[backend]) + "."]
    out += ["", "## How the data was prepared", "",
            "- Measured operations go through the public library API "
            "(`vault.for_user(uid).entities/.files/.conversations`).",
            "- The rows that must already exist (100k entities, 10k messages, 100k "
            "conversations) are bulk-inserted through the vault's own engine and schema "
            "tables (`vault.db.write()`), shaped exactly as the stores write them.",
            "- The 200-message conversation is built through the library: 100 appended "
            "user messages and 100 streamed, completed assistant replies.",
            "- Chunk appends: a vault opened with `persist_chunk_tokens=1`, so each "
            "`reply.write()` persists one chunk and returns once it is committed by the "
            "group-commit `ChunkWriter`. 100 streams = 100 threads, one `Reply` each, "
            "released together by a barrier.",
            "- `(floor)` rows: the bare driver (sqlite3 / psycopg) doing one INSERT+COMMIT / one "
            "keyed SELECT on the same store, measured in rounds alternating with the library "
            "calls — the lowest any library could reach on this disk at that moment.",
            "- `(ref)` rows: the same call with `durability=normal` (no fsync per commit); "
            "the gap to the full-durability row is the disk's share.",
            "- Levels (1k / 100k entities) are separate vaults measured in alternating rounds "
            "of 50 calls, and so are the first and deep conversation-list pages, so a noisy "
            "neighbour affects the compared figures alike.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
