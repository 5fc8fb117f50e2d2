"""``/api/runs``: workflow and agent runs a client drives — start, steps,
heartbeat, completion — and their history (seeds 002 and 003).

A run started here has no writer process: its lease (``MEMVAULT_RUN_LEASE_S``)
is renewed by each step and by ``POST /api/runs/{id}/heartbeat``; a run left
untouched longer ends ``interrupted``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from ...models import Page
from ...stores.runs import Run, RunDetail, RunLease, RunStatus, RunStep
from ..deps import DEFAULT, Cursor, Limit, UserScope
from ..schemas import RunCompleteIn, RunIn, RunStepIn

router = APIRouter(prefix="/api/runs", tags=["runs"])


@router.post("", status_code=201, response_model=Run)
def create_run(body: RunIn, scope: UserScope) -> Run:
    return scope.runs.create(body.workflow, body.agent_id, body.conversation_id, body.input,
                             body.metadata)


@router.get("", response_model=Page[Run])
def list_runs(scope: UserScope, workflow: Annotated[str | None, Query(max_length=200)] = None,
              status: RunStatus | None = None,
              agent_id: Annotated[str | None, Query(max_length=64)] = None,
              limit: Limit = DEFAULT, cursor: Cursor = None) -> Page[Run]:
    """Newest first; each filter given narrows the list."""
    return scope.runs.list(workflow, status, agent_id, limit, cursor)


@router.get("/{run_id}", response_model=RunDetail)
def get_run(run_id: str, scope: UserScope) -> RunDetail:
    """The run with its steps in order."""
    return scope.runs.get(run_id)


@router.post("/{run_id}/steps", status_code=201, response_model=RunStep, responses={
    200: {"description": "an idempotent repeat of a stored step (nothing changed)"},
    409: {"description": "the run ended, the step is stored with other content, or a gap"}})
def append_step(run_id: str, body: RunStepIn, scope: UserScope, response: Response) -> RunStep:
    step, created = scope.runs.append_step(
        run_id, body.action, agent=body.agent, status=body.status, result=body.result,
        started_at=body.started_at, finished_at=body.finished_at, step=body.step)
    response.status_code = 201 if created else 200
    return step


@router.post("/{run_id}/heartbeat", response_model=RunLease, responses={
    404: {"description": "no such run"}, 409: {"description": "the run is not running"}})
def heartbeat(run_id: str, scope: UserScope) -> RunLease:
    """Keep a run alive between steps: renews its lease of ``MEMVAULT_RUN_LEASE_S``."""
    return scope.runs.heartbeat(run_id)


@router.post("/{run_id}/complete", response_model=Run, responses={
    409: {"description": "the run already ended (or was interrupted)"}})
def complete_run(run_id: str, body: RunCompleteIn, scope: UserScope) -> Run:
    return scope.runs.complete(run_id, body.status, body.output, body.error)


@router.delete("/{run_id}", status_code=204)
def delete_run(run_id: str, scope: UserScope) -> Response:
    scope.runs.delete(run_id)
    return Response(status_code=204)
