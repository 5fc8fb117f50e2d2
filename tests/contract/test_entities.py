"""Entities: create/get/list/update/delete, owner scoping, pagination."""

from __future__ import annotations

import threading

import pytest

import memvault
from memvault import Conflict, Invalid, NotFound, Settings, Vault


def test_create_get_update_delete(vault: Vault, user_id: str) -> None:
    ents = vault.for_user(user_id).entities
    made = ents.create("Research", entity_id="test_001", description="d", metadata={"k": [1]})
    assert made.entity_id == "test_001" and made.document_count == 0
    got = ents.get("test_001")
    assert got == made
    changed = ents.update("test_001", entity_name="Renamed", metadata={"k": 2})
    assert changed.entity_name == "Renamed" and changed.description == "d"
    assert changed.metadata == {"k": 2} and changed.updated_at >= made.updated_at
    ents.delete("test_001")
    with pytest.raises(NotFound):
        ents.get("test_001")
    with pytest.raises(NotFound):
        ents.delete("test_001")


def test_generated_ids_and_duplicate_client_ids(vault: Vault, user_id: str) -> None:
    ents = vault.for_user(user_id).entities
    a, b = ents.create("A"), ents.create("B")
    assert a.entity_id != b.entity_id
    ents.create("X", entity_id="same")
    with pytest.raises(Conflict):
        ents.create("Y", entity_id="same")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x" * 201, "with space", "\x00"])
def test_malformed_entity_ids(vault: Vault, user_id: str, bad: str) -> None:
    with pytest.raises(Invalid):
        vault.for_user(user_id).entities.create("n", entity_id=bad)


def test_owners_are_isolated(vault: Vault) -> None:
    alice = vault.users.register("alice@example.com", "password-1").id
    bob = vault.users.register("bob@example.com", "password-1").id
    vault.for_user(alice).entities.create("mine", entity_id="shared-name")
    # The same client id is free for another owner, and neither sees the other's.
    vault.for_user(bob).entities.create("his", entity_id="shared-name")
    assert vault.for_user(alice).entities.get("shared-name").entity_name == "mine"
    assert vault.for_user(bob).entities.get("shared-name").entity_name == "his"
    carol = vault.users.register("carol@example.com", "password-1").id
    with pytest.raises(NotFound):
        vault.for_user(carol).entities.get("shared-name")
    assert vault.for_user(carol).entities.list().items == []


def test_pagination_newest_first_and_stable_under_inserts(vault: Vault, user_id: str) -> None:
    ents = vault.for_user(user_id).entities
    made = [ents.create(f"e{i}").entity_id for i in range(25)]
    page = ents.list(limit=10)
    seen = [e.entity_id for e in page.items]
    assert seen == made[::-1][:10]
    ents.create("late")  # newer than everything: must not shift later pages
    while page.next_cursor:
        page = ents.list(limit=10, cursor=page.next_cursor)
        seen += [e.entity_id for e in page.items]
    assert seen == made[::-1]


def test_bad_limits_and_cursors(vault: Vault, user_id: str) -> None:
    ents = vault.for_user(user_id).entities
    for limit in (0, 201):
        with pytest.raises(Invalid):
            ents.list(limit=limit)
    with pytest.raises(Invalid):
        ents.list(cursor="!!not-a-cursor")


def test_reopen_keeps_everything(settings: Settings, vault: Vault, user_id: str) -> None:
    ents = vault.for_user(user_id).entities
    made = {ents.create(f"n{i}", metadata={"i": i}).entity_id for i in range(10)}
    vault.close()
    with memvault.open(settings) as again:
        listed = again.for_user(user_id).entities.list(limit=200).items
        assert {e.entity_id for e in listed} == made
        assert again.integrity_check() == []


def test_concurrent_writers_lose_nothing(vault: Vault, user_id: str) -> None:
    ents = vault.for_user(user_id).entities
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                ents.create(f"t{n}-{i}", entity_id=f"t{n}-{i}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ents.count() == 160
