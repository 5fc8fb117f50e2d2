"""Durable chunk appends through the streaming ``Reply`` writer.

The vault is opened with ``persist_chunk_tokens=1``, so every ``reply.write()``
persists one chunk and returns only when it is committed (through the shared
group-commit ``ChunkWriter``). Latency is the time of one ``write``.
"""

from __future__ import annotations

import threading
import time

from .common import Env, Result, Timer, fmt_rate, measure, stats, verdict

SECTION = "streams"
P99_TARGET_NS = 1_000_000     # p99 < 1 ms at 1 stream
RATE_TARGET = 20_000          # >= 20,000 chunks/s across 100 streams
DELTA = "token "              # a typical LLM delta


def _one_stream(env: Env, vault, owner: str, reference: bool = False) -> Result:
    convs = vault.for_user(owner).conversations
    conv = convs.create("one stream")
    with convs.stream(conv.id, author="bench") as reply:
        s = measure(lambda i: reply.write(DELTA), env.config.chunk_writes_1)
    stored = convs.get_message(reply.message_id)
    rate = fmt_rate(s.n, s.mean_ns * s.n / 1e9, "chunks")
    if reference:
        return Result(SECTION, "(ref) chunk append, 1 stream, durability=normal", s,
                      throughput=rate, target="—",
                      note="no fsync per commit: hand-off to the writer thread + SQL cost")
    return Result(SECTION, "chunk append, 1 stream (reply.write, durable)", s,
                  throughput=rate, target="p99 < 1 ms",
                  verdict=verdict(s.p99_ns < P99_TARGET_NS),
                  note=f"{stored.last_chunk_seq} chunks stored")


def _direct_appends(env: Env, vault, owner: str) -> Result:
    """The same durable append without the Reply/ChunkWriter: ``append_chunks``
    commits in the caller's thread (the HTTP chunk endpoint's path)."""
    convs = vault.for_user(owner).conversations
    conv = convs.create("direct appends")
    msg = convs.start_message(conv.id, author="bench")
    seq = iter(range(1, 10**9))
    s = measure(lambda i: convs.append_chunks(msg.id, [(next(seq), DELTA)]),
                env.config.chunk_writes_1)
    convs.complete(msg.id)
    return Result(SECTION, "(ref) convs.append_chunks, 1 stream (caller's thread)", s,
                  throughput=fmt_rate(s.n, s.mean_ns * s.n / 1e9, "chunks"), target="—",
                  note="durable; no writer-thread hand-off, but reads+locks the message row")


def _many_streams(env: Env, vault, owner: str) -> list[Result]:
    cfg = env.config
    convs = vault.for_user(owner).conversations
    replies = []
    for i in range(cfg.streams):
        conv = convs.create(f"stream {i}")
        replies.append(convs.stream(conv.id, author=f"agent-{i % 4}"))
    barrier = threading.Barrier(cfg.streams + 1)
    latencies: list[list[int]] = [[] for _ in replies]
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        reply, lat = replies[k], latencies[k]
        clock = time.perf_counter_ns
        try:
            reply.write(DELTA)  # warm-up, before the start line
            barrier.wait()
            for _ in range(cfg.chunks_per_stream):
                t0 = clock()
                reply.write(DELTA)
                lat.append(clock() - t0)
        except BaseException as exc:  # noqa: BLE001 - reported, not raised
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(cfg.streams)]
    for t in threads:
        t.start()
    barrier.wait()
    with Timer() as wall:
        for t in threads:
            t.join()
    for reply in replies:
        reply.finish()
    total = sum(len(x) for x in latencies)
    rate = total / wall.s if wall.s else 0.0
    s = stats([x for lat in latencies for x in lat])
    note = f"{cfg.streams} threads x {cfg.chunks_per_stream} writes = {total:,} chunks " \
           f"in {wall.s:.2f}s"
    if errors:
        note += f"; {len(errors)} errors, first: {errors[0]!r}"
    stored = sum(convs.get_message(r.message_id).last_chunk_seq for r in replies)
    note += f"; {stored:,} stored"
    return [Result(SECTION, f"chunk append, {cfg.streams} concurrent streams", s,
                   throughput=fmt_rate(total, wall.s, "chunks"),
                   target="≥ 20,000 chunks/s", verdict=verdict(rate >= RATE_TARGET),
                   note=note)]


def run(env: Env) -> list[Result]:
    out: list[Result] = []
    with env.vault(persist_chunk_tokens=1) as vault:
        owner = env.user(vault)
        out.append(_one_stream(env, vault, owner))
        out.append(_direct_appends(env, vault, owner))
        out += _many_streams(env, vault, owner)
        with env.reopen(vault, durability="normal") as relaxed:
            out.append(_one_stream(env, relaxed, owner, reference=True))
    return out
