"""The ``BlobStore`` interface and the local staging every store shares.

Blobs are content-addressed: a blob's name is the sha256 of its bytes. An upload
is first *staged* to a private temp file under ``<data_dir>/blobs/tmp`` (hashed
while written, refused beyond the size limit with nothing kept), then
*published* by the files store inside the write transaction that records the
reference, right after the upsert that locks the ``blobs`` row, so a collector
of the same blob (which takes the same lock) cannot remove bytes a new row
needs. Bytes are removed only by ``remove``, inside the collector's transaction
that deletes a ``blobs`` row whose refcount is 0 (see ``stores/files.py``).

Stores differ only in where published bytes live: ``file.py`` (the data dir),
``database.py`` (the ``blob_parts`` table), ``s3.py`` (an S3-compatible bucket).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.engine import Connection

from ..errors import MemvaultError, PayloadTooLarge

__all__ = ["BlobStore", "PIECE", "StagedBlob", "fsync_dir", "make_private_dir", "missing"]

#: Size of the pieces blobs are read, streamed and (in the database) stored in.
PIECE = 1 << 20


def missing(sha256: str) -> MemvaultError:
    """The error for a referenced blob whose bytes are not in the store (lost,
    or removed by hand): a 500, since the database promises bytes it lacks."""
    return MemvaultError(f"the stored bytes of blob {sha256[:12]}… are missing")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) 0700, and make it 0700 if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


@dataclass
class StagedBlob:
    """A fully written temp file, hashed, awaiting publication."""

    tmp_path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tmp_path.unlink()


class BlobStore(abc.ABC):
    """Content-addressed bytes. Implementations publish and remove only inside
    the write transaction (``conn``) that holds the blob's ``blobs`` row lock."""

    #: ``file``, ``database`` or ``s3``.
    name: str = "abstract"

    def __init__(self, tmp: Path, *, fsync_staged: bool) -> None:
        self.tmp = tmp
        self._fsync_staged = fsync_staged
        make_private_dir(tmp.parent)
        make_private_dir(tmp)

    # -- staging (local, shared by every store) -------------------------------

    def stage(self, source: BinaryIO | Iterable[bytes], max_bytes: int) -> StagedBlob:
        """Copy ``source`` into a private temp file, hashing as it goes.

        Raises:
            PayloadTooLarge: more than ``max_bytes``; the temp file is removed.
        """
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="up-")  # created 0600
        tmp_path = Path(name)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for block in _blocks(source):
                    size += len(block)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"file is larger than {max_bytes} bytes")
                    digest.update(block)
                    out.write(block)
                out.flush()
                if self._fsync_staged:
                    os.fsync(out.fileno())
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        return StagedBlob(tmp_path, digest.hexdigest(), size)

    def clean_tmp(self, older_than_s: float = 3600) -> int:
        """Drop temp files a crash left between stage and publish; returns how many.

        Only old ones: another process sharing the data dir may be mid-upload.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for leftover in self.tmp.glob("up-*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    # -- where the bytes live ----------------------------------------------------

    @abc.abstractmethod
    def publish(self, conn: Connection, staged: StagedBlob) -> None:
        """Make ``staged``'s bytes available under their sha256, durably, before
        ``conn`` commits; a no-op when they are already there. The staged temp
        file may be consumed."""

    @abc.abstractmethod
    def remove(self, conn: Connection, sha256: str) -> None:
        """Remove a blob's bytes (absent is fine), inside the transaction on
        ``conn`` that deletes its unreferenced ``blobs`` row."""

    @abc.abstractmethod
    def open(self, sha256: str) -> Iterator[bytes]:
        """The blob's bytes in pieces. The first piece is fetched before this
        returns, so a missing blob raises here, not half-way through a response.

        Raises:
            MemvaultError: the store does not have the bytes (see ``missing``).
            Unavailable: the store cannot be reached.
        """

    @abc.abstractmethod
    def stored(self) -> Iterator[str]:
        """The sha256 of every blob whose bytes are in the store (a full scan,
        for garbage collection of orphans)."""

    def check(self) -> None:  # noqa: B027 - optional: local stores need no check
        """Verify at open that the store is usable.

        Raises:
            ConfigError: the configured location does not exist or is refused.
            Unavailable: the store cannot be reached.
        """

    def local_path(self, sha256: str) -> Path | None:
        """A file holding the blob's bytes, when the store keeps them locally."""
        return None

    def read(self, sha256: str) -> bytes:
        return b"".join(self.open(sha256))

    def close(self) -> None:  # noqa: B027 - optional: most stores hold nothing
        """Release connections or clients."""


def _blocks(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if read is None:
        yield from source
        return
    while block := read(PIECE):
        yield block
