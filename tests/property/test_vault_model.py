"""Stateful property tests: the vault against a plain Python model.

One hypothesis state machine drives two users' entities, files and
conversations (whole and streamed messages) through the library API, with
"close and reopen the vault" as one more rule, and checks after every step
that what the vault returns equals the model. It runs on every backend of the
``settings`` fixture; each example starts from an empty vault (a fresh data
directory, and on PostgreSQL a fresh database).

``MEMVAULT_SLOW=1`` runs many more and longer examples.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import memvault
from memvault import Conflict, Entity, NotFound, Settings, Vault
from memvault.stores.entities import UNSET

from ..conftest import PgDatabases

SLOW = bool(os.environ.get("MEMVAULT_SLOW"))
RUN = hypothesis.settings(
    max_examples=200 if SLOW else 12,
    stateful_step_count=60 if SLOW else 25,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the work tree; failures print a blob
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much],
)

# -- strategies ---------------------------------------------------------------

USERS = st.integers(0, 1)
PICK = st.integers(0, 10_000)  # an index into whatever exists, modulo its size
LIMITS = st.integers(1, 3)
CLIENT_IDS = ["a", "b", "c.1", "Z@x:y-2"]  # few, so duplicates and cross-user clashes happen
# Storable text: no NUL, no unpaired surrogates (both refused by check_text).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=12)
NAMES = TEXT.filter(lambda s: s.strip() != "")
METADATA = st.dictionaries(
    st.text(st.characters(codec="ascii", blacklist_characters="\x00"), max_size=4),
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | TEXT, max_size=2)
# Identical contents recur, across entities and users; b"" is a blob too.
SHARED_BYTES = [b"", b"same bytes", b"\x00\xff" * 200]
CONTENT = st.sampled_from(SHARED_BYTES) | st.binary(max_size=200)
ROLES = st.sampled_from(["user", "assistant", "system", "tool"])
CHUNK = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=8)

INDEXING_FIELDS = {"status", "chunk_count", "error"}


def _pick(items: list[Any], index: int) -> Any:
    return items[index % len(items)]


# -- the model ----------------------------------------------------------------

@dataclass
class MEntity:
    entity_id: str
    name: str
    description: str | None
    metadata: dict[str, Any]
    docs: dict[str, bytes] = field(default_factory=dict)  # doc_id -> bytes, oldest first


@dataclass
class MMessage:
    id: str
    role: str
    status: str  # streaming, complete or failed
    content: str = ""  # the materialised text once final
    chunks: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.chunks) if self.status == "streaming" else self.content


@dataclass
class MConversation:
    id: str
    entity_id: str | None
    title: str | None
    messages: list[MMessage] = field(default_factory=list)


@dataclass
class MUser:
    id: str
    entities: dict[str, MEntity] = field(default_factory=dict)  # oldest first
    conversations: dict[str, MConversation] = field(default_factory=dict)  # oldest first


def _all_pages(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
    cursor: str | None = None
    seen = 0
    while True:
        page = fetch(cursor)
        yield from page.items
        seen += 1
        assert seen < 1000, "pagination does not end"
        if page.next_cursor is None:
            return
        assert page.items, "an empty page with a next cursor"
        cursor = page.next_cursor


def _all_messages(convs: Any, conv_id: str, limit: int) -> list[Any]:
    """Every message, oldest first, by following the cursor forward."""
    return list(_all_pages(lambda cursor: convs.messages(conv_id, limit=limit, cursor=cursor)))


# -- the machine ----------------------------------------------------------------

class VaultMachine(RuleBasedStateMachine):
    """Subclassed per test with ``fresh``: a function giving the settings of an
    empty vault and a clean-up to call when the example ends."""

    fresh: Callable[[], tuple[Settings, Callable[[], None]]]

    def __init__(self) -> None:
        super().__init__()
        self.settings, self._cleanup = type(self).fresh()
        self.vault: Vault | None = memvault.open(self.settings)
        self.users = [MUser(self.vault.users.register(f"u{i}-{uuid.uuid4().hex[:8]}@example.com",
                                                      "password-1").id) for i in range(2)]

    def teardown(self) -> None:
        try:
            if self.vault is not None:
                self.vault.close()
                self.vault = None
        finally:
            self._cleanup()

    # -- helpers --------------------------------------------------------------

    def scope(self, user: int) -> Any:
        assert self.vault is not None
        return self.vault.for_user(self.users[user].id)

    def entity_keys(self) -> list[tuple[int, str]]:
        return [(u, e) for u, m in enumerate(self.users) for e in m.entities]

    def doc_keys(self) -> list[tuple[int, str, str]]:
        return [(u, e.entity_id, d) for u, m in enumerate(self.users)
                for e in m.entities.values() for d in e.docs]

    def conv_keys(self) -> list[tuple[int, str]]:
        return [(u, c) for u, m in enumerate(self.users) for c in m.conversations]

    def message_keys(self, *statuses: str) -> list[tuple[int, MMessage]]:
        return [(u, msg) for u, m in enumerate(self.users) for c in m.conversations.values()
                for msg in c.messages if msg.status in statuses]

    def has_entities(self) -> bool:
        return bool(self.entity_keys())

    def has_docs(self) -> bool:
        return bool(self.doc_keys())

    def has_convs(self) -> bool:
        return bool(self.conv_keys())

    def has_streaming(self) -> bool:
        return bool(self.message_keys("streaming"))

    def has_streaming_with_chunks(self) -> bool:
        return any(m.chunks for _, m in self.message_keys("streaming"))

    def has_final(self) -> bool:
        return bool(self.message_keys("complete", "failed"))

    def check_entity(self, got: Entity, want: MEntity) -> None:
        assert (got.entity_id, got.entity_name, got.description, got.metadata,
                got.document_count) == (want.entity_id, want.name, want.description,
                                        want.metadata, len(want.docs))

    # -- a start with something of everything --------------------------------

    @initialize(client_ids=st.lists(st.none() | st.sampled_from(CLIENT_IDS), min_size=2,
                                    max_size=2), contents=st.lists(CONTENT, min_size=2,
                                                                   max_size=2),
                chunks=st.lists(CHUNK, max_size=2))
    def seed(self, client_ids: list[str | None], contents: list[bytes],
             chunks: list[str]) -> None:
        """Each user starts with an entity holding a file and a conversation in it
        with a whole and a streaming message: every rule has something to act on
        (whichever rules the example enables)."""
        for user, (client_id, content) in enumerate(zip(client_ids, contents, strict=True)):
            self.create_entity(user, client_id, f"seed {user}", None, {})
            entity_id = list(self.users[user].entities)[-1]
            self._add(user, entity_id, content, "seed.bin")
            self.create_conversation(user, True, 0, None)
            # ``user`` picks this user's conversation and message: the first
            # user's are the only ones yet, the second's come second.
            self.append_message(user, "user", "hello")
            self.start_message(user, "assistant")
            if chunks:
                self.append_chunks(user, chunks, 0, 0)

    # -- entities -------------------------------------------------------------

    @rule(user=USERS, client_id=st.none() | st.sampled_from(CLIENT_IDS), name=NAMES,
          description=st.none() | TEXT, metadata=METADATA)
    def create_entity(self, user: int, client_id: str | None, name: str,
                      description: str | None, metadata: dict[str, Any]) -> None:
        model = self.users[user]
        entities = self.scope(user).entities
        if client_id is not None and client_id in model.entities:
            with pytest.raises(Conflict):
                entities.create(name, entity_id=client_id, description=description,
                                metadata=metadata)
            return
        made = entities.create(name, entity_id=client_id, description=description,
                               metadata=metadata)
        if client_id is not None:
            assert made.entity_id == client_id
        assert made.entity_id not in model.entities
        model.entities[made.entity_id] = MEntity(made.entity_id, name, description, metadata)
        self.check_entity(made, model.entities[made.entity_id])
        assert entities.get(made.entity_id) == made  # what create returned is what is stored

    @precondition(has_entities)
    @rule(pick=PICK, name=st.just(UNSET) | NAMES, description=st.just(UNSET) | st.none() | TEXT,
          metadata=st.just(UNSET) | METADATA)
    def update_entity(self, pick: int, name: Any, description: Any, metadata: Any) -> None:
        user, entity_id = _pick(self.entity_keys(), pick)
        want = self.users[user].entities[entity_id]
        before = self.scope(user).entities.get(entity_id)
        got = self.scope(user).entities.update(entity_id, entity_name=name,
                                               description=description, metadata=metadata)
        if name is not UNSET:
            want.name = name
        if description is not UNSET:
            want.description = description
        if metadata is not UNSET:
            want.metadata = metadata
        self.check_entity(got, want)
        assert got.created_at == before.created_at and got.updated_at >= before.updated_at
        assert self.scope(user).entities.get(entity_id) == got

    @precondition(has_entities)
    @rule(pick=PICK)
    def delete_entity(self, pick: int) -> None:
        user, entity_id = _pick(self.entity_keys(), pick)
        model = self.users[user]
        doomed = [c for c, conv in model.conversations.items() if conv.entity_id == entity_id]
        doomed_messages = [m.id for c in doomed for m in model.conversations[c].messages]
        self.scope(user).entities.delete(entity_id)
        del model.entities[entity_id]
        for conv_id in doomed:
            del model.conversations[conv_id]
        convs = self.scope(user).conversations
        with pytest.raises(NotFound):
            self.scope(user).entities.get(entity_id)
        with pytest.raises(NotFound):
            self.scope(user).entities.delete(entity_id)
        with pytest.raises(NotFound):
            self.scope(user).files.list(entity_id)
        for conv_id in doomed:
            with pytest.raises(NotFound):
                convs.get(conv_id)
        for message_id in doomed_messages:
            with pytest.raises(NotFound):
                convs.get_message(message_id)

    @precondition(has_entities)
    @rule(pick=PICK, name=NAMES)
    def other_user_cannot_reach_entity(self, pick: int, name: str) -> None:
        user, entity_id = _pick(self.entity_keys(), pick)
        other = 1 - user
        theirs = self.scope(other)
        if entity_id in self.users[other].entities:  # same client id, their own entity
            self.check_entity(theirs.entities.get(entity_id),
                              self.users[other].entities[entity_id])
            return
        for attempt in (lambda: theirs.entities.get(entity_id),
                        lambda: theirs.entities.update(entity_id, entity_name=name),
                        lambda: theirs.entities.delete(entity_id),
                        lambda: theirs.files.list(entity_id),
                        lambda: theirs.files.add(entity_id, "x.txt", b"x"),
                        lambda: theirs.conversations.create(entity_id=entity_id)):
            with pytest.raises(NotFound):
                attempt()
        assert not theirs.entities.exists(entity_id)

    @rule(user=USERS, limit=LIMITS)
    def list_entities(self, user: int, limit: int) -> None:
        entities = self.scope(user).entities
        listed = list(_all_pages(lambda cursor: entities.list(limit=limit, cursor=cursor)))
        want = list(reversed(self.users[user].entities.values()))  # newest first
        assert [e.entity_id for e in listed] == [e.entity_id for e in want]
        for got, model in zip(listed, want, strict=True):
            self.check_entity(got, model)
        assert entities.count() == len(want)

    # -- files ----------------------------------------------------------------

    def _add(self, user: int, entity_id: str, content: bytes, filename: str) -> None:
        doc = self.scope(user).files.add(entity_id, filename, content)
        assert doc.size == len(content)
        assert doc.sha256 == hashlib.sha256(content).hexdigest()
        assert doc.entity_id == entity_id
        docs = self.users[user].entities[entity_id].docs
        assert doc.doc_id not in docs
        docs[doc.doc_id] = content
        # Without the indexing fields: the background ingestion job may have
        # moved the document on between the two calls.
        got = self.scope(user).files.get(entity_id, doc.doc_id)
        assert got.model_dump(exclude=INDEXING_FIELDS) == doc.model_dump(exclude=INDEXING_FIELDS)

    @precondition(has_entities)
    @rule(pick=PICK, content=CONTENT, filename=st.none() | TEXT)
    def add_file(self, pick: int, content: bytes, filename: str | None) -> None:
        user, entity_id = _pick(self.entity_keys(), pick)
        self._add(user, entity_id, content, filename or "f.bin")

    @precondition(has_entities)
    @rule(first=PICK, second=PICK, content=CONTENT)
    def add_same_bytes_twice(self, first: int, second: int, content: bytes) -> None:
        """The same bytes in two entities (possibly of two users): one blob file."""
        keys = self.entity_keys()
        for user, entity_id in (_pick(keys, first), _pick(keys, second)):
            self._add(user, entity_id, content, "same.bin")

    @precondition(has_docs)
    @rule(pick=PICK)
    def delete_file(self, pick: int) -> None:
        user, entity_id, doc_id = _pick(self.doc_keys(), pick)
        files = self.scope(user).files
        files.delete(entity_id, doc_id)
        del self.users[user].entities[entity_id].docs[doc_id]
        with pytest.raises(NotFound):
            files.get(entity_id, doc_id)
        with pytest.raises(NotFound):
            files.delete(entity_id, doc_id)

    @precondition(has_docs)
    @rule(pick=PICK)
    def other_user_cannot_reach_file(self, pick: int) -> None:
        user, entity_id, doc_id = _pick(self.doc_keys(), pick)
        theirs = self.scope(1 - user).files
        for attempt in (lambda: theirs.get(entity_id, doc_id),
                        lambda: theirs.read(entity_id, doc_id),
                        lambda: theirs.delete(entity_id, doc_id)):
            with pytest.raises(NotFound):
                attempt()

    @precondition(has_entities)
    @rule(pick=PICK, limit=LIMITS)
    def list_files(self, pick: int, limit: int) -> None:
        user, entity_id = _pick(self.entity_keys(), pick)
        files = self.scope(user).files
        listed = list(_all_pages(lambda c: files.list(entity_id, limit=limit, cursor=c)))
        docs = self.users[user].entities[entity_id].docs
        assert [d.doc_id for d in listed] == list(reversed(docs))
        assert [d.size for d in listed] == [len(docs[d.doc_id]) for d in listed]

    # -- conversations --------------------------------------------------------

    @rule(user=USERS, in_entity=st.booleans(), pick=PICK, title=st.none() | TEXT)
    def create_conversation(self, user: int, in_entity: bool, pick: int,
                            title: str | None) -> None:
        model = self.users[user]
        entity_id = _pick(list(model.entities), pick) if in_entity and model.entities else None
        conv = self.scope(user).conversations.create(title=title, entity_id=entity_id)
        assert (conv.entity_id, conv.title, conv.message_count) == (entity_id, title, 0)
        model.conversations[conv.id] = MConversation(conv.id, entity_id, title)
        assert self.scope(user).conversations.get(conv.id) == conv

    @precondition(has_convs)
    @rule(pick=PICK, title=st.none() | TEXT)
    def update_conversation(self, pick: int, title: str | None) -> None:
        user, conv_id = _pick(self.conv_keys(), pick)
        got = self.scope(user).conversations.update(conv_id, title=title)
        self.users[user].conversations[conv_id].title = title
        assert got.title == title

    @precondition(has_convs)
    @rule(pick=PICK)
    def delete_conversation(self, pick: int) -> None:
        user, conv_id = _pick(self.conv_keys(), pick)
        convs = self.scope(user).conversations
        gone = self.users[user].conversations.pop(conv_id)
        convs.delete(conv_id)
        with pytest.raises(NotFound):
            convs.get(conv_id)
        with pytest.raises(NotFound):
            convs.messages(conv_id)
        for msg in gone.messages:
            with pytest.raises(NotFound):
                convs.get_message(msg.id)

    @rule(user=USERS, limit=LIMITS, by_entity=st.booleans(), pick=PICK)
    def list_conversations(self, user: int, limit: int, by_entity: bool, pick: int) -> None:
        model = self.users[user]
        entity_id = _pick(list(model.entities), pick) if by_entity and model.entities else None
        convs = self.scope(user).conversations
        listed = list(_all_pages(lambda c: convs.list(limit=limit, cursor=c,
                                                      entity_id=entity_id)))
        want = [c for c in reversed(model.conversations.values())
                if entity_id is None or c.entity_id == entity_id]
        assert [c.id for c in listed] == [c.id for c in want]
        assert [c.message_count for c in listed] == [len(c.messages) for c in want]

    @precondition(has_convs)
    @rule(pick=PICK, role=ROLES, content=TEXT)
    def append_message(self, pick: int, role: str, content: str) -> None:
        user, conv_id = _pick(self.conv_keys(), pick)
        conv = self.users[user].conversations[conv_id]
        msg = self.scope(user).conversations.append(conv_id, role, content)
        assert (msg.status, msg.content, msg.seq) == ("complete", content, len(conv.messages) + 1)
        conv.messages.append(MMessage(msg.id, role, "complete", content=content))

    @precondition(has_convs)
    @rule(pick=PICK, role=ROLES)
    def start_message(self, pick: int, role: str) -> None:
        user, conv_id = _pick(self.conv_keys(), pick)
        conv = self.users[user].conversations[conv_id]
        msg = self.scope(user).conversations.start_message(conv_id, role)
        assert (msg.status, msg.content, msg.seq) == ("streaming", "", len(conv.messages) + 1)
        conv.messages.append(MMessage(msg.id, role, "streaming"))

    @precondition(has_streaming)
    @rule(pick=PICK, texts=st.lists(CHUNK, min_size=0, max_size=3), resend=PICK,
          resend_count=st.integers(0, 2))
    def append_chunks(self, pick: int, texts: list[str], resend: int, resend_count: int) -> None:
        """New chunks in order, possibly after resends of stored ones (no-ops)."""
        user, msg = _pick(self.message_keys("streaming"), pick)
        stored = list(enumerate(msg.chunks, start=1))
        again = [_pick(stored, resend + i) for i in range(resend_count)] if stored else []
        batch = again + [(len(msg.chunks) + i, t) for i, t in enumerate(texts, start=1)]
        if not batch:
            return
        last = self.scope(user).conversations.append_chunks(msg.id, batch)
        msg.chunks.extend(texts)
        assert last == len(msg.chunks)

    @precondition(has_streaming_with_chunks)
    @rule(pick=PICK, seq=PICK, text=CHUNK, with_new=st.booleans())
    def resend_other_text(self, pick: int, seq: int, text: str, with_new: bool) -> None:
        """A stored seq sent again with different text is refused, and nothing
        of the call is kept (not even a valid new chunk in the same call)."""
        user, msg = _pick([(u, m) for u, m in self.message_keys("streaming") if m.chunks], pick)
        at = seq % len(msg.chunks) + 1
        if msg.chunks[at - 1] == text:
            text += "!"
        batch = ([(len(msg.chunks) + 1, "new")] if with_new else []) + [(at, text)]
        with pytest.raises(Conflict):
            self.scope(user).conversations.append_chunks(msg.id, batch)

    @precondition(has_streaming)
    @rule(pick=PICK, skip=st.integers(2, 4), text=CHUNK)
    def chunk_gap(self, pick: int, skip: int, text: str) -> None:
        user, msg = _pick(self.message_keys("streaming"), pick)
        with pytest.raises(Conflict):
            self.scope(user).conversations.append_chunks(msg.id,
                                                         [(len(msg.chunks) + skip, text)])

    @precondition(has_streaming)
    @rule(pick=PICK, status=st.sampled_from(["complete", "failed"]),
          content=st.none() | TEXT)
    def complete(self, pick: int, status: str, content: str | None) -> None:
        user, msg = _pick(self.message_keys("streaming"), pick)
        got = self.scope(user).conversations.complete(msg.id, status, content=content)
        msg.content = "".join(msg.chunks) if content is None else content
        msg.status = status
        assert (got.status, got.content) == (status, msg.content)
        assert got.completed_at is not None

    @precondition(has_final)
    @rule(pick=PICK, status=st.sampled_from(["complete", "failed"]), text=CHUNK)
    def finished_messages_stay_finished(self, pick: int, status: str, text: str) -> None:
        user, msg = _pick(self.message_keys("complete", "failed"), pick)
        convs = self.scope(user).conversations
        if status == msg.status:  # completing again the same way is a no-op
            assert convs.complete(msg.id, status).content == msg.content
        else:
            with pytest.raises(Conflict):
                convs.complete(msg.id, status)
        with pytest.raises(Conflict):
            convs.append_chunks(msg.id, [(len(msg.chunks) + 1, text)])

    @precondition(has_convs)
    @rule(pick=PICK, text=CHUNK)
    def other_user_cannot_reach_conversation(self, pick: int, text: str) -> None:
        user, conv_id = _pick(self.conv_keys(), pick)
        theirs = self.scope(1 - user).conversations
        attempts: list[Callable[[], Any]] = [
            lambda: theirs.get(conv_id), lambda: theirs.messages(conv_id),
            lambda: theirs.append(conv_id, "user", text), lambda: theirs.start_message(conv_id),
            lambda: theirs.update(conv_id, title=text), lambda: theirs.delete(conv_id)]
        for msg in self.users[user].conversations[conv_id].messages:
            attempts += [lambda m=msg: theirs.get_message(m.id),
                         lambda m=msg: theirs.append_chunks(m.id, [(len(m.chunks) + 1, text)]),
                         lambda m=msg: theirs.complete(m.id)]
        for attempt in attempts:
            with pytest.raises(NotFound):
                attempt()

    @precondition(has_convs)
    @rule(pick=PICK, limit=LIMITS, start=PICK, by_id=st.booleans())
    def page_forward_after(self, pick: int, limit: int, start: int, by_id: bool) -> None:
        """``after`` a message (by id or by position), then the cursor."""
        user, conv_id = _pick(self.conv_keys(), pick)
        convs = self.scope(user).conversations
        want = self.users[user].conversations[conv_id].messages
        k = start % (len(want) + 1)
        after = want[k - 1].id if by_id and k else str(k)
        page = convs.messages(conv_id, limit=limit, after=after)
        got = list(page.items)
        while page.next_cursor is not None:
            assert len(got) <= len(want)
            page = convs.messages(conv_id, limit=limit, cursor=page.next_cursor)
            got += page.items
        assert [m.id for m in got] == [m.id for m in want[k:]]

    @precondition(has_convs)
    @rule(pick=PICK, limit=LIMITS)
    def page_backwards(self, pick: int, limit: int) -> None:
        """From the end: ``before`` one past the last position, then the cursor."""
        user, conv_id = _pick(self.conv_keys(), pick)
        convs = self.scope(user).conversations
        want = self.users[user].conversations[conv_id].messages
        pages: list[list[str]] = []
        cursor: str | None = None
        while True:
            page = (convs.messages(conv_id, limit=limit, cursor=cursor) if cursor else
                    convs.messages(conv_id, limit=limit, before=str(len(want) + 1)))
            pages.append([m.id for m in page.items])
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            assert len(pages) <= len(want)
        assert [mid for p in reversed(pages) for mid in p] == [m.id for m in want]

    # -- close and reopen -----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every record of both users, as the vault returns them."""
        out: dict[str, Any] = {}
        for model in self.users:
            assert self.vault is not None
            scope = self.vault.for_user(model.id)
            ents = list(_all_pages(lambda c, s=scope: s.entities.list(limit=200, cursor=c)))
            out[model.id] = {
                "entities": ents,
                # Without the indexing fields: background jobs move them on.
                "files": {e.entity_id: [d.model_dump(exclude=INDEXING_FIELDS) for d in _all_pages(
                    lambda c, s=scope, e=e: s.files.list(e.entity_id, limit=200, cursor=c))]
                    for e in ents},
                "conversations": [scope.conversations.get(c.id, include_messages=True)
                                  for c in _all_pages(lambda c, s=scope:
                                                      s.conversations.list(limit=200, cursor=c))],
                "chunks": {m.id: scope.conversations.chunks(m.id)
                           for conv in model.conversations.values() for m in conv.messages},
            }
        return out

    @rule()
    def close_and_reopen(self) -> None:
        before = self.snapshot()
        assert self.vault is not None
        self.vault.close()
        self.vault = None
        self.vault = memvault.open(self.settings)
        assert self.snapshot() == before

    # -- invariants -----------------------------------------------------------

    @invariant()
    def blob_files_are_the_referenced_contents(self) -> None:
        assert self.vault is not None
        root = self.vault.blobs.root
        on_disk = {p.parent.name + p.name for p in root.rglob("*")
                   if p.is_file() and p.parent != self.vault.blobs.tmp}
        referenced = {hashlib.sha256(data).hexdigest() for m in self.users
                      for e in m.entities.values() for data in e.docs.values()}
        assert on_disk == referenced
        assert list(self.vault.blobs.tmp.iterdir()) == []

    @invariant()
    def entities_and_files_match(self) -> None:
        for u, model in enumerate(self.users):
            scope = self.scope(u)
            assert scope.entities.count() == len(model.entities)
            for entity in model.entities.values():
                self.check_entity(scope.entities.get(entity.entity_id), entity)
                for doc_id, data in entity.docs.items():
                    assert scope.files.read(entity.entity_id, doc_id) == data

    @invariant()
    def conversations_match(self) -> None:
        for u, model in enumerate(self.users):
            convs = self.scope(u).conversations
            assert convs.count() == len(model.conversations)
            for conv in model.conversations.values():
                got = convs.get(conv.id)
                assert (got.entity_id, got.title, got.message_count) == (
                    conv.entity_id, conv.title, len(conv.messages))
                listed = _all_messages(convs, conv.id, limit=2)
                assert [(m.id, m.seq, m.role, m.status, m.content) for m in listed] == [
                    (m.id, seq, m.role, m.status, m.text)
                    for seq, m in enumerate(conv.messages, start=1)]
                for m in conv.messages:
                    got_message = convs.get_message(m.id)
                    assert (got_message.status, got_message.content) == (m.status, m.text)
                    if m.status == "streaming":
                        assert got_message.last_chunk_seq == len(m.chunks)


# -- running it on every backend ------------------------------------------------

@pytest.mark.timeout(7200 if SLOW else 300)
def test_vault_matches_model(settings: Settings, backend: str,
                             request: pytest.FixtureRequest) -> None:
    base = settings.data_dir.parent / "examples"
    dbs = PgDatabases(request.getfixturevalue("pg_url")) if backend == "postgresql" else None

    def fresh() -> tuple[Settings, Callable[[], None]]:
        folder = base / uuid.uuid4().hex[:12]
        # A long lease: a message left streaming must stay so across reopen
        # however slow the machine (this process is alive; the lease decides).
        update: dict[str, Any] = {"data_dir": folder / "data", "stream_lease_s": 3600.0}
        if dbs is not None:
            update["database_url"] = dbs.create()

        def cleanup() -> None:
            try:
                if dbs is not None:
                    dbs.drop_all()
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        return settings.model_copy(update=update), cleanup

    machine = type("VaultModel", (VaultMachine,), {"fresh": staticmethod(fresh)})
    try:
        run_state_machine_as_test(machine, settings=RUN)
    finally:
        if dbs is not None:
            dbs.drop_all()
