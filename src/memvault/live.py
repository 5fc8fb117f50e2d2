"""In-process fan-out of live stream events (bundles, persisted chunks, done),
and the door through which other processes' changes come in.

Listeners are plain callables run on the publishing thread; they must be quick
(the SSE route's only sets an asyncio event with ``call_soon_threadsafe``).
Across processes the database stays the source of truth: a follower re-reads it
when woken, and polls it as a safety net. A ``Relay`` (``fanout.py``: PostgreSQL
LISTEN/NOTIFY or Redis pub/sub) tells the other processes which messages had a
chunk or their end committed here, and wakes this process's followers of
messages that changed elsewhere with ``{"type": "wake"}``. While the relay is
healthy followers poll rarely (``MEMVAULT_LIVE_POLL_MS``); without one, or while
it is down, every ``FAST_POLL_S``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

__all__ = ["FAST_POLL_S", "LocalHub", "Listener", "Relay", "WAKE"]

Listener = Callable[[dict[str, Any]], None]
log = structlog.get_logger(__name__)

#: How often a follower re-reads the database when no push channel is healthy.
FAST_POLL_S = 0.1
#: Events published only after their commit: the ones other processes hear of
#: (a bundle is this process's alone: it is not in the database).
_COMMITTED = frozenset({"chunk", "done"})
#: What a listener gets when another process changed its message.
WAKE: dict[str, Any] = {"type": "wake"}


class Relay(Protocol):
    """Carries "these messages changed" between processes (``fanout.py``)."""

    @property
    def poll_interval_s(self) -> float:
        """How often followers should still poll (longer while the relay is healthy)."""
        ...

    def announce(self, key: str) -> None:
        """``key`` had a chunk or its end committed here; must return at once."""
        ...

    def listening(self) -> None:
        """A follower subscribed: start receiving other processes' announcements."""
        ...


class LocalHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, list[Listener]] = {}
        self._relay: Relay | None = None

    def attach(self, relay: Relay | None) -> None:
        """Forward committed events to ``relay`` (``None``: stop forwarding)."""
        self._relay = relay

    @property
    def poll_interval_s(self) -> float:
        """How long a follower may wait for a wake before re-reading the database."""
        relay = self._relay
        return relay.poll_interval_s if relay is not None else FAST_POLL_S

    def subscribe(self, key: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event on ``key``; returns the unsubscribe."""
        with self._lock:
            self._listeners.setdefault(key, []).append(listener)
        relay = self._relay
        if relay is not None:
            relay.listening()

        def unsubscribe() -> None:
            with self._lock:
                found = self._listeners.get(key, [])
                if listener in found:
                    found.remove(listener)
                if not found:
                    self._listeners.pop(key, None)

        return unsubscribe

    def publish(self, key: str, event: dict[str, Any]) -> None:
        """Deliver ``event`` to ``key``'s listeners here; a committed one (chunk,
        done) is also announced to the other processes. Call after the commit."""
        relay = self._relay
        if relay is not None and event.get("type") in _COMMITTED:
            relay.announce(key)
        listeners = self._listeners.get(key)
        if not listeners:
            return
        self._deliver([(key, listener) for listener in list(listeners)], event)

    def wake(self, keys: Iterable[str] | None = None) -> None:
        """Another process changed ``keys`` (``None``: perhaps any): wake their
        listeners here with ``WAKE`` so they re-read the database."""
        with self._lock:
            if keys is None:
                targets = [(k, fn) for k, fns in self._listeners.items() for fn in fns]
            else:
                targets = [(k, fn) for k in set(keys) for fn in self._listeners.get(k, ())]
        self._deliver(targets, WAKE)

    @staticmethod
    def _deliver(targets: list[tuple[str, Listener]], event: dict[str, Any]) -> None:
        for key, listener in targets:
            try:
                listener(event)
            except Exception:  # a broken listener must not break the writer
                log.exception("live listener failed", key=key)
