"""Several worker processes on one database, under many concurrent clients, with
the CLI reading beside them: no 5xx, and every acknowledged write is there.

On SQLite the workers share one file (WAL, ``BEGIN IMMEDIATE`` with retries);
on PostgreSQL they share one database.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

import memvault
from memvault import Settings

from ..conftest import server_env
from .server import Server, all_pages, login

CLIENTS = 50
USERS = 10  # clients share users five by five: concurrent writes under one owner too
ENTITIES_PER_CLIENT = 4
PASSWORD = "password-1"


class Load:
    """Statuses of every response, and what each 201 acknowledged."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        #: user email -> entity_id -> (create response, [(doc, bytes)])
        self.acked: dict[str, dict[str, tuple[dict[str, Any], list[tuple[dict[str, Any],
                                                                         bytes]]]]] = {}

    def seen(self, r: httpx.Response, expect: int) -> bool:
        with self.lock:
            self.statuses[r.status_code] += 1
            if r.status_code != expect:
                self.failures.append(f"{r.request.method} {r.request.url.path} -> "
                                     f"{r.status_code} {r.text[:300]}")
        return r.status_code == expect


def client_session(srv: Server, n: int, email: str, h: dict[str, str], load: Load,
                   go: threading.Event) -> None:
    """One client with its own connection: create entities, upload a file to one."""
    rng = random.Random(n)
    acked = load.acked[email]
    with srv.client() as c:
        go.wait()
        mine = []
        for i in range(ENTITIES_PER_CLIENT):
            meta = {"client": n, "i": i, "noise": rng.randbytes(6).hex()}
            body: dict[str, Any] = {"entity_name": f"c{n} e{i}", "metadata": meta}
            if i % 2:
                body["entity_id"] = f"c{n}-e{i}"  # client-chosen ids beside generated ones
            r = c.post("/api/entities", json=body, headers=h)
            if not load.seen(r, 201):
                continue
            assert r.json()["metadata"] == meta
            mine.append(r.json()["entity_id"])
            with load.lock:
                acked[r.json()["entity_id"]] = (r.json(), [])
        if not mine:
            return
        target = rng.choice(mine)
        data = f"client {n}\n".encode() + rng.randbytes(rng.randrange(100, 4000))
        r = c.post(f"/api/entities/{target}/files", headers=h,
                   files=[("files", (f"c{n}.bin", data, "application/octet-stream"))])
        if load.seen(r, 201):
            doc = r.json()["items"][0]
            assert doc["sha256"] == hashlib.sha256(data).hexdigest()
            with load.lock:
                acked[target][1].append((doc, data))


def run_cli(settings: Settings, out: dict[str, Any]) -> None:
    started = time.monotonic()
    out["proc"] = subprocess.run([sys.executable, "-m", "memvault", "stats"],
                                 env=server_env(settings), capture_output=True, text=True,
                                 timeout=120)
    out["window"] = (started, time.monotonic())


def test_many_clients_on_four_workers(settings: Settings) -> None:
    srv = Server(settings, workers=4).start()
    try:
        emails = [f"worker-user-{u}@example.com" for u in range(USERS)]
        with srv.client() as c:
            auth = {email: login(c, email, PASSWORD) for email in emails}
        load = Load()
        load.acked = {email: {} for email in emails}

        go = threading.Event()
        cli: dict[str, Any] = {}
        cli_thread = threading.Thread(target=run_cli, args=(settings, cli))
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client_session, srv, n, emails[n % USERS],
                                   auth[emails[n % USERS]], load, go) for n in range(CLIENTS)]
            cli_thread.start()  # the CLI opens the same database while the load runs
            try:
                time.sleep(0.3)  # let every client connect, then release them at once
                load_started = time.monotonic()
                go.set()
                for f in futures:
                    f.result()  # re-raises a client's assertion or transport error
                load_ended = time.monotonic()
            finally:
                go.set()
                cli_thread.join()

        proc = cli["proc"]
        assert proc.returncode == 0, proc.stderr
        assert "entities" in proc.stdout
        # It ran beside the load, not before or after it.
        assert cli["window"][0] < load_ended and cli["window"][1] > load_started

        assert not [s for s in load.statuses if s >= 500], load.failures
        assert not load.failures, load.failures
        assert load.statuses[201] == CLIENTS * (ENTITIES_PER_CLIENT + 1)

        # Every acknowledged row is there, each user sees exactly their own.
        with srv.client() as c:
            n_docs = 0
            for email, acked in load.acked.items():
                h = auth[email]
                listed = {e["entity_id"]: e for e in all_pages(c, "/api/entities", h)}
                assert set(listed) == set(acked)
                assert len(listed) == (CLIENTS // USERS) * ENTITIES_PER_CLIENT
                for entity_id, (created, files) in acked.items():
                    got = listed[entity_id]
                    assert got["metadata"] == created["metadata"]
                    assert got["entity_name"] == created["entity_name"]
                    assert got["document_count"] == len(files)
                    docs = all_pages(c, f"/api/entities/{entity_id}/files", h)
                    assert {d["doc_id"] for d in docs} == {d["doc_id"] for d, _ in files}
                    for doc, data in files:
                        r = c.get(f"/api/entities/{entity_id}/files/{doc['doc_id']}/content",
                                  headers=h)
                        assert r.status_code == 200
                        assert r.content == data
                    n_docs += len(files)
            assert n_docs == CLIENTS
    finally:
        srv.stop()

    vault = memvault.open(settings)
    try:
        counts = vault.counts()  # /health counts nothing (issue 10)
        assert counts["users"] == USERS
        assert counts["entities"] == CLIENTS * ENTITIES_PER_CLIENT
        assert counts["documents"] == CLIENTS
        assert vault.integrity_check() == []
    finally:
        vault.close()
