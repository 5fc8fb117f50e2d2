"""``/api/cache``: the calling user's cache namespaces over HTTP (on the default
tier: the vault's database, on both backends)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from memvault import Vault

from .conftest import register


def test_put_get_delete(client: TestClient, auth: dict[str, str]) -> None:
    r = client.get("/api/cache/api/quotes:AAPL", headers=auth)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = client.put("/api/cache/api/quotes:AAPL", headers=auth,
                   json={"value": {"price": 187.5, "tags": ["x"]}, "ttl_s": 60})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["key"] == "quotes:AAPL" and body["value"] == {"price": 187.5, "tags": ["x"]}
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(seconds=55) < expires - datetime.now(UTC) <= timedelta(seconds=60)
    r = client.get("/api/cache/api/quotes:AAPL", headers=auth)
    assert r.status_code == 200 and r.json() == body
    # no ttl: no expiry; null is a value; keys may hold slashes
    r = client.put("/api/cache/api/a/b", headers=auth, json={"value": None})
    assert r.status_code == 200 and r.json() == {"key": "a/b", "value": None, "expires_at": None}
    assert client.get("/api/cache/api/a/b", headers=auth).json()["value"] is None
    assert client.delete("/api/cache/api/a/b", headers=auth).status_code == 204
    assert client.get("/api/cache/api/a/b", headers=auth).status_code == 404
    assert client.delete("/api/cache/api/a/b", headers=auth).status_code == 204


def test_clear_and_stats(client: TestClient, auth: dict[str, str]) -> None:
    for key in ("one", "two"):
        client.put(f"/api/cache/econ/{key}", headers=auth, json={"value": key})
    client.put("/api/cache/other/one", headers=auth, json={"value": 1})
    client.get("/api/cache/econ/one", headers=auth)
    client.get("/api/cache/econ/missing", headers=auth)
    r = client.get("/api/cache/econ", headers=auth)
    assert r.status_code == 200
    assert r.json() == {"namespace": "econ", "hits": 1, "misses": 1, "hit_ratio": 0.5,
                        "sets": 2, "evictions": 0}
    assert client.delete("/api/cache/econ", headers=auth).status_code == 204
    assert client.get("/api/cache/econ/one", headers=auth).status_code == 404
    assert client.get("/api/cache/other/one", headers=auth).json()["value"] == 1


def test_another_users_cache_is_invisible(client: TestClient, auth: dict[str, str],
                                          vault: Vault) -> None:
    other = register(client, "other@example.com")
    client.put("/api/cache/shared-name/k", headers=auth, json={"value": "mine"})
    assert client.get("/api/cache/shared-name/k", headers=other).status_code == 404
    client.put("/api/cache/shared-name/k", headers=other, json={"value": "theirs"})
    assert client.delete("/api/cache/shared-name", headers=other).status_code == 204
    assert client.get("/api/cache/shared-name/k", headers=auth).json()["value"] == "mine"
    assert client.get("/api/cache/shared-name", headers=other).json()["sets"] == 1
    # the application-wide namespace of the same name is another cache again
    assert vault.cache("shared-name").get("k") is None
    assert client.get("/api/cache/shared-name/k").status_code == 401


def test_bad_input(client: TestClient, auth: dict[str, str], vault: Vault) -> None:
    for path in ("/api/cache/bad%20name/k", "/api/cache/" + "n" * 201 + "/k",
                 "/api/cache/bad%20name"):
        r = client.get(path, headers=auth)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["code"] == "invalid"
    assert client.put("/api/cache/ns/" + "k" * 1025, headers=auth,
                      json={"value": 1}).status_code == 422
    for body in ({}, {"value": 1, "ttl_s": 0}, {"value": 1, "ttl_s": -5},
                 {"value": 1, "ttl_s": "soon"}, {"value": 1, "extra": True}):
        assert client.put("/api/cache/ns/k", headers=auth, json=body).status_code == 422, body
    too_big = "x" * (vault.settings.cache_max_value_kb * 1024 + 1)
    r = client.put("/api/cache/ns/k", headers=auth, json={"value": too_big})
    assert r.status_code == 413 and "MEMVAULT_CACHE_MAX_VALUE_KB" in r.json()["detail"]
    assert client.get("/api/cache/ns/k", headers=auth).status_code == 404


def test_bytes_values_are_library_only(client: TestClient, auth: dict[str, str],
                                       vault: Vault) -> None:
    me = client.get("/api/auth/me", headers=auth)
    user_id = me.json()["id"]
    vault.for_user(user_id).cache("blobs").set("raw", b"\x00\x01")
    r = client.get("/api/cache/blobs/raw", headers=auth)
    assert r.status_code == 422 and "bytes" in r.json()["detail"]
