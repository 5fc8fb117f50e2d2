"""The ``memvault`` command: a thin skin, each command calling one library function."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import MemvaultError
from .settings import Settings, load_settings

app = typer.Typer(help="memvault: durable memory for AI applications.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False,  # locals may hold secrets
                  add_completion=False)
out = Console()


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print one plain line to stderr; return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except MemvaultError as exc:
        raise _fail(exc.detail, 2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (MEMVAULT_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (MEMVAULT_PORT)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
    reload: Annotated[bool, typer.Option(help="restart on code changes (development)")] = False,
) -> None:
    """Serve the HTTP API (embedded SQLite under ./data unless configured)."""
    import uvicorn

    settings = _settings(host=host, port=port)
    # Workers are separate processes that read their settings from the environment.
    os.environ["MEMVAULT_HOST"] = settings.host
    os.environ["MEMVAULT_PORT"] = str(settings.port)
    from .logs import configure_logging

    configure_logging(settings)
    try:  # fail here, with one line, rather than in every worker
        from .vault import Vault
        Vault(settings, sweep=False).close()
    except MemvaultError as exc:
        raise _fail(exc.detail, 2) from None
    uvicorn.run("memvault.service.app:app_from_env", factory=True, host=settings.host,
                port=settings.port, workers=workers, reload=reload, log_level="warning",
                timeout_graceful_shutdown=5)


@app.command()
def migrate() -> None:
    """Apply schema migrations now (they also run on every start)."""
    from .backends import backend_for
    from .backends.base import Database
    from .backends.migrate import upgrade

    settings = _settings()
    backend = backend_for(settings)
    db = Database(backend.create_engine(), backend)
    try:
        before, after = upgrade(db)
    except MemvaultError as exc:
        raise _fail(exc.detail) from None
    finally:
        db.close()
    out.print(f"schema at {after}" + (f" (was {before})" if before != after else " (current)"))


@app.command()
def stats() -> None:
    """Exact record counts per kind, background components, backend and data location."""
    from .kinds import kinds
    from .vault import Vault

    try:
        vault = Vault(_settings(), sweep=False)
    except MemvaultError as exc:
        raise _fail(exc.detail) from None
    with vault:
        try:
            counts = vault.counts(exact=True)
        except MemvaultError as exc:
            raise _fail(exc.detail) from None
        table = Table(title=f"memvault — {vault.backend} — {vault.describe()}")
        table.add_column("kind")
        table.add_column("count", justify="right")
        table.add_column("what")
        for kind in kinds():
            table.add_row(kind.name, f"{counts[kind.name]:,}", kind.description)
        out.print(table)
        jobs = Table(title="background components (this process)")
        for column in ("component", "every", "runs", "failures", "last error"):
            jobs.add_column(column)
        for s in vault.component_stats().values():
            jobs.add_row(s.name, f"{s.interval_s:g} s", str(s.runs), str(s.failures),
                         s.last_error or "")
        out.print(jobs)


@app.command()
def reindex(
    entity: Annotated[str | None, typer.Option(
        help="only the entities with this id (of every owner)")] = None,
) -> None:
    """Rebuild the vectors of collections embedded with another model than the
    vault's embedder (MEMVAULT_EMBEDDER) now uses."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .vault import Vault

    try:
        vault = Vault(_settings(), sweep=False)
    except MemvaultError as exc:
        raise _fail(exc.detail) from None
    with vault, Progress("[progress.description]{task.description}", BarColumn(),
                         MofNCompleteColumn(), TimeRemainingColumn(), console=out,
                         transient=True) as bar:
        task = bar.add_task("re-embedding chunks", total=None)
        try:
            report = vault.reindex(entity, lambda done, total: bar.update(
                task, completed=done, total=total))
        except MemvaultError as exc:
            raise _fail(exc.detail) from None
    out.print(f"reindexed {report.chunks:,} chunks in {report.collections:,} collections "
              f"with {report.model_id}")


def main() -> None:
    app()
