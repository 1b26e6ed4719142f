"""Alembic, driven from the platform: upgrade, current, history, pending check.

Migrations live in `migrations/` at the top of the repository (packaged into the wheel
as `kblabs/_migrations`). They run over the platform's own async engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import kblabs


class DatabaseNewerThanCode(Exception):
    """The database carries a revision this code does not know."""


def migrations_dir() -> Path:
    package = Path(kblabs.__file__).parent
    packaged = package / "_migrations"
    return packaged if packaged.is_dir() else package.parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@dataclass(frozen=True)
class MigrationState:
    current: tuple[str, ...]
    heads: tuple[str, ...]
    unknown: tuple[str, ...]  # revisions in the database that the code does not have

    @property
    def pending(self) -> bool:
        return set(self.current) != set(self.heads)


async def inspect(engine: AsyncEngine) -> MigrationState:
    async with engine.connect() as connection:
        current = await connection.run_sync(_current_heads)
    scripts = script_directory()
    known = {rev.revision for rev in scripts.walk_revisions()}
    return MigrationState(
        current=tuple(sorted(current)),
        heads=tuple(sorted(scripts.get_heads())),
        unknown=tuple(sorted(rev for rev in current if rev not in known)),
    )


def _current_heads(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


async def upgrade(engine: AsyncEngine, target: str = "head") -> MigrationState:
    """Bring the schema to `target`; refuses a database newer than the code."""
    state = await inspect(engine)
    if state.unknown:
        raise DatabaseNewerThanCode(
            f"database schema revision {', '.join(state.unknown)} is newer than this code "
            f"(latest known: {', '.join(state.heads)}); upgrade kblabs or restore a backup"
        )
    if state.pending or target != "head":
        async with engine.begin() as connection:
            await connection.run_sync(_run_upgrade, target)
    return await inspect(engine)


def _run_upgrade(connection: Connection, target: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, target)


def history() -> list[dict[str, str | None]]:
    return [
        {
            "revision": rev.revision,
            "downRevision": rev.down_revision if isinstance(rev.down_revision, str) else None,
            "message": (rev.doc or "").strip(),
        }
        for rev in script_directory().walk_revisions()
    ]
