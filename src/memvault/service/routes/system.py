"""``/health`` and ``/ready`` (no auth)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ... import __version__
from ...errors import MemvaultError
from ..deps import VaultDep

router = APIRouter(tags=["system"])


@router.get("/health")
def health(vault: VaultDep) -> dict[str, Any]:
    return {"status": "ok", "version": __version__, "backend": vault.backend,
            "counts": vault.counts()}


@router.get("/ready", response_model=None)
def ready(vault: VaultDep) -> dict[str, str] | JSONResponse:
    try:
        vault.ping()
    except MemvaultError as exc:
        return JSONResponse({"status": "unavailable", "detail": exc.detail}, status_code=503)
    return {"status": "ready"}
