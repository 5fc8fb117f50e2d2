"""Text every backend can store, checked before it reaches a database.

SQLite would keep a NUL character or an unpaired surrogate; PostgreSQL refuses
both (``text`` and ``jsonb`` cannot hold NUL; neither can be encoded as UTF-8).
Refusing them here, with the field named, gives one behaviour on every backend
and keeps driver errors away from callers. JSON values (metadata) are checked
through and through: keys, string values, and numbers JSON can carry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..errors import Invalid

__all__ = ["check_text", "check_texts", "check_json", "MAX_JSON_DEPTH"]

#: Deepest nesting accepted in a JSON value (PostgreSQL's jsonb and our own
#: checks recurse; nobody needs metadata nested deeper).
MAX_JSON_DEPTH = 64


def check_text(value: str, field: str) -> str:
    """Refuse what is not storable text on every backend: NUL (PostgreSQL text
    cannot hold it) and unpaired surrogates (not encodable as UTF-8).

    Raises:
        Invalid: naming ``field``.
    """
    if not isinstance(value, str):
        raise Invalid(f"{field} must be a string", field=field)
    if "\x00" in value:
        raise Invalid(f"{field} must not contain NUL characters", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"{field} must not contain unpaired surrogates", field=field) from None
    return value


def check_texts(values: Iterable[str], field: str) -> list[str]:
    """A list of storable strings (e.g. participants)."""
    if isinstance(values, str | bytes):
        raise Invalid(f"{field} must be a list of strings", field=field)
    return [check_text(v, field) for v in values]


def check_json(value: Any, field: str) -> Any:
    """Refuse a JSON value that some backend cannot store identically: text
    (keys or values) with NUL or unpaired surrogates, non-finite numbers,
    non-string keys, anything that is not JSON, or nesting deeper than
    ``MAX_JSON_DEPTH``. Returns ``value`` unchanged.

    Raises:
        Invalid: naming ``field`` (``metadata``, not the nested path: the
            path could itself hold the offending text).
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:  # iterative: a deep value cannot exhaust the Python stack
        item, depth = stack.pop()
        if item is None or isinstance(item, bool | int):
            continue
        if isinstance(item, str):
            check_text(item, field)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise Invalid(f"{field} must not contain NaN or infinite numbers", field=field)
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_JSON_DEPTH:
                raise Invalid(f"{field} is nested deeper than {MAX_JSON_DEPTH} levels",
                              field=field)
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise Invalid(f"{field} keys must be strings", field=field)
                    check_text(key, field)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        else:
            raise Invalid(f"{field} must hold only JSON values", field=field)
    return value
