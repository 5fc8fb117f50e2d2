"""Forgetting a user: every record they own, their blobs, their derived indexes.

Driven by the registry of record kinds (``kinds.py``): a kind registered with an
``owner`` column is forgotten without more code here, and a kind with a
``blob`` column has its references released first. The order of work:

1. One write transaction removes every row the user owns, children first
   (``kinds()`` in reverse, so no foreign key is ever in the way), after
   releasing one blob reference per row of each blob-referencing kind
   (documents, graph snapshots). Their tokens are rows of it too, so they stop
   working on every worker the moment it commits: ``UserStore.authenticate``
   reads the database on every request and caches nothing. A second pass over
   the same kinds removes what triggers wrote during the first one (SQLite
   records a ``chunk_tombstones`` row per deleted chunk, and a tombstone names
   its owner) and, on PostgreSQL, rows another transaction committed meanwhile.
   The failed-login counter of the account goes too (keyed by a hash of the
   email).
2. After the commit, blobs left unreferenced are collected (bytes another
   user still references stay), the user's vector index files under
   ``<data_dir>/indexes/`` are deleted (SQLite: they hold the vectors; the
   tombstones that would have told them are gone), and the cache namespaces
   this process has seen for the user are cleared from the in-process tier and
   from a Redis or Memcached tier (the database tier's rows went with step 1).

What it cannot reach: another process's in-memory copies (caches trusted for
``MEMVAULT_CACHE_LOCAL_TTL_MS``, a loaded vector index, which a search never
answers from without joining the rows), and entries of a Redis or Memcached
tier in namespaces this process never used, which keep no user id in clear
(their keys are digests) and expire with their TTL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import sqlalchemy as sa
import structlog

from ..backends.base import after_commit
from ..backends.schema import auth_failures, blobs, entities, users
from ..errors import NotFound
from ..kinds import Kind, kinds
from ..stores.files import release_blobs

if TYPE_CHECKING:
    from ..vault import Vault

__all__ = ["ForgetReport", "forget_user", "find_user_id"]

log = structlog.get_logger(__name__)


@dataclass
class ForgetReport:
    """What ``forget_user`` removed.

    Attributes:
        user_id: the forgotten user's id.
        email: their email address.
        deleted: rows removed per kind (every owned kind, zero included), and
            ``blobs``: blobs (with their bytes) no one referenced any more.
        blobs_left: unreferenced blobs whose collection failed after the
            commit; the blob collector retries them (they hold no user id).
    """

    user_id: str
    email: str
    deleted: dict[str, int] = field(default_factory=dict)
    blobs_left: int = 0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def find_user_id(vault: Vault, email: str) -> str:
    """The id of the user with ``email`` (case-insensitive).

    Raises:
        NotFound: no such user.
    """
    with vault.db.read() as conn:
        uid = conn.execute(sa.select(users.c.id).where(
            users.c.email == email.strip().lower())).scalar_one_or_none()
    if uid is None:
        raise NotFound(f"no user with email {email.strip()!r}")
    return str(uid)


def _owned() -> list[Kind]:
    """The kinds a user owns, children first."""
    return [k for k in reversed(list(kinds())) if k.owner is not None]


def forget_user(vault: Vault, user_id: str) -> ForgetReport:
    """Remove every record ``user_id`` owns, then their unreferenced blobs and
    derived index files; see the module docstring for the order and its limits.

    Raises:
        NotFound: no such user.
    """
    owned = _owned()
    shas: list[str] = []
    with vault.db.write() as conn:
        row = conn.execute(sa.select(users.c.id, users.c.email)
                           .where(users.c.id == user_id)).first()
        if row is None:
            raise NotFound("no such user")
        report = ForgetReport(user_id=row.id, email=row.email,
                              deleted={k.name: 0 for k in reversed(owned)})  # parents first
        collections = conn.execute(sa.select(entities.c.entity_id).where(
            entities.c.owner_id == user_id)).scalars().all()
        for k in owned:
            if k.blob is not None:  # one reference per row, released before the rows go
                shas += conn.execute(sa.select(k.table.c[k.blob])
                                     .where(k.owned_by(user_id))).scalars().all()
        release_blobs(vault.ctx, conn, shas)
        for _ in range(2):  # the second pass: what triggers wrote during the first
            for k in owned:
                gone = conn.execute(k.table.delete().where(k.owned_by(user_id))).rowcount
                report.deleted[k.name] += max(gone, 0)
        account = hashlib.sha256(f"account:{row.email}".encode()).hexdigest()
        conn.execute(auth_failures.delete().where(auth_failures.c.key_hash == account))
        if vault.vectors is not None:
            for entity_id in collections:
                after_commit(conn, partial(vault.vectors.drop, user_id, entity_id))
    # release_blobs collected the blobs it left unreferenced as the commit
    # completed; count what went and what the collector still has to do.
    distinct = sorted(set(shas))
    left: set[str] = set()
    with vault.db.read() as conn:
        for i in range(0, len(distinct), 500):
            part = distinct[i:i + 500]
            left.update(conn.execute(sa.select(blobs.c.sha256).where(
                blobs.c.sha256.in_(part), blobs.c.refcount <= 0)).scalars())
            present = set(conn.execute(sa.select(blobs.c.sha256).where(
                blobs.c.sha256.in_(part))).scalars())
            report.deleted["blobs"] = report.deleted.get("blobs", 0) + len(set(part) - present)
    report.deleted.setdefault("blobs", 0)
    report.blobs_left = len(left)
    _clear_caches(vault, user_id)
    log.info("user forgotten", user_id=user_id, records=report.total,
             blobs=report.deleted["blobs"])
    return report


def _clear_caches(vault: Vault, user_id: str) -> None:
    """Drop the user's entries this process knows of from the in-process tier
    (and from a Redis or Memcached tier; the database tier's rows are gone)."""
    for namespace in vault.caches.stats(user_id):
        try:
            vault.caches.clear(user_id, namespace)
        except Exception:  # the records are gone; a cache left behind expires with its TTL
            log.warning("cache not cleared", namespace=namespace, exc_info=True)
