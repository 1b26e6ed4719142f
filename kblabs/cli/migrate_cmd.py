"""`migrate upgrade|current|history|check`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kblabs.cli.context import CliContext
from kblabs.config import Settings
from kblabs.errors import ExitCode


def register(commands) -> None:
    parser = commands.add_parser("migrate", help="database schema migrations")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    upgrade = actions.add_parser("upgrade", help="migrate to the newest (or given) revision")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=run_upgrade)
    actions.add_parser("current", help="the database's revision").set_defaults(handler=run_current)
    actions.add_parser("history", help="every known revision").set_defaults(handler=run_history)
    actions.add_parser("check", help="exit 3 if a migration is pending").set_defaults(
        handler=run_check
    )


def _sqlite_file(settings: Settings) -> Path | None:
    from sqlalchemy.engine import make_url  # here: every other command skips its import

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(url.database)
    return None


async def _state(settings: Settings):
    from kblabs.store import migrations
    from kblabs.store.engine import create_engine

    sqlite_file = _sqlite_file(settings)
    if sqlite_file is not None and not sqlite_file.exists():
        heads = tuple(sorted(migrations.script_directory().get_heads()))
        return migrations.MigrationState(current=(), heads=heads, unknown=())
    engine = create_engine(settings.database_url, busy_timeout_ms=settings.store.busy_timeout_ms)
    try:
        return await migrations.inspect(engine)
    finally:
        await engine.dispose()


def _describe(state) -> dict:
    return {
        "current": list(state.current),
        "heads": list(state.heads),
        "pending": state.pending,
        "unknown": list(state.unknown),
    }


def run_current(ctx: CliContext) -> ExitCode:
    state = asyncio.run(_state(ctx.settings()))
    ctx.output.result(
        {"ok": True, **_describe(state)},
        lambda c: c.print(
            f"current: {', '.join(state.current) or '(empty database)'}; "
            f"newest: {', '.join(state.heads)}"
        ),
    )
    return ExitCode.OK


def run_check(ctx: CliContext) -> ExitCode:
    state = asyncio.run(_state(ctx.settings()))
    if state.unknown:
        ctx.output.failure(
            f"database revision {', '.join(state.unknown)} is newer than this code",
            code="DATABASE_NEWER_THAN_CODE",
            **_describe(state),
        )
        return ExitCode.FAILURE
    message = "migration pending" if state.pending else "database is up to date"
    ctx.output.result(
        {"ok": not state.pending, **_describe(state)},
        lambda c: c.print(f"{message} (current: {', '.join(state.current) or 'empty'})"),
    )
    return ExitCode.NOT_READY if state.pending else ExitCode.OK


def run_history(ctx: CliContext) -> ExitCode:
    from kblabs.store.migrations import history

    revisions = history()

    def human(console) -> None:
        for rev in revisions:
            console.print(f"{rev['revision']:24} {(rev['message'] or '').splitlines()[0]}")

    ctx.output.result({"ok": True, "revisions": revisions}, human)
    return ExitCode.OK


def run_upgrade(ctx: CliContext) -> ExitCode:
    settings = ctx.settings()
    from kblabs.datadir import ensure_data_dir
    from kblabs.errors import StartupError
    from kblabs.store import migrations
    from kblabs.store.engine import create_engine

    async def upgrade() -> tuple:
        sqlite_file = _sqlite_file(settings)
        if sqlite_file is not None:
            ensure_data_dir(sqlite_file.parent)
        engine = create_engine(
            settings.database_url, busy_timeout_ms=settings.store.busy_timeout_ms
        )
        try:
            before = await migrations.inspect(engine)
            after = await migrations.upgrade(engine, ctx.args.revision)
            return before, after
        finally:
            await engine.dispose()

    try:
        before, after = asyncio.run(upgrade())
    except (migrations.DatabaseNewerThanCode, StartupError) as exc:
        ctx.output.failure(str(exc), code="MIGRATION_FAILED")
        return ExitCode.FAILURE
    except Exception as exc:
        ctx.output.failure(
            f"migration failed: {type(exc).__name__}: {exc}", code="MIGRATION_FAILED"
        )
        return ExitCode.FAILURE
    payload = {"ok": True, "from": list(before.current), "to": list(after.current)}
    ctx.output.result(
        payload,
        lambda c: c.print(
            f"database at {', '.join(after.current)} (was {', '.join(before.current) or 'empty'})"
        ),
    )
    return ExitCode.OK
