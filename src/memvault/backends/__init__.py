"""Database backends: one per database kind, chosen by the URL's scheme."""

from __future__ import annotations

from ..settings import Settings
from .base import Backend

__all__ = ["backend_for"]


def backend_for(settings: Settings) -> Backend:
    """The backend ``settings.database_url`` names (SQLite in the data dir by default)."""
    if settings.backend == "postgresql":
        from .postgres import PostgresBackend
        assert settings.database_url
        return PostgresBackend(settings.database_url, settings.durability)
    from .sqlite import SQLiteBackend
    return SQLiteBackend(settings.sqlite_path, settings.durability)
