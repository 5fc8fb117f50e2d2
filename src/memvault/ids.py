"""Time-ordered ids (UUIDv7), opaque pagination cursors, and the bounds of the
integers the database keeps (so out-of-range input is refused, never overflowed)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import uuid6

from .errors import Invalid

__all__ = ["new_id", "utcnow", "encode_cursor", "decode_cursor", "parse_int", "check_int",
           "INT32_MAX", "INT64_MAX"]

#: Largest value of a 32-bit ``Integer`` column (``messages.seq``, chunk seqs).
INT32_MAX = 2**31 - 1
#: Largest value of a 64-bit ``BigInteger`` column, and of any SQLite integer.
INT64_MAX = 2**63 - 1


def new_id() -> str:
    """A UUIDv7 string: sorts by creation time, monotonic within a process."""
    return str(uuid6.uuid7())


def utcnow() -> datetime:
    return datetime.now(UTC)


def encode_cursor(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, field: str = "cursor") -> Any:
    try:
        pad = "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(cursor + pad))
    except (ValueError, TypeError, RecursionError):
        raise Invalid("malformed cursor", field=field) from None


def check_int(value: Any, field: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    """``value`` if it is an ``int`` (not a bool) within ``[lo, hi]``.

    Raises:
        Invalid: naming ``field``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{field} must be a whole number", field=field)
    if not lo <= value <= hi:
        raise Invalid(f"{field} must be between {lo} and {hi}", field=field)
    return value


def parse_int(text: str, field: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    """A whole number written in ASCII digits (``str.isdigit`` alone would take
    ``"²"``, which ``int`` refuses), within ``[lo, hi]``.

    Raises:
        Invalid: naming ``field``.
    """
    if not (text.isascii() and text.isdigit()):
        raise Invalid(f"{field} must be a whole number", field=field)
    if len(text.lstrip("0")) > 20:  # before int(): no huge conversions
        raise Invalid(f"{field} must be between {lo} and {hi}", field=field)
    return check_int(int(text), field, lo, hi)
