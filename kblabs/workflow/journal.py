"""What happened in a run: events (`workflow_run_events`) and log lines
(`workflow_run_logs`), both numbered by `seq` so readers can resume where they stopped.

Events are written in the same transaction as the state change they describe (a run
never says "finished" in its events while its row says "running"): the engine's
transitions are synchronous functions of a `Tx`, which collects the events and inserts
them together (one executemany, in order) just before the transaction commits; `write`
runs one such function as one transaction (on SQLite in one hop to the store's thread,
see `Store.transaction`). Log lines are many,
so they are buffered and inserted in batches; `flush()` runs before a job's result is
written, so a finished step's output is always readable. Every text passes through the
run's secret masker before it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from loguru import logger
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from kblabs.store import Store
from kblabs.store.tables import run_events, run_logs

FLUSH_INTERVAL_S = 0.25
FLUSH_BATCH = 200
MAX_LINE_CHARS = 8000
TERMINAL_EVENTS = frozenset({"run.finished", "run.failed", "run.cancelled", "run.skipped"})
INSERT_EVENTS = insert(run_events)  # built once: building a statement costs more than running it

T = TypeVar("T")


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """A stored time with its zone: SQLite hands datetimes back naive, and they are UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with its offset."""
    if value is None:
        return None
    return aware(value).isoformat()


class Tx:
    """One engine transaction on a synchronous connection. `event()` records an event;
    all of them are inserted together, in order, by `flush()` (which `write` calls
    before the commit)."""

    __slots__ = ("conn", "events")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []

    def execute(self, statement: Any, params: Any = None) -> Any:  # a CursorResult
        return self.conn.execute(statement, params)

    def event(
        self,
        run_id: str,
        type: str,
        payload: dict[str, Any] | None = None,
        *,
        job_id: str | None = None,
        step_id: str | None = None,
    ) -> None:
        self.events.append(
            {
                "run_id": run_id,
                "job_id": job_id,
                "step_id": step_id,
                "type": type,
                "payload": payload,
                "ts": now(),
            }
        )

    def flush(self) -> None:
        if self.events:
            events, self.events = self.events, []
            self.conn.execute(INSERT_EVENTS, events)


INSERT_LINES = insert(run_logs)


def _insert_lines(conn: Connection, batch: list[dict[str, Any]]) -> None:
    conn.execute(INSERT_LINES, batch)


def in_tx(conn: Connection, fn: Callable[..., T], *args: Any) -> T:
    """`fn(Tx, *args)` on `conn` (inside the caller's transaction); its events land too."""
    tx = Tx(conn)
    result = fn(tx, *args)
    tx.flush()
    return result


async def write(store: Store, fn: Callable[..., T], *args: Any) -> T:
    """`fn(Tx, *args)` as one write transaction (`Store.transaction`)."""
    return await store.transaction(in_tx, fn, *args)


async def write_in(conn: AsyncConnection, fn: Callable[..., T], *args: Any) -> T:
    """`fn(Tx, *args)` inside the async write transaction the caller holds."""
    return await conn.run_sync(in_tx, fn, *args)


def event_to_dict(row: Any) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "type": row["type"],
        "runId": row["run_id"],
        "jobId": row["job_id"],
        "stepId": row["step_id"],
        "payload": row["payload"] or {},
        "timestamp": iso(row["ts"]),
    }


class Journal:
    """Buffered log writer plus readers; one per process (a component part)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._buffer: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.changed = asyncio.Condition()  # notified after events/logs land (this process)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flusher(), name="workflow-journal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    def log(
        self,
        run_id: str,
        message: str,
        *,
        level: str = "info",
        job_id: str | None = None,
        step_id: str | None = None,
        stream: str | None = None,
        line_no: int | None = None,
        mask: Callable[[str], str] | None = None,
    ) -> None:
        text = mask(message) if mask else message
        self._buffer.append(
            {
                "run_id": run_id,
                "job_id": job_id,
                "step_id": step_id,
                "level": level,
                "stream": stream,
                "line_no": line_no,
                "message": text[:MAX_LINE_CHARS],
                "ts": now(),
            }
        )
        if len(self._buffer) >= FLUSH_BATCH:
            self._wake.set()

    async def flush(self) -> None:
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        try:
            await self.store.transaction(_insert_lines, batch)
        except Exception as exc:  # logs must never break a run; keep them for next time
            logger.warning("could not write {} workflow log lines: {}", len(batch), exc)
            self._buffer = batch + self._buffer
            return
        await self.notify()

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL_S)
            self._wake.clear()
            await self.flush()

    # --- readers -------------------------------------------------------------------------

    async def events(self, run_id: str, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        query = (
            select(run_events)
            .where(run_events.c.run_id == run_id, run_events.c.seq > after)
            .order_by(run_events.c.seq)
            .limit(limit)
        )
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [event_to_dict(row) for row in rows]

    async def last_log_seq(self, run_id: str) -> int:
        from sqlalchemy import func

        async with self.store.engine.connect() as conn:
            value = (
                await conn.execute(
                    select(func.max(run_logs.c.seq)).where(run_logs.c.run_id == run_id)
                )
            ).scalar()
        return int(value or 0)

    async def logs(
        self,
        run_id: str,
        *,
        job_id: str | None = None,
        step_id: str | None = None,
        level: str | None = None,
        after: int = 0,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        query = select(run_logs).where(run_logs.c.run_id == run_id, run_logs.c.seq > after)
        if job_id:
            query = query.where(run_logs.c.job_id == job_id)
        if step_id and ":" not in step_id:  # a step's id from the spec, not its row id
            from kblabs.store.tables import workflow_steps as steps

            ids = select(steps.c.id).where(steps.c.run_id == run_id, steps.c.step_id == step_id)
            query = query.where(run_logs.c.step_id.in_(ids))
        elif step_id:
            query = query.where(run_logs.c.step_id == step_id)
        if level and level != "all":
            query = query.where(run_logs.c.level == level)
        query = query.order_by(run_logs.c.seq).offset(offset).limit(limit)
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            {
                "seq": row["seq"],
                "timestamp": iso(row["ts"]),
                "level": row["level"],
                "message": row["message"],
                "stream": row["stream"],
                "lineNo": row["line_no"],
                "jobId": row["job_id"],
                "stepId": row["step_id"],
            }
            for row in rows
        ]
