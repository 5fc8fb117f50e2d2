"""Blobs kept in the database itself (``MEMVAULT_BLOB_STORE=database``): the
``blob_parts`` table, 1 MiB pieces keyed by ``(sha256, part)``, written inside
the transaction that records the reference and read back one piece at a time.

For deployments with PostgreSQL and no object storage (every replica sees every
blob), and allowed on SQLite. Nothing is kept on local disk but staged uploads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..backends.base import Database
from ..backends.schema import blob_parts
from .base import PIECE, BlobStore, StagedBlob, missing

__all__ = ["DatabaseBlobStore"]


class DatabaseBlobStore(BlobStore):
    name = "database"

    def __init__(self, db: Database, tmp: Path) -> None:
        # The database makes the bytes durable; the staged copy is read once.
        super().__init__(tmp, fsync_staged=False)
        self._db = db

    def publish(self, conn: Connection, staged: StagedBlob) -> None:
        # Parts are written in the transaction that holds the ``blobs`` row, so
        # a blob has all its parts or none: part 0 (always written, even for
        # empty content) tells which.
        present = conn.execute(sa.select(blob_parts.c.part).where(
            blob_parts.c.sha256 == staged.sha256, blob_parts.c.part == 0)).first()
        if present is not None:
            return
        with open(staged.tmp_path, "rb") as fh:
            part = 0
            while True:
                data = fh.read(PIECE)
                if not data and part:
                    break
                conn.execute(blob_parts.insert().values(sha256=staged.sha256, part=part,
                                                        data=data))
                part += 1

    def remove(self, conn: Connection, sha256: str) -> None:
        conn.execute(blob_parts.delete().where(blob_parts.c.sha256 == sha256))

    def _part(self, sha256: str, part: int) -> bytes | None:
        with self._db.read() as conn:
            data = conn.execute(sa.select(blob_parts.c.data).where(
                blob_parts.c.sha256 == sha256, blob_parts.c.part == part)).scalar_one_or_none()
        return None if data is None else bytes(data)

    def open(self, sha256: str) -> Iterator[bytes]:
        first = self._part(sha256, 0)
        if first is None:
            raise missing(sha256)
        return self._rest(sha256, first)

    def _rest(self, sha256: str, first: bytes) -> Iterator[bytes]:
        # One short read per piece: a slow client never holds a connection.
        if first:
            yield first
        part = 1
        while (data := self._part(sha256, part)) is not None:
            yield data
            part += 1

    def stored(self) -> Iterator[str]:
        after = ""
        while True:
            with self._db.read() as conn:
                batch = conn.execute(
                    sa.select(blob_parts.c.sha256).where(blob_parts.c.part == 0,
                                                         blob_parts.c.sha256 > after)
                    .order_by(blob_parts.c.sha256).limit(500)).scalars().all()
            if not batch:
                return
            yield from batch
            after = batch[-1]
