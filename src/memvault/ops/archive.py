"""Export and import: a portable, streamed archive of a vault or of one user.

An archive is a directory, or the same files in a ``.zip`` (chosen by the name
ending in ``.zip``)::

    manifest.json      format and memvault versions, schema revision, source
                       backend, created_at, owner (one user's export), records
                       per kind, and the sha256 and size of every other file
    <kind>.jsonl       one JSON object per record (``Kind.encode``), in key
                       order, keys sorted (so PostgreSQL's jsonb and SQLite's
                       text JSON give the same bytes)
    blobs/<sha256>     the bytes of every blob an exported record references

Every portable kind of ``kinds.py`` is archived, so a kind registered there is
exported and imported without code here, except those in ``OMITTED``. The
``blobs`` records are the blobs exported records reference (with ``refcount``
the number of those references), never the others. One user's export holds
the records that user owns and the blobs they reference, nothing else.

Export reads everything inside one snapshot (``snapshot``: a repeatable-read,
read-only transaction on PostgreSQL, one read transaction on SQLite) while
writers go on, streaming rows (server-side cursors) straight to files, so its
memory does not grow with the data. A directory or zip is written under a
temporary name and renamed whole when complete.

Import checks the manifest and every checksum before writing anything, then
inserts every kind, parents first, in batches, in ONE write transaction: a
failure leaves the target as it was (blob bytes already published are
collected again). Ids, timestamps, owners, statuses and bytes are kept; blob
bytes go to the target's configured blob store; ``blobs.refcount`` is counted
again from the referencing rows rather than trusted; PostgreSQL's identity of
``chunks.id`` is moved past the imported ids. Derived indexes rebuild
themselves: SQLite's FTS5 through its triggers, PostgreSQL's tsvector is a
generated column, SQLite's ANN files are rebuilt at the next search (they are
checked against the rows), pgvector's HNSW indexes are maintained on insert.
Documents imported ``pending``/``indexing`` get their ingest job again.

Not archived: non-portable kinds (jobs, caches, login failures, the embedding
cache, chunk tombstones) and ``OMITTED``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, cast

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from .. import __version__
from ..backends.base import Database
from ..backends.schema import blob_parts, documents
from ..blobs import BlobStore, DatabaseBlobStore, fsync_dir
from ..blobs.base import PIECE, make_private_dir
from ..errors import Conflict, Invalid, MemvaultError, Unavailable
from ..jobs import enqueue
from ..kinds import Kind, kind, kinds
from ..stores.files import INGEST_JOB, collect_quietly

__all__ = ["FORMAT", "FORMAT_VERSION", "OMITTED", "Manifest", "FileEntry", "ImportReport",
           "Progress", "archived_kinds", "snapshot", "export_archive", "verify_archive",
           "import_archive", "export_user_zip", "discard_export"]

FORMAT = "memvault-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Rows per batch: fetched from a server-side cursor, inserted per statement.
BATCH = 1000

#: Portable kinds an archive leaves out, and why.
OMITTED = {
    "auth_tokens": "bearer tokens are credentials of a session, not data: users log in again",
    "blob_parts": "the database blob store's bytes: blobs travel as blobs/<sha256> files",
}

#: ``progress(label, done, total)``: a kind's name (or "checksums", in bytes).
Progress = Callable[[str, int, int], None]

_BLOB_NAME = re.compile(r"^blobs/[0-9a-f]{64}$")
_UNFINISHED = ("pending", "indexing")


def archived_kinds() -> list[Kind]:
    """The kinds an archive holds, parents first."""
    return [k for k in kinds(portable=True) if k.name not in OMITTED]


def _blob_kind() -> Kind:
    return kind("blobs")


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass
class Manifest:
    """What ``manifest.json`` says (see the module docstring)."""

    memvault_version: str
    schema_revision: str | None
    backend: str
    created_at: str
    owner_id: str | None
    counts: dict[str, int]
    files: dict[str, FileEntry] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": self.format_version,
                "memvault_version": self.memvault_version,
                "schema_revision": self.schema_revision, "backend": self.backend,
                "created_at": self.created_at, "owner_id": self.owner_id,
                "counts": self.counts,
                "files": {name: {"sha256": e.sha256, "size": e.size}
                          for name, e in sorted(self.files.items())}}

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Raises: Invalid: not a manifest this version of memvault reads."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise Invalid("not a memvault export (manifest.json has no memvault format)")
        if data.get("format_version") != FORMAT_VERSION:
            raise Invalid(f"export format version {data.get('format_version')!r} is not "
                          f"supported (this memvault reads version {FORMAT_VERSION})")
        try:
            files = {str(name): FileEntry(str(e["sha256"]), int(e["size"]))
                     for name, e in data["files"].items()}
            return cls(memvault_version=str(data["memvault_version"]),
                       schema_revision=data["schema_revision"], backend=str(data["backend"]),
                       created_at=str(data["created_at"]), owner_id=data.get("owner_id"),
                       counts={str(k): int(v) for k, v in data["counts"].items()},
                       files=files)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise Invalid(f"manifest.json is malformed ({exc!r})") from None


@dataclass
class ImportReport:
    """Records per kind inserted and skipped (``--merge``: their key existed)."""

    manifest: Manifest
    inserted: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    #: Ingest jobs enqueued for documents imported ``pending``/``indexing``.
    jobs: int = 0

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


# -- snapshot ------------------------------------------------------------------

@contextlib.contextmanager
def snapshot(db: Database) -> Iterator[Connection]:
    """A read-only connection seeing one consistent state of the whole database
    while writers continue (PostgreSQL: REPEATABLE READ READ ONLY; SQLite: one
    read transaction). ``export_archive(conn=…)`` takes it, so a backup can
    read its database and its export in the same snapshot.

    Raises:
        Unavailable: the database cannot be reached.
    """
    try:
        with db.engine.connect() as raw:
            conn = db.backend.begin_snapshot(raw)
            try:
                yield conn
            finally:
                conn.rollback()
    except sa_exc.OperationalError as exc:
        raise Unavailable("database unavailable") from exc


# -- archive files ---------------------------------------------------------------

class _Hashing:
    """A binary writer that hashes and counts what passes through it."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        self._out.write(data)

    def entry(self) -> FileEntry:
        return FileEntry(self.digest.hexdigest(), self.size)


class _Writer(Protocol):
    def member(self, name: str, compress: bool) -> contextlib.AbstractContextManager[IO[bytes]]:
        ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


def _partial_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")


class _DirWriter:
    def __init__(self, out: Path) -> None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise Invalid(f"{out} exists and is not an empty directory")
        self.out = out
        self.root = _partial_name(out)
        make_private_dir(self.root / "blobs")

    @contextlib.contextmanager
    def member(self, name: str, compress: bool) -> Iterator[IO[bytes]]:
        with open(self.root / name, "xb", buffering=PIECE) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())

    def commit(self) -> None:
        fsync_dir(self.root / "blobs")
        fsync_dir(self.root)
        if self.out.exists():
            self.out.rmdir()  # empty, checked above
        os.rename(self.root, self.out)
        fsync_dir(self.out.parent)

    def abort(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class _ZipWriter:
    def __init__(self, out: Path) -> None:
        if out.exists():
            raise Invalid(f"{out} exists already")
        self.out = out
        self.tmp = _partial_name(out)
        fd = os.open(self.tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        self._file = os.fdopen(fd, "wb")
        self.zip = zipfile.ZipFile(self._file, "w", allowZip64=True)

    @contextlib.contextmanager
    def member(self, name: str, compress: bool) -> Iterator[IO[bytes]]:
        info = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o600 << 16
        with self.zip.open(info, "w", force_zip64=True) as fh:
            yield fh

    def commit(self) -> None:
        self.zip.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.out)
        fsync_dir(self.out.parent)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.zip.close()
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def _writer(out: Path) -> _Writer:
    out.parent.mkdir(parents=True, exist_ok=True)
    return _ZipWriter(out) if out.suffix.lower() == ".zip" else _DirWriter(out)


class _Reader:
    """Members of an archive directory or zip, by name."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.zip: zipfile.ZipFile | None = None
        if source.is_file():
            try:
                self.zip = zipfile.ZipFile(source)
            except zipfile.BadZipFile:
                raise Invalid(f"{source} is neither an export directory nor a zip") from None
        elif not source.is_dir():
            raise Invalid(f"{source} does not exist")

    def open(self, name: str) -> IO[bytes]:
        """Raises: Invalid: no such member."""
        try:
            if self.zip is not None:
                return self.zip.open(name)
            return open(self.source / name, "rb")  # noqa: SIM115 - the caller closes it
        except (KeyError, FileNotFoundError):
            raise Invalid(f"the archive has no {name}") from None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _dumps(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
            + "\n").encode()


# -- export ----------------------------------------------------------------------

def export_archive(db: Database, blobs: BlobStore, out: Path, *, owner_id: str | None = None,
                   conn: Connection | None = None, progress: Progress | None = None) -> Manifest:
    """Write an archive of the vault (or of ``owner_id``'s records) to ``out``.

    Args:
        db, blobs: the vault's database and blob store.
        out: a directory (absent or empty), or a file whose name ends in ``.zip``
            (absent); written under a temporary name, renamed when complete.
        owner_id: export only this user's records and the blobs they reference.
        conn: read through this connection (a ``snapshot``), e.g. a backup's;
            by default a snapshot of its own.
        progress: told of each kind's rows as they are written.

    Raises:
        Invalid: ``out`` is in the way. MemvaultError: a blob's bytes are
            missing or damaged in the store (``memvault verify`` says more).
    """
    writer = _writer(out)
    try:
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(snapshot(db))
            manifest = _export(conn, db.backend.name, blobs, writer, owner_id, progress)
        with writer.member(MANIFEST, compress=True) as fh:
            fh.write(json.dumps(manifest.to_json(), indent=2).encode() + b"\n")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return manifest


def _rows_query(k: Kind, owner_id: str | None) -> sa.Select[Any]:
    query = sa.select(k.table).order_by(*(k.table.c[c] for c in k.key))
    return query if owner_id is None else query.where(k.owned_by(owner_id))


def _blobs_query(owner_id: str | None) -> sa.Select[Any]:
    """The blobs exported records reference, with ``refcount`` the number of
    those references (a user's export says nothing of anyone else's)."""
    table = _blob_kind().table
    refs = []
    for k in archived_kinds():
        if k.blob:
            ref = sa.select(k.table.c[k.blob].label("sha256"))
            refs.append(ref if owner_id is None else ref.where(k.owned_by(owner_id)))
    union = sa.union_all(*refs).subquery("refs")
    counted = (sa.select(union.c.sha256, sa.func.count().label("n"))
               .group_by(union.c.sha256).subquery("counted"))
    columns = [counted.c.n.label("refcount") if c.name == "refcount" else c for c in table.c]
    return (sa.select(*columns).select_from(table.join(counted,
                                                       table.c.sha256 == counted.c.sha256))
            .order_by(table.c.sha256))


def _export(conn: Connection, backend: str, store: BlobStore, writer: _Writer,
            owner_id: str | None, progress: Progress | None) -> Manifest:
    revision = MigrationContext.configure(conn).get_current_revision()
    plan = [(k, _blobs_query(owner_id) if k is _blob_kind() else _rows_query(k, owner_id))
            for k in archived_kinds()
            if owner_id is None or k.owner is not None or k is _blob_kind()]
    totals = {k.name: int(conn.execute(sa.select(sa.func.count())
                                       .select_from(q.order_by(None).subquery())).scalar_one())
              for k, q in plan}
    manifest = Manifest(memvault_version=__version__, schema_revision=revision,
                        backend=backend, created_at=datetime.now(UTC).isoformat(),
                        owner_id=owner_id, counts={})
    for k, query in plan:
        done = 0
        total = totals[k.name]
        name = f"{k.name}.jsonl"
        with writer.member(name, compress=True) as fh:
            out = _Hashing(fh)
            # Closed on every path: an exception must not leave a server-side
            # cursor open on PostgreSQL for the garbage collector to find.
            with contextlib.closing(conn.execute(
                    query.execution_options(yield_per=BATCH))) as result:
                for row in result.mappings():
                    out.write(_dumps(k.encode(cast(Mapping[str, Any], row))))
                    done += 1
                    if progress is not None and done % BATCH == 0:
                        progress(k.name, done, max(total, done))
        manifest.files[name] = out.entry()
        manifest.counts[k.name] = done
        if progress is not None:
            progress(k.name, done, done)
        if k is _blob_kind():
            # A second pass over the same rows (same snapshot) for the bytes: a
            # zip takes one member at a time, and nothing is held meanwhile.
            with contextlib.closing(conn.execute(
                    query.execution_options(yield_per=BATCH))) as result:
                for row in result.mappings():
                    sha = str(row["sha256"])
                    manifest.files[f"blobs/{sha}"] = _export_blob(conn, store, writer, sha,
                                                                  int(row["size"]))
    return manifest


def _blob_pieces(conn: Connection, store: BlobStore, sha256: str) -> Iterator[bytes]:
    if isinstance(store, DatabaseBlobStore):
        # The bytes are rows: read them in the export's own snapshot.
        part = 0
        while (data := conn.execute(sa.select(blob_parts.c.data).where(
                blob_parts.c.sha256 == sha256, blob_parts.c.part == part)).scalar()) is not None:
            yield bytes(data)
            part += 1
        if part == 0:
            raise MemvaultError(f"the stored bytes of blob {sha256[:12]}… are missing")
        return
    yield from store.open(sha256)


def _export_blob(conn: Connection, store: BlobStore, writer: _Writer, sha256: str,
                 size: int) -> FileEntry:
    with writer.member(f"blobs/{sha256}", compress=False) as fh:
        out = _Hashing(fh)
        for piece in _blob_pieces(conn, store, sha256):
            out.write(piece)
    entry = out.entry()
    if entry.sha256 != sha256 or entry.size != size:
        raise MemvaultError(f"blob {sha256[:12]}… is damaged in the blob store (its bytes do "
                            "not match their sha256 or size); run memvault verify")
    return entry


# -- a user's own export (GET /api/auth/me/export) ---------------------------------

def export_user_zip(db: Database, blobs: BlobStore, data_dir: Path, owner_id: str) -> Path:
    """``owner_id``'s records and blobs as a zip in a private temp folder under
    ``data_dir``; give the path to ``discard_export`` once it has been sent."""
    root = data_dir / "exports"
    make_private_dir(root)
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=root))
    path = folder / f"memvault-export-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.zip"
    try:
        export_archive(db, blobs, path, owner_id=owner_id)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return path


def discard_export(path: Path) -> None:
    """Remove a zip made by ``export_user_zip`` (and its folder)."""
    shutil.rmtree(path.parent, ignore_errors=True)


# -- verify and import -------------------------------------------------------------

def _read_manifest(reader: _Reader) -> Manifest:
    with reader.open(MANIFEST) as fh:
        raw = fh.read(16 << 20)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("manifest.json is not valid JSON (the archive is damaged)") from None
    return Manifest.from_json(data)


def _check_names(manifest: Manifest) -> None:
    known = {k.name for k in archived_kinds()}
    for name in manifest.counts:
        if name not in known:
            raise Invalid(f"the archive holds records of kind {name!r}, unknown to this "
                          "version of memvault")
        if f"{name}.jsonl" not in manifest.files:
            raise Invalid(f"the manifest lists no file for kind {name!r}")
    for name, entry in manifest.files.items():
        if _BLOB_NAME.match(name):
            if name[len("blobs/"):] != entry.sha256:
                raise Invalid(f"{name}: the manifest gives another sha256 (damaged archive)")
        elif not (name.endswith(".jsonl") and name[:-len(".jsonl")] in manifest.counts):
            raise Invalid(f"the manifest lists an unexpected file {name!r}")


def verify_archive(source: Path, progress: Progress | None = None) -> Manifest:
    """Check the manifest and the sha256 and size of every file it lists.

    Raises:
        Invalid: a file is missing, damaged or unexpected (nothing should be
            imported from such an archive).
    """
    reader = _Reader(source)
    try:
        manifest = _read_manifest(reader)
        _check_names(manifest)
        total = sum(e.size for e in manifest.files.values())
        done = 0
        for name, entry in sorted(manifest.files.items()):
            digest = hashlib.sha256()
            size = 0
            with reader.open(name) as fh:
                while piece := fh.read(PIECE):
                    digest.update(piece)
                    size += len(piece)
            if size != entry.size or digest.hexdigest() != entry.sha256:
                raise Invalid(f"{name} is damaged: its sha256 or size differs from the "
                              "manifest's")
            done += size
            if progress is not None:
                progress("checksums", done, total)
        return manifest
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise Invalid(f"the archive cannot be read: {exc}") from None
    finally:
        reader.close()


def _records(reader: _Reader, k: Kind) -> Iterator[dict[str, Any]]:
    name = f"{k.name}.jsonl"
    with reader.open(name) as fh:
        for number, line in enumerate(fh, 1):
            try:
                yield k.decode(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise Invalid(f"{name} line {number}: not a {k.name} record ({exc!r})") from None


def _batches(records: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def import_archive(db: Database, blobs: BlobStore, source: Path, *, merge: bool = False,
                   progress: Progress | None = None) -> ImportReport:
    """Load an archive (directory or zip) into the vault of ``db`` and ``blobs``.

    Every checksum is verified first; then everything is inserted in one write
    transaction (see the module docstring).

    Args:
        merge: into a vault that already holds records: skip each record whose
            key exists (counted in ``ImportReport.skipped``). Without it, a
            vault holding any record of an archived kind is refused.

    Raises:
        Invalid: the archive is damaged or malformed, or of another schema
            revision than the target. Conflict: the target is not empty (and
            no ``merge``), or a record clashes with an existing one on another
            unique column (e.g. a user with the same email and another id).
    """
    manifest = verify_archive(source, progress)
    reader = _Reader(source)
    try:
        return _import(db, blobs, reader, manifest, merge, progress)
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise Invalid(f"the archive cannot be read: {exc}") from None
    finally:
        reader.close()


def _import(db: Database, store: BlobStore, reader: _Reader, manifest: Manifest, merge: bool,
            progress: Progress | None) -> ImportReport:
    report = ImportReport(manifest)
    wanted = [k for k in archived_kinds() if k.name in manifest.counts]
    publishing = False
    try:
        with db.write() as conn:
            revision = MigrationContext.configure(conn).get_current_revision()
            if revision != manifest.schema_revision:
                raise Invalid(f"the archive is at schema revision {manifest.schema_revision}, "
                              f"this vault at {revision}: import it with the memvault "
                              "version that wrote it, then upgrade")
            if not merge:
                _require_empty(conn)
            for k in wanted:
                if k is _blob_kind():
                    publishing = True
                    _import_blobs(conn, db, store, reader, manifest, report, progress)
                else:
                    _import_rows(conn, db, k, reader, manifest, merge, report, progress)
                db.backend.reset_identity(conn, k.table)
            _recount_blobs(conn)
    except BaseException:
        # Bytes published into a file or S3 store outlive the rolled-back rows:
        # collect those no row references (a no-op for blobs that had rows).
        if publishing:
            with contextlib.suppress(MemvaultError, OSError, Invalid):
                for record in _records(reader, _blob_kind()):
                    collect_quietly(db, store, record["sha256"])
        raise
    index_vectors(db)
    return report


def _require_empty(conn: Connection) -> None:
    for k in kinds(portable=True):
        if conn.execute(sa.select(sa.literal(1)).select_from(k.table).limit(1)).first():
            raise Conflict(f"the target vault is not empty (it holds {k.name}); import into "
                           "an empty vault, or pass --merge to skip records that exist")


def _import_rows(conn: Connection, db: Database, k: Kind, reader: _Reader, manifest: Manifest,
                 merge: bool, report: ImportReport, progress: Progress | None) -> None:
    key = [k.table.c[c] for c in k.key]
    insert: Any = (db.backend.insert_ignore(k.table, k.key) if merge else k.table.insert())
    if merge:
        insert = cast(sa.Insert, insert).returning(*key)
    total = manifest.counts[k.name]
    done = inserted = 0
    for batch in _batches(_records(reader, k)):
        try:
            if merge:
                kept = {tuple(r) for r in conn.execute(insert, batch)}
            else:
                conn.execute(insert, batch)
        except sa_exc.IntegrityError as exc:
            raise Conflict(f"{k.name}: a record clashes with one already in the vault or the "
                           "archive (a reference to a missing record, or a unique value "
                           "such as a user's email taken by another record)") from exc
        rows = batch if not merge else [r for r in batch
                                        if tuple(r[c] for c in k.key) in kept]
        inserted += len(rows)
        if k.table is documents:
            for r in rows:
                if r["status"] in _UNFINISHED:
                    enqueue(conn, INGEST_JOB, {"doc_id": r["doc_id"]}, owner_id=r["owner_id"])
                    report.jobs += 1
        done += len(batch)
        if progress is not None:
            progress(k.name, done, max(total, done))
    if done != total:
        raise Invalid(f"{k.name}.jsonl holds {done} records, the manifest says {total}")
    report.inserted[k.name] = inserted
    report.skipped[k.name] = done - inserted


def _import_blobs(conn: Connection, db: Database, store: BlobStore, reader: _Reader,
                  manifest: Manifest, report: ImportReport, progress: Progress | None) -> None:
    """Each blob's row, locked (an upsert, as uploads do) before its bytes are
    published; refcounts start at 0 and are counted by ``_recount_blobs``."""
    k = _blob_kind()
    table = k.table
    total = manifest.counts[k.name]
    done = inserted = 0
    for record in _records(reader, k):
        sha = record["sha256"]
        entry = manifest.files.get(f"blobs/{sha}")
        if entry is None:
            raise Invalid(f"the archive has no bytes for blob {sha[:12]}…")
        existed = conn.execute(sa.select(table.c.sha256).where(table.c.sha256 == sha)).first()
        conn.execute(db.backend.upsert(table, {**record, "refcount": 0}, keys=["sha256"],
                                       set_={"refcount": table.c.refcount}))
        with reader.open(f"blobs/{sha}") as fh:
            staged = store.stage(fh, max_bytes=entry.size)
        try:
            if staged.sha256 != sha:
                raise Invalid(f"blobs/{sha} is damaged: its bytes have another sha256")
            store.publish(conn, staged)
        finally:
            staged.discard()
        inserted += existed is None
        done += 1
        if progress is not None:
            progress(k.name, done, max(total, done))
    if done != total:
        raise Invalid(f"{k.name}.jsonl holds {done} records, the manifest says {total}")
    report.inserted[k.name] = inserted
    report.skipped[k.name] = done - inserted


def _recount_blobs(conn: Connection) -> None:
    """Set every referenced blob's refcount to the rows referencing it."""
    table = _blob_kind().table
    refs = [sa.select(k.table.c[k.blob].label("sha256"))
            for k in kinds() if k.blob]
    union = sa.union_all(*refs).subquery("refs")
    counted = (sa.select(union.c.sha256, sa.func.count().label("n"))
               .group_by(union.c.sha256).subquery("counted"))
    conn.execute(table.update().where(table.c.sha256 == counted.c.sha256,
                                      table.c.refcount != counted.c.n)
                 .values(refcount=counted.c.n))


def index_vectors(db: Database) -> None:
    """PostgreSQL's HNSW index per vector dimension is made when the first
    vector of that dimension is stored, which an import bypasses: make them."""
    ensure = getattr(db.backend, "ensure_vector_index", None)
    if ensure is None:
        return
    table = kind("chunks").table
    with db.read() as conn:
        dims = conn.execute(sa.select(table.c.dimensions).where(
            table.c.dimensions.is_not(None)).distinct()).scalars().all()
    for n in dims:
        ensure(db.engine, int(n))
