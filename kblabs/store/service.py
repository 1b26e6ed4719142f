"""The store component: opens the database, migrates it, records the boot."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from loguru import logger
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

import kblabs
from kblabs.config import Settings
from kblabs.errors import StartupError
from kblabs.store import migrations
from kblabs.store.engine import create_engine, is_sqlite
from kblabs.store.tables import boots


class Store:
    """Owns the engine. Other modules get sessions from `sessions()`."""

    name = "store"

    def __init__(
        self, settings: Settings, *, migrate: bool = True, record_boot: bool = True
    ) -> None:
        self.settings = settings
        self.url = settings.database_url
        self.migrate = migrate
        self.record_boot = record_boot  # False for CLI tools: they are not restarts
        self._engine: AsyncEngine | None = None
        self.restarts = 0

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("store is not started")
        return self._engine

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction that takes SQLite's write lock up front (BEGIN
        IMMEDIATE): one that reads and then writes would otherwise fail at once with
        "database is locked" when another writer is busy, instead of waiting."""
        conn = await self.engine.connect()
        try:
            conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                yield conn
        finally:
            await conn.close()

    def sessions(self) -> async_sessionmaker:
        return async_sessionmaker(self.engine, expire_on_commit=False)

    async def start(self) -> None:
        self._engine = create_engine(
            self.url,
            busy_timeout_ms=self.settings.store.busy_timeout_ms,
            echo=self.settings.store.echo,
        )
        try:
            await self._prepare_schema()
            if self.record_boot:
                self.restarts = await self._record_boot()
        except StartupError:
            raise
        except (OperationalError, DBAPIError, OSError) as exc:
            raise StartupError(self.name, self._explain(exc)) from exc

    async def _prepare_schema(self) -> None:
        try:
            if self.migrate:
                state = await migrations.upgrade(self.engine)
                logger.info("database schema at {}", ", ".join(state.current) or "empty")
                return
            state = await migrations.inspect(self.engine)
        except migrations.DatabaseNewerThanCode as exc:
            raise StartupError(self.name, str(exc)) from exc
        if state.unknown:
            raise StartupError(
                self.name,
                f"database schema revision {', '.join(state.unknown)} is newer than this code",
            )
        if state.pending:
            raise StartupError(
                self.name,
                "the database schema is behind this code; run `python -m kblabs migrate "
                "upgrade` (or start the server without --no-migrate)",
            )

    async def _record_boot(self) -> int:
        """Insert this boot; return how many boots came before it (= restarts)."""
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(boots).values(
                    started_at=datetime.now(UTC),
                    hostname=socket.gethostname()[:255],
                    pid=os.getpid(),
                    version=kblabs.__version__,
                )
            )
            total = (await connection.execute(select(func.count()).select_from(boots))).scalar()
        return max(int(total or 1) - 1, 0)

    def _explain(self, exc: Exception) -> str:
        original = getattr(exc, "orig", exc)
        message = str(original).strip()
        where = self._display_url()
        if isinstance(original, sqlite3.OperationalError) and "locked" in message:
            return (
                f"database {where} is locked by another process (a stuck or crashed kblabs "
                "still running?); stop it and start again"
            )
        if isinstance(original, sqlite3.OperationalError) and "unable to open" in message:
            return f"cannot open database {where}: check that its folder exists and is writable"
        return f"database {where}: {message.splitlines()[0] if message else type(exc).__name__}"

    def _display_url(self) -> str:
        url = make_url(self.url)
        return url.database or "" if is_sqlite(self.url) else url.render_as_string(True)

    async def check(self) -> tuple[bool, float, str]:
        """(ok, latency ms, message) for readiness and health probes."""
        started = time.perf_counter()
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            return False, (time.perf_counter() - started) * 1000, str(exc).splitlines()[0]
        return True, (time.perf_counter() - started) * 1000, "ok"

    async def stop(self) -> None:
        if self._engine is None:
            return
        if is_sqlite(self.url):
            try:
                async with self._engine.connect() as connection:
                    await connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except Exception as exc:  # shutting down: report, do not block the exit
                logger.warning("WAL checkpoint at shutdown failed: {}", exc)
        await self._engine.dispose()
        self._engine = None
