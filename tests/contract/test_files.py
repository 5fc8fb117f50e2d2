"""Files: content-addressed blobs, reference counts, limits, cleaning of names —
on every backend and every blob store (file, database, S3)."""

from __future__ import annotations

import io
import os
import stat

import pytest

from memvault import NotFound, PayloadTooLarge, Settings, Vault
from memvault.blobs import FileBlobStore
from memvault.stores.files import clean_filename


@pytest.fixture
def settings(blob_settings: Settings) -> Settings:
    return blob_settings


def _blob_files(vault: Vault) -> list[str]:
    return sorted(vault.blobs.stored())


def test_add_read_list_delete(vault: Vault, user_id: str) -> None:
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    doc = scope.files.add("e", "notes.md", b"# hello\n")
    assert doc.size == 8 and doc.content_type == "text/markdown" and len(doc.sha256) == 64
    assert scope.files.read("e", doc.doc_id) == b"# hello\n"
    assert scope.entities.get("e").document_count == 1
    assert [d.doc_id for d in scope.files.list("e").items] == [doc.doc_id]
    scope.files.delete("e", doc.doc_id)
    assert scope.entities.get("e").document_count == 0
    with pytest.raises(NotFound):
        scope.files.get("e", doc.doc_id)
    assert _blob_files(vault) == []


def test_identical_content_is_stored_once_and_freed_with_last_reference(
        vault: Vault, user_id: str) -> None:
    scope = vault.for_user(user_id)
    scope.entities.create("A", entity_id="a")
    scope.entities.create("B", entity_id="b")
    one = scope.files.add("a", "x.txt", b"same bytes")
    two = scope.files.add("b", "y.txt", io.BytesIO(b"same bytes"))
    assert one.sha256 == two.sha256 and len(_blob_files(vault)) == 1
    scope.files.delete("a", one.doc_id)
    assert scope.files.read("b", two.doc_id) == b"same bytes"
    scope.entities.delete("b")  # deleting the entity releases its documents
    assert _blob_files(vault) == []


def test_over_the_limit_leaves_nothing_behind(vault: Vault, user_id: str) -> None:
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    with pytest.raises(PayloadTooLarge):
        scope.files.add("e", "big.bin", io.BytesIO(b"x" * 2048), max_bytes=1024)
    assert scope.files.list("e").items == []
    assert list(vault.blobs.tmp.iterdir()) == []
    assert _blob_files(vault) == []


def test_unknown_entity(vault: Vault, user_id: str) -> None:
    with pytest.raises(NotFound):
        vault.for_user(user_id).files.add("nope", "a.txt", b"a")


def test_blob_files_are_private(vault: Vault, user_id: str) -> None:
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    doc = scope.files.add("e", "a.txt", b"secret")
    if isinstance(vault.blobs, FileBlobStore):
        path = vault.blobs.path(doc.sha256)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    else:
        assert vault.blobs.local_path(doc.sha256) is None  # nothing kept locally
        assert list(vault.blobs.tmp.iterdir()) == []
    staged = vault.blobs.stage(io.BytesIO(b"abc"), 10)  # uploads are staged privately
    try:
        assert staged.tmp_path.parent == vault.blobs.tmp
        assert stat.S_IMODE(staged.tmp_path.stat().st_mode) == 0o600
    finally:
        staged.discard()
    assert stat.S_IMODE(os.stat(vault.blobs.tmp).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(vault.settings.data_dir).st_mode) == 0o700


def test_large_file_round_trips_in_pieces(vault: Vault, user_id: str) -> None:
    scope = vault.for_user(user_id)
    scope.entities.create("E", entity_id="e")
    data = os.urandom(1 << 20) * 2 + b"tail"  # three pieces
    doc = scope.files.add("e", "big.bin", io.BytesIO(data))
    assert doc.size == len(data)
    _doc, pieces = scope.files.open("e", doc.doc_id)
    assert b"".join(pieces) == data
    empty = scope.files.add("e", "empty.txt", b"")
    assert scope.files.read("e", empty.doc_id) == b""


@pytest.mark.parametrize(("raw", "clean"), [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\win.ini", "win.ini"),
    ("a\x00b\nc.txt", "abc.txt"),
    ("/abs/path/report 1.txt", "report 1.txt"),
    ("..", "file"),
    ("", "file"),
    (None, "file"),
    (".hidden", "hidden"),
])
def test_clean_filename(raw: str | None, clean: str) -> None:
    assert clean_filename(raw) == clean


def test_long_filenames_are_cut_keeping_the_extension() -> None:
    name = clean_filename("é" * 300 + ".pdf")
    assert len(name.encode()) <= 255 and name.endswith(".pdf")
