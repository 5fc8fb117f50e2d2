"""Text extraction: every supported format from a small file made here, and the failures.

Pure functions, no database: these run once, not per backend.
"""

from __future__ import annotations

import io
import json
import zipfile

import docx
import pytest

from memvault.errors import ExtractionError, Invalid, UnsupportedFile
from memvault.retrieval import extract as extract_module
from memvault.retrieval.extract import decode_text, detect_format, extract

GERMAN = "Die Größe der Übung ist äußerst wichtig."
FRENCH = "Le cœur de la forêt était très calme, déjà l'été."
CHINESE = "记忆库保存文档。搜索很快！"


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF, one page per string (lines by ``\\n``), in Helvetica
    with WinAnsiEncoding (so Latin-1 accents work), with a correct xref table."""

    def literal(line: str) -> bytes:
        raw = line.encode("cp1252")
        return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"

    count = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(count))
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    for i, text in enumerate(pages):
        ops = b"BT /F1 12 Tf 14 TL 72 720 Td " + b" ".join(
            literal(line) + b" Tj T*" for line in text.split("\n")) + b" ET"
        objects[4 + 2 * i] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>").encode()
        objects[5 + 2 * i] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(ops), ops)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number in sorted(objects):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Bericht", level=1)
    document.add_paragraph(GERMAN)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Stadt"
    table.cell(0, 1).text = "城市"
    table.cell(1, 0).text = "Paris"
    table.cell(1, 1).text = FRENCH
    document.add_paragraph(CHINESE)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------- formats

def test_plain_text_and_markdown_keep_non_english_text() -> None:
    source = f"# Titel\n\n{GERMAN}\r\n{FRENCH}\r\n\n{CHINESE}\n"
    for name, ctype in [("notes.txt", "text/plain"), ("notes.md", "text/markdown"),
                        ("notes.md", "application/octet-stream"), ("notes", "")]:
        got = extract(source.encode(), name, ctype)
        assert got.format == "text"
        assert got.text == source.replace("\r\n", "\n")
        assert got.pages == ()
        assert got.page_of(3) is None


def test_text_decoding_bom_declared_charset_and_detection() -> None:
    assert extract(b"\xef\xbb\xbf" + GERMAN.encode(), "a.txt", "text/plain").text == GERMAN
    assert extract(FRENCH.encode("utf-16"), "a.txt", "text/plain").text == FRENCH
    latin = (GERMAN + " " + FRENCH.replace("œ", "oe")).encode("latin-1")
    declared = extract(latin, "a.txt", "text/plain; charset=ISO-8859-1").text
    assert declared == GERMAN + " " + FRENCH.replace("œ", "oe")
    # Undeclared legacy bytes: detected, never a crash, never a replacement character.
    long_german = (GERMAN + " Über die Straße gehen Äpfel und Öl. ") * 20
    detected = decode_text(long_german.encode("cp1252"))
    assert "Größe" in detected and "\ufffd" not in detected


def test_html_gives_visible_text_only() -> None:
    page = """<!doctype html><html><head><title>Head title</title>
    <style>body { color: red }</style><script>var secret = "script text";</script>
    <meta name="description" content="meta text"></head>
    <body><h1>Über uns</h1>
    <p>Hello <b>wor</b>ld &amp; friends,
       across   lines.</p>
    <script type="module">alert("inline script")</script>
    <template><p>template text</p></template><noscript>noscript text</noscript>
    <!-- a comment -->
    <ul><li>un élément</li><li>二号</li></ul>
    <table><tr><th>Name</th><th>Stadt</th></tr><tr><td>Ada</td><td>Zürich</td></tr></table>
    <div>line one<br>line two</div></body></html>"""
    got = extract(page.encode(), "page.html", "text/html; charset=utf-8")
    assert got.format == "html"
    for hidden in ("Head title", "color: red", "script text", "meta text", "inline script",
                   "template text", "noscript text", "a comment"):
        assert hidden not in got.text
    paragraphs = got.text.split("\n\n")
    assert "Über uns" in paragraphs
    assert "Hello world & friends, across lines." in paragraphs
    lines = got.text.split("\n")
    expected = {"un élément", "二号", "Name | Stadt", "Ada | Zürich", "line one", "line two"}
    assert expected <= set(lines)


def test_pdf_text_per_page_with_page_offsets() -> None:
    data = make_pdf([f"Seite eins\n{GERMAN}", f"Page deux\n{FRENCH}"])
    got = extract(data, "report.pdf", "application/pdf")
    assert got.format == "pdf"
    assert len(got.pages) == 2
    first = got.text[got.pages[0][0]:got.pages[0][1]]
    second = got.text[got.pages[1][0]:got.pages[1][1]]
    assert "Seite eins" in first and "Größe" in first and "Page deux" not in first
    assert "Page deux" in second and "forêt" in second and "cœur" in second
    assert got.pages[0][0] == 0 and got.pages[1][1] == len(got.text)
    assert got.page_of(got.text.index("Page deux")) == 2
    assert got.page_of(0) == 1
    # Found by its magic bytes when the type says nothing.
    assert extract(data, "upload", "application/octet-stream").format == "pdf"


def test_docx_paragraphs_and_table_cells_in_order() -> None:
    got = extract(make_docx(), "bericht.docx",
                  "application/vnd.openxmlformats-officedocument.wordprocessingml.document")
    assert got.format == "docx"
    blocks = got.text.split("\n\n")
    assert blocks[0] == "Bericht"
    assert blocks[1] == GERMAN
    assert blocks[2] == f"Stadt | 城市\nParis | {FRENCH}"
    assert blocks[3] == CHINESE


def test_json_flattened_readably() -> None:
    doc = {"name": "Zoë", "tags": ["büro", "办公室"], "address": {"city": "Genève", "zip": 1201},
           "active": True, "note": None, "empty": {}}
    got = extract(json.dumps(doc).encode(), "data.json", "application/json")
    assert got.text.split("\n") == [
        "name: Zoë", "tags[0]: büro", "tags[1]: 办公室", "address.city: Genève",
        "address.zip: 1201", "active: true", "note: null", "empty: {}"]
    records = extract(b'[{"a": 1}, {"a": 2, "b": [3]}]', "r.json", "application/json").text
    assert records == "[0].a: 1\n\n[1].a: 2\n[1].b[0]: 3"
    lines = extract(b'{"q": "wer?"}\n\n{"q": "qui?"}\n', "r.jsonl", "").text
    assert lines == "q: wer?\n\nq: qui?"
    # Nesting deeper than the recursion limit is refused cleanly, never a crash.
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ExtractionError, match="^JSON could not be read: maximum recursion"):
        extract(deep, "deep.json", "application/json")


def test_csv_and_tsv_rows_as_lines() -> None:
    data = 'name,city,note\nAda,Zürich,"likes tea, and cake"\n李,北京,"two\nlines"\n'.encode()
    assert extract(data, "people.csv", "text/csv").text.split("\n") == [
        "name | city | note", "Ada | Zürich | likes tea, and cake", "李 | 北京 | two lines"]
    semicolons = "name;ville\nAmélie;Lyon\nJean;Nantes\n".encode()
    assert extract(semicolons, "p.csv", "text/csv").text.split("\n") == [
        "name | ville", "Amélie | Lyon", "Jean | Nantes"]
    tabs = b"a\tb\n1\t2\n"
    assert extract(tabs, "t.tsv", "text/tab-separated-values").text == "a | b\n1 | 2"


# ---------------------------------------------------------------- failures

def test_image_is_unsupported_with_a_clear_message() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    with pytest.raises(UnsupportedFile) as caught:
        extract(png, "photo.png", "image/png")
    assert str(caught.value) == "unsupported file type image/png (photo.png)"
    assert caught.value.code == "unsupported_file"
    assert isinstance(caught.value, ExtractionError) and isinstance(caught.value, Invalid)
    with pytest.raises(UnsupportedFile, match=r"application/octet-stream \(blob.bin\)"):
        extract(png, "blob.bin", "application/octet-stream")
    with pytest.raises(UnsupportedFile):
        extract(b"PK\x03\x04", "sheet.xlsx",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")


@pytest.mark.parametrize("data", [
    b"%PDF-1.4\nthis is not really a pdf\n%%EOF",
    b"",
    make_pdf(["truncated"])[:120],
], ids=["garbage", "empty", "truncated"])
def test_corrupt_pdf_is_unreadable(data: bytes) -> None:
    with pytest.raises(ExtractionError, match=r"^PDF could not be read: ") as caught:
        extract(data, "broken.pdf", "application/pdf")
    assert caught.value.code == "unreadable_file"


def test_corrupt_docx_json_are_unreadable() -> None:
    with pytest.raises(ExtractionError, match=r"^DOCX could not be read: "):
        extract(b"not a zip", "a.docx", "")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("hello.txt", "not a word document")
    with pytest.raises(ExtractionError, match=r"^DOCX could not be read: "):
        extract(archive.getvalue(), "a.docx", "")
    with pytest.raises(ExtractionError, match=r"^JSON could not be read: "):
        extract(b'{"a": ', "a.json", "application/json")


def test_docx_zip_bomb_is_refused_before_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_docx()
    monkeypatch.setattr(extract_module, "MAX_DOCX_UNZIPPED", 1000)
    with pytest.raises(ExtractionError, match="unzips to .* more than the limit of 1,000"):
        extract(data, "bomb.docx", "")


def test_text_longer_than_the_limit_is_refused() -> None:
    with pytest.raises(ExtractionError, match="more text than the limit of 100 characters"):
        extract(b"x" * 101, "big.txt", "text/plain", max_chars=100)
    pdf = make_pdf(["a" * 60, "b" * 60])
    with pytest.raises(ExtractionError, match="limit of 100"):
        extract(pdf, "big.pdf", "application/pdf", max_chars=100)
    assert len(extract(b"x" * 100, "ok.txt", "text/plain", max_chars=100).text) == 100


def test_nul_and_lone_surrogates_are_removed() -> None:
    assert extract(b"a\x00b", "n.txt", "text/plain").text == "ab"
    got = extract(b'{"k": "x\\ud800y\\u0000z \\ud83d\\ude00"}', "s.json", "application/json")
    assert got.text == "k: xyz \U0001F600"
    got.text.encode("utf-8")  # would raise on a lone surrogate


@pytest.mark.parametrize(("filename", "ctype", "expected"), [
    ("a.txt", "text/plain; charset=utf-8", "text"),
    ("a.py", "text/x-python", "text"),
    ("a.yaml", "application/yaml", "text"),
    ("a.HTML", "", "html"),
    ("a.xhtml", "application/xhtml+xml", "html"),
    ("a.bin", "application/pdf", "pdf"),
    ("a.docx", "application/octet-stream", "docx"),
    ("a.json", "text/plain", "text"),  # a specific type wins over the name
    ("a", "application/ld+json", "json"),
    ("a.ndjson", "", "jsonl"),
    ("a.csv", "application/octet-stream", "csv"),
    ("a.tsv", "", "tsv"),
    ("a.png", "image/png", None),
    ("a.zip", "application/zip", None),
    ("a.doc", "application/msword", None),
])
def test_detect_format(filename: str, ctype: str, expected: str | None) -> None:
    assert detect_format(b"some text", filename, ctype) == expected


def test_sniffed_text_without_a_name_or_type() -> None:
    assert detect_format(b"plain words", "upload", "") == "text"
    assert detect_format(b"\x00\x01binary", "upload", "") is None
    # A multi-byte character cut by the sniffing window is still text.
    long = ("a" + "é" * 40000).encode()
    assert detect_format(long, "upload", "") == "text"


def test_json_and_csv_output_is_bounded_while_it_is_built() -> None:
    # Long keys repeated over many items: the flattened text would be far longer
    # than the file; the limit stops it early instead of building it whole.
    data = json.dumps({"k" * 1000: list(range(1000))}).encode()
    assert len(data) < 6000
    with pytest.raises(ExtractionError, match="limit of 100,000"):
        extract(data, "amplified.json", "application/json", max_chars=100_000)
    with pytest.raises(ExtractionError, match="limit of 100"):
        extract(b"a,b\n" * 20, "t.csv", "text/csv", max_chars=100)  # 80 bytes, 120 chars
