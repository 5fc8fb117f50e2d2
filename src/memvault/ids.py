"""Time-ordered ids (UUIDv7) and opaque pagination cursors."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import uuid6

from .errors import Invalid

__all__ = ["new_id", "utcnow", "encode_cursor", "decode_cursor"]


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
    except (ValueError, TypeError):
        raise Invalid("malformed cursor", field=field) from None
