"""Backups and restores, and the backup a schema migration takes first.

A backup is one folder, ``backup-YYYYmmddTHHMMSSZ`` (``-2``, … when two are made
in the same second), in the backups folder (default ``<data_dir>/backups``,
0700)::

    manifest.json        format, memvault version, schema revision, backend, the
                         database (password hidden), created_at, records per
                         kind, encryption parameters (or null), the sha256 and
                         size of every other file, and a checksum of itself
    archive/…            an export archive (ops/archive.py): one JSON-lines file
                         per portable kind, blobs/<sha256>, its own manifest

Both backends write the same thing: ``export_archive`` inside one ``snapshot``
(PostgreSQL: one repeatable-read read-only transaction; SQLite: one read
transaction in WAL mode), taken while writers go on. So a backup restores into
either backend, every record, blob and chunk identical. Not in a backup: what
an export leaves out — operational state (jobs, caches, login failures, the
embedding cache, chunk tombstones), bearer tokens (users log in again), and
the derived indexes kept inside the database (SQLite's FTS5 rows are rebuilt by
triggers, PostgreSQL's tsvector is generated, pgvector indexes are maintained
on insert). SQLite's vector index files (``<data_dir>/indexes/``) are copied
into ``indexes/`` beside the archive and put back by a restore into SQLite: each
file says which rows it covers, so one taken a moment after the snapshot is
caught up or, when it is ahead of the restored rows, rebuilt in the background
(searches answer exactly meanwhile). A backup is written under a temporary name
and renamed when complete; ``keep`` removes all but the newest.

Encryption (``passphrase``): every file but ``manifest.json`` is encrypted with
AES-256-GCM in frames of 1 MiB, each with its own random nonce and the file's
name, the frame's index and a last-frame flag in its associated data (so frames
cannot be swapped, moved between files or cut off). The key comes from the
passphrase by scrypt with a random salt kept in the manifest, with a small
encrypted check value that tells a wrong passphrase from damage. The
passphrase is never stored. The manifest stays readable (counts, sizes, file
names — blob names are their sha256), so ``--list`` and the checksums work
without the passphrase. The export is written in plain text into the private
(0700) unfinished folder first and each file is removed once encrypted.

Restore checks the manifest's own checksum and every file's sha256 and size
before touching anything (an encrypted backup is then decrypted, which
authenticates every frame, into a private temp folder, and the archive's own
checksums are checked too). Then:

- SQLite (``--to DATA_DIR``): the archive is imported into a new data folder
  beside the target, which then replaces it by renames; the old folder is kept
  aside as ``<dir>.old-<ts>`` (its ``backups/`` moved into the new one). Stop
  servers on that folder first.
- PostgreSQL (``--database-url``): into an empty database directly. With
  ``force``, a non-empty database is first backed up (a ``pre-restore`` backup in
  the backups folder), then emptied in one transaction and the archive imported
  in another; if the import fails, the pre-restore backup is imported back.
  Databases cannot be renamed while connections are open, so this is the
  closest to a swap: serve clients may see an empty vault meanwhile.

Migrations (``guard_migration``, called before every upgrade): a database that
holds records and has pending revisions is backed up first. SQLite: its file
is copied by SQLite's backup API into a ``…-pre-migration`` backup (an export is
impossible: the code's tables are ahead of that schema); restore it by
stopping memvault and copying its ``memvault.db`` into the data folder
(migrations never touch blob bytes). PostgreSQL: refused unless a backup of
that database from the last hour exists in the backups folder, or
``MEMVAULT_MIGRATE_WITHOUT_BACKUP=true`` / ``memvault migrate --yes``. One
process migrates at a time (``migration_lock``: a file lock, an advisory lock).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import struct
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from .. import __version__
from ..backends.base import Database
from ..backends.migrate import current_revision, head_revision
from ..blobs import BlobStore, fsync_dir
from ..blobs.base import PIECE, make_private_dir
from ..errors import Conflict, Invalid, MigrationFailed
from ..kinds import kinds
from ..settings import Settings, revalidate
from .archive import Progress, export_archive, import_archive, snapshot, verify_archive

if TYPE_CHECKING:
    from ..vault import Vault

__all__ = ["BackupInfo", "RestoreReport", "backups_dir", "create_backup", "list_backups",
           "read_backup", "restore_backup", "guard_migration", "has_records"]

FORMAT = "memvault-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: A recent enough backup lets PostgreSQL migrate.
RECENT = timedelta(hours=1)
_MAGIC = b"MVB1"
_FRAME = PIECE
_CHECK = b"memvault backup key check"
_SCRYPT = {"n": 2 ** 15, "r": 8, "p": 1}


def backups_dir(settings: Settings) -> Path:
    return settings.data_dir / "backups"


def _database_id(settings: Settings) -> str:
    """Which database a backup is of: its URL without the password, or the file."""
    if settings.backend == "postgresql" and settings.database_url:
        url = make_url(settings.database_url)
        return url.set(password=None, query={}).render_as_string(hide_password=True)
    return f"sqlite:///{settings.sqlite_path.resolve()}"


@dataclass
class BackupInfo:
    """What a backup's ``manifest.json`` says."""

    path: Path
    type: str  # "archive", or "sqlite-file" (taken before a SQLite migration)
    memvault_version: str
    schema_revision: str | None
    backend: str
    database: str
    created_at: datetime
    counts: dict[str, int]
    files: dict[str, tuple[str, int]]
    encryption: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        return sum(size for _sha, size in self.files.values())

    @property
    def records(self) -> int:
        return sum(self.counts.values())

    def body(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "type": self.type,
                "memvault_version": self.memvault_version,
                "schema_revision": self.schema_revision, "backend": self.backend,
                "database": self.database, "created_at": self.created_at.isoformat(),
                "counts": self.counts, "encryption": self.encryption,
                "files": {n: {"sha256": s, "size": z}
                          for n, (s, z) in sorted(self.files.items())}}


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_backup(path: Path) -> BackupInfo:
    """Read and check a backup's manifest (not yet its files).

    Raises:
        Invalid: not a backup, or its manifest is damaged.
    """
    try:
        data = json.loads((path / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise Invalid(f"{path} is not a memvault backup (no {MANIFEST})") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise Invalid(f"{path / MANIFEST} is damaged (not readable JSON)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise Invalid(f"{path} is not a memvault backup")
    if data.get("format_version") != FORMAT_VERSION:
        raise Invalid(f"backup format version {data.get('format_version')!r} is not supported")
    checksum = data.pop("checksum", None)
    if checksum != _checksum(data):
        raise Invalid(f"{path / MANIFEST} is damaged (its checksum does not match)")
    try:
        files = {str(n): (str(e["sha256"]), int(e["size"])) for n, e in data["files"].items()}
        return BackupInfo(
            path=path, type=str(data["type"]), memvault_version=str(data["memvault_version"]),
            schema_revision=data["schema_revision"], backend=str(data["backend"]),
            database=str(data["database"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            counts={str(k): int(v) for k, v in data["counts"].items()}, files=files,
            encryption=data["encryption"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Invalid(f"{path / MANIFEST} is malformed ({exc!r})") from None


def _write_manifest(root: Path, info: BackupInfo) -> None:
    body = info.body()
    data = json.dumps({**body, "checksum": _checksum(body)}, indent=2).encode() + b"\n"
    with open(root / MANIFEST, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while piece := fh.read(PIECE):
            digest.update(piece)
            size += len(piece)
    return digest.hexdigest(), size


# -- encryption ------------------------------------------------------------------

def _derive(passphrase: bytes, params: dict[str, Any]) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    kdf = Scrypt(salt=bytes.fromhex(params["salt"]), length=32, n=int(params["n"]),
                 r=int(params["r"]), p=int(params["p"]))
    return kdf.derive(passphrase)


def _new_encryption(passphrase: bytes) -> tuple[bytes, dict[str, Any]]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    params: dict[str, Any] = {"cipher": "AES-256-GCM", "frame": _FRAME, "kdf": "scrypt",
                              "salt": secrets.token_hex(16), **_SCRYPT}
    key = _derive(passphrase, params)
    nonce = secrets.token_bytes(12)
    params["check"] = (nonce + AESGCM(key).encrypt(nonce, _CHECK, b"check")).hex()
    return key, params


def _unlock(passphrase: bytes, params: dict[str, Any]) -> bytes:
    """Raises: Invalid: a wrong passphrase."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = _derive(passphrase, params)
    check = bytes.fromhex(params["check"])
    try:
        AESGCM(key).decrypt(check[:12], check[12:], b"check")
    except InvalidTag:
        raise Invalid("wrong passphrase for this backup") from None
    return key


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


def _aad(name: str, index: int, last: bool) -> bytes:
    return f"{name}\0{index}\0{int(last)}".encode()


def _encrypt(key: bytes, name: str, src: IO[bytes], dst: _Sink) -> None:
    """Frames: flag (1: last) | nonce (12) | length (4) | ciphertext and tag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(key)
    dst.write(_MAGIC)
    index = 0
    piece = src.read(_FRAME)
    while True:
        following = src.read(_FRAME) if piece else b""
        last = not following
        nonce = secrets.token_bytes(12)
        sealed = aead.encrypt(nonce, piece, _aad(name, index, last))
        dst.write(struct.pack(">B12sI", int(last), nonce, len(sealed)) + sealed)
        if last:
            return
        piece, index = following, index + 1


def _decrypt(key: bytes, name: str, src: IO[bytes], dst: IO[bytes]) -> None:
    """Raises: Invalid: damaged, truncated or not this backup's."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(key)
    if src.read(len(_MAGIC)) != _MAGIC:
        raise Invalid(f"{name} is not an encrypted backup file")
    index = 0
    while True:
        header = src.read(17)
        if len(header) != 17:
            raise Invalid(f"{name} is truncated")
        last, nonce, length = struct.unpack(">B12sI", header)
        sealed = src.read(length)
        if len(sealed) != length or length > _FRAME + 16:
            raise Invalid(f"{name} is truncated or damaged")
        try:
            dst.write(aead.decrypt(nonce, sealed, _aad(name, index, bool(last))))
        except InvalidTag:
            raise Invalid(f"{name} is damaged (frame {index} fails authentication)") from None
        if last:
            if src.read(1):
                raise Invalid(f"{name} has data after its last frame")
            return
        index += 1


# -- backup ----------------------------------------------------------------------

def _timestamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ")


def _final_name(root: Path, base: str) -> Path:
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    return path


def _publish(partial: Path, root: Path, base: str) -> Path:
    fsync_dir(partial)
    final = _final_name(root, base)
    os.rename(partial, final)
    fsync_dir(root)
    return final


def create_backup(db: Database, blobs: BlobStore, settings: Settings, to: Path | None = None,
                  *, keep: int | None = None, passphrase: bytes | None = None,
                  label: str = "", progress: Progress | None = None) -> BackupInfo:
    """Back the vault up (see the module docstring) while writers go on.

    Args:
        to: the backups folder (default ``<data_dir>/backups``), created 0700.
        keep: afterwards, remove all but the newest ``keep`` backups there.
        passphrase: encrypt every file but the manifest.
        label: appended to the folder's name (e.g. ``pre-restore``).

    Raises:
        Invalid: ``keep`` below 1. MemvaultError: a blob's bytes are missing or
            damaged (``memvault verify`` says more); nothing is left behind.
    """
    if keep is not None and keep < 1:
        raise Invalid("--keep must be at least 1")
    root = to if to is not None else backups_dir(settings)
    make_private_dir(root)
    now = datetime.now(UTC)
    partial = root / f".backup-{_timestamp(now)}.partial-{uuid.uuid4().hex[:8]}"
    make_private_dir(partial)
    try:
        plain = partial / ("plain" if passphrase is not None else "archive")
        with snapshot(db) as conn:
            manifest = export_archive(db, blobs, plain, conn=conn, progress=progress)
        files: dict[str, tuple[str, int]] = {
            f"archive/{n}": (e.sha256, e.size) for n, e in manifest.files.items()}
        files["archive/manifest.json"] = _hash_file(plain / "manifest.json")
        indexes = _copy_index_files(settings, db, partial / INDEXES)
        encryption = None
        if passphrase is not None:
            key, encryption = _new_encryption(passphrase)
            files = _encrypt_tree(key, plain, partial / "archive", progress)
            shutil.rmtree(plain)
            files.update(_encrypt_tree(key, indexes, partial / INDEXES, progress,
                                       prefix=INDEXES) if indexes else {})
        else:
            files.update({f"{INDEXES}/{p.name}": _hash_file(p)
                          for p in sorted(indexes.iterdir())} if indexes else {})
        info = BackupInfo(path=partial, type="archive", memvault_version=__version__,
                          schema_revision=manifest.schema_revision, backend=db.backend.name,
                          database=_database_id(settings), created_at=now,
                          counts=manifest.counts, files=files, encryption=encryption)
        _write_manifest(partial, info)
        base = f"backup-{_timestamp(now)}" + (f"-{label}" if label else "")
        info.path = _publish(partial, root, base)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if keep is not None:
        prune(root, keep)
    return info


def _encrypt_tree(key: bytes, plain: Path, out: Path, progress: Progress | None,
                  prefix: str = "archive") -> dict[str, tuple[str, int]]:
    """Encrypt every file of ``plain`` into ``out`` (in place when they are the
    same folder: each plain file is replaced by its encrypted form)."""
    make_private_dir(out / "blobs") if prefix == "archive" else make_private_dir(out)
    files: dict[str, tuple[str, int]] = {}
    sources = sorted(p for p in plain.rglob("*") if p.is_file())
    for done, source in enumerate(sources, 1):
        rel = source.relative_to(plain).as_posix()
        name = f"{prefix}/{rel}"
        if plain == out:  # encrypt beside, then replace
            target = out / f".{rel}.enc"
            with open(source, "rb") as src, open(target, "xb") as raw:
                hashing = _HashingWriter(raw)
                _encrypt(key, name, src, hashing)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(target, source)
            files[name] = (hashing.digest.hexdigest(), hashing.size)
            continue
        target = out / rel
        with open(source, "rb") as src, open(target, "xb") as raw:
            hashing = _HashingWriter(raw)
            _encrypt(key, name, src, hashing)
            raw.flush()
            os.fsync(raw.fileno())
        files[name] = (hashing.digest.hexdigest(), hashing.size)
        source.unlink()
        if progress is not None:
            progress("encrypting", done, len(sources))
    if prefix == "archive":
        fsync_dir(out / "blobs")
    fsync_dir(out)
    return files


#: The folder of a backup holding copies of SQLite's vector index files.
INDEXES = "indexes"


def _copy_index_files(settings: Settings, db: Database, out: Path) -> Path | None:
    """Copy SQLite's vector index files (derived; see the module docstring) into
    ``out``; ``None`` when there are none (or the vault is on PostgreSQL)."""
    source = settings.data_dir / INDEXES
    if db.backend.name != "sqlite" or not source.is_dir():
        return None
    names = sorted(p for p in source.iterdir()
                   if p.is_file() and not p.name.startswith("."))  # no temp files
    if not names:
        return None
    make_private_dir(out)
    for path in names:
        with contextlib.suppress(FileNotFoundError):  # dropped meanwhile: derived
            shutil.copyfile(path, out / path.name)
            os.chmod(out / path.name, 0o600)
    fsync_dir(out)
    return out


class _HashingWriter:
    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._out.write(data)


def list_backups(root: Path) -> list[BackupInfo]:
    """The complete backups in ``root``, oldest first (damaged ones left out)."""
    found = []
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith("backup-") and path.is_dir():
                with contextlib.suppress(Invalid):
                    found.append(read_backup(path))
    return sorted(found, key=lambda b: (b.created_at, b.path.name))


def prune(root: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` backups in ``root``; returns those removed."""
    removed = [b.path for b in list_backups(root)[:-keep]]
    for path in removed:
        # Renamed first, so a half-removed backup never looks complete.
        doomed = path.with_name(f".{path.name}.removing")
        os.rename(path, doomed)
        shutil.rmtree(doomed)
    return removed


# -- restore ---------------------------------------------------------------------

@dataclass
class RestoreReport:
    backup: BackupInfo
    target: str
    inserted: dict[str, int] = field(default_factory=dict)
    #: SQLite: the replaced data folder, kept aside; PostgreSQL: the
    #: pre-restore backup of the replaced contents.
    kept_aside: Path | None = None


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return bool(parts) and all(p not in ("", ".", "..") for p in parts) and "\\" not in name


def check_backup(path: Path, progress: Progress | None = None) -> BackupInfo:
    """The manifest, and the sha256 and size of every file it lists.

    Raises:
        Invalid: anything missing, damaged or unexpected.
    """
    info = read_backup(path)
    total = info.size
    done = 0
    for name, (sha, size) in sorted(info.files.items()):
        if not _safe_name(name) or not name.startswith(("archive/", f"{INDEXES}/")):
            raise Invalid(f"the backup's manifest lists an unexpected file {name!r}")
        try:
            got = _hash_file(path / name)
        except FileNotFoundError:
            raise Invalid(f"the backup has no {name} (damaged backup)") from None
        if got != (sha, size):
            raise Invalid(f"{name} is damaged: its sha256 or size differs from the manifest's")
        done += size
        if progress is not None:
            progress("checksums", done, total)
    return info


def _decrypt_tree(key: bytes, info: BackupInfo, out: Path) -> Path:
    for name in sorted(info.files):
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(info.path / name, "rb") as src, open(target, "xb") as dst:
            _decrypt(key, name, src, dst)
    return out / "archive"


def restore_backup(path: Path, settings: Settings, *, to: Path | None = None,
                   database_url: str | None = None, force: bool = False,
                   passphrase: bytes | None = None,
                   progress: Progress | None = None) -> RestoreReport:
    """Restore a backup into ``to`` (a SQLite data folder), ``database_url`` (a
    PostgreSQL database), or else the configured vault (see the module docstring).

    Raises:
        Invalid: the backup is damaged, encrypted and no (or a wrong) passphrase
            was given, or a pre-migration backup. Conflict: the target holds
            records and ``force`` is not given.
    """
    info = check_backup(path, progress)
    if info.type != "archive":
        raise Invalid("this is a pre-migration backup of a SQLite file: stop memvault and "
                      "copy its memvault.db into the data folder instead")
    if info.encryption is not None and passphrase is None:
        raise Invalid("this backup is encrypted: give its --passphrase-file")
    key = _unlock(passphrase, info.encryption) if (info.encryption and passphrase) else None
    if to is not None:
        target = revalidate(settings, data_dir=to, database_url=None)
    elif database_url is not None:
        target = revalidate(settings, database_url=database_url)
    else:
        target = settings
    work = Path(tempfile.mkdtemp(prefix=".restore-", dir=path.parent))
    try:
        archive = path / "archive"
        if key is not None:
            archive = _decrypt_tree(key, info, work)
        verify_archive(archive, progress)
        if target.backend == "sqlite":
            indexes = (work if key is not None else path) / INDEXES
            return _restore_sqlite(info, archive, target, force, progress,
                                   indexes if indexes.is_dir() else None)
        return _restore_postgres(info, archive, target, force, passphrase, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _open(settings: Settings) -> Vault:
    from ..vault import Vault

    return Vault(settings, sweep=False)


def _restore_sqlite(info: BackupInfo, archive: Path, target: Settings, force: bool,
                    progress: Progress | None, indexes: Path | None = None) -> RestoreReport:
    if target.database_url and target.sqlite_path.parent.resolve() != target.data_dir.resolve():
        raise Invalid("restore a SQLite vault with --to DATA_DIR (a database_url naming a "
                      "file outside the data folder cannot be swapped)")
    home = target.data_dir.resolve()
    if (home / "memvault.db").exists() and not force and _holds_records(target):
        raise Conflict(f"{home} holds a vault with records: restore into an empty location, "
                       "or pass --force to replace it (the old one is kept aside)")
    stamp = _timestamp(datetime.now(UTC))
    fresh = home.with_name(f"{home.name}.restoring-{uuid.uuid4().hex[:8]}")
    report = RestoreReport(info, str(home))
    try:
        vault = _open(revalidate(target, data_dir=fresh, database_url=None))
        try:
            result = import_archive(vault.db, vault.blobs, archive, progress=progress)
        finally:
            vault.close()
        if indexes is not None:  # checked with the rest by check_backup
            make_private_dir(fresh / INDEXES)
            for path in sorted(indexes.iterdir()):
                shutil.copyfile(path, fresh / INDEXES / path.name)
                os.chmod(fresh / INDEXES / path.name, 0o600)
            fsync_dir(fresh / INDEXES)
        fsync_dir(fresh)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    report.inserted = result.inserted
    # The swap: the new folder is complete; the old one moves aside first.
    if home.exists():
        aside = home.with_name(f"{home.name}.old-{stamp}")
        os.rename(home, aside)
        os.rename(fresh, home)
        if (aside / "backups").is_dir():
            os.rename(aside / "backups", home / "backups")
        if any(aside.iterdir()):
            report.kept_aside = aside
        else:
            aside.rmdir()
    else:
        home.parent.mkdir(parents=True, exist_ok=True)
        os.rename(fresh, home)
    fsync_dir(home.parent)
    return report


def _holds_records(settings: Settings) -> bool:
    from ..backends import backend_for

    backend = backend_for(settings)
    db = Database(backend.create_engine(), backend)
    try:
        return has_records(db)
    finally:
        db.close()


def _restore_postgres(info: BackupInfo, archive: Path, target: Settings, force: bool,
                      passphrase: bytes | None, progress: Progress | None) -> RestoreReport:
    vault = _open(target)
    try:
        report = RestoreReport(info, vault.describe())
        if has_records(vault.db):
            if not force:
                raise Conflict("the target database holds records: restore into an empty "
                               "database, or pass --force to replace its contents (they are "
                               "backed up first)")
            before = create_backup(vault.db, vault.blobs, target, backups_dir(target),
                                   passphrase=passphrase, label="pre-restore")
            report.kept_aside = before.path
            _clear(vault.db)
            try:
                result = import_archive(vault.db, vault.blobs, archive, progress=progress)
            except BaseException:
                _clear(vault.db)
                old = before.path / "archive"
                with tempfile.TemporaryDirectory(dir=before.path.parent) as tmp:
                    if passphrase is not None and before.encryption is not None:
                        old = _decrypt_tree(_unlock(passphrase, before.encryption),
                                            before, Path(tmp))
                    import_archive(vault.db, vault.blobs, old)
                raise
            vault.collect_blobs(full=True)
        else:
            result = import_archive(vault.db, vault.blobs, archive, progress=progress)
        report.inserted = result.inserted
        return report
    finally:
        vault.close()


def _clear(db: Database) -> None:
    """Delete every record of every kind, children first, in one transaction."""
    with db.write() as conn:
        for k in reversed(list(kinds())):
            conn.execute(k.table.delete())


# -- migrations ------------------------------------------------------------------

def has_records(db: Database) -> bool:
    """Whether any table of a record kind holds a row (at any schema revision)."""
    with db.engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names())
        for k in kinds():
            if k.table.name in present and conn.execute(sa.text(
                    f'SELECT 1 FROM "{k.table.name}" LIMIT 1')).first():
                return True
    return False


@functools.lru_cache(maxsize=1)
def _shipped_head() -> str | None:
    return head_revision()


def guard_migration(settings: Settings, db: Database, *,
                    versions: tuple[Path, ...] = ()) -> BackupInfo | None:
    """Before an upgrade: back a SQLite file up, or refuse PostgreSQL without a
    recent backup (see the module docstring). Returns the backup taken, if any.

    Raises:
        MigrationFailed: PostgreSQL, records, pending revisions, no recent backup.
    """
    before = current_revision(db)
    head = head_revision(versions) if versions else _shipped_head()
    if before is None or before == head or not has_records(db):
        return None
    if db.backend.name == "sqlite":
        with db.backend.migration_lock(db.engine):
            return _backup_sqlite_file(settings, db, before)
    if settings.migrate_without_backup or _recent_backup(settings):
        return None
    raise MigrationFailed(
        f"the database holds records and needs schema revisions {before} → {head}, and "
        f"{backups_dir(settings)} holds no backup of it from the last hour: take one with "
        "`memvault backup` (with the memvault version now installed there), or migrate "
        "anyway with `memvault migrate --yes` or MEMVAULT_MIGRATE_WITHOUT_BACKUP=true")


def _recent_backup(settings: Settings) -> bool:
    since = datetime.now(UTC) - RECENT
    me = _database_id(settings)
    return any(b.database == me and b.created_at >= since
               for b in list_backups(backups_dir(settings)))


def _backup_sqlite_file(settings: Settings, db: Database, revision: str) -> BackupInfo:
    root = backups_dir(settings)
    make_private_dir(root)
    now = datetime.now(UTC)
    partial = root / f".backup-{_timestamp(now)}.partial-{uuid.uuid4().hex[:8]}"
    make_private_dir(partial / "archive")
    try:
        copy = partial / "archive" / "memvault.db"
        with contextlib.closing(sqlite3.connect(copy)) as dst:
            raw = db.engine.raw_connection()
            try:
                source = raw.driver_connection
                assert isinstance(source, sqlite3.Connection)
                source.backup(dst)  # consistent, while other processes write
            finally:
                raw.close()
        os.chmod(copy, 0o600)
        with contextlib.closing(sqlite3.connect(copy)) as conn:
            present = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            counts = {k.name: int(conn.execute(f'SELECT count(*) FROM "{k.table.name}"')
                                  .fetchone()[0])
                      for k in kinds() if k.table.name in present}
        info = BackupInfo(path=partial, type="sqlite-file", memvault_version=__version__,
                          schema_revision=revision, backend="sqlite",
                          database=_database_id(settings), created_at=now, counts=counts,
                          files={"archive/memvault.db": _hash_file(copy)})
        _write_manifest(partial, info)
        info.path = _publish(partial, root, f"backup-{_timestamp(now)}-pre-migration")
        return info
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def read_passphrase(path: Path) -> bytes:
    """The passphrase in ``path`` (its first line, without the line ending).

    Raises:
        Invalid: unreadable or empty.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Invalid(f"cannot read the passphrase file {path}: {exc.strerror}") from None
    line = data.splitlines()[0] if data else b""
    if not line:
        raise Invalid(f"the passphrase file {path} is empty")
    return line

