"""Conversation reads: a 50-message page out of 10,000 messages, loading a finished
200-message conversation, and listing 100,000 (10k with --quick) conversations
(first page, a deep page via cursor, and a full cursor walk)."""

from __future__ import annotations

import random
import time

from .common import (
    Env,
    Result,
    Timer,
    fill_conversations,
    fill_messages,
    fmt_ms,
    fmt_rate,
    measure,
    measure_interleaved,
    stats,
    verdict,
)

SECTION = "conversations"
PAGE_P99_NS = 2_000_000   # 50-message page of a 10,000-message conversation: p99 < 2 ms
LOAD_P99_NS = 5_000_000   # finished 200-message conversation: p99 < 5 ms (seeds: < 50 ms)
PAGE = 50


def _page_reads(env: Env, vault, owner: str) -> Result:
    cfg = env.config
    convs = vault.for_user(owner).conversations
    conv = convs.create("long conversation")
    with Timer() as fill:
        ids = fill_messages(vault, owner, conv.id, cfg.page_conv_messages)
    rng = random.Random(2)
    # `after` positions that still leave a full page behind them.
    picks = [ids[rng.randrange(0, len(ids) - PAGE)] for _ in range(cfg.page_reads + 20)]
    got: list[int] = []
    s = measure(lambda i: got.append(len(convs.messages(conv.id, limit=PAGE,
                                                        after=picks[i]).items)),
                cfg.page_reads)
    short = sum(1 for n in got if n != PAGE)
    note = f"random `after` over {len(ids):,} messages (fill {fill.s:.1f}s)"
    if short:
        note += f"; {short} pages not full!"
    return Result(SECTION, f"messages page (limit={PAGE}) of {len(ids):,}", s,
                  target="p99 < 2 ms", verdict=verdict(s.p99_ns < PAGE_P99_NS), note=note)


def _load_finished(env: Env, vault, owner: str) -> Result:
    """A 200-message conversation built through the library: user messages appended,
    assistant replies streamed and completed (so content is materialised)."""
    cfg = env.config
    convs = vault.for_user(owner).conversations
    conv = convs.create("finished conversation", participants=["user", "assistant"])
    question = "Could you summarise the quarterly report and list the open risks? " * 3
    with Timer() as build:
        for i in range(cfg.load_conv_messages // 2):
            convs.append(conv.id, "user", f"{i}: {question}")
            with convs.stream(conv.id, author="assistant") as reply:
                for k in range(6):
                    reply.write(f"Part {k} of the answer, with some detail on item {i}. " * 2)
    count = len(convs.get(conv.id, include_messages=True).messages or [])
    s = measure(lambda i: convs.get(conv.id, include_messages=True), cfg.load_reads)
    return Result(SECTION, f"load finished conversation ({count} messages)", s,
                  target="p99 < 5 ms", verdict=verdict(s.p99_ns < LOAD_P99_NS),
                  note=f"get(include_messages=True); built in {build.s:.1f}s")


def _listing(env: Env, vault, owner: str) -> list[Result]:
    cfg = env.config
    convs = vault.for_user(owner).conversations
    with Timer() as fill:
        fill_conversations(vault, owner, cfg.listing_conversations)
    total = convs.count()
    out: list[Result] = []

    # Walk every page once through the cursor, timing each page.
    cursors: list[str] = []
    walk: list[int] = []
    seen = 0
    cursor = None
    clock = time.perf_counter_ns
    with Timer() as wall:
        while True:
            t0 = clock()
            page = convs.list(limit=PAGE, cursor=cursor)
            walk.append(clock() - t0)
            seen += len(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            cursors.append(cursor)
    ws = stats(walk)
    out.append(Result(SECTION, "list conversations, full cursor walk (per page)", ws,
                      throughput=fmt_rate(seen, wall.s, "rows"),
                      target="—", note=f"{len(walk):,} pages, {seen:,} rows in {wall.s:.2f}s"))

    k = int(len(cursors) * 0.95)
    deep, depth = cursors[k], (k + 1) * PAGE
    both = measure_interleaved({"first": lambda i: convs.list(limit=PAGE),
                                "deep": lambda i: convs.list(limit=PAGE, cursor=deep)},
                               cfg.listing_reads)
    first, s_deep = both["first"], both["deep"]
    ratio = s_deep.p50_ns / first.p50_ns if first.p50_ns else 0.0
    out.insert(0, Result(SECTION, f"list conversations, first page (of {total:,})", first,
                         target="—", note=f"limit={PAGE}; fill {fill.s:.1f}s"))
    out.append(Result(SECTION, f"list conversations, deep page (after row {depth:,})", s_deep,
                      target="≈ first page", verdict=verdict(ratio < 1.5),
                      note=f"cursor page; p50 x{ratio:.2f} of first page "
                           f"({fmt_ms(first.p50_ns)}), interleaved"))
    return out


def run(env: Env) -> list[Result]:
    out: list[Result] = []
    with env.vault() as vault:
        out.append(_page_reads(env, vault, env.user(vault)))
        out.append(_load_finished(env, vault, env.user(vault)))
        out += _listing(env, vault, env.user(vault))
    return out
