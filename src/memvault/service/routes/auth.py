"""``/api/auth``: register, login, me, logout, and deleting one's account."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from ...errors import Unauthorized
from ...models import Token, User
from ...ops.archive import discard_export, export_user_zip
from ...ops.forget import forget_user
from ..deps import BearerToken, ClientAddress, CurrentUser, VaultDep
from ..schemas import ForgetMeIn, ForgetMeOut, LoginIn, RegisterIn

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


@router.delete("/me", response_model=ForgetMeOut, responses={
    401: {"description": "wrong password (failures count towards the login limits)"}})
def forget_me(body: ForgetMeIn, vault: VaultDep, user: CurrentUser,
              client: ClientAddress) -> ForgetMeOut:
    """Delete the account and everything it owns, confirmed by its password;
    every token of it stops working at once."""
    # Checked as a login is: failures count against the account's and the
    # address's limits, so a stolen token cannot guess the password here.
    try:
        vault.users.login(user.email, body.password, client=client)
    except Unauthorized:
        raise Unauthorized("wrong password") from None
    return ForgetMeOut(deleted=forget_user(vault, user.id).deleted)


@router.get("/me/export", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}},
                             "description": "the caller's records and files (memvault export)"}})
def export_me(vault: VaultDep, user: CurrentUser) -> FileResponse:
    """The caller's own records and files as an export archive (a zip)."""
    path = export_user_zip(vault.db, vault.blobs, vault.settings.data_dir, user.id)
    return FileResponse(path, media_type="application/zip", filename=path.name,
                        background=BackgroundTask(discard_export, path))


@router.post("/logout", status_code=204)
def logout(vault: VaultDep, user: CurrentUser, token: BearerToken) -> Response:
    if not token:
        raise Unauthorized("missing bearer token")
    vault.users.logout(token)
    return Response(status_code=204)
