"""``memvault import-legacy``: the on-disk data of the seed applications, read
into a vault through the owner-scoped stores.

One module per layout (``seed000``, ``seed001``, ``seed002``, ``seed004``; see
each module's docstring for what becomes what); ``_common`` holds the report,
stable ids and tolerant JSON reading. Seed 003 kept nothing on disk that is not
derived, so it has no layout here.

Rules every importer keeps:

- Records that name no user go to the ``--user`` account, which is then
  required (checked before anything is written); with ``MEMVAULT_AUTH=disabled``
  and no ``--user`` they go to the built-in local user.
- Idempotent: a second run imports nothing new. Records get ids derived from
  their legacy ids (``stable_id``: UUIDv7-shaped, the legacy time first) or are
  recognised by their content (see each module).
- A malformed file or record is reported with its path and skipped; the rest
  is imported. Only a missing layout, a missing ``--user`` or a failing vault
  stops an import (raised as a ``MemvaultError``).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import Invalid, NotFound
from ...stores.users import LOCAL_USER_EMAIL
from ...vault import Vault
from . import seed000, seed001, seed002, seed004
from ._common import ALREADY, KindTally, LegacyReport, Problem, Progress, stable_id

__all__ = ["LAYOUTS", "import_legacy", "normalise_layout", "LegacyReport", "KindTally",
           "Problem", "ALREADY", "stable_id"]

#: The layouts ``import_legacy`` reads.
LAYOUTS = ("seed000", "seed001", "seed002", "seed004")


def normalise_layout(layout: str) -> str:
    """``seed000`` from ``seed000``, ``000``, ``0`` or ``seed0``.

    Raises:
        Invalid: not one of ``LAYOUTS``.
    """
    digits = layout.strip().lower().removeprefix("seed")
    name = f"seed{int(digits):03d}" if digits.isdigit() and len(digits) <= 3 else layout
    if name not in LAYOUTS:
        raise Invalid(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}",
                      field="layout")
    return name


def _account(vault: Vault, email: str | None) -> str | None:
    """The id of the ``--user`` account (the local user when auth is disabled
    and none is named); ``None`` when there is none.

    Raises:
        NotFound: no account has that email.
    """
    if email is None:
        if vault.settings.auth == "disabled":
            return vault.users.ensure_local_user().id
        return None
    if email.strip().lower() == LOCAL_USER_EMAIL:
        return vault.users.ensure_local_user().id
    user = vault.users.find(email)
    if user is None:
        raise NotFound(f"no account with the email {email!r}: register it first, then "
                       "import into it")
    return user.id


def import_legacy(vault: Vault, layout: str, path: str | Path, user: str | None = None,
                  progress: Progress | None = None) -> LegacyReport:
    """Import one seed's on-disk data from ``path`` into ``vault``.

    Args:
        layout: ``seed000``, ``seed001``, ``seed002`` or ``seed004``.
        path: the layout's root folder (the folder holding ``data/``,
            ``storage/`` or ``users/``; the inner folder or file works too).
        user: the email of the account that receives records owned by nobody.
        progress: called with ``(done, total)`` as records are handled.

    Returns:
        What was imported and skipped (and why), per record type, with every
        unreadable file or refused record by path. ``files_read == 0`` means
        nothing could be read.

    Raises:
        Invalid: an unknown layout, or ``user`` missing where records need it.
        NotFound: no such path or layout data there, or no account ``user``.
    """
    name = normalise_layout(layout)
    root = Path(path).expanduser()
    if not root.exists():
        raise NotFound(f"{root} does not exist")
    # Find the layout first: a wrong path is one clear error before any write.
    {"seed000": seed000.locate, "seed001": seed001.locate, "seed002": seed002.locate,
     "seed004": seed004.locate}[name](root)
    owner = _account(vault, user)
    if owner is None and name != "seed001":
        raise Invalid(f"{name} records belong to no account here: give --user EMAIL",
                      field="user")
    report = LegacyReport(layout=name, source=str(root), progress=progress)
    if name == "seed001":
        seed001.run(vault, root, owner, report)
    else:
        assert owner is not None
        scope = vault.for_user(owner)
        {"seed000": seed000.run, "seed002": seed002.run, "seed004": seed004.run}[name](
            scope, root, report)
    return report
