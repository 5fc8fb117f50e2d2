"""Conversations, messages and chunks: the conformance suite, on every backend."""

from __future__ import annotations

import pytest

import memvault
from memvault import Conflict, Invalid, NotFound, PayloadTooLarge, Settings, Vault
from memvault.stores.conversations import ConversationStore


@pytest.fixture
def convs(vault: Vault, user_id: str) -> ConversationStore:
    return vault.for_user(user_id).conversations


def test_create_get_update_delete(convs: ConversationStore) -> None:
    c = convs.create(title="T", participants=["researcher", "critic"], metadata={"a": 1})
    assert c.message_count == 0 and c.last_message_at is None and c.entity_id is None
    assert convs.get(c.id).participants == ["researcher", "critic"]
    u = convs.update(c.id, title="T2", metadata={"b": 2})
    assert u.title == "T2" and u.metadata == {"b": 2} and u.participants == ["researcher", "critic"]
    convs.append(c.id, "user", "hello")
    convs.delete(c.id)
    with pytest.raises(NotFound):
        convs.get(c.id)
    with pytest.raises(NotFound):
        convs.messages(c.id)


def test_entity_link_and_cascade(vault: Vault, user_id: str, convs: ConversationStore) -> None:
    ents = vault.for_user(user_id).entities
    ents.create("E", entity_id="e")
    with pytest.raises(NotFound):
        convs.create(entity_id="missing")
    c = convs.create(entity_id="e")
    m = convs.start_message(c.id)
    convs.append_chunks(m.id, [(1, "partial")])
    other = convs.create()
    assert [x.id for x in convs.list(entity_id="e").items] == [c.id]
    ents.delete("e")
    with pytest.raises(NotFound):
        convs.get(c.id)
    with pytest.raises(NotFound):
        convs.get_message(m.id)
    assert convs.get(other.id).id == other.id


def test_messages_order_counts_and_roles(convs: ConversationStore) -> None:
    c = convs.create()
    for i in range(5):
        convs.append(c.id, "user" if i % 2 == 0 else "assistant", f"m{i}", author=f"a{i}")
    got = convs.get(c.id, include_messages=True)
    assert got.message_count == 5 and got.last_message_at is not None
    assert [m.content for m in got.messages or []] == [f"m{i}" for i in range(5)]
    assert [m.seq for m in got.messages or []] == [1, 2, 3, 4, 5]
    with pytest.raises(Invalid) as info:
        convs.append(c.id, "wizard", "x")
    assert info.value.field == "role"


def test_message_pages(convs: ConversationStore) -> None:
    c = convs.create()
    ids = [convs.append(c.id, "user", f"m{i}").id for i in range(23)]
    # Forward from the start, following cursors.
    seen: list[str] = []
    page = convs.messages(c.id, limit=10)
    seen += [m.id for m in page.items]
    while page.next_cursor:
        page = convs.messages(c.id, limit=10, cursor=page.next_cursor)
        seen += [m.id for m in page.items]
    assert seen == ids
    # after / before a message, always chronological.
    assert [m.id for m in convs.messages(c.id, limit=3, after=ids[4]).items] == ids[5:8]
    back = convs.messages(c.id, limit=3, before=ids[10])
    assert [m.id for m in back.items] == ids[7:10]
    further = convs.messages(c.id, limit=3, cursor=back.next_cursor)
    assert [m.id for m in further.items] == ids[4:7]
    # A position (the message's seq in the conversation) works as well as an id.
    assert [m.id for m in convs.messages(c.id, limit=3, after="5").items] == ids[5:8]
    assert [m.id for m in convs.messages(c.id, limit=2, before="3").items] == ids[0:2]
    with pytest.raises(NotFound):
        convs.messages(c.id, after="no-such-message")
    with pytest.raises(Invalid):
        convs.messages(c.id, before=ids[1], after=ids[0])


def test_conversation_list_newest_first_with_cursor(convs: ConversationStore) -> None:
    made = [convs.create(title=str(i)).id for i in range(12)]
    page = convs.list(limit=5)
    seen = [c.id for c in page.items]
    while page.next_cursor:
        page = convs.list(limit=5, cursor=page.next_cursor)
        seen += [c.id for c in page.items]
    assert seen == made[::-1]


def test_chunks_are_idempotent_gapless_and_reconstructed(convs: ConversationStore) -> None:
    c = convs.create()
    m = convs.start_message(c.id, author="researcher")
    assert m.status == "streaming"
    assert convs.append_chunks(m.id, [(1, "Hel"), (2, "lo")]) == 2
    assert convs.append_chunks(m.id, [(2, "lo")]) == 2  # same text again: no-op
    with pytest.raises(Conflict):
        convs.append_chunks(m.id, [(2, "LO")])
    with pytest.raises(Conflict):
        convs.append_chunks(m.id, [(4, "gap")])
    # A batch is all or nothing: the gap at 5 refuses the valid 3 too.
    with pytest.raises(Conflict):
        convs.append_chunks(m.id, [(3, " wor"), (5, "x")])
    assert convs.get_message(m.id).content == "Hello"
    convs.append_chunks(m.id, [(3, " world")])
    chunks, status = convs.chunks(m.id, after_seq=1)
    assert [c.seq for c in chunks] == [2, 3] and status == "streaming"
    done = convs.complete(m.id)
    assert done.status == "complete" and done.content == "Hello world"
    assert done.completed_at is not None
    assert convs.complete(m.id).status == "complete"  # idempotent
    with pytest.raises(Conflict):
        convs.append_chunks(m.id, [(4, "late")])
    with pytest.raises(Conflict):
        convs.complete(m.id, "failed")


def test_bad_chunks(vault: Vault, convs: ConversationStore) -> None:
    c = convs.create()
    m = convs.start_message(c.id)
    for bad in ([(0, "x")], [("1", "x")], [(True, "x")], [(1, 5)], []):
        with pytest.raises(Invalid):
            convs.append_chunks(m.id, bad)  # type: ignore[arg-type]
    with pytest.raises(PayloadTooLarge):
        convs.append_chunks(m.id, [(1, "x" * (vault.settings.max_chunk_chars + 1))])
    with pytest.raises(NotFound):
        convs.append_chunks("nope", [(1, "x")])
    with pytest.raises(Invalid):
        convs.complete(m.id, "interrupted")


def test_failed_keeps_text(convs: ConversationStore) -> None:
    c = convs.create()
    m = convs.start_message(c.id)
    convs.append_chunks(m.id, [(1, "half")])
    assert convs.complete(m.id, "failed").content == "half"


def test_other_owner_sees_nothing(vault: Vault, convs: ConversationStore) -> None:
    c = convs.create()
    m = convs.start_message(c.id)
    other = vault.for_user(vault.users.register("o@example.com", "password-1").id).conversations
    for call in (lambda: other.get(c.id), lambda: other.messages(c.id),
                 lambda: other.append(c.id, "user", "x"), lambda: other.delete(c.id),
                 lambda: other.update(c.id, title="x"), lambda: other.get_message(m.id),
                 lambda: other.append_chunks(m.id, [(1, "x")]),
                 lambda: other.complete(m.id), lambda: other.chunks(m.id)):
        with pytest.raises(NotFound):
            call()
    assert other.list().items == []


def test_reopen_keeps_messages_and_chunks(settings: Settings, vault: Vault, user_id: str,
                                          convs: ConversationStore) -> None:
    c = convs.create(title="persist")
    convs.append(c.id, "user", "question")
    m = convs.start_message(c.id)
    convs.append_chunks(m.id, [(1, "part one, "), (2, "part two")])
    before = convs.get(c.id, include_messages=True)
    vault.close()
    with memvault.open(settings) as again:
        after = again.for_user(user_id).conversations.get(c.id, include_messages=True)
        # This process is alive and the lease is fresh: still streaming, same text.
        assert after == before
