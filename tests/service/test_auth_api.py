"""``/api/auth`` and the bearer-token wall around every other route."""

from __future__ import annotations

from fastapi.testclient import TestClient

from memvault import Settings, Vault
from memvault.service import create_app

from .conftest import register


def _is_problem(r, status: int) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and {"type", "title", "detail"} <= body.keys()


def test_register_login_me_logout(client: TestClient) -> None:
    r = client.post("/api/auth/register",
                    json={"email": "Ann@Example.com", "password": "password-1", "name": "Ann"})
    assert r.status_code == 201
    assert set(r.json()) == {"id", "email", "name", "created_at"}
    assert r.json()["email"] == "ann@example.com"
    r = client.post("/api/auth/login", json={"email": "ann@example.com", "password": "password-1"})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["access_token"] and body["expires_at"]
    h = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.get("/api/auth/me", headers=h).json()["name"] == "Ann"
    assert client.post("/api/auth/logout", headers=h).status_code == 204
    _is_problem(client.get("/api/auth/me", headers=h), 401)


def test_register_errors(client: TestClient) -> None:
    client.post("/api/auth/register", json={"email": "b@example.com", "password": "password-1"})
    _is_problem(client.post("/api/auth/register",
                            json={"email": "B@EXAMPLE.com", "password": "password-2"}), 409)
    r = client.post("/api/auth/register", json={"email": "c@example.com", "password": "short"})
    _is_problem(r, 422)
    assert "password" in r.text
    r = client.post("/api/auth/register", json={"email": "nope", "password": "password-1"})
    _is_problem(r, 422)
    assert "email" in r.text
    _is_problem(client.post("/api/auth/register", json={"email": "d@example.com"}), 422)


def test_login_failures_look_alike(client: TestClient) -> None:
    register(client, "e@example.com")
    wrong = client.post("/api/auth/login", json={"email": "e@example.com", "password": "wrong-pw"})
    unknown = client.post("/api/auth/login",
                          json={"email": "x@example.com", "password": "password-1"})
    _is_problem(wrong, 401)
    _is_problem(unknown, 401)
    assert wrong.json()["detail"] == unknown.json()["detail"]


def test_every_api_route_needs_a_token(client: TestClient) -> None:
    for method, path in [("GET", "/api/entities"), ("POST", "/api/entities"),
                         ("GET", "/api/entities/x"), ("GET", "/api/entities/x/files"),
                         ("GET", "/api/conversations"), ("POST", "/api/conversations"),
                         ("GET", "/api/messages/x"), ("GET", "/api/messages/x/stream"),
                         ("POST", "/api/chat/sessions"), ("GET", "/api/auth/me")]:
        r = client.request(method, path, json={})
        _is_problem(r, 401)
        assert r.headers.get("www-authenticate") == "Bearer"
    bad = {"Authorization": "Bearer not-a-real-token"}
    _is_problem(client.get("/api/entities", headers=bad), 401)


def test_health_and_ready_need_no_token(client: TestClient, auth: dict[str, str]) -> None:
    client.post("/api/entities", json={"entity_name": "E"}, headers=auth)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["version"]
    assert health["backend"] in ("sqlite", "postgresql")
    assert "counts" not in health  # issue 10: probes count nothing (see test_system.py)
    assert client.get("/ready").json()["status"] == "ready"


def test_auth_disabled_acts_as_one_local_user(settings: Settings) -> None:
    import memvault

    with memvault.open(settings.model_copy(update={"auth": "disabled"})) as vault, \
            TestClient(create_app(vault=vault), base_url="http://localhost") as client:
        r = client.post("/api/entities", json={"entity_id": "e", "entity_name": "E"})
        assert r.status_code == 201
        assert client.get("/api/entities/e").status_code == 200


def test_openapi_is_served(client: TestClient, vault: Vault) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/entities" in spec["paths"] and "/api/conversations" in spec["paths"]
