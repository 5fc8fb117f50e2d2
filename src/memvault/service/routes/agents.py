"""``/api/agents``: agent definitions (seeds 002 and 003)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ...models import Page
from ...stores.agents import Agent
from ..deps import DEFAULT, Cursor, Limit, UserScope
from ..schemas import AgentIn, AgentPatch

router = APIRouter(prefix="/api/agents", tags=["agents"])


@router.post("", status_code=201, response_model=Agent)
def create_agent(body: AgentIn, scope: UserScope) -> Agent:
    return scope.agents.create(body.name, body.kind, body.instructions, body.model, body.tools,
                               body.config)


@router.get("", response_model=Page[Agent])
def list_agents(scope: UserScope, limit: Limit = DEFAULT, cursor: Cursor = None) -> Page[Agent]:
    return scope.agents.list(limit, cursor)


@router.get("/{agent_id}", response_model=Agent)
def get_agent(agent_id: str, scope: UserScope) -> Agent:
    return scope.agents.get(agent_id)


@router.patch("/{agent_id}", response_model=Agent)
def update_agent(agent_id: str, body: AgentPatch, scope: UserScope) -> Agent:
    given = body.model_dump(exclude_unset=True)
    if "name" in given and given["name"] is None:  # a name cannot be cleared
        given.pop("name")
    return scope.agents.update(agent_id, **given)


@router.delete("/{agent_id}", status_code=204)
def delete_agent(agent_id: str, scope: UserScope) -> Response:
    scope.agents.delete(agent_id)
    return Response(status_code=204)
