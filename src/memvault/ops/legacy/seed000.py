"""Seed 000's layout: ``data/api_storage/entities.json`` (entities with the list
of their uploaded documents), ``data/api_storage/chat_sessions.json`` (chat
sessions with their messages inline) and ``data/uploads/<entity>/<file>``.

Nothing in it names a user: everything goes to the ``--user`` account.

- Entities keep their ids (``entity_000``), names, descriptions and metadata.
- A document listed in ``entities.json`` becomes a file of its entity, read from
  ``uploads/<entity>/<filename>`` (its sha256 checked when the listing gives
  one). Files on disk that the listing does not name are left out: the seed
  removed a document from the listing when it was deleted.
- A session becomes a conversation (in its entity) with its messages, in one
  transaction, under ids derived from the session id (``stable_id``).

Idempotency: entities by id, conversations by their stable ids, documents by
(file name, sha256) among their entity's documents.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from ...errors import Invalid, NotFound
from ...ids import utcnow
from ...models import Conversation, Message
from ...scope import Scope
from ...stores.conversations import ROLES
from ...stores.entities import check_entity_id
from ...stores.files import clean_filename
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

__all__ = ["locate", "run"]

LAYOUT = "seed000"
#: Legacy files are an operator's import, not an upload: no upload size limit.
_NO_LIMIT = 1 << 62
_PIECE = 1 << 20


def locate(root: Path) -> Path:
    """The seed's ``data`` folder under ``root`` (``root`` itself may be it).

    Raises:
        NotFound: neither ``root/data/api_storage`` nor ``root/api_storage`` exists.
    """
    for base in (root / "data", root):
        if (base / "api_storage").is_dir():
            return base
    raise NotFound(f"no seed000 data under {root} (expected data/api_storage/entities.json)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while piece := fh.read(_PIECE):
            digest.update(piece)
    return digest.hexdigest()


def run(scope: Scope, root: Path, report: LegacyReport) -> None:
    base = locate(root)
    api = base / "api_storage"
    entities_path, sessions_path = api / "entities.json", api / "chat_sessions.json"
    entities = sessions = None
    for path in (entities_path, sessions_path):
        if not path.exists():
            report.notes.append(f"{path} is missing: nothing of it imported")
    if entities_path.exists():
        entities = read_json(entities_path, report, dict)
    if sessions_path.exists():
        sessions = read_json(sessions_path, report, dict)
    records = list(items(entities))
    report.expect(len(records) + sum(len(r.get("documents") or []) for _, r in records
                                     if isinstance(r, dict)) + len(list(items(sessions))))
    for key, record in records:
        _entity(scope, base, entities_path, key, record, report)
    for key, record in items(sessions):
        _session(scope, sessions_path, key, record, report)
        report.advance()


def _entity(scope: Scope, base: Path, path: Path, key: str, record: Any,
            report: LegacyReport) -> None:
    report.advance()
    docs = record.get("documents") if isinstance(record, dict) else None
    docs = docs if isinstance(docs, list) else []
    if not isinstance(record, dict):
        report.skipped("entities", "malformed record: not an object", path=path, record=key)
        return
    entity_id = record.get("entity_id", key)
    try:
        check_entity_id(entity_id)
        if scope.entities.exists(entity_id):
            report.skipped("entities", ALREADY)
        else:
            metadata = record.get("metadata")
            description = record.get("description")
            scope.entities.create(
                record.get("entity_name") or entity_id, entity_id=entity_id,
                description=description if isinstance(description, str) else None,
                metadata=metadata if isinstance(metadata, dict) else None)
            report.imported("entities")
    except RECORD_ERRORS as exc:
        report.skipped("entities", describe(exc), path=path, record=key)
        report.skipped("files", f"entity {key!r} not imported", len(docs))
        report.advance(len(docs))
        return
    existing = Counter((d.filename, d.sha256)
                       for d in page_all(lambda c: scope.files.list(entity_id, 200, c)))
    for index, doc in enumerate(docs):
        report.advance()
        _document(scope, base / "uploads" / entity_id, path, f"{key}.documents[{index}]",
                  entity_id, doc, existing, report)


def _document(scope: Scope, folder: Path, listing: Path, where: str, entity_id: str,
              doc: Any, existing: Counter[tuple[str, str]], report: LegacyReport) -> None:
    name = doc.get("filename") if isinstance(doc, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        report.skipped("files", "malformed record: no usable file name", path=listing,
                       record=where)
        return
    file = folder / name
    try:
        sha = _sha256(file)
    except OSError as exc:
        report.skipped("files", f"file unreadable: {exc.strerror or exc}", path=file)
        return
    listed = doc.get("sha256")
    if isinstance(listed, str) and listed and listed.lower() != sha:
        report.skipped("files", "content differs from the sha256 in entities.json", path=file)
        return
    key = (clean_filename(name), sha)
    if existing[key] > 0:
        existing[key] -= 1
        report.skipped("files", ALREADY)
        return
    try:
        with file.open("rb") as fh:
            scope.files.add(entity_id, name, fh, max_bytes=_NO_LIMIT)
    except OSError as exc:
        report.skipped("files", f"file unreadable: {exc.strerror or exc}", path=file)
        return
    except RECORD_ERRORS as exc:
        report.skipped("files", describe(exc), path=file)
        return
    report.imported("files")


def _session(scope: Scope, path: Path, key: str, record: Any, report: LegacyReport) -> None:
    msgs = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(record, dict) or not isinstance(msgs, list):
        report.skipped("conversations", "malformed record: not an object with messages",
                       path=path, record=key)
        return
    session_id = str(record.get("session_id", key))
    created = parse_time(record.get("created_at"))
    owner = scope.owner_id
    try:
        conv_id = stable_id(created, LAYOUT, owner, "session", session_id)
        when = created or utcnow()
        title, entity_id = record.get("title"), record.get("entity_id")
        conv = Conversation(id=conv_id, entity_id=entity_id if isinstance(entity_id, str) else None,
                            title=title if isinstance(title, str) else None,
                            created_at=when, updated_at=when)
        messages = [(_message(conv_id, owner, session_id, i, m, when), ())
                    for i, m in enumerate(msgs)]
        created_now = scope.conversations.import_conversation(conv, messages)
    except RECORD_ERRORS as exc:
        report.skipped("conversations", describe(exc), path=path, record=key)
        report.skipped("messages", "conversation not imported", len(msgs))
        return
    if created_now:
        report.imported("conversations")
        report.imported("messages", len(msgs))
    else:
        report.skipped("conversations", ALREADY)
        report.skipped("messages", ALREADY, len(msgs))


def _message(conv_id: str, owner: str, session_id: str, index: int, record: Any,
             default_time: datetime) -> Message:
    if not isinstance(record, dict):
        raise Invalid(f"messages[{index}] is not an object", field="messages")
    role, content = record.get("role"), record.get("content", "")
    if role not in ROLES:
        raise Invalid(f"messages[{index}].role must be one of {', '.join(ROLES)}",
                      field="role")
    if not isinstance(content, str):
        raise Invalid(f"messages[{index}].content must be text", field="content")
    at = parse_time(record.get("timestamp")) or default_time
    return Message(id=stable_id(at, LAYOUT, owner, "message", session_id, str(index)),
                   conversation_id=conv_id, role=role, content=content, status="complete",
                   seq=index + 1, created_at=at, completed_at=at)
