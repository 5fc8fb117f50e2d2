"""Extractions and annotations on documents (issue 7, seed 001), on every backend:
create/get/list/delete, filters, paging, ordering, validation, owner scope, and
deletion with their document or its entity."""

from __future__ import annotations

import pytest

import memvault
from memvault import Invalid, NotFound, Vault
from memvault.scope import Scope


@pytest.fixture
def scope(vault: Vault, user_id: str) -> Scope:
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    return scope


@pytest.fixture
def doc_id(scope: Scope) -> str:
    return scope.files.add("e", "report.txt", b"quarterly numbers went up").doc_id


# -- extractions ---------------------------------------------------------------------

def test_extraction_create_get_list_delete(scope: Scope, doc_id: str) -> None:
    ex = scope.extractions.create(doc_id, "invoice/v1", {"total": 12.5, "items": ["a"]},
                                  model="gpt-x")
    assert ex.document_id == doc_id and ex.schema_ == "invoice/v1" and ex.model == "gpt-x"
    assert ex.model_dump()["schema"] == "invoice/v1"  # the wire name
    assert scope.extractions.get(ex.id) == ex
    assert scope.extractions.list(doc_id).items == [ex]
    assert scope.extractions.count(doc_id) == 1
    scope.extractions.delete(ex.id)
    with pytest.raises(NotFound):
        scope.extractions.get(ex.id)
    with pytest.raises(NotFound):
        scope.extractions.delete(ex.id)
    assert scope.extractions.count(doc_id) == 0


def test_extraction_list_filters_by_schema_and_pages_newest_first(scope: Scope,
                                                                  doc_id: str) -> None:
    made = [scope.extractions.create(doc_id, "a" if i % 2 else "b", [i]) for i in range(5)]
    everything = scope.extractions.list(doc_id)
    assert [e.id for e in everything.items] == [e.id for e in reversed(made)]
    assert [e.data for e in scope.extractions.list(doc_id, schema="a").items] == [[3], [1]]
    assert scope.extractions.list(doc_id, schema="none").items == []
    seen, cursor = [], None
    while True:
        page = scope.extractions.list(doc_id, limit=2, cursor=cursor)
        seen += [e.id for e in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [e.id for e in reversed(made)]


@pytest.mark.parametrize("kwargs, field", [
    ({"schema": ""}, "schema"), ({"schema": "x" * 201}, "schema"),
    ({"schema": "a\x00b"}, "schema"), ({"data": "text"}, "data"), ({"data": None}, "data"),
    ({"data": {"x": float("nan")}}, "data"), ({"data": {"k\x00": 1}}, "data"),
    ({"model": "m" * 201}, "model"),
])
def test_extraction_refuses_bad_input(scope: Scope, doc_id: str, kwargs: dict[str, object],
                                      field: str) -> None:
    args: dict[str, object] = {"schema": "s", "data": {}, **kwargs}
    with pytest.raises(Invalid) as info:
        scope.extractions.create(doc_id, **args)  # type: ignore[arg-type]
    assert info.value.field == field and info.value.status == 422


def test_extraction_on_a_missing_document_is_404(scope: Scope) -> None:
    with pytest.raises(NotFound):
        scope.extractions.create("no-such-doc", "s", {})
    with pytest.raises(NotFound):
        scope.extractions.list("no-such-doc")


# -- annotations ---------------------------------------------------------------------

def test_annotation_create_get_patch_delete(scope: Scope, doc_id: str, user_id: str) -> None:
    note = scope.annotations.create(doc_id, "claim", note="check this", start=0, end=9,
                                    page=1, chunk_id="c1", data={"color": "red"})
    assert (note.document_id, note.label, note.note, note.start, note.end, note.page,
            note.chunk_id, note.data) == (doc_id, "claim", "check this", 0, 9, 1, "c1",
                                          {"color": "red"})
    assert note.author == user_id and note.created_at == note.updated_at
    assert scope.annotations.get(note.id) == note
    changed = scope.annotations.update(note.id, note=None, start=4, data={"color": "blue"})
    assert (changed.note, changed.start, changed.end, changed.label) == (None, 4, 9, "claim")
    assert changed.data == {"color": "blue"} and changed.created_at == note.created_at
    assert changed.updated_at > note.updated_at
    assert scope.annotations.get(note.id) == changed
    cleared = scope.annotations.update(note.id, start=None, end=None, page=None, data=None)
    assert (cleared.start, cleared.end, cleared.page, cleared.data) == (None, None, None, {})
    scope.annotations.delete(note.id)
    with pytest.raises(NotFound):
        scope.annotations.get(note.id)
    with pytest.raises(NotFound):
        scope.annotations.update(note.id, label="x")
    with pytest.raises(NotFound):
        scope.annotations.delete(note.id)


def test_annotations_list_by_position_then_creation(scope: Scope, doc_id: str) -> None:
    late = scope.annotations.create(doc_id, "x", start=100, end=120)
    nowhere = scope.annotations.create(doc_id, "y")
    early = scope.annotations.create(doc_id, "x", start=5, end=6)
    tie = scope.annotations.create(doc_id, "y", start=100, end=101)
    big = scope.annotations.create(doc_id, "x", start=2_000_000_000, end=2_000_000_001)
    order = [early.id, late.id, tie.id, big.id, nowhere.id]
    assert [a.id for a in scope.annotations.list(doc_id).items] == order
    assert [a.id for a in scope.annotations.list(doc_id, label="y").items] == [tie.id,
                                                                              nowhere.id]
    seen, cursor = [], None
    while True:
        page = scope.annotations.list(doc_id, limit=2, cursor=cursor)
        seen += [a.id for a in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == order
    scope.annotations.update(nowhere.id, start=0, end=0)  # moving it moves it in the list
    assert scope.annotations.list(doc_id).items[0].id == nowhere.id
    assert scope.annotations.count(doc_id) == 5


@pytest.mark.parametrize("kwargs, field", [
    ({"start": 5, "end": 4}, "start"), ({"start": -1, "end": 4}, "start"),
    ({"start": 3}, "end"), ({"end": 3}, "start"), ({"start": 0, "end": 2**31}, "end"),
    ({"start": True, "end": 3}, "start"), ({"page": 0}, "page"), ({"label": ""}, "label"),
    ({"label": "l" * 201}, "label"), ({"note": "a\x00"}, "note"), ({"data": [1]}, "data"),
    ({"chunk_id": "c" * 201}, "chunk_id"),
])
def test_annotation_refuses_bad_input(scope: Scope, doc_id: str, kwargs: dict[str, object],
                                      field: str) -> None:
    args: dict[str, object] = {"label": "l", **kwargs}
    with pytest.raises(Invalid) as info:
        scope.annotations.create(doc_id, **args)  # type: ignore[arg-type]
    assert info.value.field == field and info.value.status == 422


def test_annotation_patch_checks_the_resulting_span(scope: Scope, doc_id: str) -> None:
    note = scope.annotations.create(doc_id, "l", start=5, end=10)
    with pytest.raises(Invalid):
        scope.annotations.update(note.id, start=11)  # past the kept end
    with pytest.raises(Invalid):
        scope.annotations.update(note.id, end=None)  # half a span
    with pytest.raises(Invalid):
        scope.annotations.update(note.id, label=None)  # type: ignore[arg-type]
    assert scope.annotations.get(note.id) == note  # nothing changed
    assert scope.annotations.update(note.id, start=10).start == 10


def test_annotation_on_a_missing_document_is_404(scope: Scope) -> None:
    with pytest.raises(NotFound):
        scope.annotations.create("no-such-doc", "l")
    with pytest.raises(NotFound):
        scope.annotations.list("no-such-doc")


# -- documents, cascades, owner scope -------------------------------------------------

def test_get_by_id_finds_the_document_without_its_entity(scope: Scope, doc_id: str) -> None:
    assert scope.files.get_by_id(doc_id) == scope.files.get("e", doc_id)
    with pytest.raises(NotFound):
        scope.files.get_by_id("nope")


def test_deleting_the_document_deletes_what_hangs_off_it(scope: Scope, doc_id: str) -> None:
    other = scope.files.add("e", "other.txt", b"other").doc_id
    ex = scope.extractions.create(doc_id, "s", {})
    note = scope.annotations.create(doc_id, "l")
    kept = scope.annotations.create(other, "l")
    scope.files.delete("e", doc_id)
    with pytest.raises(NotFound):
        scope.extractions.get(ex.id)
    with pytest.raises(NotFound):
        scope.annotations.get(note.id)
    assert scope.extractions.count(doc_id) == scope.annotations.count(doc_id) == 0
    assert scope.annotations.get(kept.id) == kept


def test_deleting_the_entity_deletes_them_too(scope: Scope, doc_id: str) -> None:
    ex = scope.extractions.create(doc_id, "s", {"a": 1})
    note = scope.annotations.create(doc_id, "l", start=1, end=2)
    scope.entities.delete("e")
    with pytest.raises(NotFound):
        scope.extractions.get(ex.id)
    with pytest.raises(NotFound):
        scope.annotations.get(note.id)


def test_another_owner_sees_nothing(vault: Vault, scope: Scope, doc_id: str) -> None:
    ex = scope.extractions.create(doc_id, "s", {})
    note = scope.annotations.create(doc_id, "l")
    other = vault.for_user(vault.users.register("other@example.com", "password-1").id)
    for call in (lambda: other.files.get_by_id(doc_id),
                 lambda: other.extractions.create(doc_id, "s", {}),
                 lambda: other.extractions.list(doc_id),
                 lambda: other.extractions.get(ex.id),
                 lambda: other.extractions.delete(ex.id),
                 lambda: other.annotations.create(doc_id, "l"),
                 lambda: other.annotations.list(doc_id),
                 lambda: other.annotations.get(note.id),
                 lambda: other.annotations.update(note.id, label="mine"),
                 lambda: other.annotations.delete(note.id)):
        with pytest.raises(NotFound):
            call()
    assert other.extractions.count(doc_id) == other.annotations.count(doc_id) == 0
    assert scope.extractions.get(ex.id) == ex and scope.annotations.get(note.id) == note


def test_they_survive_close_and_reopen(vault: Vault, scope: Scope, doc_id: str,
                                       user_id: str) -> None:
    ex = scope.extractions.create(doc_id, "s", {"deep": {"list": [1, None, "✓"]}})
    note = scope.annotations.create(doc_id, "l", note="é", start=3, end=3)
    vault.close()
    with memvault.open(vault.settings) as again:
        mine = again.for_user(user_id)
        assert mine.extractions.get(ex.id) == ex
        assert mine.annotations.get(note.id) == note
