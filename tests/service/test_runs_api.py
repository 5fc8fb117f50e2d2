"""``/api/agents`` and ``/api/runs`` over HTTP: shapes and status codes, step
idempotency (201, then 200), the 409s, heartbeats, listing filters, input
validation as problem+json, and another user's agents, runs and steps as 404."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from memvault import Vault

from .conftest import register

AGENT_FIELDS = {"id", "name", "kind", "instructions", "model", "tools", "config", "created_at",
                "updated_at"}
RUN_FIELDS = {"id", "workflow", "agent_id", "conversation_id", "status", "input", "output",
              "error", "metadata", "step_count", "started_at", "finished_at"}


def _run(client: TestClient, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    r = client.post("/api/runs", headers=auth, json={"workflow": "wf", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_agents_crud(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/api/agents", headers=auth, json={
        "name": "researcher", "kind": "llm", "instructions": "Cite sources.", "model": "gpt-x",
        "tools": ["search"], "config": {"temperature": 0}})
    assert r.status_code == 201, r.text
    agent = r.json()
    assert set(agent) >= AGENT_FIELDS
    assert (agent["name"], agent["tools"], agent["config"]) == ("researcher", ["search"],
                                                                 {"temperature": 0})
    aid = agent["id"]
    minimal = client.post("/api/agents", headers=auth, json={"name": "m"}).json()
    assert (minimal["kind"], minimal["tools"], minimal["config"]) == (None, [], {})
    assert client.get(f"/api/agents/{aid}", headers=auth).json() == agent
    page = client.get("/api/agents", headers=auth, params={"limit": 1}).json()
    assert [a["id"] for a in page["items"]] == [minimal["id"]] and page["next_cursor"]
    page2 = client.get("/api/agents", headers=auth,
                       params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert [a["id"] for a in page2["items"]] == [aid] and page2["next_cursor"] is None

    r = client.patch(f"/api/agents/{aid}", headers=auth, json={"tools": ["a", "b"],
                                                               "instructions": None})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["tools"] == ["a", "b"] and patched["instructions"] is None
    assert (patched["name"], patched["model"], patched["config"]) == (
        "researcher", "gpt-x", {"temperature": 0})
    assert client.delete(f"/api/agents/{aid}", headers=auth).status_code == 204
    assert client.get(f"/api/agents/{aid}", headers=auth).status_code == 404
    assert client.delete(f"/api/agents/{aid}", headers=auth).status_code == 404


@pytest.mark.parametrize(("body", "field"), [
    ({}, "name"), ({"name": ""}, "name"), ({"name": 5}, "name"), ({"name": "x" * 201}, "name"),
    ({"name": "a\x00b"}, "name"), ({"name": "a", "tools": "search"}, "tools"),
    ({"name": "a", "tools": [1]}, "tools"), ({"name": "a", "config": [1]}, "config"),
    ({"name": "a", "kind": "k" * 65}, "kind"),
])
def test_agent_validation(client: TestClient, auth: dict[str, str], body: dict[str, Any],
                          field: str) -> None:
    r = client.post("/api/agents", headers=auth, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert any(field in str(e["field"]) for e in r.json()["errors"]), r.json()
    assert client.get("/api/agents", headers=auth).json()["items"] == []


def test_run_lifecycle(client: TestClient, auth: dict[str, str]) -> None:
    aid = client.post("/api/agents", headers=auth, json={"name": "claude"}).json()["id"]
    cid = client.post("/api/conversations", headers=auth, json={}).json()["id"]
    run = _run(client, auth, workflow="morning_briefing", agent_id=aid, conversation_id=cid,
               input={"q": "SPY"}, metadata={"k": "v"})
    assert set(run) == RUN_FIELDS
    assert (run["status"], run["step_count"], run["finished_at"], run["output"]) == (
        "running", 0, None, None)
    assert (run["agent_id"], run["conversation_id"], run["input"], run["metadata"]) == (
        aid, cid, {"q": "SPY"}, {"k": "v"})
    rid = run["id"]

    r = client.post(f"/api/runs/{rid}/steps", headers=auth, json={
        "agent": "claude", "action": "greet_and_context", "result": {"status": "completed"},
        "started_at": "2024-12-20T09:00:00Z", "finished_at": "2024-12-20T09:00:02+00:00"})
    assert r.status_code == 201, r.text
    s1 = r.json()
    assert (s1["step"], s1["status"], s1["agent"]) == (1, "completed", "claude")
    r = client.post(f"/api/runs/{rid}/steps", headers=auth,
                    json={"agent": "data_harvester", "action": "fetch", "status": "failed",
                          "result": {"data": [1, 2]}})
    assert r.status_code == 201 and r.json()["step"] == 2

    hb = client.post(f"/api/runs/{rid}/heartbeat", headers=auth)
    assert hb.status_code == 200, hb.text
    assert set(hb.json()) == {"id", "status", "lease_expires_at"}
    assert hb.json()["id"] == rid and hb.json()["status"] == "running"

    got = client.get(f"/api/runs/{rid}", headers=auth).json()
    assert set(got) == RUN_FIELDS | {"steps"} and got["step_count"] == 2
    assert [s["step"] for s in got["steps"]] == [1, 2]
    assert got["steps"][0] == s1

    r = client.post(f"/api/runs/{rid}/complete", headers=auth,
                    json={"status": "completed", "output": {"summary": "up"}})
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "completed" and done["output"] == {"summary": "up"}
    assert done["finished_at"] is not None

    # A finished run: no steps, no heartbeat, no second completion.
    assert client.post(f"/api/runs/{rid}/steps", headers=auth,
                       json={"action": "late"}).status_code == 409
    assert client.post(f"/api/runs/{rid}/heartbeat", headers=auth).status_code == 409
    for status in ("completed", "failed"):
        r = client.post(f"/api/runs/{rid}/complete", headers=auth, json={"status": status})
        assert r.status_code == 409, r.text
        assert r.headers["content-type"].startswith("application/problem+json")

    assert client.delete(f"/api/runs/{rid}", headers=auth).status_code == 204
    assert client.get(f"/api/runs/{rid}", headers=auth).status_code == 404
    assert client.delete(f"/api/runs/{rid}", headers=auth).status_code == 404


def test_step_idempotency_over_http(client: TestClient, auth: dict[str, str]) -> None:
    rid = _run(client, auth)["id"]
    body = {"step": 1, "agent": "a", "action": "fetch", "result": {"n": [1, {"x": None}]},
            "started_at": "2024-12-20T09:00:00Z"}
    first = client.post(f"/api/runs/{rid}/steps", headers=auth, json=body)
    assert first.status_code == 201, first.text
    again = client.post(f"/api/runs/{rid}/steps", headers=auth, json=body)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    changed = client.post(f"/api/runs/{rid}/steps", headers=auth,
                          json={**body, "result": {"n": [2]}})
    assert changed.status_code == 409
    gap = client.post(f"/api/runs/{rid}/steps", headers=auth, json={"step": 3, "action": "x"})
    assert gap.status_code == 409
    nxt = client.post(f"/api/runs/{rid}/steps", headers=auth, json={"step": 2, "action": "x"})
    assert nxt.status_code == 201 and nxt.json()["step"] == 2
    got = client.get(f"/api/runs/{rid}", headers=auth).json()
    assert got["step_count"] == 2 and [s["action"] for s in got["steps"]] == ["fetch", "x"]


def test_failed_and_cancelled_runs(client: TestClient, auth: dict[str, str]) -> None:
    rid = _run(client, auth)["id"]
    r = client.post(f"/api/runs/{rid}/complete", headers=auth,
                    json={"status": "failed", "error": "quota exceeded"})
    assert r.status_code == 200 and r.json()["error"] == "quota exceeded"
    rid = _run(client, auth)["id"]
    r = client.post(f"/api/runs/{rid}/complete", headers=auth, json={"status": "cancelled"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


def test_run_validation(client: TestClient, auth: dict[str, str], vault: Vault) -> None:
    bad_runs = [({}, "workflow"), ({"workflow": ""}, "workflow"), ({"workflow": 7}, "workflow"),
                ({"workflow": "w" * 201}, "workflow"), ({"workflow": "a\x00"}, "workflow"),
                ({"workflow": "w", "agent_id": "nope"}, "agent_id"),
                ({"workflow": "w", "conversation_id": "nope"}, "conversation_id"),
                ({"workflow": "w", "metadata": [1]}, "metadata"),
                ({"workflow": "w", "input": {"x": "\x00"}}, "input")]
    for body, field in bad_runs:
        r = client.post("/api/runs", headers=auth, json=body)
        assert r.status_code == 422, (body, r.text)
        assert any(field in str(e["field"]) for e in r.json()["errors"]), (body, r.json())
    assert client.get("/api/runs", headers=auth).json()["items"] == []

    rid = _run(client, auth)["id"]
    bad_steps = [{}, {"action": ""}, {"action": "a", "status": "bogus"},
                 {"action": "a", "step": 0}, {"action": "a", "step": "1"},
                 {"action": "a", "agent": "x" * 201}, {"action": "a\x00"},
                 {"action": "a", "started_at": "yesterday"},
                 {"action": "a", "result": {"k": "\x00"}}]
    for body in bad_steps:
        r = client.post(f"/api/runs/{rid}/steps", headers=auth, json=body)
        assert r.status_code == 422, (body, r.text)
    for body in ({}, {"status": "interrupted"}, {"status": "running"}, {"status": "bogus"}):
        r = client.post(f"/api/runs/{rid}/complete", headers=auth, json=body)
        assert r.status_code == 422, (body, r.text)
    assert client.get(f"/api/runs/{rid}", headers=auth).json()["step_count"] == 0
    for params in ({"status": "bogus"}, {"limit": 0}, {"limit": 201}, {"cursor": "!!"}):
        assert client.get("/api/runs", headers=auth, params=params).status_code == 422
    for path in ("/api/runs/nope", "/api/agents/nope"):
        assert client.get(path, headers=auth).status_code == 404
    for path in ("/api/runs/nope/steps",):
        assert client.post(path, headers=auth, json={"action": "a"}).status_code == 404
    assert client.post("/api/runs/nope/heartbeat", headers=auth).status_code == 404
    assert client.post("/api/runs/nope/complete", headers=auth,
                       json={"status": "completed"}).status_code == 404


def test_list_runs_filters_and_pages(client: TestClient, auth: dict[str, str]) -> None:
    aid = client.post("/api/agents", headers=auth, json={"name": "a"}).json()["id"]
    made = []
    for i in range(5):
        run = _run(client, auth, workflow="alpha" if i % 2 else "beta",
                   agent_id=aid if i < 2 else None)
        if i == 3:
            client.post(f"/api/runs/{run['id']}/complete", headers=auth,
                        json={"status": "failed"})
        made.append(run["id"])
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/runs", headers=auth, params=params).json()
        assert all(set(r) == RUN_FIELDS for r in page["items"])
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(made))

    def ids(**params: Any) -> list[str]:
        r = client.get("/api/runs", headers=auth, params=params)
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["items"]]

    assert ids(workflow="alpha") == [made[3], made[1]]
    assert ids(status="failed") == [made[3]]
    assert ids(status="running", workflow="beta") == [made[4], made[2], made[0]]
    assert ids(agent_id=aid) == [made[1], made[0]]


def test_another_users_agents_runs_and_steps_are_404(client: TestClient,
                                                     auth: dict[str, str]) -> None:
    aid = client.post("/api/agents", headers=auth, json={"name": "mine"}).json()["id"]
    rid = _run(client, auth, agent_id=aid)["id"]
    client.post(f"/api/runs/{rid}/steps", headers=auth, json={"action": "private"})
    other = register(client, "intruder@example.com")
    for method, path, body in [
        ("GET", f"/api/agents/{aid}", None), ("PATCH", f"/api/agents/{aid}", {"name": "z"}),
        ("DELETE", f"/api/agents/{aid}", None),
        ("GET", f"/api/runs/{rid}", None),
        ("POST", f"/api/runs/{rid}/steps", {"action": "planted"}),
        ("POST", f"/api/runs/{rid}/steps", {"action": "private", "step": 1}),
        ("POST", f"/api/runs/{rid}/heartbeat", None),
        ("POST", f"/api/runs/{rid}/complete", {"status": "cancelled"}),
        ("DELETE", f"/api/runs/{rid}", None),
    ]:
        r = client.request(method, path, headers=other, json=body)
        assert r.status_code == 404, (method, path, r.status_code)
    # Naming another user's agent is refused (422, the field named), never linked.
    r = client.post("/api/runs", headers=other, json={"workflow": "wf", "agent_id": aid})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "agent_id"
    assert client.get("/api/agents", headers=other).json()["items"] == []
    assert client.get("/api/runs", headers=other).json()["items"] == []
    assert client.get("/api/runs", headers=other, params={"agent_id": aid}).json()["items"] == []
    got = client.get(f"/api/runs/{rid}", headers=auth).json()
    assert got["status"] == "running" and [s["action"] for s in got["steps"]] == ["private"]
    assert client.get(f"/api/agents/{aid}", headers=auth).json()["name"] == "mine"
