"""Settings validation and the CLI: each command has help, bad settings fail in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import memvault
from memvault import ConfigError
from memvault.cli import app


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA_DIR", "DATABASE_URL", "HOST", "PORT", "DURABILITY", "AUTH"):
        monkeypatch.delenv(f"MEMVAULT_{name}", raising=False)
    s = memvault.load_settings()
    assert s.data_dir == Path("./data") and s.database_url is None and s.backend == "sqlite"
    assert (s.host, s.port, s.durability, s.auth) == ("127.0.0.1", 8000, "full", "required")
    assert (s.max_upload_mb, s.token_ttl_hours) == (50, 720)
    assert (s.stream_bundle_tokens, s.persist_chunk_tokens, s.persist_interval_ms) == (20, 60, 200)
    assert s.stream_lease_s == 30


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMVAULT_PORT", "9001")
    monkeypatch.setenv("MEMVAULT_DATABASE_URL", "postgresql://u@h/db")
    s = memvault.load_settings()
    assert s.port == 9001 and s.backend == "postgresql"


@pytest.mark.parametrize(("env", "name"), [
    ({"MEMVAULT_PORT": "eighty"}, "MEMVAULT_PORT"),
    ({"MEMVAULT_DURABILITY": "sometimes"}, "MEMVAULT_DURABILITY"),
    ({"MEMVAULT_DATABASE_URL": "mysql://x"}, "MEMVAULT_DATABASE_URL"),
    ({"MEMVAULT_AUTH": "disabled", "MEMVAULT_HOST": "0.0.0.0"}, "MEMVAULT_AUTH"),
    ({"MEMVAULT_MAX_UPLOAD_MB": "0"}, "MEMVAULT_MAX_UPLOAD_MB"),
])
def test_bad_settings_name_themselves(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                      name: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        memvault.load_settings()
    assert name in info.value.detail and "\n" not in info.value.detail


@pytest.mark.parametrize("bad", [{"durability": "bogus"}, {"port": 0}, {"auth": "maybe"},
                                 {"stream_lease_s": -1}, {"no_such_setting": 1}])
def test_open_validates_overrides_of_given_settings(tmp_path: Path, bad: dict[str, object]
                                                    ) -> None:
    """Regression: open(settings, **overrides) used model_copy(update=…), which took
    ``durability="bogus"`` as given (and the vault silently ran with NORMAL)."""
    base = memvault.load_settings(data_dir=tmp_path / "d")
    with pytest.raises(ConfigError) as info:
        memvault.open(base, **bad)
    assert "\n" not in info.value.detail
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_open_applies_valid_overrides(tmp_path: Path) -> None:
    base = memvault.load_settings(data_dir=tmp_path / "d")
    with memvault.open(base, durability="normal", stream_lease_s="5") as vault:
        assert vault.settings.durability == "normal" and vault.settings.stream_lease_s == 5.0
        assert vault.settings.data_dir == tmp_path / "d"


def test_unknown_keyword_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="durabilty"):
        memvault.open(tmp_path / "d", durabilty="full")


def test_auth_disabled_is_fine_on_loopback() -> None:
    assert memvault.load_settings(auth="disabled", host="127.0.0.1").auth == "disabled"


def test_serve_refuses_a_bad_setting_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MEMVAULT_DATA_DIR": str(tmp_path), "MEMVAULT_PORT": "x"}
    r = subprocess.run([sys.executable, "-m", "memvault", "serve"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "MEMVAULT_PORT" in lines[0]


@pytest.mark.parametrize("command", ["serve", "migrate", "stats"])
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_migrate_and_stats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMVAULT_DATA_DIR", str(tmp_path / "d"))
    runner = CliRunner()
    first = runner.invoke(app, ["migrate"])
    assert first.exit_code == 0 and "schema at" in first.output
    assert "current" in runner.invoke(app, ["migrate"]).output
    with memvault.open(tmp_path / "d") as vault:
        vault.users.register("s@example.com", "password-1")
    stats = runner.invoke(app, ["stats"])
    assert stats.exit_code == 0 and "users" in stats.output and "1" in stats.output
