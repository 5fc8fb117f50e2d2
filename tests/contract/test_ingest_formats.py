"""Every supported format, from a small file made here, is indexed and found by
a word only it holds — with its document, filename and (PDF) page — on SQLite
and PostgreSQL. The extraction details themselves are tests/retrieval/test_extract.py's;
this is the path upload → ingest job → chunks → full-text search."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

import memvault
from memvault import Settings, Vault
from memvault.scope import Scope

from ..retrieval.test_extract import make_docx, make_pdf


def _sentences(word: str, n: int) -> str:
    """``n`` filler lines, the last one holding ``word`` (chunks start before it)."""
    lines = [f"Line {i} of this page is filler about ordinary matters." for i in range(n - 1)]
    return "\n".join([*lines, f"The last line names the {word} plainly."])


def _files() -> dict[str, tuple[bytes, str, str, int | None]]:
    """filename -> (bytes, content type, the word only this file holds, page)."""
    html = ("<!doctype html><html><head><title>t</title>"
            "<script>var zebrafish = 1;</script></head>"
            "<body><h1>Garden</h1><p>The hibiscus flowers in summer.</p></body></html>")
    return {
        "notes.txt": (b"A plain note about the xylophone in the hall.\n", "text/plain",
                      "xylophone", None),
        "readme.md": (b"# Breakfast\n\nToast with *marmalade* and tea.\n", "text/markdown",
                      "marmalade", None),
        "page.html": (html.encode(), "text/html", "hibiscus", None),
        # Two pages long enough that each page's last line is in a chunk that
        # starts on that page.
        "report.pdf": (make_pdf([_sentences("pelican", 8), _sentences("porcupine", 8)]),
                       "application/pdf", "pelican", 1),
        "bericht.docx": (make_docx(), "application/vnd.openxmlformats-officedocument"
                         ".wordprocessingml.document", "Bericht", None),
        "data.json": (json.dumps({"animal": "jackalope", "legs": 4}).encode(),
                      "application/json", "jackalope", None),
        "table.csv": (b"name,fruit\nada,cantaloupe\nbob,apple\n", "text/csv", "cantaloupe",
                      None),
    }


@pytest.fixture
def small_chunks(settings: Settings) -> Iterator[Vault]:
    """Small chunks, so the two PDF pages fall into different chunks."""
    with memvault.open(settings, chunk_tokens=24, chunk_overlap=4) as v:
        yield v


@pytest.fixture
def scope(small_chunks: Vault) -> Scope:
    owner = small_chunks.users.register("formats@example.com", "password-1").id
    s = small_chunks.for_user(owner)
    s.entities.create("Formats", entity_id="e")
    return s


def test_every_format_is_indexed_and_found_by_its_own_word(scope: Scope) -> None:
    files = _files()
    uploaded = {name: scope.files.add("e", name, data, ctype)
                for name, (data, ctype, _, _) in files.items()}
    done = scope.files.wait_indexed("e", [d.doc_id for d in uploaded.values()], 60)
    assert {d.filename: (d.status, d.error) for d in done} == {
        name: ("indexed", None) for name in files}
    assert all(d.chunk_count > 0 for d in done), done

    for name, (_, _, word, page) in files.items():
        hits = scope.collections.search("e", query=word, k=10, mode="text").results
        assert hits, f"{word!r} of {name} not found"
        assert {(h.doc_id, h.filename) for h in hits} == {(uploaded[name].doc_id, name)}
        assert word.lower() in hits[0].text.lower()
        assert hits[0].page == page
    pdf = uploaded["report.pdf"].doc_id
    [second] = scope.collections.search("e", query="porcupine", mode="text").results
    assert (second.doc_id, second.page) == (pdf, 2) and "porcupine" in second.text
    # HTML: visible text only — the script's words are not indexed.
    assert scope.collections.search("e", query="zebrafish", mode="text").results == []
