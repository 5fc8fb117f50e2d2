"""Schema migrations (Alembic), applied on open and by ``memvault migrate``.

An upgrade applies every pending revision in one transaction, so a revision
that fails half-way leaves the database exactly at the revision it had before
(DDL is transactional on SQLite and PostgreSQL), and the error names the
revision that failed. What a database needs around that transaction (SQLite:
foreign keys off and checked before commit) is the backend's
``migration_transaction`` hook; processes starting at once are serialised by its
``migration_lock``. Only a database that cannot be reached is ``Unavailable``.
So revisions must be transactional: no ``CREATE INDEX CONCURRENTLY``, no
``autocommit_block``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError

from ..errors import MemvaultError, MigrationFailed, Unavailable
from .base import Database

__all__ = ["upgrade", "current_revision", "head_revision", "alembic_config"]

_SCRIPTS = Path(__file__).parent / "migrations"


def _ini(path: Path) -> str:
    return str(path).replace("%", "%%")  # Config values go through ConfigParser


def alembic_config(versions: Sequence[Path] = ()) -> Config:
    """The Alembic configuration of memvault's migrations.

    Args:
        versions: extra directories of revisions, searched besides the shipped
            ones (tests add revisions this way without shipping them).
    """
    cfg = Config()
    cfg.set_main_option("script_location", _ini(_SCRIPTS))
    cfg.set_main_option("path_separator", "os")
    if versions:
        locations = [_SCRIPTS / "versions", *versions]
        cfg.set_main_option("version_locations", os.pathsep.join(_ini(p) for p in locations))
    return cfg


def head_revision(versions: Sequence[Path] = ()) -> str | None:
    return ScriptDirectory.from_config(alembic_config(versions)).get_current_head()


def current_revision(db: Database) -> str | None:
    """The schema revision the database is at (``None`` when empty).

    Raises:
        Unavailable: the database cannot be reached.
    """
    try:
        with db.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except sa.exc.OperationalError as exc:
        raise Unavailable(f"cannot reach the database: {_one_line(exc.orig)}") from exc


def upgrade(db: Database, target: str = "head", *,
            versions: Sequence[Path] = ()) -> tuple[str | None, str | None]:
    """Bring the schema to ``target`` (the newest revision); returns (before, after).

    Cheap when already current: one read of ``alembic_version``.

    Args:
        target: a revision id, or ``"head"``.
        versions: extra revision directories (see ``alembic_config``).

    Raises:
        MigrationFailed: a revision failed; nothing was changed.
        Unavailable: the database cannot be reached or stayed locked.
    """
    cfg = alembic_config(versions)
    script = ScriptDirectory.from_config(cfg)
    goal = _resolve(script, target)
    before = current_revision(db)
    if before == goal:
        return before, goal
    with db.backend.migration_lock(db.engine):
        return _upgrade_locked(db, cfg, script, goal)


def _upgrade_locked(db: Database, cfg: Config, script: ScriptDirectory,
                    goal: str | None) -> tuple[str | None, str | None]:
    applied: list[str] = []
    pending: list[str] = []
    before: str | None = None
    try:
        with db.engine.connect() as conn, db.backend.migration_transaction(conn):
            # Read under the lock, in the transaction: another process may have
            # migrated meanwhile.
            before = MigrationContext.configure(conn).get_current_revision()
            if before == goal:
                return before, goal
            pending = _pending(script, before, goal)

            def done(**kw: Any) -> None:
                applied.append(kw["step"].up_revision_id)

            cfg.attributes["connection"] = conn
            cfg.attributes["on_version_apply"] = done
            command.upgrade(cfg, goal or "base")
    except (MigrationFailed, Unavailable) as exc:
        if not pending:  # refused before any revision ran
            raise
        raise _failed(script, before, goal, pending, applied, exc) from exc
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated or (not pending and
                                          isinstance(exc, sa.exc.OperationalError)):
            raise Unavailable(f"cannot reach the database: {_one_line(exc.orig)}") from exc
        raise _failed(script, before, goal, pending, applied, exc) from exc
    except MemvaultError:
        raise
    except Exception as exc:
        raise _failed(script, before, goal, pending, applied, exc) from exc
    return before, goal


def _resolve(script: ScriptDirectory, target: str) -> str | None:
    try:
        found = script.get_revision(target)
    except (CommandError, RevisionError) as exc:
        raise MigrationFailed(f"unknown schema revision {target!r}") from exc
    return None if found is None else found.revision


def _pending(script: ScriptDirectory, before: str | None, goal: str | None) -> list[str]:
    """The revisions from ``before`` (exclusive) up to ``goal``, in order."""
    try:
        steps = list(script.iterate_revisions(goal, before or "base"))
    except (CommandError, RevisionError) as exc:
        raise MigrationFailed(
            f"the database is at schema revision {before!r}, which this version of "
            f"memvault cannot upgrade to {goal!r} (was it written by a newer version?)"
        ) from exc
    return [step.revision for step in reversed(steps) if step.revision != before]


def _failed(script: ScriptDirectory, before: str | None, goal: str | None,
            pending: list[str], applied: list[str], exc: BaseException) -> MigrationFailed:
    cause = exc.detail if isinstance(exc, MemvaultError) else _describe(exc)
    was = f"revision {before}" if before else "an empty schema"
    if not pending:
        what = f"schema upgrade to {goal} failed before any revision ran"
    elif len(applied) < len(pending):
        rev = pending[len(applied)]
        found = script.get_revision(rev)
        title = f' ("{found.doc}")' if found is not None and found.doc else ""
        what = f"schema migration {rev}{title} failed"
    else:
        what = f"schema upgrade to {goal} failed its final check"
    return MigrationFailed(f"{what}; the upgrade was rolled back and the database is still at "
                           f"{was}: {cause}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, sa.exc.DBAPIError):
        return f"{type(exc.orig).__name__}: {_one_line(exc.orig)}"
    return f"{type(exc).__name__}: {_one_line(exc)}"


def _one_line(value: object, limit: int = 500) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "…"
