"""Seed 004's layout: ``users/<user>/data/conversations/messages/*.json``, one
file per user message (``us01-co12-ms01.json``: ``{messageId, role, content,
timestamp}``) and one per chunk of a streamed reply (``us01-co12-ms02-001.json``:
``{messageId, seq, tokens, timestamp, agentId?, status}``).

The ``users/<user>`` folders are not accounts: every conversation goes to the
``--user`` account (the folder's name is kept in its metadata, ``legacy_user``).

Messages are rebuilt from what the files say, never from the order they are
listed in: chunks by ``seq``, messages by their number in the id (``ms02``),
conversations by the id's prefix (``us01-co12``). A reply whose last chunk is
still ``streaming`` becomes ``interrupted``; so does one with a missing chunk
(kept up to the gap, which is reported). Each conversation is written whole,
in one transaction, under ids derived from the legacy ids; a second run finds
them and writes nothing. The legacy message id is kept in each message's
metadata (``legacy_id``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from ...errors import Invalid, NotFound
from ...ids import utcnow
from ...models import Chunk, Conversation, Message, Role
from ...scope import Scope
from ...stores.conversations import ROLES
from ._common import (
    ALREADY,
    RECORD_ERRORS,
    LegacyReport,
    describe,
    parse_time,
    read_json,
    stable_id,
)

__all__ = ["locate", "message_files", "collect", "run", "LegacyMessage", "LegacyConversation"]

LAYOUT = "seed004"
MESSAGES_DIR = Path("data") / "conversations" / "messages"
_MESSAGE_ID = re.compile(r"^(?P<conv>.+)-ms(?P<n>\d+)$")
_CHUNK_FILE = re.compile(r"^(?P<mid>.+)-(?P<seq>\d+)$")
_FAR = 1 << 62


@dataclass
class LegacyMessage:
    """A message as the files describe it: whole (``content``) or in chunks."""

    legacy_id: str
    role: str = "assistant"
    content: str | None = None
    timestamp: datetime | None = None
    #: seq -> (text, timestamp, status, agent, file)
    chunks: dict[int, tuple[str, datetime | None, str | None, str | None, str]] = field(
        default_factory=dict)
    files: list[str] = field(default_factory=list)

    def order(self) -> tuple[int, str, str]:
        match = _MESSAGE_ID.match(self.legacy_id)
        first = min((t for t in [self.timestamp, *(c[1] for c in self.chunks.values())]
                     if t is not None), default=None)
        return (int(match.group("n")) if match else _FAR,
                first.isoformat() if first else "", self.legacy_id)


@dataclass
class LegacyConversation:
    folder: str
    name: str
    messages: dict[str, LegacyMessage] = field(default_factory=dict)

    def ordered(self) -> list[LegacyMessage]:
        return sorted(self.messages.values(), key=LegacyMessage.order)


def locate(root: Path) -> Path:
    """The ``users`` folder under ``root`` (``root`` itself may be it).

    Raises:
        NotFound: no ``<user>/data/conversations/messages`` folder below it.
    """
    for base in (root / "users", root):
        if base.is_dir() and any((d / MESSAGES_DIR).is_dir() for d in base.iterdir()):
            return base
    raise NotFound(f"no seed004 data under {root} "
                   "(expected users/<user>/data/conversations/messages/*.json)")


def message_files(users: Path) -> list[tuple[str, Path]]:
    """``(user folder, file)`` for every message or chunk file, in no promised order."""
    return [(folder.name, path) for folder in users.iterdir() if (folder / MESSAGES_DIR).is_dir()
            for path in (folder / MESSAGES_DIR).glob("*.json")]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def collect(files: Iterable[tuple[str, Path]], report: LegacyReport
            ) -> dict[tuple[str, str], LegacyConversation]:
    """Read the files (in whatever order) into conversations, by ``(folder, name)``.

    The result does not depend on the order of ``files``: chunks are keyed by
    their seq, and of two files claiming one chunk (or one whole message) with
    different content, the one with the smaller path wins (both are reported).
    """
    convs: dict[tuple[str, str], LegacyConversation] = {}
    for folder, path in sorted(files, key=lambda f: (f[0], str(f[1]))):
        report.advance()
        record = read_json(path, report, dict)
        if record is None:
            continue
        seq = record.get("seq")
        chunked = "seq" in record or "tokens" in record
        stem = _CHUNK_FILE.match(path.stem)
        message_id = _text(record.get("messageId")) or (
            stem.group("mid") if chunked and stem else path.stem)
        match = _MESSAGE_ID.match(message_id)
        name = match.group("conv") if match else message_id
        conv = convs.setdefault((folder, name), LegacyConversation(folder, name))
        msg = conv.messages.setdefault(message_id, LegacyMessage(message_id))
        msg.files.append(str(path))
        when = parse_time(record.get("timestamp"))
        if chunked:
            text = _text(record.get("tokens"))
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1 or text is None:
                report.problem(path, "malformed chunk: needs a seq >= 1 and text in tokens")
                continue
            chunk = (text, when, _text(record.get("status")), _text(record.get("agentId")),
                     str(path))
            if seq in msg.chunks and msg.chunks[seq][0] != text:
                report.problem(path, f"chunk {seq} of {message_id} is also in "
                               f"{msg.chunks[seq][4]} with other text; that one is kept")
                continue
            msg.chunks.setdefault(seq, chunk)
            if _text(record.get("role")):
                msg.role = str(record["role"])
        else:
            content = record.get("content")
            if not isinstance(content, str):
                report.problem(path, "malformed message: content is not text")
                continue
            if msg.content is not None and msg.content != content:
                report.problem(path, f"message {message_id} is also in {msg.files[0]} "
                               "with other text; that one is kept")
                continue
            msg.content, msg.timestamp = content, when
            msg.role = _text(record.get("role")) or "user"
    # A message none of whose files could be used has nothing to rebuild.
    for conv in convs.values():
        for key in [k for k, m in conv.messages.items() if m.content is None and not m.chunks]:
            del conv.messages[key]
    return {k: c for k, c in convs.items() if c.messages}


def run(scope: Scope, root: Path, report: LegacyReport) -> None:
    users = locate(root)
    files = message_files(users)
    report.expect(len(files))
    for conv in collect(files, report).values():
        _conversation(scope, conv, report)


def _message(conv_id: str, owner: str, conv: LegacyConversation, msg: LegacyMessage,
             report: LegacyReport) -> tuple[Message, list[Chunk]]:
    if msg.role not in ROLES:
        raise Invalid(f"message {msg.legacy_id}: role must be one of {', '.join(ROLES)}",
                      field="role")
    role = cast(Role, msg.role)
    metadata = {"legacy_id": msg.legacy_id}
    if not msg.chunks:
        at = msg.timestamp or utcnow()
        return Message(id=stable_id(at, LAYOUT, owner, conv.folder, msg.legacy_id),
                       conversation_id=conv_id, role=role, content=msg.content or "",
                       metadata=metadata, status="complete", seq=1, created_at=at,
                       completed_at=at), []
    chunks: list[Chunk] = []
    for seq in range(1, max(msg.chunks) + 1):
        if seq not in msg.chunks:
            report.problem(msg.files[0], f"chunk {seq} of {msg.legacy_id} is missing: the "
                           "message is kept up to it, interrupted")
            break
        text, chunk_at, _status, _agent, _path = msg.chunks[seq]
        chunks.append(Chunk(seq=seq, text=text, created_at=chunk_at))
    # Complete only when every chunk is there and the last one says so.
    complete = (len(chunks) == max(msg.chunks)
                and msg.chunks[len(chunks)][2] == "complete")
    times: list[datetime] = [c.created_at for c in chunks if c.created_at is not None]
    start = min(times) if times else utcnow()
    agents = sorted({c[3] for c in msg.chunks.values() if c[3]})
    return Message(id=stable_id(start, LAYOUT, owner, conv.folder, msg.legacy_id),
                   conversation_id=conv_id, role=role, author=agents[0] if agents else None,
                   content="", metadata=metadata,
                   status="complete" if complete else "interrupted", seq=1, created_at=start,
                   completed_at=max(times) if times else start), chunks


def _conversation(scope: Scope, conv: LegacyConversation, report: LegacyReport) -> None:
    owner = scope.owner_id
    ordered = conv.ordered()
    where = f"{conv.folder}/{conv.name}"
    try:
        first = ordered[0].order()
        start = parse_time(first[1]) or utcnow()
        conv_id = stable_id(parse_time(first[1]), LAYOUT, owner, conv.folder, conv.name)
        messages = [_message(conv_id, owner, conv, m, report) for m in ordered]
        participants = sorted({m.author for m, _ in messages if m.author})
        record = Conversation(id=conv_id, title=conv.name, participants=participants,
                              metadata={"legacy_user": conv.folder}, created_at=start,
                              updated_at=start)
        created = scope.conversations.import_conversation(record, messages)
    except RECORD_ERRORS as exc:
        report.skipped("conversations", describe(exc), path=ordered[0].files[0], record=where)
        report.skipped("messages", "conversation not imported", len(ordered))
        return
    if created:
        report.imported("conversations")
        report.imported("messages", len(ordered))
    else:
        report.skipped("conversations", ALREADY)
        report.skipped("messages", ALREADY, len(ordered))
