"""Runs survive a crashed writer: a library process appending steps is killed
with SIGKILL; every step it was told is durable (``step()`` returned) is there,
numbered without gaps and as written, and the run ends ``interrupted`` — seen by
the periodic sweeper of a live process on the host, or at the next start-up.

This module is also the writer (``python -m tests.e2e.test_runs_crash OWNER
SEED``): it opens the vault from ``MEMVAULT_*``, starts a run and prints,
flushed, ``ready <run_id>`` and then ``ack <step>`` after each ``step()`` returned.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import memvault
from memvault import Settings

from ..conftest import server_env
from .server import reap

REPO = Path(__file__).resolve().parents[2]


def _result(seed: str, i: int) -> dict[str, Any]:
    """What the writer stores as step ``i``'s result (deterministic per seed)."""
    rng = random.Random(f"{seed}:{i}")
    return {"i": i, "text": "ünï 🙂 " * rng.randint(0, 20), "n": rng.random()}


def _writer(owner: str, seed: str) -> int:
    vault = memvault.open()
    out = sys.stdout
    with vault.for_user(owner).runs.start("crash", input={"seed": seed}) as run:
        out.write(f"ready {run.id}\n")
        out.flush()
        for i in range(1, 1_000_000):
            step = run.step(agent="bot", action=f"a{i}", result=_result(seed, i))
            out.write(f"ack {step.step}\n")
            out.flush()
    return 0


def _crash(settings: Settings, owner: str, seed: str, acks_wanted: int) -> tuple[str, int]:
    """Run a writer, kill it after ``acks_wanted`` acknowledged steps (plus a little);
    returns the run id and the last acknowledged step."""
    env = server_env(settings)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.test_runs_crash", owner, seed],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while len([ln for ln in lines if ln.startswith("ack ")]) < acks_wanted:
            line = proc.stdout.readline()
            assert line, f"writer exited early (rc={proc.poll()})"
            assert time.monotonic() < deadline, "writer too slow"
            lines.append(line.strip())
        time.sleep(random.uniform(0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        lines += proc.stdout.read().splitlines()
    finally:
        reap(proc)
    assert proc.returncode == -signal.SIGKILL
    assert lines[0].startswith("ready "), lines[:3]
    acks = [int(ln.split()[1]) for ln in lines if ln.startswith("ack ")]
    assert acks == list(range(1, len(acks) + 1))
    return lines[0].split()[1], acks[-1]


def _check(vault: memvault.Vault, owner: str, run_id: str, seed: str, acked: int) -> None:
    run = vault.for_user(owner).runs.get(run_id)
    assert run.status == "interrupted" and run.finished_at is not None
    steps = run.steps
    n = len(steps)
    assert [s.step for s in steps] == list(range(1, n + 1))
    assert acked <= n <= acked + 1, f"acknowledged {acked}, stored {n}"
    assert run.step_count == n and run.input == {"seed": seed}
    for s in steps:
        assert (s.agent, s.action, s.result) == ("bot", f"a{s.step}", _result(seed, s.step))
    assert vault.integrity_check() == []


def test_library_run_writer_killed(settings: Settings) -> None:
    seed = os.environ.get("MEMVAULT_TEST_SEED") or uuid.uuid4().hex
    rng = random.Random(seed)
    # 1. A live process on the host sees the dead writer in its periodic sweep.
    with memvault.open(settings, run_lease_s=3) as vault:
        owner = vault.users.register(f"r{uuid.uuid4().hex[:8]}@example.com", "password-1").id
        run_id, acked = _crash(settings, owner, seed, rng.randint(1, 60))
        runs = vault.for_user(owner).runs
        deadline = time.monotonic() + 20
        while runs.summary(run_id).status == "running":
            assert time.monotonic() < deadline, "the sweeper did not see the dead writer"
            time.sleep(0.05)
        _check(vault, owner, run_id, seed, acked)
    # 2. Nobody is watching: the next start-up marks it.
    run_id, acked = _crash(settings, owner, seed, rng.randint(1, 60))
    with memvault.open(settings) as vault:
        _check(vault, owner, run_id, seed, acked)
        assert vault.run_keeper.sweep() == 0


if __name__ == "__main__":
    sys.exit(_writer(sys.argv[1], sys.argv[2]))
