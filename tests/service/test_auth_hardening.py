"""Auth hardening over HTTP: the reserved local user, capped hashing, failed-login
limits, loopback-only serving with auth disabled, and logs without secrets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from fastapi.testclient import TestClient

import memvault
from memvault import Settings, Vault
from memvault.service import create_app
from memvault.service.hosts import is_loopback_address, is_loopback_host

from .conftest import register


def _problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body


def _login(client: TestClient, email: str, password: str) -> Any:
    return client.post("/api/auth/login", json={"email": email, "password": password})


def test_the_local_users_address_cannot_be_registered(client: TestClient) -> None:
    r = client.post("/api/auth/register",
                    json={"email": "local@memvault.invalid", "password": "password-1"})
    body = _problem(r, 422)
    assert body["errors"][0]["field"] == "email"


def test_auth_disabled_never_adopts_a_registered_user(settings: Settings) -> None:
    with memvault.open(settings, auth="disabled") as vault, \
            TestClient(create_app(vault=vault), base_url="http://localhost") as client:
        _problem(client.post("/api/auth/register", json={
            "email": "local@memvault.invalid", "password": "password-1"}), 422)
        me = client.get("/api/auth/me").json()
        assert me["email"] == "local@memvault.invalid" and me["name"] == "local"


@pytest.fixture
def strict(settings: Settings) -> Iterator[tuple[Vault, TestClient]]:
    with memvault.open(settings, login_max_failures_per_account=3,
                       login_max_failures_per_address=6, max_concurrent_hashes=2,
                       hash_wait_ms=0) as vault, \
            TestClient(create_app(vault=vault)) as client:
        yield vault, client


def test_failed_logins_get_429_with_retry_after(strict: tuple[Vault, TestClient]) -> None:
    _vault, client = strict
    register(client, "m@example.com")  # its successful login clears nothing but its own
    for _ in range(3):
        _problem(_login(client, "m@example.com", "wrong-password"), 401)
    r = _login(client, "m@example.com", "password-1")  # locked: even the right password
    assert _problem(r, 429)["code"] == "too_many_requests"
    assert 1 <= int(r.headers["retry-after"]) <= 900
    # The address (Starlette's "testclient") has 3 of its 6: three more, on any accounts.
    for n in range(3):
        _problem(_login(client, f"other{n}@example.com", "wrong-password"), 401)
    register_r = client.post("/api/auth/register",
                             json={"email": "n@example.com", "password": "password-1"})
    assert register_r.status_code == 201
    _problem(_login(client, "n@example.com", "password-1"), 429)


def test_the_client_address_is_what_the_route_counts(settings: Settings) -> None:
    with memvault.open(settings, login_max_failures_per_address=2) as vault, \
            TestClient(create_app(vault=vault), client=("203.0.113.5", 4000)) as far, \
            TestClient(create_app(vault=vault), client=("203.0.113.6", 4000)) as near:
        register(near, "o@example.com")
        for n in range(2):
            _problem(_login(far, f"x{n}@example.com", "wrong-password"), 401)
        _problem(_login(far, "o@example.com", "password-1"), 429)
        assert _login(near, "o@example.com", "password-1").status_code == 200


def test_saturated_hashing_is_503_with_retry_after(strict: tuple[Vault, TestClient]) -> None:
    vault, client = strict
    register(client, "p@example.com")
    with contextlib.ExitStack() as taken:
        for _ in range(vault.settings.max_concurrent_hashes):
            taken.enter_context(vault.users._hash_slot())
        for r in (client.post("/api/auth/register",
                              json={"email": "q@example.com", "password": "password-1"}),
                  _login(client, "p@example.com", "password-1")):
            _problem(r, 503)
            assert r.headers["retry-after"] == "1"
    assert _login(client, "p@example.com", "password-1").status_code == 200


# --- loopback-only serving with auth disabled ---------------------------------------

@pytest.mark.parametrize(("host", "ok"), [
    ("localhost", True), ("localhost:8000", True), ("LOCALHOST.", True),
    ("app.localhost:3000", True), ("127.0.0.1", True), ("127.1.2.3:80", True),
    ("[::1]", True), ("[::1]:8000", True),
    ("evil.example", False), ("localhost.evil.example", False), ("evil-localhost", False),
    ("10.0.0.1", False), ("0.0.0.0:8000", False), ("[::2]:80", False), ("::1", False),
    ("localhost:abc", False), ("localhost:", False), ("[::1", False), ("", False),
    ("127.0.0.1:८०", False),
])
def test_loopback_host_names(host: str, ok: bool) -> None:
    assert is_loopback_host(host) is ok


def test_loopback_addresses() -> None:
    assert all(map(is_loopback_address, ["127.0.0.1", "::1", "::ffff:127.0.0.1", "localhost"]))
    assert not any(map(is_loopback_address, ["0.0.0.0", "192.168.1.5", "::", "testserver"]))


@pytest.fixture
def local(settings: Settings) -> Iterator[TestClient]:
    with memvault.open(settings, auth="disabled") as vault, \
            TestClient(create_app(vault=vault), base_url="http://localhost") as client:
        yield client


def test_auth_disabled_refuses_foreign_host_names(local: TestClient) -> None:
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "ui.localhost"):
        assert local.get("/api/entities", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "192.168.1.5"):
        r = local.get("/api/entities", headers={"Host": host})
        assert _problem(r, 403)["code"] == "host_not_allowed"
    # refused before anything is written
    r = local.post("/api/entities", json={"entity_id": "e", "entity_name": "E"},
                   headers={"Host": "evil.example"})
    _problem(r, 403)
    assert local.get("/api/entities/e").status_code == 404


def test_auth_disabled_refuses_a_non_loopback_bound_address(settings: Settings) -> None:
    # TestClient reports the URL's host as the bound address (ASGI scope["server"]).
    with memvault.open(settings, auth="disabled") as vault, \
            TestClient(create_app(vault=vault), base_url="http://192.168.1.5:8000") as client:
        r = client.get("/api/entities", headers={"Host": "localhost"})
        assert "loopback address" in _problem(r, 403)["detail"]


def test_a_real_server_with_auth_disabled_checks_host_names(tmp_path: Path) -> None:
    """uvicorn's own scope["server"] and Host handling; the backend plays no part,
    so one (SQLite) is enough."""
    from ..e2e.server import Server

    settings = memvault.load_settings(data_dir=tmp_path / "data", password_hash="owasp")
    with Server(settings, auth="disabled") as server, server.client() as http:
        ok = http.get("/api/auth/me", headers={"Host": f"localhost:{server.port}"})
        assert ok.status_code == 200 and ok.json()["email"] == "local@memvault.invalid"
        rebound = http.get("/api/auth/me", headers={"Host": "evil.example"})
        assert _problem(rebound, 403)["code"] == "host_not_allowed"


def test_auth_required_serves_any_host_name(client: TestClient) -> None:
    assert client.get("/health", headers={"Host": "memvault.example.com"}).status_code == 200


# --- no secrets in logs ---------------------------------------------------------------

@pytest.fixture
def unconfigured_structlog() -> Iterator[None]:
    """structlog as an embedding app leaves it: never configured."""
    was = structlog.is_configured()
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        if was:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


class _Exploding:
    """Stands in for the password hasher: an unexpected error while a password
    is held in the caller's locals."""

    def verify(self, _hash: str, _password: str) -> bool:
        raise RuntimeError("hasher exploded")

    def hash(self, _password: str) -> str:
        raise RuntimeError("hasher exploded")


def test_logs_of_an_app_from_create_app_hold_no_secrets(
        vault: Vault, unconfigured_structlog: None, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    password = "Sup3r-secret-pw-4711"
    with TestClient(create_app(vault=vault), raise_server_exceptions=False) as client:
        assert structlog.is_configured()
        headers = register(client, "r@example.com", password)
        token = headers["Authorization"].removeprefix("Bearer ")
        assert client.get("/api/auth/me", headers=headers).status_code == 200
        monkeypatch.setattr(vault.users, "_hasher", _Exploding())
        _problem(_login(client, "r@example.com", password), 500)
        _problem(client.post("/api/auth/register",
                             json={"email": "s@example.com", "password": password}), 500)
        assert client.post("/api/auth/logout", headers=headers).status_code == 204
    out, err = capsys.readouterr()
    logged = out + err
    assert "unhandled error" in logged and "RuntimeError: hasher exploded" in logged
    assert password not in logged and token not in logged


def test_secret_keys_are_redacted(settings: Settings, unconfigured_structlog: None,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from memvault.logs import configure_logging

    for log_json in (False, True):
        configure_logging(memvault.load_settings(data_dir=settings.data_dir,
                                                 log_json=log_json))
        structlog.get_logger("t").info(
            "request", password="pw-123456", access_token="tok-123456",
            headers={"Authorization": "Bearer hdr-123456", "accept": "text/plain"},
            raw=[(b"authorization", b"Bearer raw-123456")], persist_chunk_tokens=60)
        logged = capsys.readouterr().err
        assert "text/plain" in logged and "60" in logged
        for secret in ("pw-123456", "tok-123456", "hdr-123456", "raw-123456"):
            assert secret not in logged
