"""Agents: a user's agent definitions (seeds 002 and 003) — a name, an optional
kind, instructions, model, the tools it may call and free configuration.

An agent is a record runs may name (``runs.agent_id``); deleting it leaves the
history of its runs as it was (runs keep the id, no cascade). Updates replace
the fields given and leave the others (PATCH semantics).
"""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from ..backends.schema import agents
from ..errors import Invalid, NotFound
from ..ids import new_id
from ..models import Page
from ._context import StoreContext
from ._paging import DEFAULT_LIMIT, keyset_page
from ._text import check_json, check_text
from .entities import UNSET

__all__ = ["Agent", "AgentStore", "agent_exists", "MAX_TOOLS", "MAX_INSTRUCTIONS"]

#: Most tools one agent may list, and the longest tool name.
MAX_TOOLS = 256
MAX_TOOL_NAME = 200
#: Longest ``instructions`` text (a system prompt, however long, fits).
MAX_INSTRUCTIONS = 100_000
_LENGTHS = {"name": 200, "kind": 64, "model": 200}


class Agent(BaseModel):
    """An agent definition (also the HTTP response body)."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    kind: str | None = None
    instructions: str | None = None
    model: str | None = None
    tools: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


_COLUMNS = (agents.c.id, agents.c.name, agents.c.kind, agents.c.instructions, agents.c.model,
            agents.c.tools, agents.c.config, agents.c.created_at, agents.c.updated_at)


def _agent(row: Any) -> Agent:
    agent_id, name, kind, instructions, model, tools, config, created, updated = row
    return Agent(id=agent_id, name=name, kind=kind, instructions=instructions, model=model,
                 tools=tools or [], config=config or {}, created_at=created, updated_at=updated)


def _short(value: Any, field: str, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    check_text(value, field)
    if required and not value.strip():
        raise Invalid(f"{field} must not be empty", field=field)
    most = _LENGTHS[field]
    if len(value) > most:
        raise Invalid(f"{field} must be at most {most} characters", field=field)
    return str(value)


def _check_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Column values for the given fields, checked; ``None`` clears a field
    (``tools`` becomes ``[]``, ``config`` ``{}``; ``name`` cannot be cleared)."""
    out: dict[str, Any] = {}
    if "name" in values:
        out["name"] = _short(values["name"], "name", required=True)
    for field in ("kind", "model"):
        if field in values:
            out[field] = _short(values[field], field)
    if "instructions" in values:
        text = values["instructions"]
        if text is not None:
            check_text(text, "instructions")
            if len(text) > MAX_INSTRUCTIONS:
                raise Invalid(f"instructions must be at most {MAX_INSTRUCTIONS} characters",
                              field="instructions")
        out["instructions"] = text
    if "tools" in values:
        tools = values["tools"] if values["tools"] is not None else []
        if not isinstance(tools, list | tuple):
            raise Invalid("tools must be a list of strings", field="tools")
        if len(tools) > MAX_TOOLS:
            raise Invalid(f"an agent lists at most {MAX_TOOLS} tools", field="tools")
        for tool in tools:
            check_text(tool, "tools")
            if not tool.strip() or len(tool) > MAX_TOOL_NAME:
                raise Invalid(f"each tool must be 1-{MAX_TOOL_NAME} characters", field="tools")
        out["tools"] = list(tools)
    if "config" in values:
        config = values["config"] if values["config"] is not None else {}
        if not isinstance(config, dict):
            raise Invalid("config must be a JSON object", field="config")
        out["config"] = check_json(config, "config")
    return out


def agent_exists(conn: Connection, owner_id: str, agent_id: str) -> bool:
    """Whether ``owner_id`` has the agent ``agent_id`` (for stores that name one)."""
    return conn.execute(sa.select(agents.c.id).where(
        agents.c.owner_id == owner_id, agents.c.id == agent_id)).first() is not None


class AgentStore:
    """One owner's agents. Obtain through ``vault.for_user(uid).agents``."""

    def __init__(self, ctx: StoreContext, owner_id: str) -> None:
        self._db = ctx.db
        self._clock = ctx.clock
        self._owner = owner_id

    def _where(self, agent_id: str) -> sa.ColumnElement[bool]:
        check_text(agent_id, "id")
        return sa.and_(agents.c.owner_id == self._owner, agents.c.id == agent_id)

    def create(self, name: str, kind: str | None = None, instructions: str | None = None,
               model: str | None = None, tools: list[str] | None = None,
               config: dict[str, Any] | None = None) -> Agent:
        """Define an agent.

        Raises:
            Invalid: an empty or long ``name``, a long ``kind`` or ``model``,
                ``tools`` not a list of short strings, ``config`` not a JSON object.
        """
        fields = _check_fields({"name": name, "kind": kind, "instructions": instructions,
                                "model": model, "tools": tools, "config": config})
        now = self._clock()
        agent_id = new_id()
        with self._db.write() as conn:
            conn.execute(agents.insert(), {"owner_id": self._owner, "id": agent_id, **fields,
                                           "created_at": now, "updated_at": now})
        return Agent(id=agent_id, created_at=now, updated_at=now, **fields)

    def get(self, agent_id: str) -> Agent:
        """Raises:
            NotFound: no such agent for this owner.
        """
        with self._db.read() as conn:
            row = conn.execute(sa.select(*_COLUMNS).where(self._where(agent_id))).first()
        if row is None:
            raise NotFound(f"agent {agent_id!r} not found")
        return _agent(row)

    def list(self, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Agent]:
        """Newest first."""
        query = sa.select(*_COLUMNS).where(agents.c.owner_id == self._owner)
        with self._db.read() as conn:
            return keyset_page(conn, query, agents.c.id, limit, cursor, _agent)

    def update(self, agent_id: str, *, name: str = UNSET, kind: str | None = UNSET,
               instructions: str | None = UNSET, model: str | None = UNSET,
               tools: builtins.list[str] | None = UNSET, config: dict[str, Any] | None = UNSET
               ) -> Agent:
        """Replace the given fields; the others stay, and ``updated_at`` moves on.

        Raises:
            NotFound: no such agent for this owner.
            Invalid: as for ``create``.
        """
        given = {k: v for k, v in (("name", name), ("kind", kind), ("instructions", instructions),
                                   ("model", model), ("tools", tools), ("config", config))
                 if v is not UNSET}
        values = _check_fields(given)
        where = self._where(agent_id)
        with self._db.write() as conn:
            old = conn.execute(sa.select(agents.c.updated_at).where(where)
                               .with_for_update()).scalar_one_or_none()
            if old is None:
                raise NotFound(f"agent {agent_id!r} not found")
            # Strictly later than before, even if the clock has not moved on.
            now = max(self._clock(), old + timedelta(microseconds=1))
            row = conn.execute(agents.update().where(where).values(**values, updated_at=now)
                               .returning(*_COLUMNS)).one()
        return _agent(row)

    def delete(self, agent_id: str) -> None:
        """Delete the agent (its runs stay, naming it).

        Raises:
            NotFound: no such agent for this owner.
        """
        with self._db.write() as conn:
            gone = conn.execute(agents.delete().where(self._where(agent_id))).rowcount
        if not gone:
            raise NotFound(f"agent {agent_id!r} not found")

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(agents)
                                    .where(agents.c.owner_id == self._owner)).scalar_one())
