"""In-process fan-out of live stream events (bundles, persisted chunks, done).

Listeners are plain callables run on the publishing thread; they must be quick
(the SSE route's only sets an asyncio event with ``call_soon_threadsafe``).
Across processes, followers poll the database, which is the source of truth;
this hub only wakes them early. Redis / LISTEN-NOTIFY fan-out plugs in here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["LocalHub", "Listener"]

Listener = Callable[[dict[str, Any]], None]
log = structlog.get_logger(__name__)


class LocalHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, list[Listener]] = {}

    def subscribe(self, key: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event on ``key``; returns the unsubscribe."""
        with self._lock:
            self._listeners.setdefault(key, []).append(listener)

        def unsubscribe() -> None:
            with self._lock:
                found = self._listeners.get(key, [])
                if listener in found:
                    found.remove(listener)
                if not found:
                    self._listeners.pop(key, None)

        return unsubscribe

    def publish(self, key: str, event: dict[str, Any]) -> None:
        listeners = self._listeners.get(key)
        if not listeners:
            return
        for listener in list(listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not break the writer
                log.exception("live listener failed", key=key)
