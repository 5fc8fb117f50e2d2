"""Keyset pagination shared by every listing: cursors are opaque, stable under inserts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import Invalid
from ..ids import INT32_MAX, INT64_MAX, check_int, decode_cursor, encode_cursor
from ..models import Page
from ._text import check_text

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "check_limit", "check_key", "keyset_page"]

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    return limit


def check_key(value: Any, key: sa.ColumnElement[Any], field: str = "cursor") -> Any:
    """A decoded cursor value, checked against the type of the ``key`` column it
    is compared with: a string for a string key (storable text, no longer than
    the column), an integer within the column's range for an integer key.
    Anything else was not made by us: ``Invalid``, never a database error
    (PostgreSQL refuses ``varchar < integer``; SQLite overflows past 64 bits).
    """
    kind = key.type
    if isinstance(kind, sa.String):
        if not isinstance(value, str) or (kind.length is not None and len(value) > kind.length):
            raise Invalid("malformed cursor", field=field)
        try:
            return check_text(value, field)
        except Invalid:
            raise Invalid("malformed cursor", field=field) from None
    if isinstance(kind, sa.Integer):
        bound = INT64_MAX if isinstance(kind, sa.BigInteger) else INT32_MAX
        try:
            return check_int(value, field, -bound - 1, bound)
        except Invalid:
            raise Invalid("malformed cursor", field=field) from None
    raise TypeError(f"no cursor check for a {kind!r} key")  # a programming error


def keyset_page(conn: Connection, query: sa.Select[Any], key: sa.ColumnElement[Any],
                limit: int, cursor: str | None, mapper: Callable[[Any], T],
                newest_first: bool = True, params: dict[str, Any] | None = None) -> Page[T]:
    """One page of ``query`` ordered by the unique ``key`` column (which the
    query must select, by that name)."""
    check_limit(limit)
    if cursor is not None:
        after = check_key(decode_cursor(cursor), key)
        query = query.where(key < after if newest_first else key > after)
    query = query.order_by(key.desc() if newest_first else key.asc()).limit(limit + 1)
    rows = conn.execute(query, params or {}).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]._mapping[key]) if more and rows else None
    return Page(items=[mapper(r) for r in rows], next_cursor=next_cursor)
