"""Schema migrations (Alembic), applied on open and by ``memvault migrate``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .base import Database

__all__ = ["upgrade", "current_revision", "head_revision", "alembic_config"]

_SCRIPTS = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database) -> tuple[str | None, str | None]:
    """Bring the schema to the newest revision; returns (before, after).

    Cheap when already current: one read of ``alembic_version``.
    """
    head = head_revision()
    before = current_revision(db)
    if before == head:
        return before, head
    with db.backend.migration_lock(db.engine):
        before = current_revision(db)  # another process may have done it meanwhile
        if before != head:
            cfg = alembic_config()
            with db.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
    return before, head
