"""memvault's error tree. Each error knows its HTTP status and a stable code.

    MemvaultError
    ├── ConfigError          (500, config_error)   bad setting; stops start-up
    ├── Invalid              (422, invalid)        bad input; names the field
    ├── Unauthorized         (401, unauthorized)
    ├── NotFound             (404, not_found)      also for other users' records
    ├── Conflict             (409, conflict)
    ├── PayloadTooLarge      (413, too_large)
    └── Unavailable          (503, unavailable)    database busy or down

Driver errors are translated once, in ``backends``; the service turns any
``MemvaultError`` into problem+json and anything else into a bare 500.
"""

from __future__ import annotations

__all__ = [
    "MemvaultError", "ConfigError", "Invalid", "Unauthorized", "NotFound",
    "Conflict", "PayloadTooLarge", "Unavailable",
]


class MemvaultError(Exception):
    status: int = 500
    code: str = "error"
    title: str = "Internal error"

    def __init__(self, detail: str = "", *, field: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.field = field


class ConfigError(MemvaultError):
    status, code, title = 500, "config_error", "Invalid configuration"


class Invalid(MemvaultError):
    status, code, title = 422, "invalid", "Invalid input"


class Unauthorized(MemvaultError):
    status, code, title = 401, "unauthorized", "Not authenticated"


class NotFound(MemvaultError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(MemvaultError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(MemvaultError):
    status, code, title = 413, "too_large", "Payload too large"


class Unavailable(MemvaultError):
    status, code, title = 503, "unavailable", "Service unavailable"
