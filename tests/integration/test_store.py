"""The store component on SQLite and, when it runs here, on PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import uuid

import pytest
from sqlalchemy import text

from kblabs.errors import StartupError
from kblabs.store import Store, migrations
from kblabs.store.engine import create_engine
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

POSTGRES_ADMIN_URL = os.environ.get(
    "KB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def _postgres_database():
    """Create a throw-away database; None (with the reason) when PostgreSQL is absent."""
    try:
        import asyncpg
    except ImportError:
        return None, "asyncpg is not installed (pip install -e '.[postgres]')"
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=3)
    except Exception as exc:
        return None, f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}"
    name = f"kbtest_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return name, ""


async def _drop_postgres_database(name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=3)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_env(request, project):
    """Environment variables selecting the database backend under test."""
    if request.param == "sqlite":
        yield {}
        return
    name, reason = await _postgres_database()
    if name is None:
        pytest.skip(reason)
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield {"KB_DATABASE_URL": f"{base}/{name}"}
    finally:
        await _drop_postgres_database(name)


async def started_store(project, env, **kwargs) -> Store:
    settings = make_settings(project, **env)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings, **kwargs)
    await store.start()
    return store


async def test_first_start_migrates_to_head_and_counts_boots(project, database_env):
    store = await started_store(project, database_env)
    state = await migrations.inspect(store.engine)
    assert state.current == state.heads and not state.pending
    assert store.restarts == 0
    ok, latency, _ = await store.check()
    assert ok and latency >= 0
    await store.stop()

    again = await started_store(project, database_env)
    assert again.restarts == 1
    await again.stop()


async def test_database_newer_than_code_is_refused(project, database_env):
    store = await started_store(project, database_env)
    async with store.engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    await store.stop()
    with pytest.raises(StartupError) as caught:
        await started_store(project, database_env)
    assert caught.value.component == "store"
    assert "ffff_future" in caught.value.message and "newer than this code" in caught.value.message


async def test_no_migrate_refuses_a_database_that_is_behind(project, database_env):
    with pytest.raises(StartupError, match="schema is behind this code"):
        await started_store(project, database_env, migrate=False)


async def test_upgrade_is_idempotent(project, database_env):
    store = await started_store(project, database_env)
    before = await migrations.inspect(store.engine)
    after = await migrations.upgrade(store.engine)
    assert before == after
    await store.stop()


async def test_sqlite_connections_use_the_documented_pragmas(project):
    settings = make_settings(project)
    settings.data_dir.mkdir(parents=True)
    engine = create_engine(settings.database_url, busy_timeout_ms=7000)
    async with engine.connect() as connection:
        values = {
            pragma: (await connection.exec_driver_sql(f"PRAGMA {pragma}")).scalar()
            for pragma in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    await engine.dispose()
    assert values == {
        "journal_mode": "wal",
        "synchronous": 1,
        "foreign_keys": 1,
        "busy_timeout": 7000,
    }


async def test_stop_checkpoints_the_wal(project):
    store = await started_store(project, {})
    await store.stop()
    database = project / ".kb" / "kblabs.db"
    wal = database.with_name("kblabs.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_migrations_match_the_table_definitions(project, database_env):
    """Every table change comes with a migration: autogenerate finds nothing to add."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from kblabs.store import metadata

    store = await started_store(project, database_env)
    async with store.engine.connect() as connection:
        diff = await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    await store.stop()
    assert diff == []
