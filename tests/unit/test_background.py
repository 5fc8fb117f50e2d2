"""Background components: run periodically, survive failures, stop on close."""

from __future__ import annotations

import threading

from memvault import Vault
from memvault.background import Background


def test_a_failing_component_is_counted_retried_and_recovers() -> None:
    bg = Background()
    calls = 0
    recovered = threading.Event()

    def work() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError(f"boom {calls}")
        recovered.set()

    bg.register("flaky", 0.01, work, max_backoff_s=0.05)
    bg.start()
    try:
        assert recovered.wait(10)
    finally:
        bg.stop()
    s = bg.stats()["flaky"]
    assert s.failures == 2 and s.last_error == "RuntimeError: boom 2"
    assert s.runs >= 3 and s.consecutive_failures == 0 and not s.running


def test_run_now_runs_in_the_caller_and_reports() -> None:
    bg = Background()
    ran: list[str] = []
    bg.register("once", 3600, lambda: ran.append(threading.current_thread().name))
    assert bg.run_now("once") and ran == [threading.current_thread().name]
    bg.register("bad", 3600, lambda: 1 / 0)
    assert not bg.run_now("bad")
    assert bg.stats()["bad"].last_error.startswith("ZeroDivisionError")


def test_stop_joins_every_thread() -> None:
    bg = Background()
    started = threading.Event()
    bg.register("tick", 0.01, started.set)
    bg.start()
    assert started.wait(10)
    bg.stop()
    assert not [t for t in threading.enumerate() if t.name == "memvault-tick"]


def test_registering_twice_is_refused() -> None:
    bg = Background()
    bg.register("x", 1, lambda: None)
    try:
        bg.register("x", 1, lambda: None)
    except ValueError as exc:
        assert "already" in str(exc)
    else:
        raise AssertionError("a second registration was accepted")


def test_the_vault_runs_its_components_and_stops_them_on_close(vault: Vault) -> None:
    stats = vault.component_stats()
    assert "stream-sweeper" in stats and stats["stream-sweeper"].runs >= 1
    vault.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("memvault-stream-sweeper")]
