"""The app factory: ``create_app(settings)`` builds everything, nothing at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from .. import __version__
from ..errors import MemvaultError
from ..logs import configure_logging
from ..settings import Settings, load_settings
from ..vault import Vault
from . import metrics
from .hosts import LoopbackOnlyMiddleware
from .limits import BodyLimitMiddleware
from .problems import install_handlers
from .requests import AccessLogMiddleware, NulGuardMiddleware, RequestIdMiddleware
from .routes import (
    agents,
    auth,
    cache,
    chat,
    collections,
    conversations,
    documents,
    entities,
    files,
    graphs,
    messages,
    runs,
    sessions,
    system,
)

__all__ = ["create_app"]

log = structlog.get_logger(__name__)


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
    if not structlog.is_configured():  # embedded apps log without secrets or locals too
        configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = vault is None
        app.state.vault = v = vault or Vault(settings)
        app.state.local_user = v.users.ensure_local_user() if settings.auth == "disabled" else None
        if settings.metrics:
            metrics.attach(v)
        if own:
            log.info("memvault started", backend=v.backend, database=v.describe(),
                     data_dir=str(settings.data_dir.resolve()), auth=settings.auth,
                     durability=settings.durability)
            try:  # the database's estimates: start-up time does not grow with the data
                log.info("record counts (estimated)", **v.counts(exact=False))
            except MemvaultError:
                log.warning("could not estimate record counts", exc_info=True)
        try:
            yield
        finally:
            if settings.metrics:
                metrics.detach(v)
            if own:
                v.close()

    app = FastAPI(title="memvault", version=__version__, lifespan=lifespan,
                  description="Durable memory for AI applications.")
    app.add_middleware(BodyLimitMiddleware, max_upload=settings.max_upload_mb << 20,
                       max_body=settings.max_body_kb << 10)
    app.add_middleware(NulGuardMiddleware)
    if settings.auth == "disabled":  # added last: the outermost check
        app.add_middleware(LoopbackOnlyMiddleware)
    # Outside every check, so that each response (a 413, a 403 too) is logged,
    # measured, and has an X-Request-ID (bound in the log context of its line).
    if settings.metrics:
        metrics.install(app)
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(RequestIdMiddleware)
    install_handlers(app)
    for module in (system, auth, entities, files, documents, collections, conversations,
                   messages, sessions, chat, graphs, agents, runs):
        app.include_router(module.router)
    app.include_router(cache.router)
    return app


def app_from_env() -> FastAPI:
    """Entry point for ``uvicorn --factory`` (used by ``memvault serve``)."""
    settings = load_settings()
    configure_logging(settings)
    return create_app(settings)
