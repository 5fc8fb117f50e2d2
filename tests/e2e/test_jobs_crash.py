"""Durable jobs survive ``kill -9``: a job claimed by a library process that is
killed mid-job is taken over and completed by another process of the vault,
and every other job runs exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import memvault
from memvault import Settings
from memvault.jobs import DONE, Job

from ..conftest import server_env
from .server import reap

REPO = Path(__file__).resolve().parents[2]
KIND = "test.crash"


def test_a_job_of_a_killed_worker_is_completed_by_another_process(
        settings: Settings, tmp_path: Path) -> None:
    with memvault.open(settings) as vault:  # creates the schema; no handler here
        ids = [vault.jobs.enqueue(KIND, {"n": i}) for i in range(5)]

    env = server_env(settings, job_lease_s=2, job_workers=1)
    env["PYTHONUNBUFFERED"] = "1"
    errlog = tmp_path / "job-worker.err"
    with open(errlog, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.job_worker", KIND],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the worker holds a job
        assert line.startswith("claimed "), (line, errlog.read_text()[-3000:])
        _, claimed_id, attempt = line.split()
        assert claimed_id in ids and attempt == "1"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        reap(proc)
    assert proc.returncode == -signal.SIGKILL

    runs: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(job: Job) -> None:
        with lock:
            runs[job.id] += 1

    with memvault.open(settings, job_lease_s=2) as vault:
        held = vault.jobs.get(claimed_id)
        assert held is not None and held.locked_by is not None
        assert held.locked_by.endswith(f":{proc.pid}")  # the dead worker's claim is on record
        vault.jobs.register_handler(KIND, handler)
        records = vault.jobs.wait(ids, timeout=120)
    assert all(r is not None and r.status == DONE for r in records.values()), records
    assert set(runs) == set(ids) and set(runs.values()) == {1}
    taken_over = records[claimed_id]
    assert taken_over is not None and taken_over.attempts == 2
    assert all(r is not None and r.attempts == 1 for i, r in records.items() if i != claimed_id)
