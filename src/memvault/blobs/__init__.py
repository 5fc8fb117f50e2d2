"""Content-addressed blob storage behind one ``BlobStore`` interface.

``MEMVAULT_BLOB_STORE`` chooses where the bytes live: ``file`` (the default,
under ``<data_dir>/blobs``), ``database`` (the ``blob_parts`` table) or
``s3://bucket/prefix``. Every store stages uploads locally the same way and
shares content addressing, reference counts (``stores/files.py``) and
after-commit removal.
"""

from __future__ import annotations

from ..backends.base import Database
from ..settings import Settings
from .base import PIECE, BlobStore, StagedBlob, fsync_dir
from .database import DatabaseBlobStore
from .file import FileBlobStore
from .s3 import S3BlobStore

__all__ = ["PIECE", "BlobStore", "DatabaseBlobStore", "FileBlobStore", "S3BlobStore",
           "StagedBlob", "fsync_dir", "open_blob_store"]


def open_blob_store(settings: Settings, db: Database) -> BlobStore:
    """The blob store ``settings.blob_store`` names (validated by ``Settings``),
    checked usable.

    Raises:
        ConfigError: the configured bucket does not exist or is refused.
        Unavailable: the store cannot be reached.
    """
    root = settings.data_dir / "blobs"
    store: BlobStore
    if settings.blob_store == "database":
        store = DatabaseBlobStore(db, root / "tmp")
    elif settings.blob_store.startswith("s3://"):
        store = S3BlobStore(settings.blob_store, root / "tmp", settings.s3_endpoint_url)
    else:
        store = FileBlobStore(root, fsync=settings.durability == "full")
    try:
        store.check()
    except BaseException:
        store.close()
        raise
    return store
