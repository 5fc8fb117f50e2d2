"""``/api/auth``: register, login, me, logout."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ...errors import Unauthorized
from ...models import Token, User
from ..deps import BearerToken, ClientAddress, CurrentUser, VaultDep
from ..schemas import LoginIn, RegisterIn

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/register", status_code=201, response_model=User)
def register(body: RegisterIn, vault: VaultDep) -> User:
    return vault.users.register(body.email, body.password, body.name)


@router.post("/login", response_model=Token)
def login(body: LoginIn, vault: VaultDep, client: ClientAddress) -> Token:
    return vault.users.login(body.email, body.password, client=client)


@router.get("/me", response_model=User)
def me(user: CurrentUser) -> User:
    return user


@router.post("/logout", status_code=204)
def logout(vault: VaultDep, user: CurrentUser, token: BearerToken) -> Response:
    if not token:
        raise Unauthorized("missing bearer token")
    vault.users.logout(token)
    return Response(status_code=204)
