"""The durable job queue (``memvault/jobs.py``) on every backend: jobs commit
with their transaction, run once each even with two vaults on one database,
survive an expired lease, retry then fail with their error, and keep their
payload."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import memvault
from memvault import Settings, Vault
from memvault.backends.schema import jobs
from memvault.errors import Conflict
from memvault.jobs import DONE, FAILED, QUEUED, RUNNING, Job, LeaseLost, enqueue
from memvault.settings import revalidate


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Retries without back-off delay; two runner threads per vault."""
    return revalidate(settings, job_retry_s=0, job_workers=2)


@pytest.fixture
def jvault(fast: Settings) -> Iterator[Vault]:
    v = memvault.open(fast)
    try:
        yield v
    finally:
        v.close()


def _status(vault: Vault, job_id: str) -> str:
    record = vault.jobs.get(job_id)
    assert record is not None
    return record.status


def test_a_job_rolled_back_with_its_transaction_does_not_exist(jvault: Vault) -> None:
    class Boom(Exception):
        pass

    ids: list[str] = []
    with pytest.raises(Boom), jvault.db.write() as conn:
        ids.append(enqueue(conn, "test.noop", {"a": 1}))
        raise Boom
    assert jvault.jobs.get(ids[0]) is None
    with jvault.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == 0


def test_payload_round_trips_and_the_handler_completes_the_job(jvault: Vault) -> None:
    payload = {"doc_id": "d1", "text": "héllo ✓ 中文", "n": [1, 2.5, None], "nested": {"b": True}}
    seen: list[Job] = []
    jvault.jobs.register_handler("test.echo", seen.append)
    job_id = jvault.jobs.enqueue("test.echo", payload, owner_id="u1")
    done = jvault.jobs.wait([job_id], timeout=30)[job_id]
    assert done is not None and done.status == DONE
    assert done.payload == payload and done.owner_id == "u1" and done.attempts == 1
    assert done.locked_by is None and done.lease_expires_at is None and done.error is None
    assert [j.payload for j in seen] == [payload]


def test_complete_inside_the_handlers_transaction_commits_with_the_result(
        jvault: Vault) -> None:
    """"The result and done" are one commit: when the handler's transaction
    rolls back after complete(), the job is not done but retried."""
    table = sa.Table("job_results", sa.MetaData(), sa.Column("job_id", sa.String(64)))
    table.create(jvault.db.engine)
    calls = Counter[str]()

    def handler(job: Job) -> None:
        calls[job.id] += 1
        with jvault.db.write() as conn:
            conn.execute(sa.insert(table).values(job_id=job.id))
            job.complete(conn)
            if calls[job.id] == 1:
                raise RuntimeError("crash after complete, before commit")

    jvault.jobs.register_handler("test.tx", handler)
    job_id = jvault.jobs.enqueue("test.tx", {})
    done = jvault.jobs.wait([job_id], timeout=30)[job_id]
    assert done is not None and done.status == DONE and done.attempts == 2
    with jvault.db.read() as conn:
        assert conn.execute(sa.select(table.c.job_id)).scalars().all() == [job_id]


def test_a_failing_handler_is_retried_then_fails_with_its_error(jvault: Vault) -> None:
    attempts: list[int] = []

    def handler(job: Job) -> None:
        attempts.append(job.attempts)
        raise ValueError(f"cannot index attempt {job.attempts}")

    jvault.jobs.register_handler("test.fail", handler)
    job_id = jvault.jobs.enqueue("test.fail", {"x": 1}, max_attempts=3)
    done = jvault.jobs.wait([job_id], timeout=30)[job_id]
    assert done is not None and done.status == FAILED
    assert attempts == [1, 2, 3] and done.attempts == 3
    assert done.error == "ValueError: cannot index attempt 3"


def test_a_job_that_succeeds_on_retry_is_done(jvault: Vault) -> None:
    def handler(job: Job) -> None:
        if job.attempts < 2:
            raise RuntimeError("transient")

    jvault.jobs.register_handler("test.flaky", handler)
    job_id = jvault.jobs.enqueue("test.flaky", {})
    done = jvault.jobs.wait([job_id], timeout=30)[job_id]
    assert done is not None and done.status == DONE and done.attempts == 2


def test_an_expired_lease_is_claimed_again_and_the_old_holder_is_fenced(
        fast: Settings) -> None:
    """A worker on another host took the job and stopped answering: once its
    lease expires another vault claims it; the first can no longer finish it."""
    with memvault.open(fast, job_lease_s=60) as a, memvault.open(fast) as b:
        job_id = a.jobs.enqueue("test.lease", {"k": "v"})
        stale = a.jobs.claim(["test.lease"], lease_s=60)
        assert stale is not None and stale.attempts == 1
        assert b.jobs.claim(["test.lease"]) is None  # leased: nobody else takes it
        with a.db.write() as conn:  # as if held by a silent host, lease now over
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(
                locked_by="elsewhere:1", lease_expires_at=a.db.backend.lease_until(-1)))
        fresh = b.jobs.claim(["test.lease"])
        assert fresh is not None and fresh.id == job_id and fresh.attempts == 2
        assert fresh.payload == {"k": "v"}
        with pytest.raises(LeaseLost):
            a.jobs.complete(stale)
        assert isinstance(LeaseLost(), Conflict)
        fresh.heartbeat()
        b.jobs.complete(fresh)
        assert _status(b, job_id) == DONE


def test_a_job_whose_last_attempt_died_ends_failed(fast: Settings) -> None:
    with memvault.open(fast) as v:
        job_id = v.jobs.enqueue("test.poison", {}, max_attempts=1)
        assert v.jobs.claim(["test.poison"]) is not None
        with v.db.write() as conn:
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(
                locked_by="elsewhere:1", lease_expires_at=v.db.backend.lease_until(-1)))
        assert v.jobs.claim(["test.poison"]) is None
        record = v.jobs.get(job_id)
        assert record is not None and record.status == FAILED
        assert record.error is not None and "elsewhere:1" in record.error


def test_two_vaults_on_one_database_never_run_a_job_twice(fast: Settings) -> None:
    n = 120
    calls: Counter[str] = Counter()
    by_vault: Counter[int] = Counter()
    lock = threading.Lock()
    with memvault.open(fast) as a, memvault.open(fast) as b:
        for index, vault in enumerate((a, b)):
            def handler(job: Job, index: int = index) -> None:
                with lock:
                    calls[job.payload["i"]] += 1
                    by_vault[index] += 1
            vault.jobs.register_handler("test.count", handler)
        with a.db.write() as conn:
            ids = [enqueue(conn, "test.count", {"i": str(i)}) for i in range(n)]
        records = b.jobs.wait(ids, timeout=120)
    assert all(r is not None and r.status == DONE and r.attempts == 1
               for r in records.values())
    assert len(calls) == n and set(calls.values()) == {1}
    assert sum(by_vault.values()) == n


def test_retention_deletes_only_finished_jobs(jvault: Vault) -> None:
    jvault.jobs.register_handler("test.quick", lambda job: None)
    done_id = jvault.jobs.enqueue("test.quick", {})
    assert jvault.jobs.wait([done_id], timeout=30)[done_id] is not None
    queued_id = jvault.jobs.enqueue("test.unhandled", {})
    assert _status(jvault, done_id) == DONE and _status(jvault, queued_id) == QUEUED
    assert jvault.jobs.delete_finished(older_than_s=3600) == 0
    assert jvault.jobs.delete_finished(older_than_s=-1) == 1
    assert jvault.jobs.get(done_id) is None and _status(jvault, queued_id) == QUEUED


def test_a_running_job_keeps_its_lease_while_the_handler_works(fast: Settings) -> None:
    """The keeper renews the lease of a job running here, so a handler busy in
    one long call is not taken over by another vault."""
    release = threading.Event()
    started = threading.Event()

    def slow(job: Job) -> None:
        started.set()
        release.wait(60)

    with memvault.open(fast, job_lease_s=3) as a, memvault.open(fast) as b:
        a.jobs.register_handler("test.slow", slow)
        job_id = a.jobs.enqueue("test.slow", {})
        assert started.wait(30)
        before = a.jobs.get(job_id)
        assert before is not None and before.status == RUNNING
        renewed = before
        while renewed.lease_expires_at == before.lease_expires_at:  # a renewal happened
            assert a.jobs.wait([job_id], timeout=0.1)[job_id] is not None
            renewed = a.jobs.get(job_id)  # type: ignore[assignment]
        assert b.jobs.claim(["test.slow"]) is None
        release.set()
        done = a.jobs.wait([job_id], timeout=30)[job_id]
        assert done is not None and done.status == DONE and done.attempts == 1
