"""The durable job queue: background work kept in the database, run by any
process of the vault.

A job is a row of ``jobs`` (``backends/schema.py``): a ``kind`` naming its
handler, a JSON ``payload``, a ``status`` (``queued`` → ``running`` → ``done`` |
``failed``) and, while it runs, the process holding it (``locked_by``, host:pid)
and until when (``lease_expires_at``). This module owns the table; what a job
*does* belongs to whoever registers a handler for its kind (ingestion, …).

- **Enqueue in the caller's transaction.** ``enqueue(conn, …)`` inserts the row
  in the write transaction that makes the work necessary (an upload and its
  indexing job commit together, or neither does) and, through ``after_commit``,
  wakes this process's runners once the row is durable.
- **Claim one job at a time, under a lease.** A claim is a conditional update
  (compare-and-set on ``status`` and ``attempts``) inside ``Database.write()``:
  on SQLite the transaction holds the write lock (``BEGIN IMMEDIATE``), so a
  select-then-update cannot race; where the backend has ``skip_locked``
  (PostgreSQL) the candidate is selected ``FOR UPDATE SKIP LOCKED``, so
  concurrent claimers pass over each other's rows instead of queueing behind
  them. A claim sets ``running``, ``locked_by``, counts the attempt and sets the
  lease on the backend's lease clock (the database's clock on PostgreSQL).
- **Crashes.** A job whose lease expired (its worker was killed, or its host
  vanished) is claimable again; the keeper of every process also expires at once
  the leases held by dead processes of its own host (after a restart the job
  resumes at once, not a lease later). A job whose last allowed attempt died with
  its worker ends ``failed``, so a job that kills its worker cannot loop forever.
- **Fencing.** Heartbeats, ``complete`` and ``fail`` change the row only while
  it is still ``running`` under this process and this attempt; otherwise they
  raise ``LeaseLost``. ``complete(job, conn)`` inside the handler's own write
  transaction makes "the result and done" one commit: if the lease was lost, the
  result rolls back with it.
- **Leases are renewed** by the keeper for every job this process runs (every
  third of the lease), so a handler blocked in one long call keeps its job; a
  handler may also call ``job.heartbeat()``, which raises ``LeaseLost`` when the
  job was taken over.
- **Retries.** A handler that raises is retried after ``job_retry_s`` doubled
  per attempt (capped at an hour), until ``max_attempts``; then the job is
  ``failed`` with the error text.
- **History.** Finished jobs (``done`` and ``failed``) are kept for
  ``job_retention_h`` (so ``wait`` and operators can see the outcome) and then
  deleted by the keeper: the table holds the live queue plus a bounded window.

Runners are background components (``background.py``): ``job_workers`` threads
per process named ``job-runner`` (``job-runner-2``, …), each claiming and
running jobs of the kinds that have a handler in this process, polling every
``RUNNER_INTERVAL_S`` and woken early by local enqueues; ``job-keeper`` renews
leases, releases dead processes' jobs and applies retention.

``run_after`` of a new job is the enqueuing host's clock (``enqueue`` only has a
connection); a host whose clock runs ahead of the database's delays its own jobs
by the difference, never anyone else's. Retry delays use the lease clock.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from .backends.base import Database, after_commit
from .backends.schema import jobs
from .errors import Conflict
from .ids import new_id, utcnow
from .settings import Settings
from .stores.streaming import _writer_gone

if TYPE_CHECKING:
    from .background import Background

__all__ = ["Job", "JobRecord", "JobQueue", "LeaseLost", "enqueue", "QUEUED", "RUNNING",
           "DONE", "FAILED", "RUNNER_INTERVAL_S"]

log = structlog.get_logger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
#: How often an idle runner looks for due jobs (local enqueues wake it at once).
RUNNER_INTERVAL_S = 1.0
#: How often ``wait`` re-reads the database when nothing local signalled.
WAIT_POLL_S = 0.2
RETENTION_INTERVAL_S = 300.0
MAX_RETRY_DELAY_S = 3600.0
MAX_ERROR_CHARS = 4000
MAX_KIND_CHARS = 64

Handler = Callable[["Job"], object]


class LeaseLost(Conflict):
    """The job is no longer this worker's: its lease expired and another process
    took it, or it was finished already. Whatever the worker was about to commit
    with it must not be committed."""


# Job queues of this process, to wake after a local enqueue commits.
_LOCAL: weakref.WeakSet[JobQueue] = weakref.WeakSet()
_LOCAL_LOCK = threading.Lock()


def _wake_local(engine: Engine, kind: str) -> None:
    with _LOCAL_LOCK:
        queues = list(_LOCAL)
    for queue in queues:
        if queue.db.engine is engine and queue.handles(kind):
            queue.wake()


def enqueue(conn: Connection, kind: str, payload: Any, *, owner_id: str | None = None,
            max_attempts: int = 5, delay_s: float = 0.0) -> str:
    """Add a job inside the caller's write transaction; returns its id.

    The job exists only if that transaction commits; this process's runners are
    woken when it does (other processes find it at their next poll).

    Args:
        conn: a connection from ``Database.write()``.
        kind: the handler's name (at most 64 characters).
        payload: JSON-serialisable data for the handler.
        owner_id: the user the job works for (``None`` for vault-wide jobs).
        max_attempts: how many times it may be tried before it ends ``failed``.
        delay_s: run no earlier than this many seconds from now.
    """
    if not kind or len(kind) > MAX_KIND_CHARS:
        raise ValueError(f"job kind must be 1-{MAX_KIND_CHARS} characters")
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    now = utcnow()
    job_id = new_id()
    conn.execute(sa.insert(jobs).values(
        id=job_id, owner_id=owner_id, kind=kind, payload=payload, status=QUEUED, attempts=0,
        max_attempts=max_attempts, run_after=now + timedelta(seconds=max(delay_s, 0.0)),
        created_at=now, updated_at=now))
    engine = conn.engine
    after_commit(conn, lambda: _wake_local(engine, kind))
    return job_id


@dataclass(frozen=True)
class JobRecord:
    """A job as stored (a snapshot)."""

    id: str
    kind: str
    owner_id: str | None
    payload: Any
    status: str
    attempts: int
    max_attempts: int
    run_after: datetime
    locked_by: str | None
    lease_expires_at: datetime | None
    error: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def finished(self) -> bool:
        return self.status in (DONE, FAILED)


@dataclass
class Job:
    """A job claimed by this process: what its handler receives.

    ``attempts`` counts this attempt (1 on the first run); together with
    ``locked_by`` it fences every later change of the row.
    """

    id: str
    kind: str
    owner_id: str | None
    payload: Any
    attempts: int
    max_attempts: int
    _queue: JobQueue = field(repr=False, compare=False)
    finished: bool = False
    lost: bool = False

    def heartbeat(self) -> None:
        """Renew the lease now.

        Raises:
            LeaseLost: the job was taken over; stop working on it.
        """
        self._queue.heartbeat(self)

    def complete(self, conn: Connection | None = None) -> None:
        """Mark the job done (in ``conn``'s transaction if given); see ``JobQueue.complete``."""
        self._queue.complete(self, conn)


class JobQueue:
    """The vault's job queue: handlers, runners and waiting (``vault.jobs``)."""

    def __init__(self, db: Database, settings: Settings, writer_id: str,
                 background: Background | None = None) -> None:
        self.db = db
        self.writer_id = writer_id
        self.lease_s = settings.job_lease_s
        self.retry_s = settings.job_retry_s
        self.retention_s = settings.job_retention_h * 3600.0
        self._handlers: dict[str, Handler] = {}
        self._active: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._generation = 0
        self._closing = threading.Event()
        self._last_retention = 0.0
        self._host = socket.gethostname()
        self._background = background
        self.runner_names = ["job-runner" if i == 0 else f"job-runner-{i + 1}"
                             for i in range(settings.job_workers)]
        self.keeper_interval_s = max(0.2, min(self.lease_s / 3, 10.0))
        if background is not None:
            for name in self.runner_names:
                background.register(name, RUNNER_INTERVAL_S,
                                     functools.partial(self.run_pending, name))
            background.register("job-keeper", self.keeper_interval_s, self.housekeeping)
        with _LOCAL_LOCK:
            _LOCAL.add(self)

    # -- handlers and enqueueing ------------------------------------------------

    def register_handler(self, kind: str, handler: Handler) -> None:
        """Run jobs of ``kind`` in this process with ``handler(job)``.

        The handler returns normally to have the job marked done (unless it
        called ``job.complete(conn)`` itself, e.g. inside its own write
        transaction), or raises to have it retried (then failed).
        """
        if kind in self._handlers:
            raise ValueError(f"a handler for job kind {kind!r} is already registered")
        self._handlers[kind] = handler
        self.wake()

    def handles(self, kind: str) -> bool:
        return kind in self._handlers

    def enqueue(self, kind: str, payload: Any, *, owner_id: str | None = None,
                max_attempts: int = 5, delay_s: float = 0.0) -> str:
        """``enqueue`` in a transaction of its own."""
        with self.db.write() as conn:
            return enqueue(conn, kind, payload, owner_id=owner_id, max_attempts=max_attempts,
                           delay_s=delay_s)

    def wake(self) -> None:
        """Have the runners look for jobs now."""
        if self._background is not None:
            for name in self.runner_names:
                self._background.wake(name)

    # -- reading ---------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        """The job ``job_id``, or ``None`` (never enqueued, or past retention)."""
        return self._records([job_id]).get(job_id)

    def _records(self, job_ids: list[str]) -> dict[str, JobRecord]:
        out: dict[str, JobRecord] = {}
        with self.db.read() as conn:
            for i in range(0, len(job_ids), 500):
                rows = conn.execute(sa.select(jobs).where(jobs.c.id.in_(job_ids[i:i + 500])))
                for row in rows.mappings():
                    out[row["id"]] = JobRecord(**row)
        return out

    def wait(self, job_ids: Iterable[str], timeout: float) -> dict[str, JobRecord | None]:
        """Wait until every job is finished (``done`` or ``failed``) or
        ``timeout`` seconds passed; returns each job as it then is (``None`` for
        an unknown id). Jobs may run in any process: the database is re-read
        every ``WAIT_POLL_S``, and at once when a local runner finishes a job."""
        ids = list(dict.fromkeys(job_ids))
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                generation = self._generation
            records = self._records(ids)
            pending = [i for i in ids if i in records and not records[i].finished]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                return {i: records.get(i) for i in ids}
            with self._changed:
                if self._generation == generation:
                    self._changed.wait(min(WAIT_POLL_S, remaining))

    def _notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    # -- claiming and finishing --------------------------------------------------

    def _due(self, kinds: list[str]) -> sa.ColumnElement[bool]:
        now = self.db.backend.db_now()
        return sa.and_(jobs.c.kind.in_(kinds), sa.or_(
            sa.and_(jobs.c.status == QUEUED, jobs.c.run_after <= now),
            sa.and_(jobs.c.status == RUNNING, jobs.c.lease_expires_at < now)))

    def claim(self, kinds: Iterable[str] | None = None, lease_s: float | None = None
              ) -> Job | None:
        """Take the next due job of ``kinds`` (default: the kinds with a handler
        here), or return ``None``. Runners call this; tests and tools may too."""
        wanted = sorted(self._handlers if kinds is None else set(kinds))
        if not wanted:
            return None
        due = self._due(wanted)
        # A cheap read first: an idle queue never takes SQLite's write lock.
        with self.db.read() as conn:
            if conn.execute(sa.select(jobs.c.id).where(due).limit(1)).first() is None:
                return None
        backend = self.db.backend
        pick = sa.select(jobs).where(due).order_by(jobs.c.run_after, jobs.c.id).limit(1)
        if backend.skip_locked:
            pick = pick.with_for_update(skip_locked=True)
        for _ in range(100):  # each pass commits one change; others may win races
            with self.db.write() as conn:
                row = conn.execute(pick).mappings().first()
                if row is None:
                    return None
                seen = (jobs.c.id == row["id"], jobs.c.status == row["status"],
                        jobs.c.attempts == row["attempts"])
                if row["status"] == RUNNING and row["attempts"] >= row["max_attempts"]:
                    # Its last attempt died with its worker.
                    conn.execute(sa.update(jobs).where(*seen).values(
                        status=FAILED, locked_by=None, lease_expires_at=None,
                        error=(f"worker {row['locked_by']} stopped during attempt "
                               f"{row['attempts']} of {row['max_attempts']}"),
                        updated_at=utcnow()))
                    continue
                attempts = row["attempts"] + 1
                claimed = conn.execute(sa.update(jobs).where(*seen).values(
                    status=RUNNING, locked_by=self.writer_id, attempts=attempts,
                    lease_expires_at=backend.lease_until(lease_s or self.lease_s),
                    updated_at=utcnow())).rowcount
                if claimed != 1:
                    continue
                if row["status"] == RUNNING:
                    log.info("job taken over after its lease expired", job_id=row["id"],
                             kind=row["kind"], previous_worker=row["locked_by"])
                return Job(id=row["id"], kind=row["kind"], owner_id=row["owner_id"],
                           payload=row["payload"], attempts=attempts,
                           max_attempts=row["max_attempts"], _queue=self)
        return None

    def _mine(self, job: Job) -> tuple[sa.ColumnElement[bool], ...]:
        return (jobs.c.id == job.id, jobs.c.status == RUNNING,
                jobs.c.locked_by == self.writer_id, jobs.c.attempts == job.attempts)

    def _fenced(self, conn: Connection, job: Job, values: Mapping[str, Any]) -> None:
        if conn.execute(sa.update(jobs).where(*self._mine(job)).values(**values)).rowcount != 1:
            job.lost = True
            raise LeaseLost(f"job {job.id} is no longer held by this worker")

    def heartbeat(self, job: Job) -> None:
        """Renew ``job``'s lease. Raises ``LeaseLost`` if it was taken over."""
        with self.db.write() as conn:
            self._fenced(conn, job, {"lease_expires_at": self.db.backend.lease_until(self.lease_s),
                                     "updated_at": utcnow()})

    def complete(self, job: Job, conn: Connection | None = None) -> None:
        """Mark ``job`` done: in ``conn``'s write transaction when given (the
        handler's result and "done" commit together), else in one of its own.

        Raises:
            LeaseLost: the job is no longer this worker's; ``conn``'s
                transaction must not commit (let the error propagate).
        """
        if conn is None:
            with self.db.write() as own:
                self.complete(job, own)
            return
        self._fenced(conn, job, {"status": DONE, "locked_by": None, "lease_expires_at": None,
                                 "error": None, "updated_at": utcnow()})

        def finished() -> None:
            job.finished = True
            self._notify()
        after_commit(conn, finished)

    def fail(self, job: Job, error: str) -> None:
        """Record a failed attempt: queued again after a back-off, or ``failed``
        with ``error`` once ``max_attempts`` were made. Raises ``LeaseLost``."""
        error = error[:MAX_ERROR_CHARS]
        with self.db.write() as conn:
            if job.attempts >= job.max_attempts:
                values: dict[str, Any] = {"status": FAILED}
            else:
                delay = min(self.retry_s * 2 ** (job.attempts - 1), MAX_RETRY_DELAY_S)
                values = {"status": QUEUED, "run_after": self.db.backend.lease_until(delay)}
            self._fenced(conn, job, {**values, "locked_by": None, "lease_expires_at": None,
                                     "error": error, "updated_at": utcnow()})
        job.finished = True
        self._notify()

    # -- running ---------------------------------------------------------------

    def run_once(self) -> bool:
        """Claim one job and run its handler; returns whether there was one."""
        job = self.claim()
        if job is None:
            return False
        with self._lock:
            self._active[job.id] = job
        try:
            self._handlers[job.kind](job)
        except LeaseLost:
            log.warning("job lost its lease while running", job_id=job.id, kind=job.kind)
        except Exception as exc:  # the handler's failure is the job's, not the runner's
            log.warning("job attempt failed", job_id=job.id, kind=job.kind,
                        attempt=job.attempts, max_attempts=job.max_attempts, exc_info=True)
            try:
                self.fail(job, f"{type(exc).__name__}: {exc}")
            except LeaseLost:
                log.warning("failed job had lost its lease", job_id=job.id)
        else:
            if not job.finished and not job.lost:
                try:
                    self.complete(job)
                except LeaseLost:
                    log.warning("job lost its lease before it completed", job_id=job.id)
        finally:
            with self._lock:
                self._active.pop(job.id, None)
            self._notify()
        return True

    def run_pending(self, runner: str | None = None) -> int:
        """Run due jobs until none is left (a runner's work); returns how many.

        Hands back after ``RUNNER_INTERVAL_S`` of work, asking to be run again at
        once, so that the vault can stop between jobs.
        """
        started = time.monotonic()
        count = 0
        while not self._closing.is_set() and self._handlers:
            if not self.run_once():
                break
            count += 1
            if time.monotonic() - started > RUNNER_INTERVAL_S:
                if runner is not None and self._background is not None:
                    self._background.wake(runner)
                break
        return count

    def housekeeping(self) -> None:
        """Renew the leases of jobs running here, release jobs held by dead
        processes of this host, and delete finished jobs past retention."""
        with self._lock:
            active = list(self._active.values())
        backend = self.db.backend
        if active:
            with self.db.write() as conn:
                for job in active:
                    renewed = conn.execute(sa.update(jobs).where(*self._mine(job)).values(
                        lease_expires_at=backend.lease_until(self.lease_s))).rowcount
                    if renewed != 1 and not job.finished:
                        job.lost = True
        with self.db.read() as conn:
            holders = conn.execute(
                sa.select(jobs.c.id, jobs.c.locked_by)
                .where(jobs.c.status == RUNNING,
                       jobs.c.locked_by.like(f"{self._host}:%"))).all()
        dead = [(r.id, r.locked_by) for r in holders if _writer_gone(r.locked_by, self._host)]
        if dead:
            with self.db.write() as conn:
                for job_id, holder in dead:
                    conn.execute(sa.update(jobs).where(
                        jobs.c.id == job_id, jobs.c.status == RUNNING,
                        jobs.c.locked_by == holder).values(
                            lease_expires_at=backend.lease_until(-1.0)))
            log.info("released jobs of stopped workers", jobs=len(dead))
            self.wake()
        if time.monotonic() - self._last_retention >= RETENTION_INTERVAL_S:
            self.delete_finished()
            self._last_retention = time.monotonic()

    def delete_finished(self, older_than_s: float | None = None) -> int:
        """Delete ``done`` and ``failed`` jobs last changed more than
        ``older_than_s`` (default: ``job_retention_h``) ago; returns how many."""
        age = self.retention_s if older_than_s is None else older_than_s
        with self.db.write() as conn:
            return int(conn.execute(sa.delete(jobs).where(
                jobs.c.status.in_((DONE, FAILED)),
                jobs.c.updated_at < utcnow() - timedelta(seconds=age))).rowcount)

    def close(self) -> None:
        """Stop claiming new jobs (runs in progress finish; the vault's
        ``Background.stop()`` waits for them)."""
        self._closing.set()
        with _LOCAL_LOCK:
            _LOCAL.discard(self)
