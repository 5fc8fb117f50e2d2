from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from memvault import Vault
from memvault.service import create_app


@pytest.fixture
def client(vault: Vault) -> Iterator[TestClient]:
    with TestClient(create_app(vault=vault)) as c:
        yield c


def register(client: TestClient, email: str, password: str = "password-1") -> dict[str, str]:
    r = client.post("/api/auth/register", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    r = client.post("/api/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def auth(client: TestClient) -> dict[str, str]:
    return register(client, "owner@example.com")
