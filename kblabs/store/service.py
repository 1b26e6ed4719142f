"""The store component: opens the database, migrates it, records the boot."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from loguru import logger
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

import kblabs
from kblabs.config import Settings
from kblabs.errors import StartupError
from kblabs.store import migrations
from kblabs.store.engine import create_engine, is_sqlite, sqlite_file_engine
from kblabs.store.tables import boots

T = TypeVar("T")


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
        # SQLite file only: the one thread that runs whole transactions (`transaction`,
        # `run_sync`) on its connection of a synchronous engine
        self._sync: _SyncConnection | None = None
        self._thread: ThreadPoolExecutor | None = None
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

    async def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)` as one write transaction (BEGIN IMMEDIATE on SQLite),
        committed when it returns, rolled back when it raises. `connection` is a
        synchronous SQLAlchemy `Connection`.

        On a SQLite file the whole function runs in one hop to the store's own thread,
        on a stdlib sqlite3 connection: its statements cost no event-loop round trip
        each (through aiosqlite every statement is several). On other databases it runs
        through `AsyncConnection.run_sync`, in a `write()` transaction. A caller
        cancelled meanwhile still waits for the transaction to end (it cannot be
        stopped half-way in the thread), then sees the cancellation.

        Never call it while holding a `write()` transaction: on SQLite the two would
        wait for each other's lock."""
        return await self.run_sync(_in_write_transaction, fn, *args)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)` with a synchronous connection and no transaction
        begun: `fn` begins and commits its own (`begin_write(connection)` for a write
        one). Where it runs: see `transaction`."""
        if self._thread is None or self._sync is None:
            async with self.engine.connect() as conn:
                result = await conn.run_sync(fn, *args)
                await conn.commit()  # whatever fn left open (nothing, normally)
                return result
        future = asyncio.get_running_loop().run_in_executor(
            self._thread, partial(self._sync.run, fn, *args)
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # the thread finishes what it started; do not leave it half-watched
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # seen: no "exception never retrieved" warning
            raise

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
            sync_engine = sqlite_file_engine(
                self.url,
                busy_timeout_ms=self.settings.store.busy_timeout_ms,
                echo=self.settings.store.echo,
            )
            if sync_engine is not None:
                self._sync = _SyncConnection(sync_engine)
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="store")
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
        if self._thread is not None:
            thread, self._thread = self._thread, None
            sync, self._sync = self._sync, None
            if sync is not None:  # closed in its own thread, after what is queued
                await asyncio.get_running_loop().run_in_executor(thread, sync.close)
            thread.shutdown(wait=False)
        if is_sqlite(self.url):
            try:
                async with self._engine.connect() as connection:
                    await connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except Exception as exc:  # shutting down: report, do not block the exit
                logger.warning("WAL checkpoint at shutdown failed: {}", exc)
        await self._engine.dispose()
        self._engine = None


def begin_write(connection: Connection) -> Any:
    """A write transaction on a synchronous connection; on SQLite it takes the write lock
    up front (BEGIN IMMEDIATE), like `Store.write()`."""
    return connection.execution_options(sqlite_begin="IMMEDIATE").begin()


def _in_write_transaction(connection: Connection, fn: Callable[..., T], *args: Any) -> T:
    with begin_write(connection):
        return fn(connection, *args)


class _SyncConnection:
    """The store thread's connection, kept open from one transaction to the next (no
    pool checkout, check-in and reset each time); used from that thread only."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection: Connection | None = None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        connection = self.connection
        if connection is None or connection.closed or connection.invalidated:
            connection = self.connection = self.engine.connect()
        try:
            result = fn(connection, *args)
            connection.commit()  # whatever fn left open (nothing, normally)
            return result
        except BaseException:
            try:
                connection.rollback()
            except Exception:  # a broken connection: the next call opens another
                self.connection = None
                connection.invalidate()
            raise
        finally:  # `begin_write` set it for its transaction only
            connection.execution_options(sqlite_begin="DEFERRED")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        self.engine.dispose()
