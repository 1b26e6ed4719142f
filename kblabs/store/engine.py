"""The async SQLAlchemy engine, with SQLite set up as ARCHITECTURE §6 asks."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, busy_timeout_ms: int = 5000, echo: bool = False) -> AsyncEngine:
    if not is_sqlite(url):
        return create_async_engine(url, echo=echo, pool_pre_ping=True)
    engine = create_async_engine(url, echo=echo, connect_args={"timeout": busy_timeout_ms / 1000})
    _configure_sqlite(engine.sync_engine, busy_timeout_ms)
    return engine


def sqlite_file_engine(
    url: str, *, busy_timeout_ms: int = 5000, echo: bool = False
) -> Engine | None:
    """A synchronous engine (stdlib sqlite3) on the same SQLite file as `url`, set up the
    same way, for whole transactions run in one thread (`Store.transaction`). None when
    `url` is not a SQLite file (another database, or an in-memory one that a second
    engine would not share)."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:") or parsed.query.get("mode") == "memory":
        return None
    engine = create_sync_engine(
        parsed.set(drivername="sqlite"),
        echo=echo,
        # used from one thread at a time, but created, used and closed by different ones
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
    )
    _configure_sqlite(engine, busy_timeout_ms, driver_begin=True)
    return engine


def _configure_sqlite(engine: Engine, busy_timeout_ms: int, *, driver_begin: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # `execution_options(sqlite_begin="IMMEDIATE")` takes the write lock up front, for
        # claim/update paths that must not fail half-way with SQLITE_BUSY.
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        if driver_begin:  # stdlib sqlite3: straight to the driver, a fraction of the cost
            connection.connection.driver_connection.execute(f"BEGIN {mode}")
        else:
            connection.exec_driver_sql(f"BEGIN {mode}")
