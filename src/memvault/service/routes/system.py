"""``/health`` and ``/ready`` (no auth): probes that answer in constant time.

Both say only ``{status, version, backend}``: no counts (counting rows grows
with the data and tells anyone how many users exist; ``memvault stats`` has
them) and never a driver's text (a failing ``/ready`` gives a generic reason;
the cause goes to the log with the request id).
"""

from __future__ import annotations

from typing import Literal

import structlog
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ... import __version__
from ..deps import VaultDep

router = APIRouter(tags=["system"])
log = structlog.get_logger(__name__)


class Health(BaseModel):
    status: Literal["ok", "ready", "unavailable"]
    version: str
    backend: str
    #: Only on a 503 from ``/ready``: a generic reason, never a driver's text.
    reason: str | None = None


@router.get("/health", response_model=Health, response_model_exclude_none=True)
def health(vault: VaultDep) -> Health:
    """The process is up (no database round trip)."""
    return Health(status="ok", version=__version__, backend=vault.backend)


@router.get("/ready", response_model=Health, response_model_exclude_none=True,
            responses={503: {"model": Health, "description": "the database does not answer"}})
def ready(vault: VaultDep) -> Health | JSONResponse:
    """The database answers (one trivial query)."""
    try:
        vault.ping()
    except Exception:  # whatever the cause, the probe says only "unavailable"
        log.warning("readiness check failed", exc_info=True)
        body = Health(status="unavailable", version=__version__, backend=vault.backend,
                      reason="database unavailable")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return Health(status="ready", version=__version__, backend=vault.backend)
