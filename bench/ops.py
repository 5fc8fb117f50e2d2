"""Operations on a whole vault: backup, restore, verify, export/import, and the
effect of a running backup on durable chunk appends (issue 9's benchmark).

    python -m bench.ops [--size-mb 150] [--backend sqlite|postgresql|all]

The fixture is one user's vault of about ``--size-mb`` MB: 70% messages (700
characters each, 10,000 per conversation, bulk-filled through the vault's own
tables, as bench/common.py's fills do) and 30% blobs (1 MiB files of random
bytes uploaded with ``files.add``). Its build time is printed, not reported.
Each operation is timed once on it (seconds; MB/s over the backup's size):

- ``create_backup`` into a folder beside the vault (unencrypted);
- ``restore_backup`` of that backup into an empty vault of the same backend
  (SQLite: a new data folder; PostgreSQL: a new database), checksums included;
- ``verify`` of the source vault (no repair);
- ``export_archive`` into a directory and ``import_archive`` into an empty vault
  of the same backend, in records/s (rows of every kind, blobs counted once);
- durable chunk appends (``reply.write`` on one library stream, the vault opened
  with ``persist_chunk_tokens=1``, as bench/streams.py) alone, then while a
  ``create_backup`` of the same vault runs in another thread of this process
  (so the backup also competes for the GIL, as it would in-process; the CLI
  ``memvault backup`` runs in a process of its own).

In ``bench/run.py`` the section uses 50 MB (``--quick``) or 200 MB; pass
``--size-mb 1024`` here for the issue's 1 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/ops.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

import memvault  # noqa: E402
from memvault import Vault  # noqa: E402
from memvault.ops.archive import export_archive, import_archive  # noqa: E402
from memvault.ops.backup import create_backup, restore_backup  # noqa: E402
from memvault.ops.verify import verify  # noqa: E402

from .common import (  # noqa: E402
    Env,
    Result,
    Stats,
    Timer,
    fill_conversations,
    fill_messages,
    fmt_rate,
    measure,
    open_env,
    pin_one_cpu,
    stats,
)

SECTION = "ops"
MESSAGE_SHARE = 0.7
CONTENT_CHARS = 700            # ~1M messages in 1 GB
PER_CONVERSATION = 10_000
BLOB_BYTES = 1 << 20
DELTA = "token "
APPENDS_ALONE = 1_000


def _fixture(vault: Vault, owner: str, size_mb: float) -> dict[str, Any]:
    """Fill ``owner``'s part of ``vault`` up to ~``size_mb`` MB of content."""
    total = size_mb * 1e6
    messages = max(1, int(total * MESSAGE_SHARE / CONTENT_CHARS))
    blob_count = max(1, int(total * (1 - MESSAGE_SHARE) / BLOB_BYTES))
    convs = max(1, -(-messages // PER_CONVERSATION))
    conv_ids = fill_conversations(vault, owner, convs)
    left = messages
    for cid in conv_ids:
        n = min(PER_CONVERSATION, left)
        fill_messages(vault, owner, cid, n, content_chars=CONTENT_CHARS)
        left -= n
    scope = vault.for_user(owner)
    ent = scope.entities.create("blobs")
    docs = [scope.files.add(ent.entity_id, f"blob-{i}.bin", os.urandom(BLOB_BYTES)).doc_id
            for i in range(blob_count)]
    # Their ingest jobs run in the background; let them end before measuring.
    scope.files.wait_indexed(ent.entity_id, docs, timeout_s=600)
    return {"messages": messages, "conversations": convs, "blobs": blob_count,
            "content_bytes": messages * CONTENT_CHARS + blob_count * BLOB_BYTES}


@contextlib.contextmanager
def _empty_target(env: Env) -> Iterator[memvault.Settings]:
    """Settings of a new, empty place for a vault of ``env``'s backend (not opened)."""
    data_dir = Path(tempfile.mkdtemp(prefix="r-", dir=env.root)) / "vault"
    url = env.pg.database() if env.pg is not None else None
    settings = memvault.load_settings(data_dir=data_dir, database_url=url,
                                      password_hash="owasp", log_level="WARNING")
    try:
        yield settings
    finally:
        if url is not None and env.pg is not None:
            with contextlib.suppress(Exception):
                env.pg.drop(url)
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def _mb(n_bytes: int) -> float:
    return n_bytes / 1e6


def _timed(label: str, seconds: float, size: int | None = None, records: int | None = None,
           note: str = "") -> Result:
    parts = [f"{seconds:.1f} s"]
    if size is not None:
        parts.append(fmt_rate(_mb(size), seconds, "MB"))
    if records is not None:
        parts.append(fmt_rate(records, seconds, "records"))
    return Result(SECTION, label, None, throughput=", ".join(parts), target="—", note=note)


def _appends_during_backup(vault: Vault, reply: Any, backups: Path) -> tuple[Stats, float]:
    """Chunk-append latencies while a backup of ``vault`` runs in another thread
    (only appends started before it ended); returns them and the backup's seconds."""
    done = threading.Event()
    errors: list[BaseException] = []
    took: list[float] = []

    def backup() -> None:
        try:
            with Timer() as t:
                create_backup(vault.db, vault.blobs, vault.settings, backups)
            took.append(t.s)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=backup, daemon=True)
    out: list[int] = []
    clock = time.perf_counter_ns
    worker.start()
    while not done.is_set():
        t0 = clock()
        reply.write(DELTA)
        out.append(clock() - t0)
    worker.join()
    if errors:
        raise errors[0]
    return stats(out), took[0]


def run_size(env: Env, size_mb: float) -> list[Result]:
    out: list[Result] = []
    with env.vault(persist_chunk_tokens=1) as vault:
        owner = env.user(vault)
        with Timer() as build:
            shape = _fixture(vault, owner, size_mb)
        print(f"    fixture: {shape['messages']:,} messages in {shape['conversations']} "
              f"conversations + {shape['blobs']} blobs of 1 MiB = "
              f"{_mb(shape['content_bytes']):.0f} MB of content, built in {build.s:.0f}s",
              flush=True)
        backups = env.root / f"backups-{owner}"

        with Timer() as t:
            info = create_backup(vault.db, vault.blobs, vault.settings, backups)
        size = info.size
        fixture_note = (f"{shape['messages']:,} messages ({CONTENT_CHARS} chars) + "
                        f"{shape['blobs']} x 1 MiB blobs; backup {_mb(size):.0f} MB, "
                        f"{info.records:,} records")
        out.append(_timed("create_backup", t.s, size, info.records, note=fixture_note))
        print("   ", out[-1].throughput, flush=True)

        with _empty_target(env) as target, Timer() as t:
            report = restore_backup(info.path, target)
        inserted = sum(report.inserted.values())
        out.append(_timed("restore_backup (into an empty vault)", t.s, size, inserted,
                          note=f"checksums + import + swap; {inserted:,} records"))
        print("   ", out[-1].throughput, flush=True)
        shutil.rmtree(info.path, ignore_errors=True)

        with Timer() as t:
            checked = verify(vault.settings)
        out.append(_timed("verify (no repair)", t.s, size,
                          note="ok" if checked.ok else "problems found"))
        print("   ", out[-1].throughput, flush=True)

        archive = env.root / f"export-{owner}"
        with Timer() as t:
            manifest = export_archive(vault.db, vault.blobs, archive)
        records = sum(manifest.counts.values())
        out.append(_timed("export_archive (directory)", t.s, size, records,
                          note=f"{records:,} records"))
        print("   ", out[-1].throughput, flush=True)
        with env.vault() as empty, Timer() as t:
            imported = import_archive(empty.db, empty.blobs, archive)
        got = sum(imported.inserted.values())
        out.append(_timed("import_archive (into an empty vault)", t.s, size, got,
                          note=f"{got:,} records, one transaction"))
        print("   ", out[-1].throughput, flush=True)
        shutil.rmtree(archive, ignore_errors=True)

        convs = vault.for_user(owner).conversations
        conv = convs.create("appends")
        with convs.stream(conv.id, author="bench") as reply:
            alone = measure(lambda i: reply.write(DELTA), APPENDS_ALONE)
            during, wall = _appends_during_backup(vault, reply, backups)
            after = measure(lambda i: reply.write(DELTA), APPENDS_ALONE, warmup=0)
        out.append(Result(SECTION, "chunk append, 1 stream, alone", alone,
                          throughput=fmt_rate(alone.n, alone.mean_ns * alone.n / 1e9,
                                              "chunks"), target="—",
                          note="reply.write, durable; before the backup"))
        out.append(Result(SECTION, "chunk append, 1 stream, during create_backup", during,
                          throughput=fmt_rate(during.n, during.mean_ns * during.n / 1e9,
                                              "chunks"), target="—",
                          note=f"create_backup in another thread took {wall:.1f}s; "
                               f"max {during.max_ns / 1e6:.0f} ms"))
        out.append(Result(SECTION, "chunk append, 1 stream, after the backup", after,
                          throughput=fmt_rate(after.n, after.mean_ns * after.n / 1e9,
                                              "chunks"), target="—",
                          note="same stream, once the backup has ended"))
        shutil.rmtree(backups, ignore_errors=True)
    return out


def run(env: Env) -> list[Result]:
    return run_size(env, 50 if env.config.quick else 200)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=150,
                        help="target vault size: 70%% messages, 30%% blobs (default 150)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = parser.parse_args(argv)

    from memvault.logs import configure_logging

    from .run import md_table, text_table

    configure_logging(memvault.load_settings(log_level="WARNING"))
    if not args.no_pin:
        pin_one_cpu()  # before PostgreSQL starts, so its processes share the pin
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    tables: dict[str, list[Result]] = {}
    for backend in backends:
        print(f"[{backend}] ops, {args.size_mb:g} MB …", flush=True)
        with open_env(backend) as env, Timer() as t:
            tables[backend] = run_size(env, args.size_mb)
        print(f"  ({t.s:.0f}s)", flush=True)
    for backend, results in tables.items():
        print(f"\n=== {backend} ===\n{text_table(results)}\n\n{md_table(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
