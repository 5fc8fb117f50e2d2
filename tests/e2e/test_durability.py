"""What the server acknowledged survives a graceful restart and a ``kill -9``,
and what it writes to disk is private to its user.

Each test starts real ``memvault serve`` processes (see ``server.py``) on the
backend the ``settings`` fixture picks, so every check runs on SQLite and on
PostgreSQL. ``MEMVAULT_SLOW=1`` adds more kill points.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import memvault
from memvault import Settings

from .server import Server, all_pages, login

SLOW = bool(os.environ.get("MEMVAULT_SLOW"))


# --- helpers ---------------------------------------------------------------------------

#: Document fields the background indexing moves on (pending → indexed|failed).
INDEXING = ("status", "chunk_count", "error")


def stored(doc: dict[str, Any]) -> dict[str, Any]:
    """A document as its upload stored it, without the indexing fields."""
    return {k: v for k, v in doc.items() if k not in INDEXING}


def upload(c: httpx.Client, h: dict[str, str], entity_id: str,
           *files: tuple[str, bytes, str]) -> httpx.Response:
    return c.post(f"/api/entities/{entity_id}/files", headers=h,
                  files=[("files", f) for f in files])


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@dataclass
class Acked:
    """Everything the server answered 201 for: entities, and files with their bytes."""

    entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, tuple[dict[str, Any], bytes]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def entity(self, body: dict[str, Any]) -> None:
        with self.lock:
            self.entities[body["entity_id"]] = body
            self.files.setdefault(body["entity_id"], {})

    def file(self, entity_id: str, doc: dict[str, Any], data: bytes) -> None:
        with self.lock:
            self.files[entity_id][doc["doc_id"]] = (doc, data)

    def total(self) -> int:
        """Acknowledged writes so far (entities plus files)."""
        with self.lock:
            return len(self.entities) + sum(len(f) for f in self.files.values())


def check_present(c: httpx.Client, h: dict[str, str], acked: Acked,
                  attempted: set[str] | None = None) -> None:
    """Every acknowledged entity and file is listed and reads back byte for byte.

    ``attempted``: entity ids whose create may have committed without an answer
    (in flight at a kill); anything else listed is a phantom.
    """
    listed = {e["entity_id"]: e for e in all_pages(c, "/api/entities", h)}
    missing = set(acked.entities) - set(listed)
    assert not missing, f"acknowledged entities lost: {sorted(missing)}"
    extra = set(listed) - set(acked.entities) - (attempted or set())
    assert not extra, f"entities nobody created: {sorted(extra)}"
    for entity_id, created in acked.entities.items():
        got = listed[entity_id]
        for key in ("entity_name", "description", "metadata", "created_at"):
            assert got[key] == created[key], (entity_id, key)
        docs = {d["doc_id"]: d for d in all_pages(c, f"/api/entities/{entity_id}/files", h)}
        assert got["document_count"] == len(docs), entity_id
        for doc_id, (doc, data) in acked.files[entity_id].items():
            assert doc_id in docs, f"acknowledged file lost: {entity_id}/{doc_id}"
            assert stored(docs[doc_id]) == stored(doc)
            r = c.get(f"/api/entities/{entity_id}/files/{doc_id}/content", headers=h)
            assert r.status_code == 200
            assert r.content == data, f"{entity_id}/{doc_id} differs"
    for entity_id in set(listed) - set(acked.entities):  # committed, answer lost
        docs = all_pages(c, f"/api/entities/{entity_id}/files", h)
        assert listed[entity_id]["document_count"] == len(docs)


def assert_integrity(settings: Settings) -> None:
    vault = memvault.open(settings)
    try:
        assert vault.integrity_check() == []
    finally:
        vault.close()


# --- 1. graceful restart -------------------------------------------------------------------

METADATA = [
    {"kind": "project", "tags": ["a", "b"], "nested": {"depth": 2, "ok": True, "none": None}},
    {"ünïcødé": "✓ 雪", "pi": 3.25, "big": 2**53 - 1, "neg": -7, "empty": {}, "list": []},
    {},
    {"quote": "it's \"quoted\"\n\ttabbed", "bool": False},
    None,
]


def test_restart_keeps_everything_and_tokens(settings: Settings) -> None:
    rng = random.Random(1)
    big = rng.randbytes((1 << 20) + 17)  # over one read block
    shared = b"same bytes in two entities\n"
    uploads = [
        [("report.bin", big, "application/octet-stream"),
         ("résumé ✓.txt", "naïve café — 雪\n".encode(), "text/plain; charset=utf-8"),
         ("empty.dat", b"", "application/octet-stream")],
        [("copy-a.txt", shared, "text/plain")],
        [("copy-b.txt", shared, "text/plain"), ("nul.bin", bytes(range(256)) * 4,
                                                  "application/x-thing")],
    ]
    email = "Restart.User@Example.com"

    with Server(settings) as srv, srv.client() as c:
        r = c.post("/api/auth/register",
                   json={"email": email, "password": "password-1", "name": "Rë Start"})
        assert r.status_code == 201, r.text
        user = r.json()
        tokens = []
        for _ in range(2):
            r = c.post("/api/auth/login", json={"email": email, "password": "password-1"})
            assert r.status_code == 200
            assert r.json()["token_type"] == "bearer"
            tokens.append(r.json()["access_token"])
        keep, revoked = ({"Authorization": f"Bearer {t}"} for t in tokens)
        assert c.get("/api/auth/me", headers=keep).json() == user

        created: list[dict[str, Any]] = []
        for i, meta in enumerate(METADATA):
            body: dict[str, Any] = {"entity_name": f"Entity {i} ✓", "metadata": meta}
            if i % 2 == 0:
                body["entity_id"] = f"ent-{i}.x:y@z"
            if i != 3:
                body["description"] = f"description {i}\nline two"
            r = c.post("/api/entities", json=body, headers=keep)
            assert r.status_code == 201, r.text
            created.append(r.json())
            assert r.json()["metadata"] == (meta or {})
            assert r.json()["document_count"] == 0

        docs: dict[str, tuple[str, dict[str, Any], bytes]] = {}
        for entity, files in zip(created, uploads, strict=False):
            r = upload(c, keep, entity["entity_id"], *files)
            assert r.status_code == 201, r.text
            items = r.json()["items"]
            assert len(items) == len(files)
            for doc, (name, data, _ctype) in zip(items, files, strict=True):
                assert doc["filename"] == name
                assert doc["size"] == len(data)
                assert doc["sha256"] == hashlib.sha256(data).hexdigest()
                docs[doc["doc_id"]] = (entity["entity_id"], doc, data)

        # The read-back agrees with what the creates answered.
        for entity in created:
            got = c.get(f"/api/entities/{entity['entity_id']}", headers=keep).json()
            assert {k: v for k, v in got.items() if k != "document_count"} \
                == {k: v for k, v in entity.items() if k != "document_count"}

        def snapshot() -> dict[str, Any]:
            return {
                "entities": all_pages(c, "/api/entities", keep),
                "files": {e["entity_id"]: [stored(d) for d in all_pages(
                    c, f"/api/entities/{e['entity_id']}/files", keep)] for e in created},
            }

        before = snapshot()
        assert len(before["entities"]) == len(created)
        assert sum(len(f) for f in before["files"].values()) == len(docs)
        for e in before["entities"]:
            assert e["document_count"] == len(before["files"][e["entity_id"]])

        assert c.post("/api/auth/logout", headers=revoked).status_code == 204
        assert c.get("/api/auth/me", headers=revoked).status_code == 401
        assert c.get("/api/entities", headers=revoked).status_code == 401

    with Server(settings) as srv, srv.client() as c:
        # The token from before the restart still works; the revoked one stays revoked.
        assert c.get("/api/auth/me", headers=keep).json() == user
        assert c.get("/api/auth/me", headers=revoked).status_code == 401

        assert snapshot() == before
        for doc_id, (entity_id, doc, data) in docs.items():
            r = c.get(f"/api/entities/{entity_id}/files/{doc_id}", headers=keep)
            assert stored(r.json()) == stored(doc)
            r = c.get(f"/api/entities/{entity_id}/files/{doc_id}/content", headers=keep)
            assert r.status_code == 200
            assert r.content == data, doc["filename"]
            assert r.headers["content-type"].split(";")[0] == doc["content_type"].split(";")[0]

        # The password survived too, and logout revokes a pre-restart token.
        fresh = login(c, email)
        assert c.get("/api/auth/me", headers=fresh).json() == user
        assert c.post("/api/auth/logout", headers=keep).status_code == 204
        assert c.get("/api/auth/me", headers=keep).status_code == 401
        assert c.get("/api/entities", headers=keep).status_code == 401
        assert c.post("/api/auth/logout", headers=keep).status_code == 401
        assert c.get("/api/entities", headers=fresh).status_code == 200


# --- 2. kill -9 ------------------------------------------------------------------------------

#: Sequential rounds: "e" creates an entity, "f" uploads a file to the newest one.
#: The server is SIGKILLed the moment the last operation's 201 arrives.
ROUNDS = ["e", "efeef"] + (["eeffe", "f", "eeeeeeeeee", "effeff"] if SLOW else [])


def sequential_round(c: httpx.Client, h: dict[str, str], acked: Acked, plan: str, tag: str,
                     rng: random.Random) -> None:
    entity_id = next(iter(acked.entities), None)
    for i, op in enumerate(plan):
        if op == "e":
            entity_id = f"{tag}-{i}"
            r = c.post("/api/entities", headers=h, json={
                "entity_id": entity_id, "entity_name": f"kill {tag} {i}",
                "metadata": {"round": tag, "i": i, "blob": rng.randbytes(8).hex()}})
            assert r.status_code == 201, r.text
            acked.entity(r.json())
        else:
            assert entity_id is not None
            data = rng.randbytes(rng.randrange(1, 200_000))
            r = upload(c, h, entity_id, (f"{tag}-{i}.bin", data, "application/octet-stream"))
            assert r.status_code == 201, r.text
            acked.file(entity_id, r.json()["items"][0], data)


def concurrent_round(srv: Server, h: dict[str, str], acked: Acked, attempted: set[str],
                     tag: str, kill_after: int, writers: int = 6) -> None:
    """Writers create entities and upload files; SIGKILL lands mid-flight, once
    ``kill_after`` writes in all have been acknowledged."""
    stop = threading.Event()
    enough = threading.Event()
    errors: list[str] = []

    def writer(n: int) -> None:
        try:
            write(n)
        except BaseException as exc:  # surfaced by the assert below, not lost in a thread
            errors.append(repr(exc))
            enough.set()

    def write(n: int) -> None:
        rng = random.Random(n)
        with srv.client() as c:
            i = 0
            while not stop.is_set():
                entity_id = f"{tag}-w{n}-{i}"
                i += 1
                with acked.lock:
                    attempted.add(entity_id)
                try:
                    r = c.post("/api/entities", headers=h, json={
                        "entity_id": entity_id, "entity_name": entity_id,
                        "metadata": {"writer": n}})
                    if r.status_code != 201:
                        errors.append(f"create {r.status_code} {r.text}")
                        return
                    acked.entity(r.json())
                    data = rng.randbytes(rng.randrange(1, 50_000))
                    r = upload(c, h, entity_id, ("w.bin", data, "application/octet-stream"))
                    if r.status_code != 201:
                        errors.append(f"upload {r.status_code} {r.text}")
                        return
                    acked.file(entity_id, r.json()["items"][0], data)
                except httpx.TransportError:
                    return  # the kill: this request's outcome is unknown
                if acked.total() >= kill_after:
                    enough.set()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    enough.wait(30)
    srv.kill()
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert acked.total() >= kill_after


def test_kill_9_keeps_every_acknowledged_write(settings: Settings) -> None:
    rng = random.Random(9)
    acked = Acked()
    attempted: set[str] = set()
    srv = Server(settings).start()
    try:
        with srv.client() as c:
            h = login(c, "kill@example.com")
        for n, plan in enumerate([*ROUNDS, "concurrent"]):
            with srv.client() as c:
                if plan == "concurrent":
                    kill_after = acked.total() + 25
                    concurrent_round(srv, h, acked, attempted, f"r{n}", kill_after=kill_after)
                else:
                    sequential_round(c, h, acked, plan, f"r{n}", rng)
                    srv.kill()  # right after the last 201
            srv = Server(settings).start()
            with srv.client() as c:
                # The pre-crash token still authenticates; nothing acknowledged is gone.
                assert c.get("/api/auth/me", headers=h).status_code == 200
                check_present(c, h, acked, attempted)
            # Opened beside the recovered server, the database reports no damage.
            assert_integrity(settings)
        assert len(acked.entities) >= 1 + 3 + 5
    finally:
        srv.stop()
    assert_integrity(settings)


# --- 4. file permissions -----------------------------------------------------------------------

def test_data_files_are_private(settings: Settings) -> None:
    """With a lax umask, the data dir, blob folders and files are still owner-only."""
    data_dir = Path(settings.data_dir)
    assert not data_dir.exists()
    with umask(0o000):
        srv = Server(settings).start()
    try:
        with srv.client() as c:
            h = login(c, "perm@example.com")
            for i in range(3):
                r = c.post("/api/entities", headers=h, json={"entity_id": f"p{i}",
                                                             "entity_name": "P"})
                assert r.status_code == 201
                r = upload(c, h, f"p{i}", (f"{i}.txt", f"file {i}".encode() * 100, "text/plain"))
                assert r.status_code == 201
    finally:
        srv.stop()

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    blobs = data_dir / "blobs"
    assert mode(data_dir) == 0o700
    assert mode(blobs) == 0o700
    blob_dirs = [p for p in blobs.iterdir() if p.is_dir()]
    assert {p.name for p in blob_dirs} >= {"tmp"}
    assert len(blob_dirs) >= 2  # tmp plus at least one ab/ fan-out folder
    blob_files = [p for p in blobs.rglob("*") if p.is_file()]
    assert len(blob_files) == 3
    if settings.backend == "sqlite":
        db = Path(settings.sqlite_path)
        assert db.exists()
        assert mode(db) == 0o600
    bad = {str(p.relative_to(data_dir)): oct(mode(p)) for p in data_dir.rglob("*")
           if mode(p) != (0o700 if p.is_dir() else 0o600)}
    assert not bad, f"not private: {bad}"
