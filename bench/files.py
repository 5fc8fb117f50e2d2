"""File upload throughput through ``files.add(entity_id, name, bytes)``: many small
files and a few large ones, every file distinct (random bytes, so no dedup)."""

from __future__ import annotations

import os

from .common import Env, Result, Timer, fmt_rate, measure

SECTION = "files"


def _upload(env: Env, files, entity_id: str, payloads: list[bytes], label: str,
            suffix: str) -> Result:
    total_bytes = sum(len(p) for p in payloads)
    names = [f"file-{i}{suffix}" for i in range(len(payloads))]
    with Timer() as wall:
        s = measure(lambda i: files.add(entity_id, names[i], payloads[i]), len(payloads),
                    warmup=0)
    rate = f"{fmt_rate(len(payloads), wall.s, 'files')}, " \
           f"{fmt_rate(total_bytes / 1e6, wall.s, 'MB')}"
    return Result(SECTION, f"files.add {label}", s, throughput=rate, target="—",
                  note=f"{len(payloads)} files, {total_bytes / 1e6:.1f} MB in {wall.s:.2f}s")


def run(env: Env) -> list[Result]:
    cfg = env.config
    out: list[Result] = []
    with env.vault() as vault:
        owner = env.user(vault)
        scope = vault.for_user(owner)
        ent = scope.entities.create("uploads")
        # Warm the path (and the blob fan-out folders' first mkdir) outside the timing.
        for i in range(5):
            scope.files.add(ent.entity_id, f"warm-{i}.bin", os.urandom(1024))
        small = [os.urandom(cfg.small_file_kib << 10) for _ in range(cfg.small_files)]
        out.append(_upload(env, scope.files, ent.entity_id, small,
                           f"{cfg.small_file_kib} KiB", ".txt"))
        del small
        large = [os.urandom(cfg.large_file_mib << 20) for _ in range(cfg.large_files)]
        out.append(_upload(env, scope.files, ent.entity_id, large,
                           f"{cfg.large_file_mib} MiB", ".pdf"))
    return out
