"""Agents and runs (issue 8, seeds 002 and 003), on every backend: agents' CRUD,
step numbering and idempotency, the 409s, the library context manager, leases
(HTTP-driven runs lapse, library runs are kept alive, dead writers end
``interrupted``), retention by count and by age, listing, and concurrent appends."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

import memvault
from memvault import Conflict, Invalid, NotFound, Settings, Vault
from memvault.backends.schema import run_steps, runs
from memvault.scope import Scope


@pytest.fixture
def scope(vault: Vault, user_id: str) -> Scope:
    return vault.for_user(user_id)


def _other(vault: Vault) -> Scope:
    uid = vault.users.register(f"o{uuid.uuid4().hex[:8]}@example.com", "password-1").id
    return vault.for_user(uid)


def _wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _step_rows(vault: Vault, run_id: str) -> int:
    with vault.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(run_steps)
                                .where(run_steps.c.run_id == run_id)).scalar_one())


# -- agents -----------------------------------------------------------------------------------

def test_agent_create_get_list_update_delete(scope: Scope) -> None:
    a = scope.agents.create("researcher", kind="llm", instructions="Be brief.", model="gpt-x",
                            tools=["search", "fetch"], config={"temperature": 0.2})
    assert (a.name, a.kind, a.model, a.tools, a.config) == (
        "researcher", "llm", "gpt-x", ["search", "fetch"], {"temperature": 0.2})
    assert scope.agents.get(a.id) == a
    b = scope.agents.create("harvester")
    assert (b.tools, b.config, b.kind) == ([], {}, None)
    page = scope.agents.list(limit=1)
    assert [x.id for x in page.items] == [b.id] and page.next_cursor
    assert [x.id for x in scope.agents.list(limit=1, cursor=page.next_cursor).items] == [a.id]

    # PATCH semantics: the given fields are replaced, the others stay.
    u = scope.agents.update(a.id, tools=["search"], model=None)
    assert u.tools == ["search"] and u.model is None
    assert (u.name, u.instructions, u.config) == (a.name, a.instructions, a.config)
    assert u.updated_at > a.updated_at and u.created_at == a.created_at
    assert scope.agents.get(a.id) == u

    scope.agents.delete(a.id)
    for call in (lambda: scope.agents.get(a.id), lambda: scope.agents.delete(a.id),
                 lambda: scope.agents.update(a.id, name="x")):
        with pytest.raises(NotFound):
            call()
    assert scope.agents.count() == 1


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"name": ""}, "name"), ({"name": "   "}, "name"), ({"name": "x" * 201}, "name"),
    ({"name": "a\x00b"}, "name"), ({"name": "a", "kind": "k" * 65}, "kind"),
    ({"name": "a", "tools": "search"}, "tools"), ({"name": "a", "tools": [1]}, "tools"),
    ({"name": "a", "tools": [""]}, "tools"), ({"name": "a", "config": [1]}, "config"),
    ({"name": "a", "config": {"x": float("nan")}}, "config"),
])
def test_agent_validation(scope: Scope, kwargs: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(Invalid) as err:
        scope.agents.create(**kwargs)
    assert err.value.field == field
    assert scope.agents.count() == 0


def test_agents_are_owner_scoped(vault: Vault, scope: Scope) -> None:
    a = scope.agents.create("mine")
    other = _other(vault)
    with pytest.raises(NotFound):
        other.agents.get(a.id)
    with pytest.raises(NotFound):
        other.agents.update(a.id, name="stolen")
    with pytest.raises(NotFound):
        other.agents.delete(a.id)
    assert other.agents.list().items == []
    # A run may name only its owner's agent: 422 naming the field.
    with pytest.raises(Invalid) as err:
        other.runs.create("wf", agent_id=a.id)
    assert err.value.field == "agent_id"
    assert scope.agents.get(a.id).name == "mine"


# -- runs and steps ---------------------------------------------------------------------------

def test_steps_are_numbered_in_append_order(scope: Scope) -> None:
    agent = scope.agents.create("claude")
    conv = scope.conversations.create(title="briefing")
    run = scope.runs.create("morning_briefing", agent_id=agent.id, conversation_id=conv.id,
                            input={"tickers": ["SPY"]}, metadata={"source": "cron"})
    assert run.status == "running" and run.step_count == 0 and run.finished_at is None
    assert (run.agent_id, run.conversation_id, run.input) == (agent.id, conv.id,
                                                              {"tickers": ["SPY"]})
    began = datetime(2024, 12, 20, 9, 0, tzinfo=UTC)
    s1, created = scope.runs.append_step(run.id, "greet_and_context", agent="claude",
                                         result={"status": "completed"}, started_at=began,
                                         finished_at=began + timedelta(seconds=2))
    assert created and s1.step == 1 and s1.status == "completed"
    s2, _ = scope.runs.append_step(run.id, "fetch_overnight_moves", agent="data_harvester",
                                   status="failed", result={"data": [1, 2.5, "x"]})
    assert s2.step == 2
    got = scope.runs.get(run.id)
    assert got.step_count == 2 and got.steps == [s1, s2]
    assert got.steps[0].started_at == began
    assert not hasattr(scope.runs.summary(run.id), "steps")
    assert scope.runs.summary(run.id).step_count == 2
    done = scope.runs.complete(run.id, "completed", output={"summary": "ok"})
    assert done.status == "completed" and done.output == {"summary": "ok"}
    assert done.finished_at is not None and done.step_count == 2
    assert scope.runs.get(run.id).steps == [s1, s2]


def test_client_step_numbers_are_idempotent(scope: Scope) -> None:
    run = scope.runs.create("wf")
    first, created = scope.runs.append_step(run.id, "a", agent="x", result={"k": [1]}, step=1)
    assert created and first.step == 1
    again, created = scope.runs.append_step(run.id, "a", agent="x", result={"k": [1]}, step=1)
    assert not created and again == first
    with pytest.raises(Conflict):  # other content under a stored number
        scope.runs.append_step(run.id, "a", agent="x", result={"k": [2]}, step=1)
    with pytest.raises(Conflict):
        scope.runs.append_step(run.id, "b", agent="x", result={"k": [1]}, step=1)
    with pytest.raises(Conflict):  # a gap
        scope.runs.append_step(run.id, "c", step=3)
    second, created = scope.runs.append_step(run.id, "c", step=2)
    assert created and second.step == 2
    third, _ = scope.runs.append_step(run.id, "d")  # numbered by the store
    assert third.step == 3
    assert [s.action for s in scope.runs.steps(run.id)] == ["a", "c", "d"]
    assert scope.runs.get(run.id).step_count == 3


def test_finished_runs_refuse_steps_and_second_completion(scope: Scope) -> None:
    for status in ("completed", "failed", "cancelled"):
        run = scope.runs.create("wf")
        scope.runs.append_step(run.id, "a")
        done = scope.runs.complete(run.id, status, error="bad" if status == "failed" else None)
        assert done.status == status
        with pytest.raises(Conflict):
            scope.runs.append_step(run.id, "late")
        with pytest.raises(Conflict):
            scope.runs.append_step(run.id, "late", step=2)
        with pytest.raises(Conflict):
            scope.runs.complete(run.id, "completed")
        with pytest.raises(Conflict):
            scope.runs.heartbeat(run.id)
        assert scope.runs.get(run.id).step_count == 1
    run = scope.runs.create("wf")
    with pytest.raises(Invalid):
        scope.runs.complete(run.id, "interrupted")
    with pytest.raises(Invalid):
        scope.runs.append_step(run.id, "a", status="bogus")
    with pytest.raises(NotFound):
        scope.runs.complete("no-such-run", "completed")
    with pytest.raises(NotFound):
        scope.runs.append_step("no-such-run", "a")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"workflow": ""}, "workflow"), ({"workflow": "w" * 201}, "workflow"),
    ({"workflow": "a\x00"}, "workflow"), ({"workflow": "w", "input": {"x": "\x00"}}, "input"),
    ({"workflow": "w", "metadata": [1]}, "metadata"),
    ({"workflow": "w", "conversation_id": "nope"}, "conversation_id"),
    ({"workflow": "w", "agent_id": "nope"}, "agent_id"),
])
def test_run_validation(scope: Scope, kwargs: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(Invalid) as err:
        scope.runs.create(**kwargs)
    assert err.value.field == field
    assert scope.runs.count() == 0


def test_runs_are_owner_scoped(vault: Vault, scope: Scope) -> None:
    run = scope.runs.create("wf")
    scope.runs.append_step(run.id, "a")
    other = _other(vault)
    for call in (lambda: other.runs.get(run.id), lambda: other.runs.append_step(run.id, "x"),
                 lambda: other.runs.append_step(run.id, "x", step=2),
                 lambda: other.runs.heartbeat(run.id),
                 lambda: other.runs.complete(run.id, "completed"),
                 lambda: other.runs.delete(run.id)):
        with pytest.raises(NotFound):
            call()
    assert other.runs.list().items == []
    got = scope.runs.get(run.id)
    assert got.status == "running" and got.step_count == 1


def test_delete_takes_the_steps(vault: Vault, scope: Scope) -> None:
    run = scope.runs.create("wf")
    for i in range(3):
        scope.runs.append_step(run.id, f"s{i}")
    scope.runs.delete(run.id)
    with pytest.raises(NotFound):
        scope.runs.get(run.id)
    assert _step_rows(vault, run.id) == 0
    with pytest.raises(NotFound):
        scope.runs.delete(run.id)


def test_list_filters_and_pages_newest_first(scope: Scope) -> None:
    agent = scope.agents.create("a")
    made = []
    for i in range(7):
        run = scope.runs.create("alpha" if i % 2 else "beta",
                                agent_id=agent.id if i < 3 else None)
        if i % 3 == 0:
            scope.runs.complete(run.id, "failed")
        made.append(run.id)
    newest = list(reversed(made))
    seen, cursor = [], None
    while True:
        page = scope.runs.list(limit=3, cursor=cursor)
        assert not any(hasattr(r, "steps") for r in page.items)
        seen += [r.id for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == newest
    assert [r.id for r in scope.runs.list(workflow="alpha").items] == [
        m for i, m in reversed(list(enumerate(made))) if i % 2]
    assert [r.id for r in scope.runs.list(status="failed").items] == [made[6], made[3], made[0]]
    assert [r.id for r in scope.runs.list(agent_id=agent.id).items] == [made[2], made[1],
                                                                         made[0]]
    assert [r.id for r in scope.runs.list(workflow="beta", status="running").items] == [
        made[4], made[2]]
    assert scope.runs.list(workflow="nope").items == []
    with pytest.raises(Invalid):
        scope.runs.list(status="bogus")
    with pytest.raises(Invalid):
        scope.runs.list(cursor="!!")


# -- the library context manager -------------------------------------------------------------

def test_context_manager_completes_the_run(scope: Scope) -> None:
    agent = scope.agents.create("claude")
    with scope.runs.start("morning_briefing", agent_id=agent.id, input={"q": 1}) as run:
        s1 = run.step(agent="claude", action="greet_and_context", result={"status": "ok"})
        s2 = run.step(agent="data_harvester", action="fetch", result={"data": [1]})
        assert (s1.step, s2.step) == (1, 2)
        # Durable when step() returns: another reader sees it at once.
        assert scope.runs.get(run.id).step_count == 2
        run.output = {"summary": "done"}
    got = scope.runs.get(run.id)
    assert got.status == "completed" and got.output == {"summary": "done"}
    assert got.agent_id == agent.id and got.input == {"q": 1} and got.error is None
    assert [s.action for s in got.steps] == ["greet_and_context", "fetch"]
    with pytest.raises(Conflict):
        run.step(action="late")


def test_context_manager_marks_failure_and_reraises(scope: Scope) -> None:
    with pytest.raises(RuntimeError, match="feed down"), \
            scope.runs.start("wf") as run:
        run.step(action="fetch")
        raise RuntimeError("feed down")
    got = scope.runs.get(run.id)
    assert got.status == "failed" and got.error == "RuntimeError: feed down"
    assert got.step_count == 1 and got.finished_at is not None
    # Ended explicitly inside the block: leaving it changes nothing.
    with scope.runs.start("wf") as run2:
        run2.cancel()
    assert scope.runs.get(run2.id).status == "cancelled"


def test_vault_close_interrupts_open_library_runs(settings: Settings) -> None:
    with memvault.open(settings) as vault:
        owner = vault.users.register("c@example.com", "password-1").id
        run = vault.for_user(owner).runs.start("wf")
        run.__enter__()
        run.step(action="a")
    with memvault.open(settings) as vault:
        got = vault.for_user(owner).runs.get(run.id)
        assert got.status == "interrupted" and got.step_count == 1


# -- leases -----------------------------------------------------------------------------------

@pytest.fixture
def short_lease(settings: Settings) -> Iterator[Vault]:
    with memvault.open(settings, run_lease_s=1.0) as vault:
        yield vault


def test_lapsed_http_lease_is_interrupted_by_the_sweeper(short_lease: Vault) -> None:
    vault = short_lease
    scope = vault.for_user(vault.users.register("l@example.com", "password-1").id)
    idle = scope.runs.create("wf")
    scope.runs.append_step(idle.id, "a", result={"x": 1})
    kept = scope.runs.create("wf")
    with scope.runs.start("wf") as library_run:  # renewed by this process's run-keeper
        library_run.step(action="working")
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # heartbeats keep an HTTP run alive
            lease = scope.runs.heartbeat(kept.id)
            assert lease.status == "running" and lease.id == kept.id
            time.sleep(0.2)
        _wait_for(lambda: scope.runs.get(idle.id).status != "running", what="the sweeper")
        assert scope.runs.get(kept.id).status == "running"
        assert scope.runs.get(library_run.id).status == "running"
    assert scope.runs.get(library_run.id).status == "completed"
    got = scope.runs.get(idle.id)
    assert got.status == "interrupted" and got.finished_at is not None
    assert [s.result for s in got.steps] == [{"x": 1}]
    for call in (lambda: scope.runs.append_step(idle.id, "late"),
                 lambda: scope.runs.complete(idle.id, "completed"),
                 lambda: scope.runs.heartbeat(idle.id)):
        with pytest.raises(Conflict):
            call()


def test_a_dead_local_writer_is_interrupted_at_start_up(settings: Settings) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = f"{socket.gethostname()}:{int(child.stdout)}"
    with memvault.open(settings) as vault:
        scope = vault.for_user(vault.users.register("d@example.com", "password-1").id)
        run = scope.runs.start("wf")
        scope.runs.append_step(run.id, "a")
        foreign = scope.runs.start("wf")
        with vault.db.write() as conn:  # as if written by a process now gone
            conn.execute(runs.update().where(runs.c.id == run.id).values(writer=dead))
            conn.execute(runs.update().where(runs.c.id == foreign.id)
                         .values(writer="some-other-host:1"))
        vault.background.run_now("run-sweeper")
        got = scope.runs.get(run.id)
        assert got.status == "interrupted" and got.step_count == 1
        # Another host's writer cannot be checked: only its lease ends it.
        assert scope.runs.get(foreign.id).status == "running"


# -- retention --------------------------------------------------------------------------------

def test_retention_keeps_exactly_the_newest_finished(vault: Vault, scope: Scope) -> None:
    assert vault.settings.runs_keep == 100
    running = scope.runs.create("briefing")  # the oldest of all: never touched
    other = scope.runs.create("other")
    scope.runs.complete(other.id, "completed")
    made = []
    for i in range(250):
        run = scope.runs.create("briefing")
        if i < 3:
            scope.runs.append_step(run.id, "step")
        scope.runs.complete(run.id, "completed" if i % 5 else "failed")
        made.append(run.id)
    with_running = 0
    kept = []
    cursor = None
    while True:
        page = scope.runs.list(workflow="briefing", limit=200, cursor=cursor)
        kept += [r.id for r in page.items if r.status != "running"]
        with_running += sum(r.status == "running" for r in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert kept == list(reversed(made[-100:]))
    assert with_running == 1 and scope.runs.get(running.id).status == "running"
    assert scope.runs.get(other.id).status == "completed"  # another workflow: its own count
    assert all(_step_rows(vault, rid) == 0 for rid in made[:3])  # steps went with their run
    assert scope.runs.count() == 102


def test_retention_by_age(settings: Settings) -> None:
    with memvault.open(settings, runs_max_age_days=0.5) as vault:
        scope = vault.for_user(vault.users.register("a@example.com", "password-1").id)
        old_done = scope.runs.create("wf")
        scope.runs.append_step(old_done.id, "a")
        scope.runs.complete(old_done.id, "completed")
        old_running = scope.runs.create("wf")
        young = scope.runs.create("wf")
        scope.runs.complete(young.id, "completed")
        other_wf = scope.runs.create("other")
        scope.runs.complete(other_wf.id, "completed")
        day_ago = datetime.now(UTC) - timedelta(days=1)
        with vault.db.write() as conn:
            conn.execute(runs.update().where(runs.c.id.in_([old_done.id, old_running.id,
                                                            other_wf.id]))
                         .values(started_at=day_ago))
        fresh = scope.runs.create("wf")
        scope.runs.complete(fresh.id, "completed")  # retention runs as a run finishes
        with pytest.raises(NotFound):
            scope.runs.get(old_done.id)
        assert _step_rows(vault, old_done.id) == 0
        assert scope.runs.get(old_running.id).status == "running"
        assert scope.runs.get(young.id).status == "completed"
        assert scope.runs.get(other_wf.id).status == "completed"  # not finished since


def test_retention_applies_to_runs_the_sweeper_interrupts(settings: Settings) -> None:
    with memvault.open(settings, runs_keep=2) as vault:
        scope = vault.for_user(vault.users.register("r@example.com", "password-1").id)
        finished = []
        for _ in range(2):
            run = scope.runs.create("wf")
            scope.runs.complete(run.id, "completed")
            finished.append(run.id)
        lapsed = scope.runs.create("wf")
        with vault.db.write() as conn:
            conn.execute(runs.update().where(runs.c.id == lapsed.id)
                         .values(lease_expires_at=datetime.now(UTC) - timedelta(hours=1)))
        vault.background.run_now("run-sweeper")
        assert scope.runs.get(lapsed.id).status == "interrupted"
        with pytest.raises(NotFound):
            scope.runs.get(finished[0])
        assert scope.runs.get(finished[1]).status == "completed"


# -- concurrency ------------------------------------------------------------------------------

def test_concurrent_appends_number_without_gaps(scope: Scope) -> None:
    run = scope.runs.create("wf")
    threads, per_thread = 8, 15
    numbers: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                step, _ = scope.runs.append_step(run.id, f"t{t}", result={"i": i})
                with lock:
                    numbers.append(step.step)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(60)
    assert not errors, errors
    n = threads * per_thread
    assert sorted(numbers) == list(range(1, n + 1))
    got = scope.runs.get(run.id)
    assert got.step_count == n and [s.step for s in got.steps] == list(range(1, n + 1))
    for t in range(threads):  # each thread's steps in its own order
        mine = [s.result["i"] for s in got.steps if s.action == f"t{t}"]
        assert mine == list(range(per_thread))
