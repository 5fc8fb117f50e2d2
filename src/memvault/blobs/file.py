"""Blobs as files under ``<data_dir>/blobs`` (``MEMVAULT_BLOB_STORE=file``, the
default): ``ab/cdef…`` named by sha256, 0600 in 0700 folders, published by an
atomic rename of the fsynced temp file and an fsync of the folder."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.engine import Connection

from .base import PIECE, BlobStore, StagedBlob, fsync_dir, missing

__all__ = ["FileBlobStore"]

_HEX = re.compile(r"^[0-9a-f]+$")


class FileBlobStore(BlobStore):
    name = "file"

    def __init__(self, root: Path, fsync: bool = True) -> None:
        # tmp inside root: publishing is a rename, which must not cross filesystems.
        super().__init__(root / "tmp", fsync_staged=fsync)
        self.root = root
        self.fsync = fsync

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:]

    def local_path(self, sha256: str) -> Path | None:
        return self.path(sha256)

    def publish(self, conn: Connection, staged: StagedBlob) -> None:
        # Always renamed, even when a file is there: it may be a leftover whose
        # row a collector is about to delete, or was removed by hand; the same
        # name always means the same bytes.
        final = self.path(staged.sha256)
        folder = final.parent
        if not folder.exists():
            folder.mkdir(mode=0o700, exist_ok=True)
            if self.fsync:
                fsync_dir(self.root)
        os.replace(staged.tmp_path, final)
        if self.fsync:
            fsync_dir(folder)

    def remove(self, conn: Connection, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    def open(self, sha256: str) -> Iterator[bytes]:
        try:
            fh = open(self.path(sha256), "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise missing(sha256) from None
        return _read(fh)

    def stored(self) -> Iterator[str]:
        for folder in sorted(self.root.iterdir()):
            if folder.name == "tmp" or not folder.is_dir() or len(folder.name) != 2:
                continue
            for leaf in sorted(folder.iterdir()):
                sha = folder.name + leaf.name
                if len(sha) == 64 and _HEX.match(sha):
                    yield sha


def _read(fh: BinaryIO) -> Iterator[bytes]:
    with fh:
        while block := fh.read(PIECE):
            yield block
