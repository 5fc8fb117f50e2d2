"""A real ``memvault serve`` subprocess for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from memvault import Settings

from ..conftest import server_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``memvault serve`` on loopback, in its own process group (workers included)."""

    def __init__(self, settings: Settings, workers: int = 1, **env: Any) -> None:
        self.settings = settings
        self.workers = workers
        self.env = server_env(settings, **env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(settings.data_dir).parent / f"server-{self.port}.log"

    def start(self, timeout: float = 60) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memvault", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers)],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    if self.workers > 1:
                        time.sleep(0.5 * self.workers)  # let every worker come up
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not become ready:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 20) -> None:
        """Graceful stop (SIGTERM to the group), then wait."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def kill(self) -> None:
        """``kill -9`` the server and its workers, and reap it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def login(client: httpx.Client, email: str, password: str = "password-1") -> dict[str, str]:
    """Register (if new) and log in; returns the Authorization header."""
    client.post("/api/auth/register", json={"email": email, "password": password})
    r = client.post("/api/auth/login", json={"email": email, "password": password})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def all_pages(c: httpx.Client, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every item of a listing, following ``next_cursor`` (200 a page)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        r = c.get(url, params=params, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items
