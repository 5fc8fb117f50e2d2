"""Structured logging (structlog): console lines, or JSON with ``MEMVAULT_LOG_JSON``.

Logs never carry secrets:

- ``redact_secrets`` replaces the value of any key that names a secret
  (password, token, authorization, secret, cookie, api key, credentials), at any
  depth of dicts and lists, before rendering;
- exceptions render as plain tracebacks, never with local variables (structlog's
  default console renderer uses rich tracebacks *with locals* when rich is
  installed, which would print a password held in a caller's frame).

``configure_logging`` is called by ``memvault serve`` and by ``create_app()``
when nobody configured structlog yet.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

from .settings import Settings

__all__ = ["configure_logging", "redact_secrets", "REDACTED"]

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"passw|pwd|secret|token$|^token|authorization|cookie|api_?key|credential", re.I)


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _redact(v)
                for k, v in value.items()}
    if type(value) in (list, tuple):  # exactly: a named tuple cannot be rebuilt this way
        # header lists: [(b"authorization", b"Bearer …"), …]
        if len(value) == 2 and isinstance(value[0], str | bytes):
            name = value[0].decode("latin-1") if isinstance(value[0], bytes) else value[0]
            if _SECRET_KEY.search(name):
                return type(value)((value[0], REDACTED))
        return type(value)(_redact(v) for v in value)
    return value


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]
                   ) -> MutableMapping[str, Any]:
    """structlog processor: hide the values of keys that name secrets."""
    for key, value in event.items():
        event[key] = REDACTED if _SECRET_KEY.search(key) else _redact(value)
    return event


class _StderrLogger:
    """Writes each rendered line to the *current* ``sys.stderr``.

    structlog's ``PrintLogger`` keeps the stream it was created with, which breaks
    when the stream is swapped (test capture, daemonisation) after configuration.
    """

    _lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            stream = sys.stderr
            stream.write(message + "\n")
            stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_logger(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(settings: Settings) -> None:
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    tail: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if settings.log_json else
        [structlog.dev.ConsoleRenderer(colors=False,
                                       exception_formatter=structlog.dev.plain_traceback)])
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
