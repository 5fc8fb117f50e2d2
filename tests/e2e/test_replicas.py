"""Two replicas: ``memvault serve`` processes with different data dirs on one
PostgreSQL database serve each other's uploads when blobs are shared —
``MEMVAULT_BLOB_STORE=database`` or an ``s3://`` bucket (a real S3-protocol
server, moto, run by the suite on loopback)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

import memvault
from memvault.blobs.s3 import parse_s3_location

from ..conftest import BACKENDS, PgDatabases
from .server import Server, login

pytestmark = pytest.mark.skipif("postgresql" not in BACKENDS,
                                reason="replicas share a PostgreSQL database")


def _local_blobs(data_dir: Path) -> list[Path]:
    """Files a replica keeps under its own data dir's blob folder."""
    return [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]


@pytest.mark.parametrize("store", ["database", "s3"])
def test_replicas_serve_each_others_files(store: str, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    dbs = PgDatabases(request.getfixturevalue("pg_url"))
    url = dbs.create()
    extra: dict[str, Any] = {"blob_store": "database"}
    s3_client: Any = None
    if store == "s3":
        extra = {"blob_store": request.getfixturevalue("s3_blob_store"),
                 "s3_endpoint_url": request.getfixturevalue("s3_endpoint")}
        s3_client = request.getfixturevalue("s3_client")

    def stored() -> int:
        """Blobs in the shared store, counted behind memvault's back."""
        if s3_client is not None:
            bucket, prefix = parse_s3_location(extra["blob_store"])
            listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)
            return int(listing["KeyCount"])
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(DISTINCT sha256) FROM blob_parts").fetchone()
            assert row is not None
            return int(row[0])

    settings = {name: memvault.load_settings(data_dir=tmp_path / name / "data",
                                             database_url=url, password_hash="owasp")
                for name in ("a", "b")}
    try:
        with Server(settings["a"], **extra) as a, Server(settings["b"], **extra) as b, \
                a.client() as on_a, b.client() as on_b:
            auth = login(on_a, "replicas@example.com")  # tokens live in the database
            assert on_a.post("/api/entities", headers=auth, json={
                "entity_id": "shared", "entity_name": "Shared"}).status_code == 201
            payload = os.urandom((2 << 20) + 12345)  # three pieces
            up = on_a.post("/api/entities/shared/files", headers=auth,
                           files=[("files", ("report.pdf", payload, "application/pdf"))])
            assert up.status_code == 201, up.text
            doc = up.json()["items"][0]
            content = f"/api/entities/shared/files/{doc['doc_id']}/content"

            got = on_b.get(content, headers=auth)
            assert got.status_code == 200, got.text
            assert got.content == payload
            assert got.headers["etag"] == f'"{doc["sha256"]}"'
            assert got.headers["content-type"] == "application/pdf"
            assert stored() == 1
            assert [_local_blobs(s.data_dir) for s in settings.values()] == [[], []]

            assert on_b.delete(f"/api/entities/shared/files/{doc['doc_id']}",
                               headers=auth).status_code == 204
            assert on_a.get(content, headers=auth).status_code == 404
            assert on_a.get(f"/api/entities/shared/files/{doc['doc_id']}",
                            headers=auth).status_code == 404
            assert stored() == 0  # removed after the delete committed, before the 204
    finally:
        dbs.drop_all()
