"""Run steps (issue 8): the durable append of one step, and ending a run with
its retention.

- ``run.step()`` inside ``scope.runs.start()``: the library path; the number is
  taken from the run row in the inserting transaction, the lease renewed with it;
  latency is one call, returning once the step is committed;
- ``runs.append_step(step=n)``: the path of an HTTP client sending its own step
  numbers (idempotency), which locks the run row and checks the number first;
- start + complete of a run when its workflow already keeps ``runs_keep`` (100)
  finished runs, so every completion also prunes one (the retention walk skips
  the 100 kept through ``ix_runs_retention`` and deletes the one beyond);
- ``(ref)``: the library append with ``durability=normal`` (no fsync per commit).
"""

from __future__ import annotations

from typing import Any

from .common import Env, Result, fmt_rate, measure

SECTION = "runs"
RESULT = {"status": "completed", "data": [1.5, 2.5, 3.5], "note": "overnight moves"}


def _n(env: Env) -> int:
    return 500 if env.config.quick else 2_000


def _library_steps(env: Env, vault: Any, owner: str, reference: bool = False) -> Result:
    runs = vault.for_user(owner).runs
    with runs.start("bench") as run:
        s = measure(lambda i: run.step(agent="bench", action="fetch", result=RESULT), _n(env))
    stored = runs.summary(run.id).step_count
    rate = fmt_rate(s.n, s.mean_ns * s.n / 1e9, "steps")
    if reference:
        return Result(SECTION, "(ref) run.step, durability=normal", s, throughput=rate,
                      target="—", note="no fsync per commit: the SQL cost alone")
    return Result(SECTION, "run step append (run.step, durable)", s, throughput=rate,
                  target="—", note=f"{stored:,} steps stored (with warm-up)")


def _numbered_steps(env: Env, vault: Any, owner: str) -> Result:
    runs = vault.for_user(owner).runs
    run = runs.create("bench-http")
    numbers = iter(range(1, 10**9))
    s = measure(lambda i: runs.append_step(run.id, "fetch", agent="bench", result=RESULT,
                                           step=next(numbers)), _n(env))
    runs.complete(run.id, "completed")
    return Result(SECTION, "run step append, client-numbered (append_step(step=n))", s,
                  throughput=fmt_rate(s.n, s.mean_ns * s.n / 1e9, "steps"), target="—",
                  note="the HTTP idempotent path: locks and reads the run row first")


def _start_complete(env: Env, vault: Any, owner: str) -> Result:
    runs = vault.for_user(owner).runs
    keep = vault.settings.runs_keep
    for _ in range(keep):  # the workflow holds its full quota: each completion prunes one
        runs.complete(runs.create("bench-retention").id, "completed")

    def one(i: int) -> None:
        runs.complete(runs.create("bench-retention").id, "completed")

    s = measure(one, max(100, _n(env) // 4))
    kept = runs.list(workflow="bench-retention", limit=200).items
    return Result(SECTION, f"run start + complete, retention at {keep} kept", s,
                  throughput=fmt_rate(s.n, s.mean_ns * s.n / 1e9, "runs"), target="—",
                  note=f"2 commits per run; {len(kept)} runs kept after {s.n + keep + 20:,}")


def run(env: Env) -> list[Result]:
    out: list[Result] = []
    with env.vault() as vault:
        owner = env.user(vault)
        out.append(_library_steps(env, vault, owner))
        out.append(_numbered_steps(env, vault, owner))
        out.append(_start_complete(env, vault, owner))
        with env.reopen(vault, durability="normal") as relaxed:
            out.append(_library_steps(env, relaxed, owner, reference=True))
    return out
