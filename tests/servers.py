"""Real Redis and Memcached servers for tests, started on loopback on free ports
and stopped by their pid (Debian packages ``redis-server`` and ``memcached``;
``.ci/run`` installs them). A server can be killed and started again on the
same port, to test what the vault does while it is down.

Memcached with SASL: ``memcached -S`` reads its SASL configuration from
``SASL_CONF_PATH`` (``memcached.conf``: mechanism PLAIN, a private sasldb made
with ``saslpasswd2`` from ``sasl2-bin``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["free_port", "RedisServer", "MemcachedServer", "SASL_USER", "SASL_PASSWORD"]

SASL_USER = "memvault"
SASL_PASSWORD = "memvault-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:  # wait for the condition: the port accepts connections
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class _Server:
    """A server process on a fixed loopback port: start, kill -9, start again."""

    name = "server"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        log = self.workdir / f"{self.name}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env(),
                                         cwd=self.workdir, start_new_session=True)
        _wait_port(self.port, self.proc, log)

    def kill(self) -> None:
        """kill -9, and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()


class RedisServer(_Server):
    name = "redis"

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def command(self) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--protected-mode", "yes"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class MemcachedServer(_Server):
    name = "memcached"

    def __init__(self, workdir: Path, port: int | None = None, *, sasl: bool = False,
                 memory_mb: int = 64) -> None:
        super().__init__(workdir, port)
        self.sasl = sasl
        self.memory_mb = memory_mb
        if sasl:
            self._write_sasl_config()

    @staticmethod
    def available(*, sasl: bool = False) -> bool:
        return shutil.which("memcached") is not None and (
            not sasl or shutil.which("saslpasswd2") is not None)

    def _write_sasl_config(self) -> None:
        db = self.workdir / "sasldb2"
        (self.workdir / "memcached.conf").write_text(f"mech_list: plain\nsasldb_path: {db}\n")
        subprocess.run(["saslpasswd2", "-a", "memcached", "-c", "-p", "-f", str(db), SASL_USER],
                       input=SASL_PASSWORD.encode(), check=True, capture_output=True)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.sasl:
            env["SASL_CONF_PATH"] = str(self.workdir)
        return env

    def command(self) -> list[str]:
        cmd = ["memcached", "-l", "127.0.0.1", "-p", str(self.port), "-U", "0",
               "-m", str(self.memory_mb)]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        if self.sasl:
            cmd.append("-S")
        return cmd

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"
