"""Collections: vector records, document chunks, vector / full-text / hybrid
search, isolation and the embedding model check — on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import sqlalchemy as sa

import memvault
from memvault import Conflict, Invalid, NotFound, Vault
from memvault.backends.schema import chunks as chunks_table
from memvault.scope import Scope

PASSAGES = {
    "bees": "Honey bees communicate the direction of flowers with a waggle dance.",
    "tower": "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
    "bread": "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
    "rust": "The Rust borrow checker prevents data races at compile time.",
    "de": "Die Zugspitze ist mit 2962 Metern der höchste Berg Deutschlands.",
    "fr": "La baguette est un pain long et fin, emblème de la boulangerie française.",
    "zh": "知识图谱是一种用图结构表示实体及其关系的知识库。",
}


@pytest.fixture
def scope(vault: Vault, user_id: str) -> Scope:
    s = vault.for_user(user_id)
    s.entities.create("Notes", entity_id="e")
    s.collections.add("e", [{"id": k, "text": t, "metadata": {"topic": k, "n": i}}
                            for i, (k, t) in enumerate(PASSAGES.items())])
    return s


def _ids(results: memvault.models.SearchResults) -> list[str]:
    return [hit.chunk_id for hit in results.results]


def test_records_are_stored_listed_replaced_and_deleted(scope: Scope) -> None:
    record = scope.collections.get("e", "bees")
    assert record.text == PASSAGES["bees"] and record.doc_id is None
    assert record.metadata == {"topic": "bees", "n": 0} and record.dimensions == 384
    listed = scope.collections.list("e", limit=3)
    assert [r.chunk_id for r in listed.items] == ["bees", "tower", "bread"]
    rest = scope.collections.list("e", limit=10, cursor=listed.next_cursor)
    assert len(rest.items) == len(PASSAGES) - 3 and rest.next_cursor is None
    scope.collections.add("e", [{"id": "bees", "text": "Bumblebees buzz-pollinate tomatoes."}])
    assert scope.collections.get("e", "bees").text.startswith("Bumblebees")
    assert len(scope.collections.list("e", limit=100).items) == len(PASSAGES)
    assert scope.collections.delete("e", ["bees", "missing"]) == 1
    with pytest.raises(NotFound):
        scope.collections.get("e", "bees")
    assert "bees" not in _ids(scope.collections.search("e", query="bumblebees tomatoes",
                                                       mode="text"))


def test_generated_ids_and_validation(scope: Scope) -> None:
    made = scope.collections.add("e", [{"text": "no id given"}])
    assert made[0].chunk_id and scope.collections.get("e", made[0].chunk_id).text == "no id given"
    for bad in ([{"text": ""}], [{"text": "x", "extra": 1}], [{"id": "", "text": "x"}],
                [{"text": "x", "metadata": [1]}], [{"text": "nul\x00"}],
                [{"text": "x", "embedding": [0.0] * 384}],
                [{"text": "x", "embedding": [1.0] * 3}],
                [{"text": "x", "embedding": [float("nan")] * 384}],
                [{"text": "x"}] * 1001):
        with pytest.raises(Invalid):
            scope.collections.add("e", bad)
    assert len(scope.collections.list("e", limit=100).items) == len(PASSAGES) + 1


def test_text_search_ranks_and_treats_punctuation_as_text(scope: Scope) -> None:
    assert _ids(scope.collections.search("e", query="waggle dance", mode="text"))[0] == "bees"
    assert _ids(scope.collections.search("e", query="Deutschlands höchste Berg",
                                         mode="text"))[0] == "de"
    assert _ids(scope.collections.search("e", query="boulangerie", mode="text"))[0] == "fr"
    assert _ids(scope.collections.search("e", query="知识图谱", mode="text"))[0] == "zh"
    for query in ('"AND (', "NEAR", "-rust*", "title:bees", "''", "a OR", "(((", "^"):
        scope.collections.search("e", query=query, mode="text")  # never a syntax error
    assert _ids(scope.collections.search("e", query='borrow "checker" (AND', mode="text")
                )[0] == "rust"


def test_vector_search_finds_the_same_text_first(scope: Scope) -> None:
    found = scope.collections.search("e", query=PASSAGES["tower"], mode="vector", k=3)
    assert found.mode == "vector" and _ids(found)[0] == "tower"
    assert found.results[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(found.results) == 3
    assert [h.score for h in found.results] == sorted((h.score for h in found.results),
                                                      reverse=True)


def test_client_embeddings_are_normalised_and_searchable(vault: Vault, scope: Scope) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(5, 384)).astype(np.float32)
    scope.collections.add("e", [{"id": f"v{i}", "text": f"vector {i}",
                                 "embedding": (vectors[i] * 3).tolist()} for i in range(5)])
    assert scope.collections.get("e", "v2").model_id is None
    found = scope.collections.search("e", embedding=vectors[2].tolist(), mode="vector", k=1)
    assert _ids(found) == ["v2"] and found.results[0].score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(Invalid):
        scope.collections.search("e", embedding=[1.0] * 10, mode="vector")
    with pytest.raises(Invalid):
        scope.collections.search("e", embedding=vectors[0].tolist(), mode="hybrid")


def test_hybrid_is_the_default_and_fuses_both(scope: Scope) -> None:
    found = scope.collections.search("e", query="Eiffel Tower Paris")
    assert found.mode == "hybrid" and _ids(found)[0] == "tower"
    text_only = scope.collections.search("e", query="Eiffel Tower Paris", weights={"vector": 0})
    assert _ids(text_only)[0] == "tower"
    tuned = scope.collections.search("e", query="Eiffel", rrf_k=1, weights={"text": 2.5})
    assert _ids(tuned)[0] == "tower"
    for bad in ({"rrf_k": -1}, {"weights": {"other": 1}}, {"weights": {"text": -1}},
                {"k": 0}, {"k": 101}, {"mode": "fuzzy"}):
        with pytest.raises(Invalid):
            scope.collections.search("e", query="x", **bad)  # type: ignore[arg-type]
    with pytest.raises(Invalid):
        scope.collections.search("e")


def test_filters_by_metadata_and_document(scope: Scope) -> None:
    found = scope.collections.search("e", query="bread baguette", k=10,
                                     filter={"metadata": {"topic": "fr"}})
    assert _ids(found) == ["fr"]
    found = scope.collections.search("e", query="bread", mode="vector", k=10,
                                     filter={"metadata": {"n": 2}})
    assert _ids(found) == ["bread"]
    doc = scope.files.add("e", "d.txt", b"Sourdough starters need feeding with flour daily.")
    scope.files.wait_indexed("e", [doc.doc_id], 30)
    for mode in ("vector", "text", "hybrid"):
        found = scope.collections.search("e", query="sourdough", mode=mode,  # type: ignore[arg-type]
                                         filter={"doc_id": [doc.doc_id]})
        assert [h.doc_id for h in found.results] == [doc.doc_id]
        assert found.results[0].filename == "d.txt"
    with pytest.raises(Invalid):
        scope.collections.search("e", query="x", filter={"doc_id": 3})
    with pytest.raises(Invalid):
        scope.collections.search("e", query="x", filter={"color": "red"})


def test_an_empty_collection_answers_nothing(vault: Vault, user_id: str) -> None:
    s = vault.for_user(user_id)
    s.entities.create("Empty", entity_id="empty")
    for mode in ("vector", "text", "hybrid"):
        assert s.collections.search("empty", query="anything",
                                    mode=mode).results == []  # type: ignore[arg-type]


def test_another_owners_collection_is_not_found(vault: Vault, scope: Scope) -> None:
    other = vault.for_user(vault.users.register("o@example.com", "password-1").id)
    for call in (lambda: other.collections.search("e", query="bees"),
                 lambda: other.collections.list("e"),
                 lambda: other.collections.get("e", "bees"),
                 lambda: other.collections.delete("e", ["bees"]),
                 lambda: other.collections.add("e", [{"text": "intruder"}])):
        with pytest.raises(NotFound):
            call()
    assert scope.collections.get("e", "bees")


def test_documents_are_indexed_whole_and_removed_with_their_document(scope: Scope) -> None:
    body = "\n\n".join(f"Paragraph {i} talks about volcanoes erupting lava number {i}."
                       for i in range(200)).encode()
    doc = scope.files.add("e", "volcano.md", body)
    [done] = scope.files.wait_indexed("e", [doc.doc_id], 60)
    assert done.status == "indexed" and done.chunk_count > 1 and done.error is None
    chunks = scope.collections.list("e", doc_id=doc.doc_id, limit=200).items
    assert [c.position for c in chunks] == list(range(done.chunk_count))
    text = body.decode()
    assert all(text[c.start:c.end] == c.text for c in chunks)  # type: ignore[misc]
    assert scope.collections.search("e", query="volcanoes lava", mode="text").results
    scope.files.delete("e", doc.doc_id)
    for mode in ("vector", "text", "hybrid"):
        found = scope.collections.search("e", query="volcanoes erupting lava", k=100,
                                         mode=mode)  # type: ignore[arg-type]
        assert doc.doc_id not in {h.doc_id for h in found.results}
    assert scope.collections.list("e", doc_id=doc.doc_id).items == []


def test_identical_content_reuses_chunks_without_embedding(vault: Vault, scope: Scope) -> None:
    body = b"Glaciers carve U-shaped valleys.\n\nMoraines mark where glaciers stopped."
    first = scope.files.add("e", "a.txt", body)
    [indexed] = scope.files.wait_indexed("e", [first.doc_id], 30)
    before = vault.embedder.stats()
    second = scope.files.add("e", "b.txt", body)
    [done] = scope.files.wait_indexed("e", [second.doc_id], 30)
    after = vault.embedder.stats()
    assert done.status == "indexed" and done.chunk_count == indexed.chunk_count
    assert (after.hits, after.misses) == (before.hits, before.misses)  # nothing embedded
    copies = scope.collections.list("e", doc_id=second.doc_id).items
    originals = scope.collections.list("e", doc_id=first.doc_id).items
    assert [c.text for c in copies] == [c.text for c in originals] and copies


def test_unreadable_files_fail_clearly_and_stay_downloadable(scope: Scope) -> None:
    broken = io.BytesIO()
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("not-word.txt", "this is no docx")
    docs = [scope.files.add("e", "x.docx", broken.getvalue()),
            scope.files.add("e", "image.png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
            scope.files.add("e", "empty.txt", b"   \n")]
    done = scope.files.wait_indexed("e", [d.doc_id for d in docs], 30)
    assert [d.status for d in done] == ["failed"] * 3
    assert all(d.error for d in done)
    assert scope.files.read("e", docs[1].doc_id).startswith(b"\x89PNG")


def test_a_new_embedding_model_is_a_conflict_until_reindexed(settings: memvault.Settings,
                                                            vault: Vault, scope: Scope) -> None:
    with memvault.open(settings, embedder="local") as changed:  # beside the open vault
        s = changed.for_user(scope.owner_id)
        with pytest.raises(Conflict, match="reindex"):
            s.collections.search("e", query="bees", mode="vector")
        with pytest.raises(Conflict):
            s.collections.search("e", query="bees")
        assert s.collections.search("e", query="waggle", mode="text").results


def test_reindex_rebuilds_vectors_with_the_new_model(settings: memvault.Settings,
                                                     vault: Vault, scope: Scope) -> None:
    own = np.ones(384, dtype=np.float32)
    scope.collections.add("e", [{"id": "own", "text": "client vector", "embedding": own.tolist()}])
    with memvault.open(settings, embedder="local") as changed:
        seen: list[tuple[int, int]] = []
        report = changed.reindex("e", progress=lambda done, total: seen.append((done, total)))
        assert report.chunks == len(PASSAGES) and seen[-1] == (len(PASSAGES), len(PASSAGES))
        s = changed.for_user(scope.owner_id)
        found = s.collections.search("e", query="Which tower was built for the World's Fair?",
                                     mode="vector", k=1)
        assert [h.chunk_id for h in found.results] == ["tower"]
        assert s.collections.get("e", "own").model_id is None  # the client's vector is kept
        assert s.collections.get("e", "tower").model_id == changed.embedder.model_id
        assert s.collections.collection("e")["model_id"] == changed.embedder.model_id
        assert changed.reindex().chunks == 0


def test_documents_whose_job_died_for_good_are_reconciled(vault: Vault, scope: Scope) -> None:
    from memvault.backends.schema import documents, jobs

    died = scope.files.add("e", "died.txt", b"indexed by a worker that was killed")
    orphan = scope.files.add("e", "orphan.txt", b"a document without its job, as if imported")
    scope.files.wait_indexed("e", [died.doc_id, orphan.doc_id], 30)
    with vault.db.write() as conn:  # as a kill -9 during the last allowed attempt leaves it
        conn.execute(documents.update().where(documents.c.doc_id == died.doc_id)
                     .values(status="indexing", chunk_count=0))
        conn.execute(documents.update().where(documents.c.doc_id == orphan.doc_id)
                     .values(status="pending", chunk_count=0))
        conn.execute(sa.delete(chunks_table).where(chunks_table.c.doc_id.in_(
            [died.doc_id, orphan.doc_id])))
        for row in conn.execute(sa.select(jobs.c.id, jobs.c.payload)).all():
            if row.payload.get("doc_id") == died.doc_id:
                conn.execute(jobs.update().where(jobs.c.id == row.id)
                             .values(status="failed", error="worker died"))
            elif row.payload.get("doc_id") == orphan.doc_id:
                conn.execute(jobs.delete().where(jobs.c.id == row.id))
    vault.background.run_now("ingest-reconciler")
    failed, indexed = scope.files.wait_indexed("e", [died.doc_id, orphan.doc_id], 30)
    assert failed.status == "failed" and "worker died" in (failed.error or "")
    assert indexed.status == "indexed" and indexed.chunk_count == 1
