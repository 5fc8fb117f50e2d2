"""The app factory: ``create_app(settings)`` builds everything, nothing at import."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from .. import __version__
from ..errors import MemvaultError
from ..logs import configure_logging
from ..settings import Settings, load_settings
from ..vault import Vault
from .limits import BodyLimitMiddleware
from .problems import install_handlers
from .routes import auth, chat, conversations, entities, files, messages, system

__all__ = ["create_app"]

log = structlog.get_logger(__name__)


def _log_counts(vault: Vault) -> None:
    try:
        log.info("record counts", **vault.counts())
    except MemvaultError:
        log.warning("could not count records", exc_info=True)


def create_app(settings: Settings | None = None, vault: Vault | None = None) -> FastAPI:
    """Build the service.

    Args:
        settings: defaults to ``MEMVAULT_*`` from the environment.
        vault: an open vault to serve (left open at shutdown); by default the
            app opens one from ``settings`` at start-up and closes it at shutdown.
    """
    if vault is not None:
        settings = vault.settings
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = vault is None
        app.state.vault = v = vault or Vault(settings)
        app.state.local_user = v.users.ensure_local_user() if settings.auth == "disabled" else None
        if own:
            log.info("memvault started", backend=v.backend, database=v.describe(),
                     data_dir=str(settings.data_dir.resolve()), auth=settings.auth,
                     durability=settings.durability)
            # Counting is O(rows): done beside start-up so that it does not grow with the data.
            threading.Thread(target=_log_counts, args=(v,), name="memvault-counts",
                             daemon=True).start()
        try:
            yield
        finally:
            if own:
                v.close()

    app = FastAPI(title="memvault", version=__version__, lifespan=lifespan,
                  description="Durable memory for AI applications.")
    app.add_middleware(BodyLimitMiddleware, max_upload=settings.max_upload_mb << 20,
                       max_body=settings.max_body_kb << 10)
    install_handlers(app)
    for module in (system, auth, entities, files, conversations, messages, chat):
        app.include_router(module.router)
    return app


def app_from_env() -> FastAPI:
    """Entry point for ``uvicorn --factory`` (used by ``memvault serve``)."""
    settings = load_settings()
    configure_logging(settings)
    return create_app(settings)
