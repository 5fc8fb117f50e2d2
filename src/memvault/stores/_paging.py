"""Keyset pagination shared by every listing: cursors are opaque, stable under inserts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import Invalid
from ..ids import decode_cursor, encode_cursor
from ..models import Page

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "check_limit", "keyset_page"]

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    return limit


def keyset_page(conn: Connection, query: sa.Select[Any], key: sa.ColumnElement[Any],
                limit: int, cursor: str | None, mapper: Callable[[Any], T],
                newest_first: bool = True, params: dict[str, Any] | None = None) -> Page[T]:
    """One page of ``query`` ordered by the unique ``key`` column (which the
    query must select, by that name)."""
    check_limit(limit)
    if cursor is not None:
        after = decode_cursor(cursor)
        if not isinstance(after, str | int) or isinstance(after, bool):
            raise Invalid("malformed cursor", field="cursor")
        query = query.where(key < after if newest_first else key > after)
    query = query.order_by(key.desc() if newest_first else key.asc()).limit(limit + 1)
    rows = conn.execute(query, params or {}).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]._mapping[key]) if more and rows else None
    return Page(items=[mapper(r) for r in rows], next_cursor=next_cursor)
