"""Text extraction: the readable text of an uploaded file, with page offsets for PDFs.

Owns format detection (content type, then file name, then the bytes themselves),
decoding of text files, and one extractor per format: plain text and Markdown,
HTML (visible text only), PDF (text per page, with pypdf), DOCX (paragraphs and
table cells, with python-docx), JSON (flattened to ``path: value`` lines) and
CSV/TSV (a row per line). It leaves chunking to ``chunking`` and storage to the
stores: nothing here touches the database.

Every failure is an ``ExtractionError`` (``UnsupportedFile`` for a type memvault
does not read) with a message fit to show as the document's ``error``. The text
returned never holds NUL characters or lone surrogates (the stores refuse them),
uses ``\\n`` line ends, and is at most ``max_chars`` long, which also bounds what a
decompression bomb can cost.
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import csv
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ..errors import ExtractionError, UnsupportedFile

__all__ = ["Extracted", "extract", "detect_format", "decode_text", "FORMATS", "MAX_CHARS"]

#: The most characters of text one file may yield (about 20 MB of ASCII).
MAX_CHARS = 20_000_000
#: The most bytes a DOCX may hold once unzipped: python-docx reads its parts whole.
MAX_DOCX_UNZIPPED = 256 * 1024 * 1024

#: Formats ``extract`` reads.
FORMATS = ("text", "html", "pdf", "docx", "json", "jsonl", "csv", "tsv")


@dataclass(frozen=True, slots=True)
class Extracted:
    """The text of a file.

    Attributes:
        text: the readable text (may be empty, e.g. a scanned PDF without a text layer).
        pages: ``(start, end)`` character offsets in ``text`` of each page, page 1
            first; empty for formats without pages (everything but PDF).
        format: which extractor read the file (one of ``FORMATS``).
    """

    text: str
    pages: tuple[tuple[int, int], ...] = ()
    format: str = "text"

    def page_of(self, offset: int) -> int | None:
        """The page (from 1) holding character ``offset``, or None without pages."""
        if not self.pages:
            return None
        return max(1, bisect.bisect_right([start for start, _ in self.pages], offset))


_TYPES = {
    "text/plain": "text", "text/markdown": "text", "text/x-markdown": "text",
    "text/x-rst": "text", "text/html": "html", "application/xhtml+xml": "html",
    "application/pdf": "pdf", "application/x-pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/json": "json", "text/json": "json",
    "application/x-ndjson": "jsonl", "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl", "application/jsonlines": "jsonl",
    "text/csv": "csv", "application/csv": "csv", "text/tab-separated-values": "tsv",
}
_EXTENSIONS = {
    ".txt": "text", ".text": "text", ".md": "text", ".markdown": "text", ".rst": "text",
    ".log": "text", ".html": "html", ".htm": "html", ".xhtml": "html", ".pdf": "pdf",
    ".docx": "docx", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
}
# Types that say nothing about the content: the file name and the bytes decide.
_GENERIC = {"", "application/octet-stream", "binary/octet-stream", "application/unknown",
            "application/x-unknown"}


def detect_format(data: bytes, filename: str, content_type: str) -> str | None:
    """Which of ``FORMATS`` reads this file, or None when none does.

    A specific content type wins; a generic one (``application/octet-stream``,
    empty) defers to the file's extension, then to the bytes (``%PDF-``; valid
    UTF-8 without NUL reads as text). Other ``text/*`` types read as plain text.
    """
    mime = _mime(content_type)
    if mime in _TYPES:
        return _TYPES[mime]
    if mime.endswith("+json"):
        return "json"
    if mime not in _GENERIC:
        # Text-like types (source code, YAML, …) are still text; anything else
        # (images, audio, archives, other office formats) is not ours to read.
        if mime.startswith("text/") or mime in ("application/yaml", "application/x-yaml",
                                                "application/toml", "application/xml"):
            return "text"
        return None
    by_name = _EXTENSIONS.get(PurePosixPath(filename.replace("\\", "/")).suffix.lower())
    if by_name:
        return by_name
    if data.startswith(b"%PDF-"):
        return "pdf"
    if _looks_like_text(data):
        return "text"
    return None


def extract(data: bytes, filename: str, content_type: str, *,
            max_chars: int = MAX_CHARS) -> Extracted:
    """The text of a file.

    Args:
        data: the file's bytes.
        filename: its name as uploaded (used for the extension and in messages).
        content_type: its media type as uploaded, parameters allowed
            (``text/html; charset=iso-8859-1``).
        max_chars: the most characters of text to accept.

    Raises:
        UnsupportedFile: a type memvault does not read (``unsupported file type
            image/png (photo.png)``).
        ExtractionError: the file could not be read (``PDF could not be read: …``),
            or its text is longer than ``max_chars``.
    """
    fmt = detect_format(data, filename, content_type)
    if fmt is None:
        shown = _mime(content_type) or "application/octet-stream"
        raise UnsupportedFile(f"unsupported file type {shown} ({filename})")
    charset = _charset(content_type)
    limit = _Limit(max_chars, filename)
    if fmt == "pdf":
        return _clean_pages(_pdf(data, limit), fmt, limit)
    if fmt == "docx":
        text = _docx(data, limit)
    else:
        decoded = decode_text(data, charset)
        limit.check(len(decoded))
        readers: dict[str, Callable[[str, _Limit], str]] = {
            "text": lambda t, _: t, "html": lambda t, _: _html(t), "json": _json,
            "jsonl": _jsonl, "csv": lambda t, lim: _csv(t, lim, tab=False),
            "tsv": lambda t, lim: _csv(t, lim, tab=True),
        }
        text = readers[fmt](decoded, limit)
    text = _clean(text)
    limit.check(len(text))
    return Extracted(text=text, format=fmt)


# ---------------------------------------------------------------- decoding

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode_text(data: bytes, declared: str | None = None) -> str:
    """Bytes to text: a byte-order mark, else UTF-8, else the declared charset,
    else what charset detection finds, else cp1252/latin-1 (which never fail).

    UTF-8 is tried before a declared charset because valid UTF-8 is a strong sign
    and mislabelled UTF-8 (``charset=iso-8859-1``) is the common mistake.
    """
    for bom, encoding in _BOMS:  # UTF-32-LE's BOM starts with UTF-16-LE's: test it first
        if data.startswith(bom):
            return data[len(bom):].decode(encoding, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if declared:
        try:
            return data.decode(declared)
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # pragma: no cover - a declared dependency
        best = None
    else:
        best = from_bytes(data).best()
    if best is not None:
        return str(best)
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _looks_like_text(data: bytes) -> bool:
    sample = data[:65536]
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sample's end is still text.
        return exc.start >= len(sample) - 3 and len(data) > len(sample)
    return True


def _mime(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _charset(content_type: str) -> str | None:
    match = re.search(r";\s*charset\s*=\s*\"?([\w.:-]+)", content_type, re.IGNORECASE)
    return match.group(1) if match else None


# ---------------------------------------------------------------- cleaning

# NUL and lone surrogates: PostgreSQL text and UTF-8 encoders refuse them. (In a
# Python str a surrogate code point is always lone: pairs decode to one character.)
_REFUSED = re.compile("[\x00\ud800-\udfff]")
_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x0b\x0c\x85]")


def _clean(text: str) -> str:
    return _REFUSED.sub("", _NEWLINES.sub("\n", text))


class _Limit:
    def __init__(self, max_chars: int, filename: str) -> None:
        self.max_chars = max_chars
        self.filename = filename

    def check(self, size: int) -> None:
        if size > self.max_chars:
            raise ExtractionError(f"{self.filename} holds more text than the limit of "
                                  f"{self.max_chars:,} characters")


def _clean_pages(pages: list[str], fmt: str, limit: _Limit) -> Extracted:
    parts: list[str] = []
    offsets: list[tuple[int, int]] = []
    at = 0
    for number, page in enumerate(pages):
        text = _clean(page).strip()
        if number:
            parts.append("\n\n")  # pages are paragraphs to the chunker
            at += 2
        parts.append(text)
        offsets.append((at, at + len(text)))
        at += len(text)
    limit.check(at)
    return Extracted(text="".join(parts), pages=tuple(offsets), format=fmt)


# ---------------------------------------------------------------- PDF

def _pdf(data: bytes, limit: _Limit) -> list[str]:
    from pypdf import PdfReader

    # pypdf parses untrusted input and may fail in many ways (its own errors,
    # but also KeyError, ValueError, … on malformed files): any failure while
    # reading is an unreadable file, never a crash of the indexer.
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractionError("PDF could not be read: it is encrypted with a password")
        pages: list[str] = []
        total = 0
        for page in reader.pages:
            text = page.extract_text() or ""
            total += len(text)
            limit.check(total)  # stop early: a bomb would otherwise be read whole
            pages.append(text)
    except ExtractionError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above
        raise ExtractionError(f"PDF could not be read: {_reason(exc)}") from exc
    return pages


# ---------------------------------------------------------------- DOCX

def _docx(data: bytes, limit: _Limit) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            # Declared sizes bound what zipfile will inflate, so checking them
            # is enough to refuse a zip bomb before python-docx reads the parts.
            unzipped = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ExtractionError(f"DOCX could not be read: {_reason(exc)}") from exc
    if unzipped > MAX_DOCX_UNZIPPED:
        raise ExtractionError(f"DOCX could not be read: it unzips to {unzipped:,} bytes, "
                              f"more than the limit of {MAX_DOCX_UNZIPPED:,}")
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
        blocks: list[str] = []
        total = 0
        for block in _docx_blocks(document):
            total += len(block) + 2
            limit.check(total)
            blocks.append(block)
    except ExtractionError:
        raise
    except Exception as exc:  # noqa: BLE001 - python-docx on untrusted input, as for PDF
        raise ExtractionError(f"DOCX could not be read: {_reason(exc)}") from exc
    return "\n\n".join(block for block in blocks if block.strip())


def _docx_blocks(container: Any) -> Iterator[str]:
    """Paragraphs and tables in document order; a table as one block, a row per
    line with its cells joined by `` | `` (merged cells once)."""
    from docx.table import Table

    for item in container.iter_inner_content():
        if isinstance(item, Table):
            rows: list[str] = []
            for row in item.rows:
                seen: set[int] = set()
                cells: list[str] = []
                for cell in row.cells:
                    if id(cell._tc) in seen:  # a merged cell repeats in each grid column
                        continue
                    seen.add(id(cell._tc))
                    text = " ".join(" ".join(_docx_blocks(cell)).split())
                    cells.append(text)
                if any(cells):
                    rows.append(" | ".join(cells))
            yield "\n".join(rows)
        else:
            yield item.text


# ---------------------------------------------------------------- HTML

# Elements whose content is never shown: head (title, meta), scripts, styles,
# templates (inert until cloned by script), noscript (shown only without script).
_HIDDEN = {"head", "script", "style", "template", "noscript", "iframe", "object", "svg",
           "canvas", "title", "meta", "link"}
_PARAGRAPH = {"p", "div", "section", "article", "header", "footer", "main", "aside", "nav",
              "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol",
              "dl", "figure", "figcaption", "form", "fieldset", "address", "hr", "details",
              "summary", "body"}
_LINE = {"br", "li", "tr", "dt", "dd", "caption", "option", "legend"}
_CELL = {"td", "th"}
_SPACES = re.compile(r"[ \t\f\v\r\n\u00a0]+")


def _html(markup: str) -> str:
    """The visible text of an HTML page: block elements become paragraphs, line
    breaks and list items lines, table cells are separated by `` | ``; white space
    inside text collapses as a browser would."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(markup)
    root = tree.body or tree.root
    out: list[str] = []
    if root is None:
        return ""
    # An explicit stack, not recursion: deeply nested markup must not overflow.
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        tag = node.tag
        if leaving:
            out.append("\n\n" if tag in _PARAGRAPH else "\n")
            continue
        if tag == "-text":
            out.append(_SPACES.sub(" ", node.text_content or ""))
            continue
        if tag in _HIDDEN or tag.startswith("-"):  # comments, doctype
            continue
        if tag in _CELL:
            out.append(" | ")
        elif tag in _PARAGRAPH:
            out.append("\n\n")
        elif tag in _LINE:
            out.append("\n")
        if tag in _PARAGRAPH or tag in _LINE:
            stack.append((node, True))
        children = []
        child = node.child
        while child is not None:
            children.append(child)
            child = child.next
        stack.extend((c, False) for c in reversed(children))
    return _tidy("".join(out))


def _tidy(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        line = _SPACES.sub(" ", line).strip()
        # Cell separators at a row's edges, or doubled by empty cells, say nothing.
        line = re.sub(r"^(\| ?)+|( ?\|)+$", "", line).strip()
        lines.append(line)
    joined = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", joined).strip()


# ---------------------------------------------------------------- JSON

def _json(text: str, limit: _Limit) -> str:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ExtractionError(f"JSON could not be read: {_reason(exc)}") from exc
    if isinstance(value, list):
        # A list of records: one paragraph per record, so chunks keep records whole.
        return _join(_records(_flatten(item, f"[{i}]") for i, item in enumerate(value)), limit)
    return _join(_flatten(value, ""), limit)


def _jsonl(text: str, limit: _Limit) -> str:
    def records() -> Iterator[Iterator[str]]:
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise ExtractionError(f"JSON Lines could not be read: line {number}: "
                                      f"{_reason(exc)}") from exc
            yield _flatten(value, "")

    return _join(_records(records()), limit)


def _records(records: Iterator[Iterator[str]]) -> Iterator[str]:
    """The lines of each record, records separated by an empty line."""
    for number, lines in enumerate(records):
        if number:
            yield ""
        yield from lines


def _flatten(value: Any, path: str) -> Iterator[str]:
    """``path: value`` lines (``a.b[0].c: text``), lazily and without recursion, so
    that deep JSON is fine and long paths repeated over many items are bounded
    by ``_join``'s limit instead of being built all at once."""
    top = _children(path, value)
    if top is None:
        yield _leaf(path, value)
        return
    stack = [top]
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
            continue
        at, item = step
        children = _children(at, item)
        if children is None:
            yield _leaf(at, item)
        else:
            stack.append(children)


def _children(path: str, value: Any) -> Iterator[tuple[str, Any]] | None:
    if isinstance(value, dict) and value:
        return ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    if isinstance(value, list) and value:
        return ((f"{path}[{i}]", item) for i, item in enumerate(value))
    return None


def _leaf(path: str, value: Any) -> str:
    shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"{path}: {shown}" if path else shown


def _join(lines: Iterator[str], limit: _Limit) -> str:
    out: list[str] = []
    size = 0
    for line in lines:
        size += len(line) + 1
        limit.check(size)
        out.append(line)
    return "\n".join(out)


# ---------------------------------------------------------------- CSV

def _csv(text: str, limit: _Limit, *, tab: bool) -> str:
    dialect: type[csv.Dialect] | csv.Dialect = csv.excel_tab if tab else csv.excel
    if not tab:
        with contextlib.suppress(csv.Error):  # not enough to go on: plain commas
            dialect = csv.Sniffer().sniff(text[:65536], delimiters=",;\t|")

    def rows() -> Iterator[str]:
        for row in csv.reader(io.StringIO(text, newline=""), dialect):
            cells = [" ".join(cell.split()) for cell in row]
            if any(cells):
                yield " | ".join(cells)

    try:
        return _join(rows(), limit)
    except csv.Error as exc:
        raise ExtractionError(f"CSV could not be read: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"
