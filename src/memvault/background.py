"""Background components: periodic work of a vault with one lifecycle.

The stream sweeper, the stream keeper, blob garbage collection — and next
ingestion workers, ANN catch-up, cache eviction and run retention — register
here instead of starting threads of their own. Each runs in its own daemon
thread every ``interval_s`` from ``start()`` (the vault's open) until ``stop()``
(its close); a run that raises is logged with its traceback, counted, and tried
again at the next interval (backing off up to ``max_backoff_s`` while it keeps
failing). ``stats()`` shows every component's runs, failures and last error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from .ids import utcnow

__all__ = ["Background", "ComponentStats"]

log = structlog.get_logger(__name__)


@dataclass
class ComponentStats:
    """What a component has done so far (a snapshot)."""

    name: str
    interval_s: float
    runs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_run_at: datetime | None = None
    last_error: str | None = None
    running: bool = False


@dataclass
class _Component:
    name: str
    interval_s: float
    work: Callable[[], object]
    max_backoff_s: float
    stats: ComponentStats
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Set by ``wake()`` (and by ``stop()``) to end the wait before a run early.
    wakeup: threading.Event = field(default_factory=threading.Event)


class Background:
    """The vault's background components."""

    def __init__(self) -> None:
        self._components: dict[str, _Component] = {}
        self._stop = threading.Event()
        self._started = False

    def register(self, name: str, interval_s: float, work: Callable[[], object], *,
                 max_backoff_s: float = 60.0) -> None:
        """Run ``work()`` every ``interval_s`` seconds while the vault is open.

        A component registered after ``start()`` starts at once.
        """
        if name in self._components:
            raise ValueError(f"background component {name!r} is already registered")
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        component = _Component(name, interval_s, work, max(max_backoff_s, interval_s),
                               ComponentStats(name, interval_s))
        self._components[name] = component
        if self._started:
            self._launch(component)

    def run_now(self, name: str) -> bool:
        """Run one component once in the caller's thread (e.g. at start-up).

        Returns whether the run succeeded; a failure is logged and counted as
        in the background.
        """
        return self._run(self._components[name])

    def wake(self, name: str) -> None:
        """Run component ``name`` as soon as its thread is free, without waiting
        for the rest of its interval (e.g. the job runner after a local enqueue).
        Does nothing for an unknown component or before ``start()``."""
        component = self._components.get(name)
        if component is not None:
            component.wakeup.set()

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for component in self._components.values():
            self._launch(component)

    def stop(self) -> None:
        """Ask every component to stop and wait for runs in progress."""
        self._stop.set()
        for component in self._components.values():
            component.wakeup.set()
        for component in self._components.values():
            if component.thread is not None:
                component.thread.join()
                component.thread = None

    def stats(self) -> dict[str, ComponentStats]:
        out = {}
        for name, component in self._components.items():
            with component.lock:
                s = component.stats
                out[name] = ComponentStats(**vars(s))
        return out

    def _launch(self, component: _Component) -> None:
        component.thread = threading.Thread(target=self._loop, args=(component,),
                                            name=f"memvault-{component.name}", daemon=True)
        component.thread.start()

    def _loop(self, component: _Component) -> None:
        delay = component.interval_s
        while True:
            component.wakeup.wait(delay)
            component.wakeup.clear()
            if self._stop.is_set():
                break
            ok = self._run(component)
            failures = component.stats.consecutive_failures
            delay = (component.interval_s if ok
                     else min(component.interval_s * 2 ** min(failures, 16),
                              component.max_backoff_s))

    def _run(self, component: _Component) -> bool:
        with component.lock:
            component.stats.running = True
        started = time.monotonic()
        error: str | None = None
        try:
            component.work()
        except Exception as exc:  # logged, counted, retried: a component must not die
            error = f"{type(exc).__name__}: {exc}"
            log.warning("background component failed; will retry", component=component.name,
                        exc_info=True)
        with component.lock:
            s = component.stats
            s.running = False
            s.runs += 1
            s.last_run_at = utcnow()
            if error is None:
                s.consecutive_failures = 0
            else:
                s.failures += 1
                s.consecutive_failures += 1
                s.last_error = error
        if error is None and time.monotonic() - started > max(component.interval_s, 1.0):
            log.info("background component ran long", component=component.name,
                     seconds=round(time.monotonic() - started, 3))
        return error is None
