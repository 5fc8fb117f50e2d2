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
        log_start = self.log.stat().st_size if self.log.exists() else 0
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
                if (httpx.get(f"{self.url}/ready", timeout=1).status_code == 200
                        and self._started_workers(log_start) >= self.workers):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not become ready:\n{self.log.read_text()[-3000:]}")

    def _started_workers(self, log_start: int) -> int:
        """Workers whose start-up finished, by the line each logs when it is ready."""
        with open(self.log, "rb") as fh:
            fh.seek(log_start)
            return fh.read().count(b"memvault started")

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def wait_started(self, count: int, log_start: int, timeout: float = 60) -> None:
        """Wait until ``count`` workers logged their start-up after ``log_start``
        (e.g. the one uvicorn starts in place of a killed worker)."""
        deadline = time.monotonic() + timeout
        while self._started_workers(log_start) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no worker started:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        """The live worker processes: the children of the supervisor (a /proc scan)."""
        assert self.proc is not None
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    state, ppid = fh.read().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if int(ppid) == self.proc.pid and state != "Z":
                pids.append(int(entry))
        return pids

    def worker_serving(self, client: httpx.Client, response: httpx.Response) -> int:
        """The pid of the worker holding the server end of the keep-alive connection
        ``response`` came over (matched by its socket in /proc/net/tcp)."""
        client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        ends = (f"0100007F:{self.port:04X}", f"0100007F:{client_port:04X}")
        with open("/proc/net/tcp") as fh:
            inodes = {f[9] for f in (line.split() for line in fh.readlines()[1:])
                      if (f[1], f[2]) == ends}
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if link.startswith("socket:[") and link[8:-1] in inodes:
                            return pid
        raise AssertionError(f"no worker holds the connection from port {client_port}")

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


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if it still runs, wait for it and close its stdout pipe."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


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
