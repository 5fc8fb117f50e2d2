"""The HTTP service: a thin FastAPI skin over the vault's owner-scoped stores."""

from .app import create_app

__all__ = ["create_app"]
