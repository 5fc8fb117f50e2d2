"""Text every backend can store."""

from __future__ import annotations

from ..errors import Invalid

__all__ = ["check_text"]


def check_text(value: str, field: str) -> str:
    """Refuse what is not storable text on every backend: NUL (PostgreSQL text
    cannot hold it) and unpaired surrogates (not encodable as UTF-8)."""
    if "\x00" in value:
        raise Invalid(f"{field} must not contain NUL characters", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"{field} must not contain unpaired surrogates", field=field) from None
    return value
