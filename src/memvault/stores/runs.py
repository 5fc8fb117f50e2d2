"""Runs of agents and workflows (seeds 002 and 003): a run, its numbered steps,
its end, and the retention that keeps the newest ones.

A run is ``running`` until it ends ``completed``, ``failed`` or ``cancelled``
(``complete``), or ``interrupted`` when nobody is left to end it — as a
streaming message. Steps are numbered 1, 2, … in the order they are appended:
the number is taken from the run row's ``step_count``, incremented in the
transaction that inserts the step (on PostgreSQL the row lock serialises
concurrent appends, on SQLite the write lock does). A client that sends the
number itself gets idempotency: the same step again is a no-op, other content
under that number or a number past the next one is a ``Conflict``.

Ownership and leases, as for streams (``streaming.py``):

- a library run (``scope.runs.start()``, a context manager) names this process
  as its ``writer``; while its block is open the vault's ``RunKeeper`` (the
  background component ``run-keeper``) renews its lease. If the process dies,
  the ``run-sweeper`` of any process on this host sees the dead pid (at start-up
  and periodically), and any other sees the lease lapse;
- an HTTP-driven run (``create``) has no writer: its lease of ``run_lease_s``
  is renewed by each step and by ``heartbeat``.

Either way the sweeper marks an abandoned run ``interrupted``, steps kept.
Leases are set and compared in SQL on the backend's clock (the database's on
PostgreSQL).

Retention (``prune``) runs in the transaction that ends a run: per owner and
workflow the newest ``runs_keep`` finished runs (by ``started_at``, then id)
stay, and with ``runs_max_age_days`` none started before that age. It walks
the ``ix_runs_retention`` index newest first, skipping the kept ones (an
``OFFSET`` of ``runs_keep``) and taking only the few rows beyond, so its cost
does not grow with the history. Running runs are never touched; steps go with
their run (ON DELETE CASCADE).
"""

from __future__ import annotations

import builtins
import socket
import threading
import weakref
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, get_args

import sqlalchemy as sa
import structlog
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from ..backends.base import Backend, Database
from ..backends.schema import conversations, run_steps, runs
from ..errors import Conflict, Invalid, MemvaultError, NotFound
from ..ids import INT32_MAX, check_int, new_id, utcnow
from ..models import Page
from ..settings import Settings
from ._context import StoreContext
from ._paging import DEFAULT_LIMIT, keyset_page
from ._text import check_json, check_text
from .agents import agent_exists
from .streaming import _writer_gone

__all__ = ["Run", "RunDetail", "RunStep", "RunLease", "RunStatus", "StepStatus", "RunStore",
           "ActiveRun", "RunKeeper", "prune", "apply_retention", "FINAL_STATUSES",
           "MAX_ERROR_CHARS"]

log = structlog.get_logger(__name__)

RunStatus = Literal["running", "completed", "failed", "cancelled", "interrupted"]
StepStatus = Literal["pending", "running", "completed", "failed", "skipped", "cancelled"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
STEP_STATUSES: tuple[str, ...] = get_args(StepStatus)
#: What ``complete`` may set (``interrupted`` is the sweeper's alone).
FINAL_STATUSES = ("completed", "failed", "cancelled")
#: The longest error text kept (a library run's exception text is cut to it).
MAX_ERROR_CHARS = 100_000
_NAME_CHARS = 200
#: Finished runs deleted per retention pass (a lowered ``runs_keep`` is caught up
#: in passes of this many, each in its own transaction).
PRUNE_BATCH = 500


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class RunStep(_Record):
    """One step of a run, numbered from 1 in the order steps were appended."""

    run_id: str
    step: int
    agent: str | None = None
    action: str
    status: StepStatus = "completed"
    result: Any = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    created_at: datetime


class Run(_Record):
    """An agent or workflow run (in listings and as started or ended)."""

    id: str
    workflow: str
    agent_id: str | None = None
    conversation_id: str | None = None
    status: RunStatus
    input: Any = None
    output: Any = None
    error: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    step_count: int = 0
    started_at: datetime
    finished_at: datetime | None = None


class RunDetail(Run):
    """A run with its steps in order (``GET /api/runs/{id}``)."""

    steps: list[RunStep] = Field(default_factory=list)


class RunLease(_Record):
    """A running run's lease, as a heartbeat renewed it."""

    id: str
    status: RunStatus
    lease_expires_at: datetime


# -- statements, built once (see conversations.py on why) ------------------------------------

_bp = sa.bindparam
_R, _S = runs.c, run_steps.c
_RUN_COLS = (_R.id, _R.workflow, _R.agent_id, _R.conversation_id, _R.status, _R.input,
             _R.output, _R.error, _R.metadata, _R.step_count, _R.started_at, _R.finished_at)
_RUN_KEY = sa.and_(_R.owner_id == _bp("owner"), _R.id == _bp("run_id"))
_RUN_GET = sa.select(*_RUN_COLS).where(_RUN_KEY)
_RUN_LOCK = sa.select(_R.status, _R.step_count, _R.workflow).where(_RUN_KEY).with_for_update()
_RUN_STATUS = sa.select(_R.status).where(_RUN_KEY)
_RUN_DELETE = runs.delete().where(_RUN_KEY)
_RUN_FINISH = (runs.update().where(_RUN_KEY, _R.status == "running")
               .values(status=_bp("b_status"), output=_bp("b_output"), error=_bp("b_error"),
                       finished_at=_bp("b_now"), writer=None, lease_expires_at=None)
               .returning(*_RUN_COLS))
_STEP_COLS = (_S.run_id, _S.step, _S.agent, _S.action, _S.status, _S.result, _S.started_at,
              _S.finished_at, _S.created_at)
_STEP_OF = sa.and_(_S.owner_id == _bp("owner"), _S.run_id == _bp("run_id"))
_STEPS = sa.select(*_STEP_COLS).where(_STEP_OF).order_by(_S.step)
_STEP_AT = sa.select(*_STEP_COLS).where(_STEP_OF, _S.step == _bp("b_step"))
_STEP_INSERT = run_steps.insert()
# Leases are the backend's SQL (the database's clock on PostgreSQL) with the
# lease as a bound parameter: built once per backend kind.
_LEASED: dict[tuple[type[Backend], str], Any] = {}


def _leased(backend: Backend, name: str) -> Any:
    key = (type(backend), name)
    found = _LEASED.get(key)
    if found is None:
        lease = backend.lease_param_expr()
        if name == "insert":
            found = runs.insert().values(lease_expires_at=lease)
        elif name == "next_step":  # take the next number and renew the lease, atomically
            found = (runs.update().where(_RUN_KEY, _R.status == "running")
                     .values(step_count=_R.step_count + 1, lease_expires_at=lease)
                     .returning(_R.step_count))
        elif name == "set_step":
            found = (runs.update().where(_RUN_KEY)
                     .values(step_count=_bp("b_count"), lease_expires_at=lease))
        elif name == "heartbeat":
            found = (runs.update().where(_RUN_KEY, _R.status == "running")
                     .values(lease_expires_at=lease).returning(_R.lease_expires_at))
        else:  # "renew": a library run still ours
            found = (runs.update().where(_RUN_KEY, _R.status == "running",
                                         _R.writer == _bp("b_writer"))
                     .values(lease_expires_at=lease))
        _LEASED[key] = found
    return found


def _run(row: Any) -> Run:
    (run_id, workflow, agent_id, conv_id, status, input_, output, error, metadata, count,
     started, finished) = row
    return Run(id=run_id, workflow=workflow, agent_id=agent_id, conversation_id=conv_id,
               status=status, input=input_, output=output, error=error,
               metadata=metadata or {}, step_count=count, started_at=started,
               finished_at=finished)


def _step(row: Any) -> RunStep:
    run_id, step, agent, action, status, result, started, finished, created = row
    return RunStep(run_id=run_id, step=step, agent=agent, action=action, status=status,
                   result=result, started_at=started, finished_at=finished, created_at=created)


# -- checks ---------------------------------------------------------------------------------

def _name(value: Any, field: str, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    check_text(value, field)
    if required and not value.strip():
        raise Invalid(f"{field} must not be empty", field=field)
    if len(value) > _NAME_CHARS:
        raise Invalid(f"{field} must be at most {_NAME_CHARS} characters", field=field)
    return str(value)


def _id(value: Any, field: str) -> str:
    check_text(value, field)
    if not value or len(value) > 64:
        raise Invalid(f"{field} must be an id of 1-64 characters", field=field)
    return str(value)


def _when(value: Any, field: str) -> datetime | None:
    """An aware UTC datetime (a naive one is taken as UTC)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise Invalid(f"{field} must be a datetime", field=field)
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise Invalid(f"{field} is out of range", field=field) from None


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    check_text(error, "error")
    if len(error) > MAX_ERROR_CHARS:
        raise Invalid(f"error must be at most {MAX_ERROR_CHARS} characters", field="error")
    return str(error)


def _describe(exc: BaseException) -> str:
    """An exception as storable error text (NUL and lone surrogates replaced, cut)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return text[:MAX_ERROR_CHARS]


# -- retention --------------------------------------------------------------------------------

def prune(conn: Connection, backend: Backend, settings: Settings, owner_id: str,
          workflow: str) -> int:
    """Delete, in ``conn``'s transaction, at most ``PRUNE_BATCH`` finished runs of
    ``(owner_id, workflow)`` beyond retention; returns how many went.

    Both lookups are ranges of ``ix_runs_retention``: the newest finished runs
    are skipped by ``OFFSET runs_keep`` (so the walk reads ``runs_keep`` plus the
    few rows beyond), and the age limit is a range below the cut-off. On
    PostgreSQL rows another transaction holds are skipped, not waited for (a
    concurrent pruner takes them): skipping only moves the window deeper, so a
    kept run is never deleted.
    """
    r = runs.c
    mine = (r.owner_id == owner_id, r.workflow == workflow, r.status != "running")
    newest_first = (r.started_at.desc(), r.id.desc())
    picks = [sa.select(r.id).where(*mine).order_by(*newest_first)
             .offset(settings.runs_keep).limit(PRUNE_BATCH)]
    if settings.runs_max_age_days is not None:
        cutoff = utcnow() - timedelta(days=settings.runs_max_age_days)
        picks.append(sa.select(r.id).where(*mine, r.started_at < cutoff)
                     .order_by(*newest_first).limit(PRUNE_BATCH))
    doomed: set[str] = set()
    for pick in picks:
        if backend.skip_locked:
            pick = pick.with_for_update(skip_locked=True)
        doomed.update(conn.execute(pick).scalars())
    if not doomed:
        return 0
    conn.execute(runs.delete().where(r.owner_id == owner_id, r.status != "running",
                                     r.id.in_(sorted(doomed))))
    return len(doomed)


def apply_retention(db: Database, settings: Settings, owner_id: str, workflow: str) -> int:
    """Prune ``(owner_id, workflow)`` until nothing is beyond retention (passes
    after the first only when a lowered ``runs_keep`` left many behind)."""
    removed = 0
    while True:
        with db.write() as conn:
            n = prune(conn, db.backend, settings, owner_id, workflow)
        removed += n
        if n < PRUNE_BATCH:
            return removed


def _finish(db: Database, settings: Settings, owner_id: str, run_id: str, status: str,
            output: Any, error: str | None, guard: sa.ColumnElement[bool] | None = None
            ) -> Any:
    """End a running run and apply retention to its workflow, in one transaction.
    Returns the finished row, or ``None`` when it was not running (or ``guard``
    no longer held)."""
    key = {"owner": owner_id, "run_id": run_id}
    statement = _RUN_FINISH if guard is None else _RUN_FINISH.where(guard)
    with db.write() as conn:
        row = conn.execute(statement, {**key, "b_status": status, "b_output": output,
                                       "b_error": error, "b_now": utcnow()}).first()
        if row is None:
            return None
        more = prune(conn, db.backend, settings, owner_id, row.workflow) == PRUNE_BATCH
    if more:
        apply_retention(db, settings, owner_id, row.workflow)
    return row


class RunStore:
    """One owner's runs. Obtain through ``vault.for_user(uid).runs``."""

    def __init__(self, ctx: StoreContext, owner_id: str) -> None:
        self._ctx = ctx
        self._db = ctx.db
        self._settings = ctx.settings
        self._clock = ctx.clock
        self._owner = owner_id

    def _key(self, run_id: str) -> dict[str, str]:
        check_text(run_id, "id")
        return {"owner": self._owner, "run_id": run_id}

    def _lease_param(self) -> Any:
        return self._db.backend.lease_param(self._settings.run_lease_s)

    # -- starting -------------------------------------------------------------

    def _insert(self, workflow: str, agent_id: str | None, conversation_id: str | None,
                input: Any, metadata: dict[str, Any] | None, writer: str | None) -> Run:
        workflow = _name(workflow, "workflow") or ""
        if agent_id is not None:
            _id(agent_id, "agent_id")
        if conversation_id is not None:
            _id(conversation_id, "conversation_id")
        check_json(input, "input")
        if metadata is not None and not isinstance(metadata, dict):
            raise Invalid("metadata must be a JSON object", field="metadata")
        check_json(metadata or {}, "metadata")
        now = self._clock()
        row = {"owner_id": self._owner, "id": new_id(), "workflow": workflow,
               "agent_id": agent_id, "conversation_id": conversation_id, "status": "running",
               "input": input, "output": None, "error": None, "metadata": metadata or {},
               "step_count": 0, "writer": writer, "started_at": now, "finished_at": None}
        with self._db.write() as conn:
            # Named records must be this owner's: refused naming the field (as a
            # graph edge to a missing node is), never linked across owners.
            if agent_id is not None and not agent_exists(conn, self._owner, agent_id):
                raise Invalid(f"agent {agent_id!r} does not exist", field="agent_id")
            if conversation_id is not None and conn.execute(
                    sa.select(conversations.c.id).where(
                        conversations.c.owner_id == self._owner,
                        conversations.c.id == conversation_id)).first() is None:
                raise Invalid(f"conversation {conversation_id!r} does not exist",
                              field="conversation_id")
            conn.execute(_leased(self._db.backend, "insert"),
                         {**row, "b_lease": self._lease_param()})
        return Run(**{k: v for k, v in row.items() if k not in ("owner_id", "writer")})

    def create(self, workflow: str, agent_id: str | None = None,
               conversation_id: str | None = None, input: Any = None,
               metadata: dict[str, Any] | None = None) -> Run:
        """Start a run a client drives (over HTTP): no process holds it, its lease
        alone keeps it ``running``, renewed by each step and by ``heartbeat``.

        Raises:
            Invalid: an empty or long ``workflow``; ``agent_id`` or
                ``conversation_id`` not one of this owner's; ``input`` or
                ``metadata`` not storable JSON.
        """
        return self._insert(workflow, agent_id, conversation_id, input, metadata, None)

    def start(self, workflow: str, agent_id: str | None = None,
              conversation_id: str | None = None, input: Any = None,
              metadata: dict[str, Any] | None = None) -> ActiveRun:
        """Start a run this process writes, as a context manager.

        Example:
            with scope.runs.start("morning_briefing", agent_id=aid) as run:
                run.step(agent="claude", action="greet", result={"ok": True})
                run.output = {"summary": "…"}

        Leaving the block completes the run (with ``run.output``); an exception
        marks it ``failed`` with the error text and propagates. Each ``step()``
        is durable when it returns. The run is created at once (``run.id``);
        its lease is renewed while the block is open.
        """
        record = self._insert(workflow, agent_id, conversation_id, input, metadata,
                              self._ctx.writer_id)
        return ActiveRun(self, record)

    # -- reading ----------------------------------------------------------------

    def get(self, run_id: str) -> RunDetail:
        """The run with its steps in order.

        Raises:
            NotFound: no such run for this owner.
        """
        key = self._key(run_id)
        with self._db.read() as conn:
            row = conn.execute(_RUN_GET, key).first()
            if row is None:
                raise NotFound(f"run {run_id!r} not found")
            steps = [_step(s) for s in conn.execute(_STEPS, key)]
        return RunDetail(**dict(_run(row)), steps=steps)

    def summary(self, run_id: str) -> Run:
        """The run without its steps.

        Raises:
            NotFound: no such run for this owner.
        """
        with self._db.read() as conn:
            row = conn.execute(_RUN_GET, self._key(run_id)).first()
        if row is None:
            raise NotFound(f"run {run_id!r} not found")
        return _run(row)

    def steps(self, run_id: str) -> builtins.list[RunStep]:
        """The run's steps in order.

        Raises:
            NotFound: no such run for this owner.
        """
        return self.get(run_id).steps

    def list(self, workflow: str | None = None, status: str | None = None,
             agent_id: str | None = None, limit: int = DEFAULT_LIMIT,
             cursor: str | None = None) -> Page[Run]:
        """Runs newest first (without steps), only those matching each filter given."""
        query = sa.select(*_RUN_COLS).where(_R.owner_id == self._owner)
        if workflow is not None:
            query = query.where(_R.workflow == check_text(workflow, "workflow"))
        if status is not None:
            if status not in RUN_STATUSES:
                raise Invalid(f"status must be one of {', '.join(RUN_STATUSES)}",
                              field="status")
            query = query.where(_R.status == status)
        if agent_id is not None:
            query = query.where(_R.agent_id == check_text(agent_id, "agent_id"))
        with self._db.read() as conn:
            return keyset_page(conn, query, _R.id, limit, cursor, _run)

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(runs)
                                    .where(_R.owner_id == self._owner)).scalar_one())

    # -- steps --------------------------------------------------------------------

    def append_step(self, run_id: str, action: str, *, agent: str | None = None,
                    status: str = "completed", result: Any = None,
                    started_at: datetime | None = None, finished_at: datetime | None = None,
                    step: int | None = None) -> tuple[RunStep, bool]:
        """Append a step to a running run, durably; renews the run's lease.

        Without ``step`` the step takes the next number. With ``step`` (a
        client's idempotency): the next number appends; a number already stored
        with the same content returns the stored step unchanged.

        Returns:
            The step, and whether it was created now (``False``: an idempotent repeat).

        Raises:
            NotFound: no such run for this owner.
            Conflict: the run is no longer running; ``step`` is stored with other
                content, or would leave a gap.
            Invalid: an empty or long ``action``/``agent``, an unknown
                ``status``, ``result`` not storable JSON.
        """
        key = self._key(run_id)
        values = {"agent": _name(agent, "agent", required=False),
                  "action": _name(action, "action"),
                  "status": status, "result": result,
                  "started_at": _when(started_at, "started_at"),
                  "finished_at": _when(finished_at, "finished_at")}
        if status not in STEP_STATUSES:
            raise Invalid(f"status must be one of {', '.join(STEP_STATUSES)}", field="status")
        check_json(result, "result")
        if step is not None:
            check_int(step, "step", 1, INT32_MAX)
        backend = self._db.backend
        with self._db.write() as conn:
            if step is None:
                number = conn.execute(_leased(backend, "next_step"),
                                      {**key, "b_lease": self._lease_param()}
                                      ).scalar_one_or_none()
                if number is None:
                    raise self._not_running(conn, key)
            else:
                row = conn.execute(_RUN_LOCK, key).first()
                if row is None:
                    raise NotFound(f"run {run_id!r} not found")
                if row.status != "running":
                    raise Conflict(f"run is {row.status}; it takes no more steps")
                if step <= row.step_count:
                    stored = _step(conn.execute(_STEP_AT, {**key, "b_step": step}).one())
                    if any(getattr(stored, k) != v for k, v in values.items()):
                        raise Conflict(f"step {step} is already stored with other content")
                    return stored, False
                if step > row.step_count + 1:
                    raise Conflict(f"step {step} would leave a gap after step {row.step_count}")
                number = step
                conn.execute(_leased(backend, "set_step"),
                             {**key, "b_count": step, "b_lease": self._lease_param()})
            now = self._clock()
            conn.execute(_STEP_INSERT, {"owner_id": self._owner, "run_id": run_id,
                                        "step": number, **values, "created_at": now})
        return RunStep(run_id=run_id, step=number, created_at=now, **values), True

    def _not_running(self, conn: Connection, key: dict[str, str]) -> MemvaultError:
        status = conn.execute(_RUN_STATUS, key).scalar_one_or_none()
        if status is None:
            return NotFound(f"run {key['run_id']!r} not found")
        return Conflict(f"run is {status}; it takes no more steps")

    def heartbeat(self, run_id: str) -> RunLease:
        """Renew the lease of a running run without a step.

        Raises:
            NotFound: no such run for this owner.
            Conflict: the run is no longer running.
        """
        key = self._key(run_id)
        with self._db.write() as conn:
            lease = conn.execute(_leased(self._db.backend, "heartbeat"),
                                 {**key, "b_lease": self._lease_param()}).scalar_one_or_none()
            if lease is None:
                status = conn.execute(_RUN_STATUS, key).scalar_one_or_none()
                if status is None:
                    raise NotFound(f"run {run_id!r} not found")
                raise Conflict(f"run is {status}; it is no longer running")
        return RunLease(id=run_id, status="running", lease_expires_at=lease)

    # -- ending -------------------------------------------------------------------

    def complete(self, run_id: str, status: str = "completed", output: Any = None,
                 error: str | None = None) -> Run:
        """End a running run ``completed``, ``failed`` or ``cancelled``, then
        apply retention to its workflow.

        Raises:
            NotFound: no such run for this owner.
            Conflict: the run already ended (interrupted included).
            Invalid: an unknown ``status``; ``output`` not storable JSON.
        """
        key = self._key(run_id)
        if status not in FINAL_STATUSES:
            raise Invalid(f"status must be one of {', '.join(FINAL_STATUSES)}", field="status")
        check_json(output, "output")
        error = _error_text(error)
        row = _finish(self._db, self._settings, self._owner, run_id, status, output, error)
        if row is None:
            with self._db.read() as conn:
                found = conn.execute(_RUN_STATUS, key).scalar_one_or_none()
            if found is None:
                raise NotFound(f"run {run_id!r} not found")
            raise Conflict(f"run is already {found}")
        return _run(row)

    def delete(self, run_id: str) -> None:
        """Delete the run with its steps (running or not).

        Raises:
            NotFound: no such run for this owner.
        """
        with self._db.write() as conn:
            gone = conn.execute(_RUN_DELETE, self._key(run_id)).rowcount
        if not gone:
            raise NotFound(f"run {run_id!r} not found")


class ActiveRun:
    """A run this process writes; use as a context manager (see ``RunStore.start``)."""

    def __init__(self, store: RunStore, record: Run) -> None:
        self._store = store
        self._keeper = store._ctx.run_keeper
        self.record = record
        self.id = record.id
        self.owner_id = store._owner
        #: Stored as the run's ``output`` when the block completes it.
        self.output: Any = None
        self._finished = False
        # Renewed only once used: a run started but never entered nor stepped is
        # abandoned, and ends ``interrupted`` with its lease.
        self._registered = False

    def _register(self) -> None:
        if not self._registered and not self._finished and self._keeper is not None:
            self._registered = True
            self._keeper.register(self)

    def _unregister(self) -> None:
        self._finished = True
        if self._keeper is not None:
            self._keeper.unregister(self)

    @property
    def finished(self) -> bool:
        return self._finished

    def step(self, action: str, *, agent: str | None = None, status: str = "completed",
             result: Any = None, started_at: datetime | None = None,
             finished_at: datetime | None = None) -> RunStep:
        """Append the next step; it is durable when this returns.

        Raises:
            Conflict: the run ended (e.g. interrupted after its lease lapsed).
        """
        self._register()
        if self._finished:
            raise Conflict("this run is already finished")
        recorded, _ = self._store.append_step(self.id, action, agent=agent, status=status,
                                              result=result, started_at=started_at,
                                              finished_at=finished_at)
        return recorded

    def complete(self, output: Any = None, status: str = "completed",
                 error: str | None = None) -> Run:
        """End the run now (``completed`` by default); leaving the block then does nothing."""
        if self._finished:
            raise Conflict("this run is already finished")
        try:
            self.record = self._store.complete(self.id, status, output, error)
        finally:
            self._unregister()
        return self.record

    def fail(self, error: str | BaseException) -> Run:
        """End the run ``failed`` with ``error`` (text, or an exception described)."""
        text = _describe(error) if isinstance(error, BaseException) else error
        return self.complete(status="failed", error=text)

    def cancel(self) -> Run:
        return self.complete(status="cancelled")

    def __enter__(self) -> ActiveRun:
        self._register()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._finished:
            return
        if exc is None:
            self.complete(self.output)
            return
        try:
            self.fail(exc)
        except MemvaultError:  # the block's own exception is the one to see
            log.warning("could not mark the run failed", run_id=self.id, exc_info=True)


class RunKeeper:
    """One per vault: renews the leases of this process's open library runs
    (the background component ``run-keeper``) and marks abandoned runs
    ``interrupted`` (``run-sweeper``, also once at start-up)."""

    def __init__(self, db: Database, settings: Settings, writer_id: str) -> None:
        self._db = db
        self._settings = settings
        self._writer_id = writer_id
        self._lock = threading.Lock()
        # Weak: a handle dropped without ending its run stops being renewed.
        self._active: weakref.WeakValueDictionary[str, ActiveRun] = (
            weakref.WeakValueDictionary())

    @property
    def renew_interval_s(self) -> float:
        return self._settings.run_lease_s / 3

    @property
    def sweep_interval_s(self) -> float:
        return max(0.2, min(self._settings.run_lease_s / 3, 10.0))

    def register(self, run: ActiveRun) -> None:
        with self._lock:
            self._active[run.id] = run

    def unregister(self, run: ActiveRun) -> None:
        with self._lock:
            self._active.pop(run.id, None)

    def active(self) -> builtins.list[ActiveRun]:
        with self._lock:
            return builtins.list(self._active.values())

    def renew_leases(self) -> None:
        """Extend the lease of each open library run still running and ours."""
        active = self.active()
        if not active:
            return
        backend = self._db.backend
        lease = backend.lease_param(self._settings.run_lease_s)
        with self._db.write() as conn:
            conn.execute(_leased(backend, "renew"),
                         [{"owner": r.owner_id, "run_id": r.id, "b_writer": self._writer_id,
                           "b_lease": lease} for r in active])

    def sweep(self, check_dead_writers: bool = True) -> int:
        """Mark abandoned running runs ``interrupted`` (steps kept) and apply
        retention to their workflows. Abandoned: the lease lapsed (compared in
        SQL on the backend's clock), or (``check_dead_writers``) the library
        process writing it ran on this host and is gone. Returns how many."""
        db = self._db
        host = socket.gethostname()

        def expired() -> sa.ColumnElement[bool]:
            return sa.or_(_R.lease_expires_at.is_(None),
                          _R.lease_expires_at < db.backend.db_now())

        with db.read() as conn:
            found = [(row.owner_id, row.id, None) for row in conn.execute(
                sa.select(_R.owner_id, _R.id).where(_R.status == "running", expired()))]
            if check_dead_writers:
                found += [(row.owner_id, row.id, row.writer) for row in conn.execute(
                    sa.select(_R.owner_id, _R.id, _R.writer).where(
                        _R.status == "running",
                        _R.writer.startswith(f"{host}:", autoescape=True)))
                    if _writer_gone(row.writer, host)]
        marked = 0
        for owner_id, run_id, dead_writer in found:
            # Conditional on what we saw: a lease renewed meanwhile keeps its run.
            guard = expired() if dead_writer is None else _R.writer == dead_writer
            if self.interrupt(owner_id, run_id, guard):
                marked += 1
        if marked:
            log.info("runs interrupted", count=marked)
        return marked

    def interrupt(self, owner_id: str, run_id: str,
                  guard: sa.ColumnElement[bool] | None = None) -> bool:
        """Mark one running run ``interrupted`` (retention applied)."""
        return _finish(self._db, self._settings, owner_id, run_id, "interrupted", None,
                       None, guard) is not None

    def close(self) -> None:
        """On the vault's close: runs still open in this process end ``interrupted``."""
        for run in self.active():
            run._unregister()
            try:
                self.interrupt(run.owner_id, run.id, _R.writer == self._writer_id)
            except MemvaultError:
                log.warning("could not mark an open run interrupted", run_id=run.id,
                            exc_info=True)
