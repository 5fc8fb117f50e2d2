"""Blobs in an S3-compatible bucket (``MEMVAULT_BLOB_STORE=s3://bucket/prefix``):
objects ``<prefix>/ab/cdef…`` named by sha256, shared by every replica.

Credentials and region come from the usual AWS variables and files, read by
boto3; ``MEMVAULT_S3_ENDPOINT_URL`` points at a store other than AWS (MinIO,
Ceph, R2, …), addressed path-style. A successful PUT is durable, so an object
is published before the row that references it commits. Errors of the store
become ``Unavailable`` (503) here, with the cause in the log only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.engine import Connection

from ..errors import ConfigError, Unavailable
from .base import PIECE, BlobStore, StagedBlob, missing

__all__ = ["S3BlobStore", "parse_s3_location"]

log = structlog.get_logger(__name__)
_KEY = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{62})$")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


def parse_s3_location(location: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix/")`` (prefix may be empty)."""
    rest = location.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3BlobStore(BlobStore):
    name = "s3"

    def __init__(self, location: str, tmp: Path, endpoint_url: str | None = None) -> None:
        super().__init__(tmp, fsync_staged=False)  # uploaded from the temp file, then dropped
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        self.bucket, self.prefix = parse_s3_location(location)
        config = Config(connect_timeout=10, read_timeout=60,
                        retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path"} if endpoint_url else {})
        self._client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, config=config)

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if _is_not_found(exc) or _code(exc) in ("403", "AccessDenied"):
                raise ConfigError(f"invalid setting MEMVAULT_BLOB_STORE: bucket {self.bucket!r} "
                                  f"does not exist or is not accessible") from None
            raise _unavailable(exc) from exc

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{sha256[:2]}/{sha256[2:]}"

    def _exists(self, sha256: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except Exception as exc:
            if _is_not_found(exc):
                return False
            raise _unavailable(exc) from exc
        return True

    def publish(self, conn: Connection, staged: StagedBlob) -> None:
        if self._exists(staged.sha256):
            return
        try:
            # Multipart for large files; returns once the object is stored.
            self._client.upload_file(str(staged.tmp_path), self.bucket, self.key(staged.sha256))
        except Exception as exc:
            raise _unavailable(exc) from exc

    def remove(self, conn: Connection, sha256: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.key(sha256))
        except Exception as exc:
            if not _is_not_found(exc):
                raise _unavailable(exc) from exc

    def open(self, sha256: str) -> Iterator[bytes]:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
        except Exception as exc:
            if _is_not_found(exc):
                raise missing(sha256) from None
            raise _unavailable(exc) from exc
        return _stream(body)

    def stored(self) -> Iterator[str]:
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    found = _KEY.match(item["Key"][len(self.prefix):])
                    if found:
                        yield found[1] + found[2]
        except Exception as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        self._client.close()


def _stream(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(PIECE)
    except Exception as exc:
        raise _unavailable(exc) from exc
    finally:
        body.close()


def _code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    return str(response.get("Error", {}).get("Code"))


def _is_not_found(exc: Exception) -> bool:
    return _code(exc) in _NOT_FOUND | {"NoSuchBucket"}


def _unavailable(exc: Exception) -> Unavailable:
    # The store's own text (endpoint, bucket, request ids) goes to the log only.
    log.warning("blob store request failed", error=f"{type(exc).__name__}: {exc}")
    return Unavailable("the blob store is unavailable; try again")
