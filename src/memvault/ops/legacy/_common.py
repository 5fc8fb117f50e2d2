"""What every legacy importer shares: the report, stable ids, reading the seeds'
JSON files without letting one bad file stop the rest, and their timestamps.

The importers themselves (one module per seed layout) read a layout and write
through the owner-scoped stores; nothing here touches the database.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...errors import Conflict, Invalid, NotFound, PayloadTooLarge

__all__ = ["LegacyReport", "KindTally", "Problem", "Progress", "RECORD_ERRORS",
           "ALREADY", "stable_id", "read_json", "parse_time", "describe", "items",
           "page_all"]

#: Errors that refuse one record (it is skipped and reported); any other error
#: (the database is gone, …) stops the import.
RECORD_ERRORS = (Invalid, NotFound, Conflict, PayloadTooLarge)
#: The reason given for records a previous run imported.
ALREADY = "already imported"
#: ``progress(done, total)``: called as records are handled (``total`` may grow).
Progress = Callable[[int, int], None]
#: Name space of the stable ids (a constant: the same legacy record gets the
#: same id in every run, on every machine).
_NAMESPACE = "memvault.import-legacy"
_MAX_MS = (1 << 48) - 1


@dataclass
class KindTally:
    """What happened to the records of one type."""

    imported: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@dataclass(frozen=True)
class Problem:
    """A file or record that could not be imported, and why."""

    path: str
    reason: str
    record: str | None = None

    def __str__(self) -> str:
        where = f"{self.path} [{self.record}]" if self.record else self.path
        return f"{where}: {self.reason}"


@dataclass
class LegacyReport:
    """The outcome of one ``import_legacy`` run.

    ``tallies`` holds, per record type (in the order first met), how many were
    imported and how many skipped for which reason; ``problems`` names every
    unreadable file and refused record with its path. ``files_read`` counts
    the layout's files that could be parsed: 0 means nothing could be read.
    """

    layout: str
    source: str
    tallies: dict[str, KindTally] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files_read: int = 0
    progress: Progress | None = field(default=None, repr=False, compare=False)
    _done: int = field(default=0, repr=False, compare=False)
    _total: int = field(default=0, repr=False, compare=False)

    def tally(self, kind: str) -> KindTally:
        return self.tallies.setdefault(kind, KindTally())

    def imported(self, kind: str, n: int = 1) -> None:
        self.tally(kind).imported += n

    def skipped(self, kind: str, reason: str, n: int = 1, *, path: Path | str | None = None,
                record: str | None = None) -> None:
        """Count ``n`` records of ``kind`` skipped for ``reason``; a ``path``
        also lists the record among the problems (an expected skip, such as
        ``already imported``, is counted only)."""
        self.tally(kind).skipped[reason] += n
        if path is not None:
            self.problems.append(Problem(str(path), reason, record))

    def problem(self, path: Path | str, reason: str, record: str | None = None) -> None:
        self.problems.append(Problem(str(path), reason, record))

    def expect(self, n: int) -> None:
        """``n`` more records will be handled (for the progress bar)."""
        self._total += n
        if self.progress is not None:
            self.progress(self._done, self._total)

    def advance(self, n: int = 1) -> None:
        self._done += n
        if self.progress is not None:
            self.progress(self._done, max(self._total, self._done))

    def counts(self) -> dict[str, int]:
        """Imported records per type."""
        return {k: t.imported for k, t in self.tallies.items()}

    @property
    def total_imported(self) -> int:
        return sum(t.imported for t in self.tallies.values())

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.layout, "source": self.source, "files_read": self.files_read,
                "kinds": {k: {"imported": t.imported, "skipped": dict(t.skipped)}
                          for k, t in self.tallies.items()},
                "problems": [{"path": p.path, "record": p.record, "reason": p.reason}
                             for p in self.problems],
                "notes": list(self.notes)}


def describe(exc: BaseException) -> str:
    """A refused record's reason: the error's detail (``Invalid``: with its field)."""
    detail = getattr(exc, "detail", "") or str(exc) or type(exc).__name__
    return detail


def stable_id(at: datetime | None, *parts: str) -> str:
    """A UUIDv7-shaped id for a legacy record, the same in every run.

    The first 48 bits are ``at`` in Unix milliseconds (the record's own time, so
    listings that sort by id keep the seed's order, as ids the vault makes do);
    the other bits come from the sha256 of ``parts`` (layout, owner, legacy id).
    """
    digest = hashlib.sha256("\x1f".join((_NAMESPACE, *parts)).encode()).digest()
    ms = 0 if at is None else min(max(int(at.timestamp() * 1000), 0), _MAX_MS)
    rand = int.from_bytes(digest[:10], "big")  # 80 bits, 74 of them used
    rand_a = rand >> 68 & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as aware UTC (naive ones are UTC, as the seeds
    wrote ``datetime.utcnow().isoformat()``); ``None`` when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        return None


def read_json(path: Path, report: LegacyReport, expect: type | None = None) -> Any:
    """The parsed JSON of ``path``, or ``None`` after reporting why it could not
    be read (a missing, unreadable, malformed or wrongly shaped file)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        report.problem(path, f"unreadable: {exc.strerror or exc}")
        return None
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        report.problem(path, "malformed file: not UTF-8 text")
        return None
    except ValueError as exc:
        report.problem(path, f"malformed file: not valid JSON ({exc})")
        return None
    if expect is not None and not isinstance(value, expect):
        what = "an object" if expect is dict else "a list"
        report.problem(path, f"malformed file: the top level must be {what}")
        return None
    report.files_read += 1
    return value


def items(value: Any) -> Iterator[tuple[str, Any]]:
    """``(key, record)`` pairs of a JSON object keyed by id, or of a list of records
    (keyed by their position): the seeds kept both shapes."""
    if isinstance(value, dict):
        yield from ((str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        yield from ((str(i), v) for i, v in enumerate(value))


def page_all(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every item of a cursor-paged listing: ``fetch(cursor)`` returns a ``Page``."""
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        yield from page.items
        cursor = page.next_cursor
        if cursor is None:
            return
