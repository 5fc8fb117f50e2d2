"""``memvault verify``: find real damage in a vault, and repair what can be derived again.

A list of checks, each reporting ``ok`` or its problems, naming the records
concerned: the database's own integrity (SQLite ``integrity_check``;
PostgreSQL ``amcheck``, when installed), the schema revision, every blob's
bytes against their sha256, orphan blobs, records without their blob,
reference counts, the chunks of every message (1..n, no gap), the text of every
ended message against its chunks, the derived indexes (SQLite's full-text
table and ANN index files; PostgreSQL's GIN and HNSW indexes) and the counters
rows keep of other rows. Blob-referencing kinds come from the registry
(``kinds.py``: every kind with ``blob`` set), so a kind registered later is
covered without more code here.

Reads happen in one snapshot (a read transaction on SQLite, a repeatable-read
one on PostgreSQL), so a ``memvault serve`` writing meanwhile never makes the
rows disagree with each other; what lives outside the database (blob bytes,
index files) is confirmed against a fresh read before it is reported. With
``repair``, each fix is a short write transaction of its own that re-checks
what it changes under the lock (the store's own locking discipline), so
repairs are safe while the vault serves. Only what can be derived again is
repaired: indexes, counters, reference counts, orphan blobs, a message's text
from its chunks. Lost bytes, chunk gaps and database corruption are reported,
never "fixed".

The CLI (``memvault verify``) prints the report; this module returns it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import structlog
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from ..backends import backend_for
from ..backends.base import Database
from ..backends.migrate import head_revision
from ..backends.schema import (
    blobs,
    chunk_tombstones,
    chunks,
    conversations,
    documents,
    entities,
    graph_edges,
    graph_nodes,
    graph_patterns,
    graphs,
    message_chunks,
    messages,
    metadata,
    run_steps,
    runs,
)
from ..blobs import BlobStore, open_blob_store
from ..errors import ConfigError, MemvaultError, Unavailable
from ..ids import utcnow
from ..kinds import Kind, kinds
from ..settings import Settings

__all__ = ["CheckResult", "VerifyReport", "CHECK_NAMES", "verify"]

log = structlog.get_logger(__name__)

#: Problems listed per check; more are counted (``unlisted``), and all are repaired.
MAX_LISTED = 500
#: Rows per batch where a check walks a table in key order.
_BATCH = 500

#: ``progress(check, done, total)``: total is None when unknown.
ProgressFn = Callable[[str, int, int | None], None]
#: A repair: does it in its own write transaction; says what it did, or None
#: when it could not (the problem stays).
_Fix = Callable[[], str | None]


@dataclass
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: the check, e.g. ``blob bytes``.
        problems: what is wrong (after a repair: what is still wrong), with ids.
        repaired: what a repair fixed.
        notes: facts that are not problems (e.g. a check skipped, and why).
        unlisted: problems beyond the ``MAX_LISTED`` listed.
    """

    name: str
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unlisted: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unlisted

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "problems": self.problems,
                "repaired": self.repaired, "notes": self.notes, "unlisted": self.unlisted}


@dataclass
class VerifyReport:
    """Every check's result, in order."""

    backend: str
    repair: bool
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        """Nothing wrong (after a repair: nothing left unfixed)."""
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "backend": self.backend, "repair": self.repair,
                "checks": [c.to_json() for c in self.checks]}


class _Found:
    """What one check found: each problem with the fix that derives it again."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.items: list[tuple[str, _Fix | None]] = []
        self.notes: list[str] = []
        self.tidies: list[tuple[str, _Fix]] = []

    def problem(self, text: str, fix: _Fix | None = None) -> None:
        self.items.append((text, fix))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def tidy(self, text: str, fix: _Fix) -> None:
        """Not a problem, but a repair does it: a note unless repairing."""
        self.tidies.append((text, fix))


@dataclass
class _Run:
    settings: Settings
    db: Database
    store: BlobStore
    progress: ProgressFn | None
    conn: Connection | None = None  # the snapshot
    #: Blobs whose bytes are missing or corrupt (sha → why), for ``blob references``.
    bad_blobs: dict[str, str] = field(default_factory=dict)
    #: Messages whose chunks have a gap: their text cannot be derived.
    gapped: set[tuple[str, str]] = field(default_factory=set)

    @property
    def sqlite(self) -> bool:
        return self.db.backend.name == "sqlite"

    def tick(self, check: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(check, done, total)


def _one_line(value: object, limit: int = 300) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, sa.exc.DBAPIError):
        return _one_line(exc.orig)
    if isinstance(exc, MemvaultError):
        return _one_line(exc.detail)
    return f"{type(exc).__name__}: {_one_line(exc)}"


def _key(kind: Kind, row: Any) -> str:
    """A record's key as one token, e.g. ``user-id/e1/doc-id``."""
    return "/".join(str(row._mapping[k]) for k in kind.key)


def _kind_of(table: sa.Table) -> Kind:
    return next(k for k in kinds() if k.table is table)


def _blob_kinds() -> list[Kind]:
    return [k for k in kinds() if k.blob]


# -- database integrity ---------------------------------------------------------------------

def _check_integrity(run: _Run, found: _Found) -> None:
    if run.sqlite:
        # integrity_check (not quick_check): it also checks that every index
        # holds exactly its table's rows; plus foreign_key_check.
        try:
            with run.db.engine.connect() as conn:
                problems = run.db.backend.integrity_check(conn)
        except sa.exc.DBAPIError as exc:  # e.g. "database disk image is malformed"
            problems = [f"the file cannot be read: {_error_text(exc)}"]
        for problem in problems:
            found.problem(f"SQLite: {_one_line(problem)}")
        return
    _check_postgres_integrity(run, found)


_PG_INDEXES = sa.text(
    "SELECT c.relname, am.amname, i.indisvalid AND i.indisready FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
    "JOIN pg_namespace n ON n.oid = t.relnamespace JOIN pg_am am ON am.oid = c.relam "
    "WHERE n.nspname = current_schema() AND t.relname = ANY(:tables) ORDER BY c.relname")


def _pg_indexes(conn: Connection) -> list[tuple[str, str, bool]]:
    rows = conn.execute(_PG_INDEXES, {"tables": sorted(metadata.tables)}).all()
    return [(str(name), str(am), bool(valid)) for name, am, valid in rows]


def _check_postgres_integrity(run: _Run, found: _Found) -> None:
    with run.db.engine.connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")
        installed = conn.execute(sa.text(
            "SELECT 1 FROM pg_extension WHERE extname = 'amcheck'")).first() is not None
        if not installed and conn.execute(sa.text(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'")).first():
            try:  # needs the right to create extensions (amcheck is not "trusted")
                conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS amcheck"))
                installed = True
            except sa.exc.DBAPIError as exc:
                log.info("amcheck not created", error=_error_text(exc))
        indexes = _pg_indexes(conn)
        for name, _am, valid in indexes:
            if not valid:
                found.problem(f"index {name} is invalid (an interrupted CREATE INDEX?)",
                              _reindex(run.db, name))
        if not installed:
            found.note("amcheck not installed: skipped")
            return
        heap = conn.execute(sa.text(
            "SELECT 1 FROM pg_proc WHERE proname = 'verify_heapam'")).first() is not None
        btrees = [name for name, am, valid in indexes if am == "btree" and valid]
        for done, name in enumerate(btrees, 1):
            try:  # AccessShareLock only: writers go on
                conn.execute(sa.text("SELECT bt_index_check(CAST(:n AS regclass))"), {"n": name})
            except sa.exc.DBAPIError as exc:
                found.problem(f"amcheck: index {name}: {_error_text(exc)}")
            run.tick(found.name, done, len(btrees))
        if heap:
            for table in sorted(metadata.tables):
                for blkno, offnum, msg in conn.execute(sa.text(
                        "SELECT blkno, offnum, msg FROM verify_heapam(CAST(:t AS regclass)) "
                        "LIMIT 20"), {"t": table}):
                    found.problem(f"amcheck: table {table} block {blkno} item {offnum}: "
                                  f"{_one_line(msg)}")
        found.note(f"amcheck: {len(btrees)} btree indexes"
                   + (f", {len(metadata.tables)} tables" if heap else "") + " checked")


def _reindex(db: Database, index: str) -> _Fix:
    def fix() -> str:
        with db.engine.connect() as raw:  # CONCURRENTLY: writers go on meanwhile
            raw.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                f'REINDEX INDEX CONCURRENTLY "{index}"')
        return f"index {index} rebuilt"
    return fix


# -- schema -------------------------------------------------------------------------------------

def _check_schema(run: _Run, found: _Found) -> None:
    assert run.conn is not None
    current = MigrationContext.configure(run.conn).get_current_revision()
    head = head_revision()
    if current != head:
        found.problem(f"the database is at schema revision {current or 'none'}, this "
                      f"memvault's is {head} (`memvault migrate` upgrades an older one)")


# -- blobs ------------------------------------------------------------------------------------

def _still_referenced(db: Database, sha: str) -> bool:
    """A fresh read (outside the snapshot): is the blob referenced now?"""
    with db.read() as conn:
        refcount = conn.execute(sa.select(blobs.c.refcount).where(
            blobs.c.sha256 == sha)).scalar_one_or_none()
    return refcount is not None and refcount > 0


def _hash(store: BlobStore, sha: str) -> tuple[str, int] | None:
    """The sha256 and size of a blob's stored bytes; None when they are missing."""
    try:
        pieces = store.open(sha)
    except Unavailable:
        raise
    except MemvaultError:  # ``blobs.base.missing``
        return None
    digest = hashlib.sha256()
    size = 0
    for piece in pieces:
        digest.update(piece)
        size += len(piece)
    return digest.hexdigest(), size


def _check_blob_bytes(run: _Run, found: _Found) -> None:
    assert run.conn is not None
    total = run.conn.execute(sa.select(sa.func.count()).select_from(blobs)
                             .where(blobs.c.refcount > 0)).scalar_one()
    rows = run.conn.execute(
        sa.select(blobs.c.sha256, blobs.c.size, blobs.c.refcount)
        .where(blobs.c.refcount > 0).order_by(blobs.c.sha256)
        .execution_options(stream_results=True, yield_per=_BATCH))
    for done, (sha, size, refcount) in enumerate(rows, 1):
        run.tick(found.name, done, total)
        got = _hash(run.store, sha)
        if got is None:
            if _still_referenced(run.db, sha):  # not collected since the snapshot
                run.bad_blobs[sha] = "bytes missing"
                found.problem(f"blob {sha}: bytes missing from the {run.store.name} store "
                              f"({refcount} reference(s))")
        elif got[0] != sha:
            run.bad_blobs[sha] = "bytes corrupt"
            found.problem(f"blob {sha}: stored bytes do not match their sha256 "
                          f"(they hash to {got[0]})")
        elif got[1] != size:
            found.problem(f"blob {sha}: size {size} recorded, {got[1]} stored",
                          _fix_blob_size(run.db, sha, got[1]))


def _fix_blob_size(db: Database, sha: str, size: int) -> _Fix:
    def fix() -> str:
        with db.write() as conn:
            conn.execute(blobs.update().where(blobs.c.sha256 == sha).values(size=size))
        return f"blob {sha}: size set to {size}"
    return fix


def _references(conn: Connection, sha: str) -> int:
    """Rows of every blob-referencing kind that reference ``sha``."""
    return sum(int(conn.execute(sa.select(sa.func.count()).select_from(k.table)
                                .where(k.table.c[k.blob] == sha)).scalar_one())
               for k in _blob_kinds() if k.blob)


class _NotDerivable(Exception):
    """Raised inside a repair's transaction to roll it back: nothing to derive from."""


def _reconcile_blob(db: Database, store: BlobStore, sha: str) -> str | None:
    """Make the ``blobs`` row of ``sha`` agree with the rows referencing it, in
    one write transaction holding the row's lock (taken as uploads and the
    collector take it): no reference left → row and bytes removed; otherwise
    refcount set to the references (a missing row made again, when the bytes
    are there). None when it cannot: references to bytes that are gone."""
    try:
        with db.write() as conn:
            existed = conn.execute(sa.select(blobs.c.refcount).where(
                blobs.c.sha256 == sha)).first()
            # Locks the row, made at refcount 0 when only bytes exist (as
            # ``collect_blob`` does), so an upload of the same bytes waits for us.
            conn.execute(db.backend.upsert(
                blobs, {"sha256": sha, "size": 0, "refcount": 0, "created_at": utcnow()},
                keys=["sha256"], set_={"refcount": blobs.c.refcount}))
            refs = _references(conn, sha)
            if refs == 0:
                conn.execute(blobs.delete().where(blobs.c.sha256 == sha))
                store.remove(conn, sha)
                return f"blob {sha}: unreferenced, removed"
            values: dict[str, Any] = {"refcount": refs}
            if existed is None or existed.refcount <= 0:  # are the bytes still there?
                got = _hash(store, sha)
                if got is None or got[0] != sha:
                    raise _NotDerivable
                values["size"] = got[1]
            conn.execute(blobs.update().where(blobs.c.sha256 == sha).values(**values))
    except _NotDerivable:
        return None
    if existed is None:
        return f"blob {sha}: row made again, refcount {refs}"
    return f"blob {sha}: refcount {existed.refcount} → {refs}"


def _reconcile(run: _Run, sha: str) -> _Fix:
    return lambda: _reconcile_blob(run.db, run.store, sha)


def _check_orphans(run: _Run, found: _Found) -> None:
    assert run.conn is not None
    known: dict[str, int] = {sha: int(rc) for sha, rc in run.conn.execute(
        sa.select(blobs.c.sha256, blobs.c.refcount))}
    stored: set[str] = set()
    orphans: list[str] = []
    for done, sha in enumerate(run.store.stored(), 1):
        stored.add(sha)
        if sha not in known:
            orphans.append(sha)
        run.tick(found.name, done, None)
    recorded = _recorded_now(run.db, run.store, orphans) if orphans else set()
    for sha in orphans:
        if sha not in recorded:
            found.problem(f"orphan blob {sha}: bytes in the store that no blob row records",
                          _reconcile(run, sha))
    # A refcount-0 row (bytes or not) is a blob released and not yet collected:
    # a state the vault passes through (the collector runs after the release's
    # commit, and at open and every few minutes after a crash), not damage. A
    # repair collects them now.
    for sha, rc in sorted(known.items()):
        if rc <= 0:
            found.tidy(f"blob {sha} at refcount 0 awaits the collector"
                       + ("" if sha in stored else " (bytes already gone)"),
                       _reconcile(run, sha))


def _present(store: BlobStore, sha: str) -> bool:
    try:
        pieces = store.open(sha)
    except Unavailable:
        raise
    except MemvaultError:
        return False
    # Started, then closed: an unstarted generator would leave its file open.
    for _piece in pieces:
        break
    close = getattr(pieces, "close", None)
    if callable(close):
        close()
    return True


def _recorded_now(db: Database, store: BlobStore, shas: Sequence[str]) -> set[str]:
    """Which of ``shas`` are not orphans now: they have a committed ``blobs`` row
    (or are gone, row and bytes, collected meanwhile). An upload publishes
    its bytes inside its transaction, before the commit: bytes seen in the store
    while it runs are not orphans. So this waits for such transactions by taking
    the lock an upload takes (SQLite: the write lock; PostgreSQL: the ``blobs``
    row, through the same upsert ``collect_blob`` makes, with a size no real row
    has, to tell whether the row was there), reads, and rolls back: nothing is
    changed."""
    recorded: set[str] = set()
    with db.engine.connect() as conn:
        db.backend.begin_write(conn)
        try:
            for sha in shas:
                conn.execute(db.backend.upsert(
                    blobs, {"sha256": sha, "size": -1, "refcount": 0, "created_at": utcnow()},
                    keys=["sha256"], set_={"refcount": blobs.c.refcount}))
                if conn.execute(sa.select(blobs.c.size).where(
                        blobs.c.sha256 == sha)).scalar_one() != -1 or not _present(store, sha):
                    recorded.add(sha)  # or collected meanwhile, bytes and row
        finally:
            conn.rollback()
    return recorded


def _check_blob_references(run: _Run, found: _Found) -> None:
    assert run.conn is not None
    for kind in _blob_kinds():
        assert kind.blob is not None
        t, column = kind.table, kind.table.c[kind.blob]
        cols = [t.c[k] for k in kind.key]
        no_row = run.conn.execute(sa.select(*cols, column).where(~sa.exists(
            sa.select(1).where(blobs.c.sha256 == column))).order_by(*cols))
        for row in no_row:
            sha = row._mapping[kind.blob]
            found.problem(f"{kind.name} {_key(kind, row)}: its blob {sha} has no blob row",
                          _reconcile(run, sha))
        bad = sorted(run.bad_blobs)
        for at in range(0, len(bad), _BATCH):
            for row in run.conn.execute(sa.select(*cols, column).where(
                    column.in_(bad[at:at + _BATCH])).order_by(*cols)):
                sha = row._mapping[kind.blob]
                found.problem(f"{kind.name} {_key(kind, row)}: its blob {sha}: "
                              f"{run.bad_blobs[sha]}")


def _check_refcounts(run: _Run, found: _Found) -> None:
    assert run.conn is not None
    parts = [sa.select(k.table.c[k.blob].label("sha")) for k in _blob_kinds() if k.blob]
    refs = sa.union_all(*parts).subquery("refs")
    counted = (sa.select(refs.c.sha, sa.func.count().label("n"))
               .group_by(refs.c.sha).subquery("counted"))
    n = sa.func.coalesce(counted.c.n, 0)
    query = (sa.select(blobs.c.sha256, blobs.c.refcount, n)
             .select_from(blobs.outerjoin(counted, counted.c.sha == blobs.c.sha256))
             .where(blobs.c.refcount != n, sa.or_(blobs.c.refcount > 0, n > 0))
             .order_by(blobs.c.sha256))
    for sha, refcount, count in run.conn.execute(query):
        found.problem(f"blob {sha}: refcount {refcount}, referenced by {count} record(s)",
                      _reconcile(run, sha))


# -- messages ---------------------------------------------------------------------------------

def _ranges(numbers: Sequence[int]) -> str:
    out: list[str] = []
    for n in sorted(numbers):
        if out and "-" not in out[-1] and int(out[-1]) == n - 1:
            out[-1] = f"{out[-1]}-{n}"
        elif out and "-" in out[-1] and int(out[-1].split("-")[1]) == n - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def _check_message_chunks(run: _Run, found: _Found) -> None:
    assert run.conn is not None
    mc = message_chunks.c
    per = (sa.select(mc.owner_id, mc.message_id, sa.func.count().label("n"),
                     sa.func.min(mc.seq).label("lo"), sa.func.max(mc.seq).label("hi"))
           .group_by(mc.owner_id, mc.message_id).subquery("per"))
    m = messages.c
    n = sa.func.coalesce(per.c.n, 0)
    query = (sa.select(m.owner_id, m.id, m.conversation_id, m.last_chunk_seq, n, per.c.lo,
                       per.c.hi)
             .select_from(messages.outerjoin(per, sa.and_(per.c.owner_id == m.owner_id,
                                                          per.c.message_id == m.id)))
             .where(sa.or_(n != m.last_chunk_seq, per.c.lo != 1, per.c.hi != m.last_chunk_seq))
             .order_by(m.owner_id, m.id))
    for owner, mid, conv, last, count, _lo, _hi in run.conn.execute(query).all():
        run.gapped.add((owner, mid))
        seqs = set(run.conn.execute(sa.select(mc.seq).where(
            mc.owner_id == owner, mc.message_id == mid)).scalars())
        missing = sorted(set(range(1, last + 1)) - seqs)
        extra = sorted(s for s in seqs if s < 1 or s > last)
        what = []
        if missing:
            what.append(f"chunks {_ranges(missing[:1000])} missing")
        if extra:
            what.append(f"chunks {_ranges(extra[:1000])} beyond last_chunk_seq {last}")
        found.problem(f"message {mid} (conversation {conv}, user {owner}): "
                      f"{'; '.join(what) or f'{count} chunks for last_chunk_seq {last}'}")


def _check_message_text(run: _Run, found: _Found) -> None:
    """Every ended message that was streamed holds the concatenation of its
    chunks (a message appended whole has no chunks: last_chunk_seq 0)."""
    assert run.conn is not None
    m, mc = messages.c, message_chunks.c
    total = run.conn.execute(sa.select(sa.func.count()).select_from(messages).where(
        m.status != "streaming", m.last_chunk_seq > 0)).scalar_one()
    after: tuple[str, str] = ("", "")
    done = 0
    while True:
        batch = run.conn.execute(
            sa.select(m.owner_id, m.id, m.content)
            .where(m.status != "streaming", m.last_chunk_seq > 0,
                   sa.tuple_(m.owner_id, m.id) > sa.tuple_(*after))
            .order_by(m.owner_id, m.id).limit(_BATCH)).all()
        if not batch:
            return
        keys = [(owner, mid) for owner, mid, _ in batch]
        texts: dict[tuple[str, str], list[str]] = {}
        for owner, mid, text in run.conn.execute(
                sa.select(mc.owner_id, mc.message_id, mc.text)
                .where(sa.tuple_(mc.owner_id, mc.message_id).in_(keys))
                .order_by(mc.owner_id, mc.message_id, mc.seq)):
            texts.setdefault((owner, mid), []).append(text)
        for owner, mid, content in batch:
            if (owner, mid) in run.gapped:
                continue  # its chunks are incomplete: reported there, not derivable
            if "".join(texts.get((owner, mid), ())) != content:
                found.problem(f"message {mid} (user {owner}): text differs from its chunks",
                              _rematerialise(run.db, owner, mid))
        done += len(batch)
        run.tick(found.name, done, total)
        after = keys[-1]


def _rematerialise(db: Database, owner: str, mid: str) -> _Fix:
    def fix() -> str | None:
        m, mc = messages.c, message_chunks.c
        where = sa.and_(m.owner_id == owner, m.id == mid)
        with db.write() as conn:
            row = conn.execute(sa.select(m.status, m.last_chunk_seq).where(where)
                               .with_for_update()).first()
            if row is None:
                return f"message {mid}: gone meanwhile"
            parts = conn.execute(sa.select(mc.seq, mc.text).where(
                mc.owner_id == owner, mc.message_id == mid).order_by(mc.seq)).all()
            if row.status == "streaming" or [s for s, _ in parts] != list(
                    range(1, row.last_chunk_seq + 1)):
                return None
            conn.execute(messages.update().where(where).values(
                content="".join(t for _, t in parts)))
        return f"message {mid} (user {owner}): text re-materialised from its {len(parts)} chunks"
    return fix


# -- derived indexes ------------------------------------------------------------------------

def _check_fulltext(run: _Run, found: _Found) -> None:
    assert run.conn is not None
    if not run.sqlite:
        # PostgreSQL: ``search_tsv`` is a generated column, always in step with
        # its row; what can go wrong is its GIN index.
        indexes = {name: (am, valid) for name, am, valid in _pg_indexes(run.conn)}
        if "ix_chunks_fts" not in indexes:
            found.problem("the GIN index ix_chunks_fts of chunks.search_tsv is missing",
                          _create_gin(run.db))
        elif not indexes["ix_chunks_fts"][1]:
            found.problem("the GIN index ix_chunks_fts is invalid",
                          _reindex(run.db, "ix_chunks_fts"))
        return
    rebuild = _rebuild_fts(run.db)
    # FTS5's docsize table holds one row per indexed chunk (by rowid = chunks.id).
    unindexed = run.conn.exec_driver_sql(
        "SELECT id FROM chunks WHERE id NOT IN (SELECT id FROM chunks_fts_docsize) "
        "ORDER BY id").scalars().all()
    stale = run.conn.exec_driver_sql(
        "SELECT id FROM chunks_fts_docsize WHERE id NOT IN (SELECT id FROM chunks) "
        "ORDER BY id").scalars().all()
    if unindexed:
        found.problem(f"chunks_fts lacks {len(unindexed)} chunk(s): ids "
                      f"{_ranges(unindexed[:1000])}", rebuild)
    if stale:
        found.problem(f"chunks_fts indexes {len(stale)} deleted chunk(s): ids "
                      f"{_ranges(stale[:1000])}", rebuild)
    # FTS5's own check of its index against the content table. It is written as
    # an INSERT, so it runs in a (short) write transaction beside the snapshot.
    try:
        with run.db.engine.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            try:
                conn.exec_driver_sql(
                    "INSERT INTO chunks_fts(chunks_fts, rank) VALUES('integrity-check', 1)")
            finally:
                conn.rollback()
    except sa.exc.DBAPIError as exc:
        if run.db.backend.is_busy(exc):
            found.note("FTS5 integrity-check skipped: the database stayed busy")
        elif not (unindexed or stale):
            found.problem(f"chunks_fts integrity-check: {_error_text(exc)}", rebuild)


def _rebuild_fts(db: Database) -> _Fix:
    def fix() -> str:
        with db.write() as conn:
            conn.exec_driver_sql("INSERT INTO chunks_fts(chunks_fts) VALUES('rebuild')")
        return "chunks_fts rebuilt from chunks"
    return fix


def _create_gin(db: Database) -> _Fix:
    def fix() -> str:
        with db.engine.connect() as raw:
            raw.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_chunks_fts ON chunks "
                "USING gin (search_tsv)")
        return "GIN index ix_chunks_fts created"
    return fix


def _check_vectors(run: _Run, found: _Found) -> None:
    if run.sqlite:
        _check_ann_files(run, found)
    else:
        _check_hnsw(run, found)


def _check_hnsw(run: _Run, found: _Found) -> None:
    assert run.conn is not None
    if run.conn.execute(sa.text(
            "SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first() is None:
        found.note("pgvector not installed: vectors are searched exactly, no index to check")
        return
    from ..backends.postgres import HNSW_MAX_DIMENSIONS

    indexes = {name: valid for name, _am, valid in _pg_indexes(run.conn)}
    dims = run.conn.execute(sa.select(chunks.c.dimensions).distinct()
                            .order_by(chunks.c.dimensions)).scalars().all()
    for d in dims:
        name = f"ix_chunks_vec_{int(d)}"
        if d > HNSW_MAX_DIMENSIONS:
            continue
        if name not in indexes:
            found.problem(f"the HNSW index {name} of {d}-dimension vectors is missing",
                          _create_hnsw(run.db, int(d)))
        elif not indexes[name]:
            found.problem(f"the HNSW index {name} is invalid", _reindex(run.db, name))


def _create_hnsw(db: Database, dims: int) -> _Fix:
    def fix() -> str | None:
        backend = db.backend
        backend.after_migrate(db.engine)  # learns that pgvector is there
        ensure = getattr(backend, "ensure_vector_index", None)
        if ensure is None:
            return None
        ensure(db.engine, dims)
        return f"HNSW index of {dims}-dimension vectors created"
    return fix


# The ANN index files of SQLite (retrieval/ann.py): ``<sha256(owner\0entity)>.<dims>.usearch``,
# the usearch payload then a JSON trailer, its length and a magic.
_ANN_FILE = re.compile(r"^([0-9a-f]{64})\.(\d+)\.usearch$")


def _ann_trailer(path: Path) -> dict[str, Any]:
    """The trailer of an ANN index file, its payload's CRC checked.

    Raises:
        ValueError, OSError: the file is truncated, corrupt or unreadable.
    """
    from ..retrieval.ann import _TRAILER_TAIL, FORMAT_VERSION, MAGIC

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _TRAILER_TAIL.size:
            raise ValueError("file too short")
        f.seek(size - _TRAILER_TAIL.size)
        length, magic = _TRAILER_TAIL.unpack(f.read(_TRAILER_TAIL.size))
        if magic != MAGIC or length > size - _TRAILER_TAIL.size:
            raise ValueError("no trailer (truncated?)")
        start = size - _TRAILER_TAIL.size - length
        f.seek(start)
        meta = json.loads(f.read(length))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION \
                or meta.get("payload_bytes") != start:
            raise ValueError("the trailer does not describe this file")
        f.seek(0)
        crc, left = 0, start
        while left:
            block = f.read(min(left, 1 << 24))
            if not block:
                raise ValueError("file shorter than its payload")
            crc = zlib.crc32(block, crc)
            left -= len(block)
        if crc != meta.get("payload_crc32"):
            raise ValueError("payload checksum mismatch")
    return meta


def _ann_digest(owner: str, entity: str) -> str:
    return hashlib.sha256(f"{owner}\0{entity}".encode()).hexdigest()


def _check_ann_files(run: _Run, found: _Found) -> None:
    assert run.conn is not None
    directory = run.settings.data_dir / "indexes"
    exact_below = run.settings.ann_exact_below
    c = chunks.c
    sizes = run.conn.execute(sa.select(c.owner_id, c.entity_id, c.dimensions, sa.func.count())
                             .group_by(c.owner_id, c.entity_id, c.dimensions)).all()
    by_digest = {_ann_digest(o, e): (o, e) for o, e, _d, _n in sizes}
    counts = {(o, e, int(d)): int(n) for o, e, d, n in sizes}
    files: dict[tuple[str, str, int], Path] = {}
    names = sorted(os.listdir(directory)) if directory.is_dir() else []
    for name in names:
        match = _ANN_FILE.match(name)
        if match is None:
            continue
        path = directory / name
        owner_entity = by_digest.get(match.group(1))
        dims = int(match.group(2))
        if owner_entity is None or (*owner_entity, dims) not in counts:
            found.problem(f"vector index file {name}: no collection has these vectors",
                          _remove_file(path))
            continue
        key = (owner_entity[0], owner_entity[1], dims)
        files[key] = path
        label = f"vector index of entity {key[1]} (user {key[0]}, {dims} dimensions), {name}"
        try:
            meta = _ann_trailer(path)
        except FileNotFoundError:
            files.pop(key)  # replaced or dropped meanwhile
            continue
        except (OSError, ValueError) as exc:
            found.problem(f"{label}: unreadable: {_error_text(exc)}",
                          _rebuild_ann(run, key, path))
            continue
        why = _ann_out_of_step(run.db, key, meta)
        if why:
            found.problem(f"{label}: {why}", _rebuild_ann(run, key, path))
    for key, n in sorted(counts.items()):
        if n >= exact_below and key not in files:
            found.problem(f"vector index of entity {key[1]} (user {key[0]}, {key[2]} "
                          f"dimensions): file missing for {n} vectors (MEMVAULT_ANN_EXACT_BELOW "
                          f"{exact_below})", _rebuild_ann(run, key, None))


def _ann_out_of_step(db: Database, key: tuple[str, str, int], meta: dict[str, Any]) -> str:
    """Why a file's high-water marks and count disagree with the rows ('' if they
    agree). Counted in a fresh read taken after the file was read: every row the
    file's marks cover was committed before it was saved."""
    hwm, tomb_hwm, count = int(meta["hwm"]), int(meta["tomb_hwm"]), int(meta["count"])
    owner, entity, dims = key
    c, t = chunks.c, chunk_tombstones.c
    with _snapshot(db) as conn:
        issued = {str(n): int(s) for n, s in conn.exec_driver_sql(
            "SELECT name, seq FROM sqlite_sequence WHERE name IN ('chunks', 'chunk_tombstones')")}
        if hwm > issued.get("chunks", 0) or tomb_hwm > issued.get("chunk_tombstones", 0):
            return (f"high-water marks {hwm}/{tomb_hwm} beyond the database's "
                    f"{issued.get('chunks', 0)}/{issued.get('chunk_tombstones', 0)} (restored?)")
        rows = int(conn.execute(sa.select(sa.func.count()).select_from(chunks).where(
            c.owner_id == owner, c.entity_id == entity, c.dimensions == dims,
            c.id <= hwm)).scalar_one())
        # Rows deleted after the file's tombstone mark may still be in it.
        later = int(conn.execute(sa.select(sa.func.count()).select_from(chunk_tombstones).where(
            t.owner_id == owner, t.entity_id == entity, t.seq > tomb_hwm,
            t.chunk_pk <= hwm)).scalar_one())
    if not rows <= count <= rows + later:
        return f"holds {count} vectors, the rows up to its mark {hwm} are {rows}"
    return ""


def _remove_file(path: Path) -> _Fix:
    def fix() -> str:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return f"removed {path.name}"
    return fix


def _rebuild_ann(run: _Run, key: tuple[str, str, int], path: Path | None) -> _Fix:
    def fix() -> str:
        from ..retrieval.ann import VectorIndexes

        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        # A search opens the collection: with no file it is read from the rows,
        # and one at or above the threshold gets its graph built and saved.
        indexes = VectorIndexes(run.db, run.settings.data_dir / "indexes",
                                exact_below=run.settings.ann_exact_below)
        try:
            query = np.ones(key[2], dtype=np.float32)
            indexes.search(key[0], key[1], key[2], query, 1)
            wait = getattr(indexes, "wait_for_builds", None)
            if callable(wait):
                wait()
        finally:
            indexes.close()
        name = path.name if path is not None else f"of entity {key[1]}"
        return f"vector index {name} rebuilt from the rows"
    return fix


# -- counters -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Counter:
    """A column of ``table`` that counts rows of ``child`` (``link``: pairs of
    ``table`` column, ``child`` column)."""

    table: sa.Table
    column: str
    child: sa.Table
    link: tuple[tuple[str, str], ...]


_OWNER = ("owner_id", "owner_id")
#: Every counter the schema keeps, updated in the transaction that changes the
#: rows. (``documents.chunk_count`` is not one: it records what indexing made,
#: and single chunks of a document may be deleted later.)
COUNTERS = (
    _Counter(entities, "document_count", documents, (_OWNER, ("entity_id", "entity_id"))),
    _Counter(conversations, "message_count", messages, (_OWNER, ("id", "conversation_id"))),
    _Counter(graphs, "node_count", graph_nodes, (_OWNER, ("name", "graph"))),
    _Counter(graphs, "edge_count", graph_edges, (_OWNER, ("name", "graph"))),
    _Counter(graphs, "pattern_count", graph_patterns, (_OWNER, ("name", "graph"))),
    _Counter(runs, "step_count", run_steps, (_OWNER, ("id", "run_id"))),
)
#: JSON ``{type: count}`` counters: (column of graphs, the rows counted by ``type``).
TYPE_COUNTERS = (("node_types", graph_nodes), ("edge_types", graph_edges))


def _counted(counter: _Counter) -> sa.ScalarSelect[Any]:
    return (sa.select(sa.func.count()).select_from(counter.child)
            .where(*(counter.child.c[cc] == counter.table.c[pc] for pc, cc in counter.link))
            .scalar_subquery())


def _check_counters(run: _Run, found: _Found) -> None:
    assert run.conn is not None
    for counter in COUNTERS:
        kind = _kind_of(counter.table)
        actual = _counted(counter)
        query = (sa.select(*(counter.table.c[k] for k in kind.key),
                           counter.table.c[counter.column], actual.label("actual"))
                 .where(counter.table.c[counter.column] != actual))
        for row in run.conn.execute(query):
            where = {k: row._mapping[k] for k in kind.key}
            fix: _Fix | None = _recount(run.db, counter, where)
            if counter.table is runs:  # steps are numbered 1..n: a gap is not a count
                top = run.conn.execute(sa.select(sa.func.max(run_steps.c.step)).where(
                    run_steps.c.owner_id == where["owner_id"],
                    run_steps.c.run_id == where["id"])).scalar()
                if (top or 0) != row.actual:
                    fix = None
            found.problem(f"{kind.name} {_key(kind, row)}: {counter.column} "
                          f"{row._mapping[counter.column]}, rows {row.actual}", fix)
    g = graphs.c
    for owner, name, *stored in run.conn.execute(
            sa.select(g.owner_id, g.name, *(g[col] for col, _ in TYPE_COUNTERS))
            .order_by(g.owner_id, g.name)):
        for (col, child), recorded in zip(TYPE_COUNTERS, stored, strict=True):
            types = _type_counts(run.conn, child, owner, name)
            if dict(recorded or {}) != types:
                found.problem(f"graphs {owner}/{name}: {col} {json.dumps(recorded)}, "
                              f"rows {json.dumps(types)}",
                              _retype(run.db, owner, name, col, child))


def _type_counts(conn: Connection, child: sa.Table, owner: str, graph: str) -> dict[str, int]:
    return {str(t): int(n) for t, n in conn.execute(
        sa.select(child.c.type, sa.func.count())
        .where(child.c.owner_id == owner, child.c.graph == graph)
        .group_by(child.c.type).order_by(child.c.type))}


def _recount(db: Database, counter: _Counter, where: dict[str, Any]) -> _Fix:
    def fix() -> str:
        kind = _kind_of(counter.table)
        cond = sa.and_(*(counter.table.c[k] == v for k, v in where.items()))
        with db.write() as conn:
            # The row's lock first, as the stores take it before changing the rows.
            conn.execute(sa.select(counter.table.c[counter.column]).where(cond).with_for_update())
            n = conn.execute(sa.select(sa.func.count()).select_from(counter.child).where(
                *(counter.child.c[cc] == where[pc] for pc, cc in counter.link))).scalar_one()
            conn.execute(counter.table.update().where(cond).values({counter.column: n}))
        return f"{kind.name} {'/'.join(str(v) for v in where.values())}: {counter.column} = {n}"
    return fix


def _retype(db: Database, owner: str, name: str, col: str, child: sa.Table) -> _Fix:
    def fix() -> str:
        cond = sa.and_(graphs.c.owner_id == owner, graphs.c.name == name)
        with db.write() as conn:
            conn.execute(sa.select(graphs.c.name).where(cond).with_for_update())
            counts = _type_counts(conn, child, owner, name)
            conn.execute(graphs.update().where(cond).values({col: counts}))
        return f"graphs {owner}/{name}: {col} recounted"
    return fix


# -- running the checks -------------------------------------------------------------------------

_Checker = Callable[[_Run, _Found], None]
#: (name, function, reads the snapshot), in order: the blob checks share what
#: ``blob bytes`` found, the text check skips messages ``message chunks`` flagged.
_CHECKS: tuple[tuple[str, _Checker, bool], ...] = (
    ("database integrity", _check_integrity, False),
    ("schema revision", _check_schema, True),
    ("blob bytes", _check_blob_bytes, True),
    ("orphan blobs", _check_orphans, True),
    ("blob references", _check_blob_references, True),
    ("blob refcounts", _check_refcounts, True),
    ("message chunks", _check_message_chunks, True),
    ("message text", _check_message_text, True),
    ("full-text index", _check_fulltext, True),
    ("vector indexes", _check_vectors, True),
    ("counters", _check_counters, True),
)
CHECK_NAMES = tuple(name for name, _f, _s in _CHECKS)
#: Repairs in this order: reference counts before orphans are collected, so a
#: blob whose refcount wrongly says 0 is recounted, never removed.
_REPAIR_ORDER = ("blob refcounts", "blob references", "orphan blobs")


@contextlib.contextmanager
def _snapshot(db: Database) -> Iterator[Connection]:
    """One read transaction: every statement sees the same committed state."""
    with db.engine.connect() as conn:
        if db.backend.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # pysqlite's implicit transactions are off
            conn.exec_driver_sql("SELECT 1 FROM sqlite_master LIMIT 1")  # takes the snapshot
        else:
            conn = conn.execution_options(isolation_level="REPEATABLE READ",
                                          postgresql_readonly=True)
            conn.execute(sa.text("SELECT 1"))
        try:
            yield conn
        finally:
            conn.rollback()


def _run_check(run: _Run, name: str, checker: _Checker) -> _Found:
    found = _Found(name)
    try:
        if run.conn is not None:
            # A savepoint, so a failed statement (PostgreSQL aborts the whole
            # transaction) costs this check only.
            nested = run.conn.begin_nested()
            try:
                checker(run, found)
            finally:
                if nested.is_active:
                    nested.rollback()
        else:
            checker(run, found)
    except (sa.exc.SQLAlchemyError, MemvaultError, OSError, ValueError) as exc:
        # Reported in the result: the log gets one line, no traceback.
        found.problem(f"check failed: {_error_text(exc)}")
    return found


def _settle(found: _Found, repair: bool, fixes: dict[int, str | None]) -> CheckResult:
    result = CheckResult(found.name, notes=list(found.notes))
    unfixed: list[str] = []
    for text, fix in found.items:
        if not repair or fix is None:
            unfixed.append(text)
            continue
        if id(fix) not in fixes:  # a fix shared by several problems runs once
            try:
                fixes[id(fix)] = fix()
            except (sa.exc.SQLAlchemyError, MemvaultError, OSError, ValueError) as exc:
                log.warning("verify repair failed", check=found.name, error=_error_text(exc))
                fixes[id(fix)] = None
                unfixed.append(f"{text} (repair failed: {_error_text(exc)})")
                continue
            done = fixes[id(fix)]
            if done is None:
                unfixed.append(f"{text} (cannot be derived again)")
            elif len(result.repaired) < MAX_LISTED:
                result.repaired.append(done)
        elif fixes[id(fix)] is None:
            unfixed.append(text)
    for text, fix in found.tidies:
        if not repair:
            continue
        try:
            done = fix()
        except (sa.exc.SQLAlchemyError, MemvaultError, OSError, ValueError) as exc:
            result.notes.append(f"{text}: not done ({_error_text(exc)})")
            continue
        if done is not None and len(result.repaired) < MAX_LISTED:
            result.repaired.append(done)
    if found.tidies and not repair:
        first = "; ".join(text for text, _ in found.tidies[:3])
        more = len(found.tidies) - 3
        result.notes.append(first + (f"; and {more} more" if more > 0 else ""))
    result.problems = unfixed[:MAX_LISTED]
    result.unlisted = max(0, len(unfixed) - MAX_LISTED)
    return result


def verify(settings: Settings, *, repair: bool = False,
           progress: ProgressFn | None = None) -> VerifyReport:
    """Check the vault ``settings`` describe; with ``repair``, fix what can be
    derived again. Safe while the vault is in use (``memvault serve``).

    The vault is opened without migrating it or running its start-up tasks, so
    a verify changes nothing unless asked to repair.

    Args:
        repair: rebuild indexes and counters, fix reference counts, drop orphan
            blobs, re-materialise messages' text from their chunks.
        progress: called as checks advance (``check, done, total``).

    Raises:
        ConfigError: there is no SQLite vault at the configured place.
        Unavailable: the database or the blob store cannot be reached.
    """
    if settings.backend == "sqlite" and not settings.sqlite_path.is_file():
        raise ConfigError(f"no vault at {settings.sqlite_path}")
    backend = backend_for(settings)
    db = Database(backend.create_engine(), backend)
    try:
        store = open_blob_store(settings, db)
        try:
            return _verify(_Run(settings, db, store, progress), repair)
        finally:
            store.close()
    finally:
        db.close()


def _verify(run: _Run, repair: bool) -> VerifyReport:
    # The database's own checks first, on their own connections; then the
    # rest in one snapshot.
    found = [_run_check(run, name, checker) for name, checker, snap in _CHECKS if not snap]
    pending = [(name, checker) for name, checker, snap in _CHECKS if snap]
    snapshot_error: str | None = None
    try:
        with _snapshot(run.db) as conn:
            run.conn = conn
            for name, checker in pending:
                run.tick(name, 0, None)
                found.append(_run_check(run, name, checker))
    except (sa.exc.SQLAlchemyError, MemvaultError) as exc:
        snapshot_error = _error_text(exc)
    finally:
        run.conn = None
    if snapshot_error is not None:
        done = {f.name for f in found}
        for name, _checker in pending:
            if name not in done:
                skipped = _Found(name)
                skipped.problem(f"not checked: the database cannot be read: {snapshot_error}")
                found.append(skipped)
    fixes: dict[int, str | None] = {}
    by_name = {f.name: f for f in found}
    order = [n for n in _REPAIR_ORDER if n in by_name] + \
        [f.name for f in found if f.name not in _REPAIR_ORDER]
    settled = {name: _settle(by_name[name], repair, fixes) for name in order}
    return VerifyReport(run.db.backend.name, repair, [settled[f.name] for f in found])

