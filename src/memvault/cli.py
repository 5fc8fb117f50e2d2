"""The ``memvault`` command: a thin skin, each command calling one library function."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import MemvaultError
from .settings import Settings, load_settings

if TYPE_CHECKING:
    from rich.progress import TaskID

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
    yes: Annotated[bool, typer.Option(
        "--yes", help="PostgreSQL: migrate a database holding records without a recent "
        "backup (MEMVAULT_MIGRATE_WITHOUT_BACKUP)")] = False,
) -> None:
    """Serve the HTTP API (embedded SQLite under ./data unless configured)."""
    import uvicorn

    settings = _settings(host=host, port=port, migrate_without_backup=True if yes else None)
    if yes:  # workers read their settings from the environment
        os.environ["MEMVAULT_MIGRATE_WITHOUT_BACKUP"] = "true"
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
    if workers > 1 and settings.metrics and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Before the workers start: each writes its metrics to files there, and
        # the one scraped sums them (service/metrics.py).
        from .service.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

        os.environ[MULTIPROC_ENV] = str(prepare_multiprocess_dir(settings.data_dir))
    uvicorn.run("memvault.service.app:app_from_env", factory=True, host=settings.host,
                port=settings.port, workers=workers, reload=reload, log_level="warning",
                timeout_graceful_shutdown=5)


@app.command()
def migrate(
    yes: Annotated[bool, typer.Option(
        "--yes", help="PostgreSQL: migrate a database holding records without a backup "
        "from the last hour (MEMVAULT_MIGRATE_WITHOUT_BACKUP)")] = False,
) -> None:
    """Apply schema migrations now (they also run on every start). A database
    holding records is backed up first (SQLite) or must have a backup from the
    last hour (PostgreSQL, unless --yes)."""
    from .backends import backend_for
    from .backends.base import Database
    from .backends.migrate import upgrade
    from .ops.backup import guard_migration

    settings = _settings(migrate_without_backup=True if yes else None)
    backend = backend_for(settings)
    db = Database(backend.create_engine(), backend)
    try:
        taken = guard_migration(settings, db)
        if taken is not None:
            out.print(f"backed up the database before migrating: {taken.path}")
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


@app.command("forget-user")
def forget_user(
    email: Annotated[str, typer.Argument(help="the user's email address")],
) -> None:
    """Delete a user and every record they own (entities, files and their blobs
    no one else references, conversations, vectors, graphs, caches, runs, …)."""
    from .ops.forget import find_user_id
    from .ops.forget import forget_user as forget
    from .vault import Vault

    try:
        vault = Vault(_settings(), sweep=False)
    except MemvaultError as exc:
        raise _fail(exc.detail) from None
    with vault:
        try:
            report = forget(vault, find_user_id(vault, email))
        except MemvaultError as exc:
            raise _fail(exc.detail) from None
    table = Table(title=f"forgot {report.email} ({report.user_id})")
    table.add_column("kind")
    table.add_column("deleted", justify="right")
    for name, count in report.deleted.items():
        if count:
            table.add_row(name, f"{count:,}")
    out.print(table)
    left = (f"; {report.blobs_left:,} unreferenced blobs left to the collector"
            if report.blobs_left else "")
    out.print(f"deleted {report.total:,} records of {report.email}{left}")


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(label, done, total)`` callback drawing one Rich bar per
    label; nothing is drawn when stdout is not a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    tasks: dict[str, TaskID] = {}
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=out, transient=True,
                  disable=not out.is_terminal) as bar:
        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)
        yield update


@app.command("export")
def export_(
    path: Annotated[Path, typer.Argument(
        metavar="OUT", help="a new (or empty) directory, or a file ending in .zip")],
    user: Annotated[str | None, typer.Option(
        help="export only this user's records (their email) and the files they reference")
    ] = None,
) -> None:
    """Write a portable archive: one JSON-lines file per kind, blobs as files and
    a manifest of counts and sha256 checksums, read in one consistent snapshot."""
    from .ops.archive import export_archive
    from .vault import Vault

    try:
        vault = Vault(_settings(), sweep=False)
    except MemvaultError as exc:
        raise _fail(exc.detail) from None
    with vault:
        owner = None
        if user is not None:
            found = vault.users.find(user)
            if found is None:
                raise _fail(f"no user with email {user!r}")
            owner = found.id
        try:
            with _progress_bar() as progress:
                manifest = export_archive(vault.db, vault.blobs, path, owner_id=owner,
                                          progress=progress)
        except MemvaultError as exc:
            raise _fail(exc.detail) from None
    table = Table(title=f"exported to {path}")
    table.add_column("kind")
    table.add_column("records", justify="right")
    for name, count in manifest.counts.items():
        table.add_row(name, f"{count:,}")
    out.print(table)
    size = sum(e.size for e in manifest.files.values())
    out.print(f"exported {sum(manifest.counts.values()):,} records ({size:,} bytes) "
              f"from {manifest.backend} at schema {manifest.schema_revision}")


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(
        metavar="IN", help="an archive written by memvault export (directory or .zip)")],
    database_url: Annotated[str | None, typer.Option(
        help="import into this database instead of the configured one")] = None,
    merge: Annotated[bool, typer.Option(
        "--merge", help="into a vault that holds records: skip those whose key exists")
    ] = False,
) -> None:
    """Load an export into an empty vault (either backend), keeping ids,
    timestamps, owners, statuses and bytes; every checksum is checked first."""
    from .ops.archive import import_archive
    from .vault import Vault

    try:
        vault = Vault(_settings(database_url=database_url), sweep=False)
    except MemvaultError as exc:
        raise _fail(exc.detail) from None
    with vault:
        try:
            with _progress_bar() as progress:
                report = import_archive(vault.db, vault.blobs, path, merge=merge,
                                        progress=progress)
        except MemvaultError as exc:
            raise _fail(exc.detail) from None
        target = vault.describe()
    table = Table(title=f"imported into {target}")
    for column in ("kind", "imported", "skipped"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for name, count in report.inserted.items():
        table.add_row(name, f"{count:,}", f"{report.skipped.get(name, 0):,}")
    out.print(table)
    skipped = (f"; skipped {report.total_skipped:,} whose key existed"
               if merge else "")
    jobs = f"; {report.jobs:,} documents queued for indexing" if report.jobs else ""
    out.print(f"imported {sum(report.inserted.values()):,} records{skipped}{jobs}")


@app.command()
def verify(
    repair: Annotated[bool, typer.Option(
        "--repair", help="fix what can be derived again (indexes, counters, reference "
        "counts, orphan blobs, messages' text from their chunks)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON report")] = False,
) -> None:
    """Check the vault for damage: database integrity, schema, blobs and their
    references, message chunks and text, derived indexes, counters. Exit 1 when
    anything is wrong (with --repair: when anything is left unfixed)."""
    import json

    from .ops.verify import verify as run_verify

    settings = _settings()
    try:
        with _progress_bar() as progress:
            report = run_verify(settings, repair=repair, progress=lambda check, done, total:
                                progress(check, done, done if total is None else total))
    except MemvaultError as exc:
        raise _fail(exc.detail) from None
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        for check in report.checks:
            lines = [f"ok  {check.name}"] if check.ok else []
            lines += [f"FAIL  {check.name}: {p}" for p in check.problems]
            if check.unlisted:
                lines.append(f"FAIL  {check.name}: … and {check.unlisted:,} more")
            lines += [f"fixed  {check.name}: {r}" for r in check.repaired]
            lines += [f"note  {check.name}: {n}" for n in check.notes]
            for line in lines:
                out.print(line, markup=False, highlight=False, soft_wrap=True)
        wrong = sum(not c.ok for c in report.checks)
        fixed = sum(len(c.repaired) for c in report.checks)
        summary = (f"{len(report.checks) - wrong} of {len(report.checks)} checks ok"
                   + (f"; {fixed:,} repairs" if repair else ""))
        out.print(summary if report.ok else f"{summary}; {wrong} with problems",
                  markup=False, highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command("import-legacy")
def import_legacy(
    layout: Annotated[str, typer.Argument(help="seed000, seed001, seed002 or seed004")],
    path: Annotated[Path, typer.Argument(help="the seed's data folder (holding data/, "
                                         "storage/ or users/)")],
    user: Annotated[str | None, typer.Option(
        help="the email of the account that gets records no user owns in the layout "
        "(required for seed000, seed002 and seed004)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON report")] = False,
) -> None:
    """Import a seed application's on-disk data. Idempotent: a second run imports
    nothing new. Malformed files and records are reported and skipped; exit 1
    only when nothing could be read or the vault failed (2: bad arguments)."""
    import json

    from .errors import Invalid
    from .ops.legacy import import_legacy as run_import
    from .vault import Vault

    try:
        vault = Vault(_settings(), sweep=False)
    except MemvaultError as exc:
        raise _fail(exc.detail) from None
    with vault:
        try:
            with _progress_bar() as progress:
                report = run_import(vault, layout, path, user, progress=lambda done, total:
                                    progress(f"importing {layout}", done, total))
        except MemvaultError as exc:
            raise _fail(exc.detail, 2 if isinstance(exc, Invalid) else 1) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        table = Table(title=f"import-legacy {report.layout} from {report.source}")
        for column in ("records", "imported", "skipped", "why skipped"):
            table.add_column(column, justify="right" if column in ("imported", "skipped")
                             else "left")
        for name, tally in report.tallies.items():
            why = "; ".join(f"{n:,} {reason}" for reason, n in tally.skipped.most_common())
            table.add_row(name, f"{tally.imported:,}", f"{tally.skipped_total:,}", why)
        out.print(table)
        for line in [*report.notes, *(f"skipped {p}" for p in report.problems[:50])]:
            out.print(line, markup=False, highlight=False, soft_wrap=True)
        if len(report.problems) > 50:
            out.print(f"… and {len(report.problems) - 50:,} more (see --json)")
        skipped = sum(t.skipped_total for t in report.tallies.values())
        out.print(f"imported {report.total_imported:,} records, skipped {skipped:,}, "
                  f"{len(report.problems):,} problems", markup=False, highlight=False)
    if report.files_read == 0:
        raise _fail(f"nothing could be read from {report.source}")


def _passphrase(path: Path | None) -> bytes | None:
    from .ops.backup import read_passphrase

    if path is None:
        return None
    try:
        return read_passphrase(path)
    except MemvaultError as exc:
        raise _fail(exc.detail) from None


@app.command()
def backup(
    to: Annotated[Path | None, typer.Option(
        "--to", help="the backups folder (default: <data dir>/backups)")] = None,
    keep: Annotated[int | None, typer.Option(
        "--keep", min=1, help="then remove all but the newest N backups there")] = None,
    passphrase_file: Annotated[Path | None, typer.Option(
        "--passphrase-file", help="encrypt with the passphrase in this file (never stored)")
    ] = None,
    list_: Annotated[bool, typer.Option(
        "--list", help="list the backups with their time, size and counts")] = False,
) -> None:
    """An online, consistent backup (one snapshot, while writers go on): every
    record and blob, with a manifest of counts and sha256 checksums."""
    from .ops.backup import backups_dir, create_backup, list_backups
    from .vault import Vault

    settings = _settings()
    root = to if to is not None else backups_dir(settings)
    if list_:
        found = list_backups(root)
        # One line per backup (a table of every kind's count would not fit).
        for b in found:
            counts = ", ".join(f"{n} {c:,}" for n, c in b.counts.items() if c)
            out.print(f"{b.path.name}  {b.created_at:%Y-%m-%d %H:%M:%S} UTC  {b.backend} "
                      f"schema {b.schema_revision}  {b.size:,} bytes  {b.records:,} records "
                      f"({counts})" + ("  encrypted" if b.encryption else ""),
                      markup=False, highlight=False, soft_wrap=True)
        out.print(f"{len(found)} backups in {root}", markup=False, highlight=False,
                  soft_wrap=True)
        return
    secret = _passphrase(passphrase_file)
    try:
        vault = Vault(settings, sweep=False)
    except MemvaultError as exc:
        raise _fail(exc.detail) from None
    with vault:
        try:
            with _progress_bar() as progress:
                info = create_backup(vault.db, vault.blobs, settings, root, keep=keep,
                                     passphrase=secret, progress=progress)
        except MemvaultError as exc:
            raise _fail(exc.detail) from None
        except OSError as exc:
            raise _fail(f"cannot write the backup: {exc}") from None
    out.print(f"backed up {info.records:,} records ({info.size:,} bytes) from "
              f"{info.backend} at schema {info.schema_revision} to {info.path}"
              + (" (encrypted)" if secret is not None else ""), markup=False, highlight=False)


@app.command()
def restore(
    path: Annotated[Path, typer.Argument(metavar="BACKUP", help="a backup folder")],
    to: Annotated[Path | None, typer.Option(
        "--to", help="restore into this SQLite data folder")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="restore into this (PostgreSQL) database")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="replace a target holding records (the old data is kept aside)")
    ] = False,
    passphrase_file: Annotated[Path | None, typer.Option(
        "--passphrase-file", help="the passphrase of an encrypted backup")] = None,
) -> None:
    """Restore a backup into an empty location (or, with --force, replace the
    target). Every checksum is checked before anything is touched."""
    from .ops.backup import restore_backup

    if to is not None and database_url is not None:
        raise _fail("give --to or --database-url, not both", 2)
    settings = _settings()
    secret = _passphrase(passphrase_file)
    try:
        with _progress_bar() as progress:
            report = restore_backup(path, settings, to=to, database_url=database_url,
                                    force=force, passphrase=secret, progress=progress)
    except MemvaultError as exc:
        raise _fail(exc.detail) from None
    except OSError as exc:
        raise _fail(f"restore failed: {exc}") from None
    aside = f"; the old data is kept at {report.kept_aside}" if report.kept_aside else ""
    out.print(f"restored {sum(report.inserted.values()):,} records from {path.name} into "
              f"{report.target}{aside}", markup=False, highlight=False)


def main() -> None:
    app()
