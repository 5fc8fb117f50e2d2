"""Content-addressed blob files under ``<data_dir>/blobs``.

A blob is written to a private temp file, hashed while written, fsynced, and
only then given its final name (``ab/cdef…``) by ``publish`` — which the files
store calls inside the transaction that records the reference, so a concurrent
delete of the last reference cannot remove a file that a new row points at.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import PayloadTooLarge

__all__ = ["BlobStore", "StagedBlob", "fsync_dir"]

_READ = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StagedBlob:
    """A fully written, fsynced temp file awaiting its final name."""

    tmp_path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tmp_path.unlink()


class BlobStore:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.fsync = fsync
        for folder in (root, self.tmp):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:]

    def stage(self, source: BinaryIO | Iterable[bytes], max_bytes: int) -> StagedBlob:
        """Copy ``source`` into a temp file, hashing as it goes.

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
                if self.fsync:
                    os.fsync(out.fileno())
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        return StagedBlob(tmp_path, digest.hexdigest(), size)

    def publish(self, staged: StagedBlob) -> None:
        """Give a staged blob its content address (atomic; same bytes if present)."""
        final = self.path(staged.sha256)
        folder = final.parent
        if not folder.exists():
            folder.mkdir(mode=0o700, exist_ok=True)
            if self.fsync:
                fsync_dir(self.root)
        os.replace(staged.tmp_path, final)
        if self.fsync:
            fsync_dir(folder)

    def remove(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")  # noqa: SIM115 - caller closes

    def iter_bytes(self, sha256: str) -> Iterator[bytes]:
        with self.open(sha256) as fh:
            while block := fh.read(_READ):
                yield block

    def clean_tmp(self, older_than_s: float = 3600) -> None:
        """Drop temp files a crash left between stage and publish.

        Only old ones: another process sharing the data dir may be mid-upload.
        """
        cutoff = time.time() - older_than_s
        for leftover in self.tmp.glob("up-*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except FileNotFoundError:
                pass


def _blocks(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if read is None:
        yield from source
        return
    while block := read(_READ):
        yield block
