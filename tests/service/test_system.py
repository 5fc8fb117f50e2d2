"""Probes, request ids, and driver errors kept out of responses (issue 10, faults 8-9)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import memvault
from memvault import Vault

LEAKS = ("psycopg", "sqlite3", "violates", "boom-marker", "no such table", "relation",
         "Traceback", "connection", "port 1")


def _no_driver_text(text: str) -> None:
    for word in LEAKS:
        assert word.lower() not in text.lower(), (word, text)


@contextmanager
def _unreachable(vault: Vault, backend: str, tmp_path: Path) -> Iterator[None]:
    """Point the vault at a database that cannot be reached (a real driver failure)."""
    url = ("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"
           if backend == "postgresql" else f"sqlite:///{tmp_path}/missing/dir/db.sqlite")
    good, vault.db.engine = vault.db.engine, sa.create_engine(url)
    try:
        yield
    finally:
        vault.db.engine.dispose()
        vault.db.engine = good


def test_health_and_ready_say_status_version_backend_only(client: TestClient, vault: Vault,
                                                          auth: dict[str, str]) -> None:
    client.post("/api/entities", json={"entity_name": "E"}, headers=auth)
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": memvault.__version__, "backend": vault.backend}
    r = client.get("/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "version": memvault.__version__,
                        "backend": vault.backend}


def test_health_needs_no_database_and_ready_hides_the_cause(
        client: TestClient, vault: Vault, backend: str, tmp_path: Path) -> None:
    with _unreachable(vault, backend, tmp_path):
        assert client.get("/health").status_code == 200  # no round trip: constant time
        r = client.get("/ready")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "version": memvault.__version__,
                        "backend": vault.backend, "reason": "database unavailable"}
    _no_driver_text(r.text)
    assert client.get("/ready").status_code == 200


def test_request_ids(client: TestClient, auth: dict[str, str]) -> None:
    r = client.get("/health")
    generated = r.headers["X-Request-ID"]
    assert len(generated) >= 16
    assert client.get("/health").headers["X-Request-ID"] != generated
    r = client.get("/health", headers={"X-Request-ID": "lb-7f3a.42"})
    assert r.headers["X-Request-ID"] == "lb-7f3a.42"
    for insane in (b"x" * 200, b"a b", b"<script>", b"", "é".encode()):
        r = client.get("/health", headers={"X-Request-ID": insane})  # type: ignore[dict-item]
        assert r.headers["X-Request-ID"].encode() not in (insane, b""), insane
    r = client.get("/api/entities/nope", headers={**auth, "X-Request-ID": "req-1"})
    assert r.status_code == 404
    assert r.headers["X-Request-ID"] == "req-1" and r.json()["request_id"] == "req-1"
    r = client.post("/api/entities", headers={**auth, "X-Request-ID": "req-2"}, json={})
    assert r.status_code == 422 and r.json()["request_id"] == "req-2"
    r = client.get("/api/entities", headers={"X-Request-ID": "req-3"})
    assert r.status_code == 401 and r.headers["X-Request-ID"] == "req-3"


def _install_failing_trigger(vault: Vault, backend: str) -> None:
    """A trigger that refuses every new message with a driver error whose text
    (``boom-marker``) must not reach the client."""
    with vault.db.engine.begin() as conn:
        if backend == "postgresql":
            conn.execute(sa.text(
                "CREATE FUNCTION mv_boom() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'boom-marker violates check' USING ERRCODE = '23514'; "
                "END $$ LANGUAGE plpgsql"))
            conn.execute(sa.text("CREATE TRIGGER mv_boom BEFORE INSERT ON messages "
                                 "FOR EACH ROW EXECUTE FUNCTION mv_boom()"))
        else:
            conn.execute(sa.text("CREATE TRIGGER mv_boom BEFORE INSERT ON messages BEGIN "
                                 "SELECT RAISE(ABORT, 'boom-marker violates check'); END"))


def test_driver_errors_become_generic_problems(client: TestClient, vault: Vault, backend: str,
                                               auth: dict[str, str],
                                               capfd: pytest.CaptureFixture[str]) -> None:
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    _install_failing_trigger(vault, backend)
    capfd.readouterr()
    r = client.post(f"/api/conversations/{cid}/messages", json={"role": "user", "content": "x"},
                    headers={**auth, "X-Request-ID": "req-boom"})
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"] == "constraint violated"
    assert r.headers["X-Request-ID"] == "req-boom" and r.json()["request_id"] == "req-boom"
    _no_driver_text(r.text)
    # The driver's text is in the log (the service's stderr), with the request id.
    logged = [line for line in capfd.readouterr().err.splitlines() if "database error" in line]
    assert logged and "boom-marker" in logged[0] and "req-boom" in logged[0]


def test_unexpected_errors_carry_the_request_id(client: TestClient, vault: Vault,
                                                auth: dict[str, str]) -> None:
    """A table gone under the service: a 5xx (503 or 500 by driver), generic either way."""
    with vault.db.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE entities RENAME TO entities_gone"))
    raw = TestClient(client.app, raise_server_exceptions=False)  # the app as served
    r = raw.get("/api/entities", headers={**auth, "X-Request-ID": "req-gone"})
    assert r.status_code >= 500
    assert r.headers["X-Request-ID"] == "req-gone" and r.json()["request_id"] == "req-gone"
    _no_driver_text(r.text)
    assert "entities_gone" not in r.text


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_probes_are_in_the_schema_without_counts(client: TestClient, path: str) -> None:
    schema = client.get("/openapi.json").json()
    ref = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
    name = ref["schema"]["$ref"].rsplit("/", 1)[1]
    assert "counts" not in schema["components"]["schemas"][name]["properties"]
