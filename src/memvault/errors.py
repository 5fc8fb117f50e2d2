"""memvault's error tree. Each error knows its HTTP status and a stable code.

    MemvaultError
    ├── ConfigError          (500, config_error)   bad setting; stops start-up
    │   └── MigrationFailed  (500, migration_failed)  rolled back; names the revision
    ├── Invalid              (422, invalid)        bad input; names the field
    │   └── ExtractionError  (422, unreadable_file)  no text could be read from a file
    │       └── UnsupportedFile (422, unsupported_file)  a file type memvault cannot read
    ├── Unauthorized         (401, unauthorized)
    ├── NotFound             (404, not_found)      also for other users' records
    ├── Conflict             (409, conflict)
    ├── PayloadTooLarge      (413, too_large)
    ├── TooManyRequests      (429, too_many_requests)  e.g. failed logins; has retry_after
    └── Unavailable          (503, unavailable)    database busy or down

Any error may carry ``retry_after`` (seconds), sent as a ``Retry-After`` header.
Driver errors are translated once, in ``backends``; the service turns any
``MemvaultError`` into problem+json and anything else into a bare 500.
"""

from __future__ import annotations

__all__ = [
    "MemvaultError", "ConfigError", "MigrationFailed", "Invalid", "Unauthorized", "NotFound",
    "Conflict", "PayloadTooLarge", "TooManyRequests", "Unavailable", "ExtractionError",
    "UnsupportedFile", "CacheFetchError",
]


class MemvaultError(Exception):
    status: int = 500
    code: str = "error"
    title: str = "Internal error"

    def __init__(self, detail: str = "", *, field: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.field = field
        #: Seconds after which a retry may succeed (the ``Retry-After`` header).
        self.retry_after = retry_after


class ConfigError(MemvaultError):
    status, code, title = 500, "config_error", "Invalid configuration"


class MigrationFailed(ConfigError):
    """A schema upgrade failed and was rolled back: the database is still at the
    revision it had before, and the message names the revision that failed."""

    status, code, title = 500, "migration_failed", "Schema migration failed"


class Invalid(MemvaultError):
    status, code, title = 422, "invalid", "Invalid input"


class ExtractionError(Invalid):
    """A file's text could not be read (corrupt, encrypted, too large once extracted)."""

    status, code, title = 422, "unreadable_file", "File could not be read"


class UnsupportedFile(ExtractionError):
    """A file type that memvault does not extract text from (images, archives, …)."""

    status, code, title = 422, "unsupported_file", "Unsupported file type"


class Unauthorized(MemvaultError):
    status, code, title = 401, "unauthorized", "Not authenticated"


class NotFound(MemvaultError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(MemvaultError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(MemvaultError):
    status, code, title = 413, "too_large", "Payload too large"


class TooManyRequests(MemvaultError):
    status, code, title = 429, "too_many_requests", "Too many requests"


class Unavailable(MemvaultError):
    status, code, title = 503, "unavailable", "Service unavailable"


class CacheFetchError(MemvaultError):
    """Another process's fetch of the cache key this call waited for raised;
    the message is that error's type and text."""

    status, code, title = 502, "fetch_failed", "Fetch failed"
