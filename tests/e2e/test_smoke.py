"""The server starts, answers, and keeps what it acknowledged across a restart."""

from __future__ import annotations

from memvault import Settings

from .server import Server, login


def test_restart_keeps_entities(settings: Settings) -> None:
    with Server(settings) as srv, srv.client() as c:
        h = login(c, "smoke@example.com")
        r = c.post("/api/entities", json={"entity_id": "e1", "entity_name": "One"}, headers=h)
        assert r.status_code == 201
    with Server(settings) as srv, srv.client() as c:
        h = login(c, "smoke@example.com")
        r = c.get("/api/entities/e1", headers=h)
        assert r.status_code == 200
        assert r.json()["entity_name"] == "One"
