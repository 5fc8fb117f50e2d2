"""Dependencies: the vault, the authenticated user, and the user's scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import Unauthorized
from ..models import User
from ..scope import Scope
from ..stores._paging import DEFAULT_LIMIT, MAX_LIMIT
from ..vault import Vault

__all__ = ["VaultDep", "CurrentUser", "UserScope", "BearerToken", "ClientAddress", "Limit",
           "Cursor"]

_bearer = HTTPBearer(auto_error=False)


def get_vault(request: Request) -> Vault:
    vault: Vault = request.app.state.vault
    return vault


VaultDep = Annotated[Vault, Depends(get_vault)]


def get_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
              ) -> str | None:
    return credentials.credentials if credentials else None


BearerToken = Annotated[str | None, Depends(get_token)]


def client_address(request: Request) -> str | None:
    """The peer's address, for per-address login limits (behind a proxy: the proxy's,
    unless the server is told to trust its forwarded headers)."""
    return request.client.host if request.client else None


ClientAddress = Annotated[str | None, Depends(client_address)]


def current_user(request: Request, vault: VaultDep, token: BearerToken) -> User:
    local: User | None = getattr(request.app.state, "local_user", None)
    if local is not None:
        return local
    if not token:
        raise Unauthorized("missing bearer token")
    return vault.users.authenticate(token)


CurrentUser = Annotated[User, Depends(current_user)]


def user_scope(vault: VaultDep, user: CurrentUser) -> Scope:
    return vault.for_user(user.id)


UserScope = Annotated[Scope, Depends(user_scope)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512)]
DEFAULT = DEFAULT_LIMIT
