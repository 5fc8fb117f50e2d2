"""Seed 001's layout: one ``data/db_snapshot.json`` holding its in-memory
database: ``users``, ``documents`` (text inline), ``extractions`` and
``annotations``, each keyed by id and naming its ``user_id``.

- A user becomes an account with the same email, name, creation time and
  bcrypt password hash: they log in with their old password, which is then
  rehashed to argon2 (``stores/users.py``). An account that already has the
  email keeps its password; the user's records go to it.
- Each user's documents become files (their text, UTF-8) in one entity per
  user, ``seed001-documents``.
- Extractions and annotations attach to the imported document they name, in
  the document's owner's account.
- Records naming no user (or a user the snapshot does not hold) go to
  ``--user``, which is then required.

Idempotency: users by email (the account id is derived from the legacy id), the
entity by id, documents by (file name, sha256) in the entity, extractions by
(schema, data) and annotations by (label, note, span) on their document.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from ...errors import Invalid, NotFound
from ...ids import utcnow
from ...stores.annotations import AnnotationStore
from ...stores.files import clean_filename
from ...vault import Vault
from ._common import (
    ALREADY,
    RECORD_ERRORS,
    LegacyReport,
    describe,
    items,
    page_all,
    parse_time,
    read_json,
    stable_id,
)

__all__ = ["locate", "run", "ENTITY_ID"]

LAYOUT = "seed001"
#: The entity that holds each user's documents.
ENTITY_ID = "seed001-documents"
ENTITY_NAME = "Documents (seed 001)"
_SECTIONS = ("users", "documents", "extractions", "annotations")


def locate(root: Path) -> Path:
    """The snapshot file: ``root`` itself, ``root/data/db_snapshot.json`` or
    ``root/db_snapshot.json``.

    Raises:
        NotFound: none of these exists.
    """
    if root.is_file():
        return root
    for path in (root / "data" / "db_snapshot.json", root / "db_snapshot.json"):
        if path.exists():
            return path
    raise NotFound(f"no seed001 data under {root} (expected data/db_snapshot.json)")


def _owner_of(record: Any) -> str | None:
    user = record.get("user_id") if isinstance(record, dict) else None
    return user if isinstance(user, str) else None


def run(vault: Vault, root: Path, fallback: str | None, report: LegacyReport) -> None:
    """Import the snapshot; ``fallback`` is the ``--user`` account's id.

    Raises:
        Invalid: records name no known user and no ``--user`` was given
            (checked before anything is written).
    """
    path = locate(root)
    snapshot = read_json(path, report, dict)
    if snapshot is None:
        return
    sections: dict[str, list[tuple[str, Any]]] = {}
    for name in _SECTIONS:
        value = snapshot.get(name)
        if value is not None and not isinstance(value, dict | list):
            report.problem(path, f"malformed section: {name} is not an object or list")
            value = None
        sections[name] = list(items(value))
    legacy_users = {str(r.get("id", k)) if isinstance(r, dict) else k
                    for k, r in sections["users"]}
    orphans = sum(1 for name in _SECTIONS[1:] for _, r in sections[name]
                  if _owner_of(r) not in legacy_users)
    if orphans and fallback is None:
        raise Invalid(f"{orphans} records in {path} belong to no user of the snapshot: "
                      "give --user EMAIL to own them", field="user")
    report.expect(sum(len(v) for v in sections.values()))

    owners: dict[str, str] = {}  # legacy user id -> account id
    for key, record in sections["users"]:
        report.advance()
        _user(vault, path, key, record, owners, report)

    def owner(record: Any) -> str | None:
        legacy = _owner_of(record)
        if legacy in legacy_users:
            return owners.get(legacy or "")  # None: that user was not imported
        return fallback

    docs: dict[str, tuple[str, str]] = {}  # legacy doc id -> (account id, doc id)
    # Per account: the documents already in its entity, by (file name, sha256).
    entities: dict[str, dict[tuple[str, str], list[str]]] = {}
    for key, record in sections["documents"]:
        report.advance()
        _document(vault, path, key, record, owner(record), entities, docs, report)

    seen: dict[tuple[str, str], Counter[str]] = {}
    for key, record in sections["extractions"]:
        report.advance()
        _extraction(vault, path, key, record, docs, seen, report)
    seen = {}
    for key, record in sections["annotations"]:
        report.advance()
        _annotation(vault, path, key, record, docs, seen, report)


def _user(vault: Vault, path: Path, key: str, record: Any, owners: dict[str, str],
          report: LegacyReport) -> None:
    if not isinstance(record, dict):
        report.skipped("users", "malformed record: not an object", path=path, record=key)
        return
    legacy_id = str(record.get("id", key))
    email, password_hash = record.get("email"), record.get("password_hash")
    name = record.get("full_name", record.get("name"))
    created = parse_time(record.get("created_at"))
    if not isinstance(email, str) or not isinstance(password_hash, str):
        report.skipped("users", "malformed record: no email or password hash", path=path,
                       record=key)
        return
    account_id = stable_id(created, LAYOUT, "user", legacy_id)
    try:
        user, created_now = vault.users.import_user(
            account_id, email, password_hash, name[:200] if isinstance(name, str) else None,
            created or utcnow())
    except RECORD_ERRORS as exc:
        report.skipped("users", describe(exc), path=path, record=key)
        return
    owners[legacy_id] = user.id
    if created_now:
        report.imported("users")
    elif user.id == account_id:
        report.skipped("users", ALREADY)
    else:
        report.skipped("users", "an account with this email exists (its records go to it)")


def _document(vault: Vault, path: Path, key: str, record: Any, owner: str | None,
              entities: dict[str, dict[tuple[str, str], list[str]]],
              docs: dict[str, tuple[str, str]], report: LegacyReport) -> None:
    if not isinstance(record, dict):
        report.skipped("documents", "malformed record: not an object", path=path, record=key)
        return
    if owner is None:
        report.skipped("documents", "its user was not imported", path=path, record=key)
        return
    content = record.get("content")
    if not isinstance(content, str):
        report.skipped("documents", "malformed record: content is not text", path=path,
                       record=key)
        return
    legacy_id = str(record.get("id", key))
    filename = record.get("filename")
    name = clean_filename(filename if isinstance(filename, str) and filename
                          else f"{legacy_id}.txt")
    scope = vault.for_user(owner)
    try:
        existing = entities.get(owner)
        if existing is None:
            if scope.entities.exists(ENTITY_ID):
                report.skipped("entities", ALREADY)
            else:
                scope.entities.create(ENTITY_NAME, entity_id=ENTITY_ID,
                                      description="Documents imported from seed 001")
                report.imported("entities")
            existing = entities[owner] = {}
            for d in page_all(lambda c: scope.files.list(ENTITY_ID, 200, c)):
                existing.setdefault((d.filename, d.sha256), []).append(d.doc_id)
        data = content.encode()
        found = existing.get((name, hashlib.sha256(data).hexdigest()))
        if found:  # the same bytes under the same name: what a previous run made
            doc_id = found.pop()
            report.skipped("documents", ALREADY)
        else:
            doc_id = scope.files.add(ENTITY_ID, name, data,
                                     content_type="text/plain; charset=utf-8",
                                     max_bytes=len(data)).doc_id
            report.imported("documents")
    except RECORD_ERRORS as exc:
        report.skipped("documents", describe(exc), path=path, record=key)
        return
    docs[legacy_id] = (owner, doc_id)


def _target(path: Path, kind: str, key: str, record: Any, docs: dict[str, tuple[str, str]],
            report: LegacyReport) -> tuple[str, str] | None:
    if not isinstance(record, dict):
        report.skipped(kind, "malformed record: not an object", path=path, record=key)
        return None
    target = docs.get(str(record.get("document_id")))
    if target is None:
        report.skipped(kind, f"document {record.get('document_id')!r} not imported",
                       path=path, record=key)
    return target


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _extraction(vault: Vault, path: Path, key: str, record: Any,
                docs: dict[str, tuple[str, str]], seen: dict[tuple[str, str], Counter[str]],
                report: LegacyReport) -> None:
    target = _target(path, "extractions", key, record, docs, report)
    if target is None:
        return
    owner, doc_id = target
    store = vault.for_user(owner).extractions
    schema, data, model = record.get("schema") or "legacy", record.get("data"), record.get("model")
    try:
        existing = seen.get(target)
        if existing is None:
            existing = seen[target] = Counter(
                _canonical([x.schema_, x.data])
                for x in page_all(lambda c: store.list(doc_id, limit=200, cursor=c)))
        fingerprint = _canonical([schema, data])
        if existing[fingerprint] > 0:
            existing[fingerprint] -= 1
            report.skipped("extractions", ALREADY)
            return
        store.create(doc_id, schema, data, model=model if isinstance(model, str) else None)
    except RECORD_ERRORS as exc:
        report.skipped("extractions", describe(exc), path=path, record=key)
        return
    report.imported("extractions")


def _annotation(vault: Vault, path: Path, key: str, record: Any,
                docs: dict[str, tuple[str, str]], seen: dict[tuple[str, str], Counter[str]],
                report: LegacyReport) -> None:
    target = _target(path, "annotations", key, record, docs, report)
    if target is None:
        return
    owner, doc_id = target
    created: datetime = parse_time(record.get("created_at")) or utcnow()
    # The annotation store stamps times with its context's clock: the legacy time here.
    store = AnnotationStore(replace(vault.ctx, clock=lambda: created), owner)
    label, note = record.get("label") or "note", record.get("note")
    start, end, page = record.get("start"), record.get("end"), record.get("page")
    try:
        existing = seen.get(target)
        if existing is None:
            existing = seen[target] = Counter(
                _canonical([a.label, a.note, a.start, a.end])
                for a in page_all(lambda c: store.list(doc_id, limit=200, cursor=c)))
        fingerprint = _canonical([label, note, start, end])
        if existing[fingerprint] > 0:
            existing[fingerprint] -= 1
            report.skipped("annotations", ALREADY)
            return
        store.create(doc_id, label, note=note, start=start, end=end, page=page)
    except RECORD_ERRORS as exc:
        report.skipped("annotations", describe(exc), path=path, record=key)
        return
    report.imported("annotations")
