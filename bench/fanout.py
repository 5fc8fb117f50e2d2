"""Cross-replica chunk delivery: two ``memvault serve`` processes on one database.

A client writes chunks over HTTP to server A (``POST /api/messages/{id}/chunks``,
one chunk per request, a random 0–20 ms pause between them so that polling
phases are hit uniformly); a follower reads ``GET /api/messages/{id}/stream`` on
server B. Latency: from A's acknowledgement (the POST's response received) to
the chunk's SSE event at the follower (0 when the event came first). Variants:

- **polling**: ``MEMVAULT_LIVE_FANOUT=off`` — B re-reads the database every 100 ms;
- **NOTIFY** (PostgreSQL only): LISTEN/NOTIFY, safety-net poll every 1 s;
- **Redis**: ``MEMVAULT_PUBSUB_URL`` on a private ``redis-server`` (skipped when
  it is not installed), safety-net poll every 1 s. On SQLite the two servers
  share one data dir.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from .common import Env, Result, stats, verdict

SECTION = "fanout"
P99_TARGET_NS = 50_000_000   # p99 < 50 ms
WARMUP = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def _serve(data_dir: Path, database_url: str | None, extra: dict[str, str]) -> Iterator[str]:
    """``memvault serve`` (one worker); yields its URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMVAULT_")}
    env.update({"MEMVAULT_DATA_DIR": str(data_dir), "MEMVAULT_PASSWORD_HASH": "owasp",
                "MEMVAULT_EMBEDDER": "hash", "MEMVAULT_LOG_LEVEL": "WARNING"})
    if database_url:
        env["MEMVAULT_DATABASE_URL"] = database_url
    env.update({f"MEMVAULT_{k.upper()}": v for k, v in extra.items()})
    data_dir.mkdir(parents=True, exist_ok=True)
    logfile = data_dir.parent / f"serve-{port}.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "memvault", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1"], env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"memvault serve exited:\n{logfile.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"memvault serve not ready:\n{logfile.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        _stop(proc)


@contextlib.contextmanager
def _redis() -> Iterator[str | None]:
    """A private ``redis-server`` on loopback (``None`` when not installed)."""
    if shutil.which("redis-server") is None:
        yield None
        return
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="memvault-bench-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _follow(url: str, auth: dict[str, str], mid: str, arrivals: dict[int, int],
            first: threading.Event, done: threading.Event) -> None:
    clock = time.perf_counter_ns
    try:
        with httpx.Client(base_url=url, timeout=120) as c, c.stream(
                "GET", f"/api/messages/{mid}/stream", headers=auth) as r:
            event = ""
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                    if event == "done":
                        return
                elif line.startswith("id: ") and event != "done":
                    arrivals[int(line[4:])] = clock()
                    first.set()
    finally:
        done.set()


def _measure(env: Env, label: str, extra: dict[str, str], chunks: int) -> Result:
    root = Path(tempfile.mkdtemp(prefix="fanout-", dir=env.root))
    url = env.pg.database() if env.pg is not None else None
    try:
        with _serve(root / "a", url, extra) as a_url, \
                _serve(root / ("b" if url else "a"), url, extra) as b_url, \
                httpx.Client(base_url=a_url, timeout=30) as a:
            creds = {"email": "fanout@example.com", "password": "bench-password"}
            a.post("/api/auth/register", json=creds)
            token = a.post("/api/auth/login", json=creds).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            conv = a.post("/api/conversations", json={"title": "fanout"}, headers=auth).json()
            mid = a.post(f"/api/conversations/{conv['id']}/messages", headers=auth, json={
                "role": "assistant", "status": "streaming"}).json()["id"]
            arrivals: dict[int, int] = {}
            acks: dict[int, int] = {}
            first, done = threading.Event(), threading.Event()
            follower = threading.Thread(target=_follow, daemon=True,
                                        args=(b_url, auth, mid, arrivals, first, done))
            follower.start()
            a.post(f"/api/messages/{mid}/chunks", json={"seq": 1, "text": "t "}, headers=auth)
            first.wait(30)
            time.sleep(0.5)  # B's listener connects once the follower subscribed
            rng = random.Random(7)
            clock = time.perf_counter_ns
            for seq in range(2, chunks + WARMUP + 2):
                r = a.post(f"/api/messages/{mid}/chunks", json={"seq": seq, "text": "t "},
                           headers=auth)
                acks[seq] = clock()
                r.raise_for_status()
                time.sleep(rng.uniform(0, 0.02))
            a.post(f"/api/messages/{mid}/complete", headers=auth)
            done.wait(30)
            follower.join(5)
    finally:
        if url is not None and env.pg is not None:
            with contextlib.suppress(Exception):
                env.pg.drop(url)
        shutil.rmtree(root, ignore_errors=True)
    measured = [s for s in acks if s >= WARMUP + 2]
    lost = [s for s in measured if s not in arrivals]
    s = stats([max(0, arrivals[q] - acks[q]) for q in measured if q in arrivals])
    poll = "every 100 ms" if extra.get("live_fanout") == "off" else "every 1 s (safety net)"
    return Result(SECTION, f"cross-replica chunk delivery, {label}", s, target="p99 < 50 ms",
                  verdict=verdict(s.p99_ns < P99_TARGET_NS and not lost),
                  note=f"follower polls {poll}" + (f"; {len(lost)} never arrived" if lost
                                                    else ""))


def run(env: Env) -> list[Result]:
    chunks = 150 if env.config.quick else 1000
    out = [_measure(env, "polling", {"live_fanout": "off"}, chunks)]
    if env.backend == "postgresql":
        out.append(_measure(env, "LISTEN/NOTIFY", {}, chunks))
    with _redis() as redis_url:
        if redis_url is None:
            out.append(Result(SECTION, "cross-replica chunk delivery, Redis",
                              note="skipped: redis-server is not installed"))
        else:
            out.append(_measure(env, "Redis pub/sub", {"pubsub_url": redis_url}, chunks))
    return out
