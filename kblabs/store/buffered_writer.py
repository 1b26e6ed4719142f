"""Rows kept in memory and written to a table in the background: the machinery of the
log store (kblabs.observability.log_store) and of SQL analytics
(kblabs.platform.adapters.sql_analytics).

A component subclasses `BufferedTableWriter`, names its `table` (it needs `id` and `ts`
columns) and its log `texts`, and hands rows to `_enqueue`, which never waits for the
database. A background task (`_start_writer`) writes them every `flush_interval_s`, or
sooner when woken (`_wake`), and once an hour deletes rows older than `retention_days`.

What it guarantees:
- Nothing is lost while the database is down and the buffer has room. A write that
  fails leaves its rows at the head of the buffer, in order, for the next flush. The
  first failure logs one warning and sets `last_error` (the component reports itself
  degraded); the first flush that works again logs an info line and clears it.
- A bad row never blocks the others. When the database refuses a batch (IntegrityError,
  DataError) it is written row by row, and only the refused rows are dropped and counted.
- Bounded memory. Beyond `max_pending` waiting rows new ones are dropped and counted; the
  next flush that works logs how many.
- Rows may be enqueued from any thread (a loguru sink runs in the thread that logged):
  a threading lock guards the list and an asyncio lock lets one flush at a time take rows
  from its head while others append at its tail.
- `_stop_writer` waits for the task (and cancels a write hung for STOP_TIMEOUT_S), then
  writes what is left.

Counters, read by status endpoints: `written`, `dropped`, `failed_flushes`, `purged`;
`last_error` while writes fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from loguru import logger
from sqlalchemy import Table, delete, insert, select
from sqlalchemy.exc import DataError, IntegrityError

if TYPE_CHECKING:
    from kblabs.store.service import Store

STOP_TIMEOUT_S = 10.0
PURGE_INTERVAL_S = 3600.0  # how often the retention pass runs
PURGE_CHUNK = 5000  # rows per delete transaction: short write locks on SQLite
# the database refuses these rows (a bad value, a duplicate id), as opposed to being down
REFUSED = (IntegrityError, DataError)

Row = dict[str, Any]


class WriterTexts:
    """What the writer logs, in the component's words: every line starts `label: ` and
    calls the rows `noun`. The `{}` are filled by the writer, in order."""

    def __init__(
        self,
        label: str,  # "analytics"
        noun: str,  # what the rows are to a reader: "events", "records"
        *,
        writing_again: str | None = None,  # instead of "writing <noun> again"
        dropped_while_full: str | None = None,  # instead of "{} <noun> were dropped while…"
        stop_timed_out: bool = False,  # say so when stop has to cancel the task
    ) -> None:
        self.cannot_write = f"{label}: cannot write {{}} {noun}, keeping them: {{}}"
        self.writing_again = f"{label}: {writing_again or f'writing {noun} again'}"
        dropped = dropped_while_full or f"{{}} {noun} were dropped while the buffer was full"
        self.dropped_while_full = f"{label}: {dropped}"
        self.retention_failed = f"{label}: retention pass failed: {{}}"
        self.purged = f"{label}: deleted {{}} {noun} older than {{}} days"
        self.stop_timed_out = (
            f"{label}: the flush task did not stop in time" if stop_timed_out else None
        )


class BufferedTableWriter:
    table: ClassVar[Table]
    texts: ClassVar[WriterTexts]
    purge_chunk: ClassVar[int] = PURGE_CHUNK

    def __init__(
        self,
        store: Store,
        *,
        flush_interval_s: float,
        chunk_size: int,  # rows per insert transaction
        max_pending: int,
        retention_days: int | None,  # None: rows are kept for ever
    ) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.chunk_size = chunk_size
        self.max_pending = max_pending
        self.retention_days = retention_days
        self.written = 0
        self.dropped = 0
        self.failed_flushes = 0
        self.purged = 0
        self.last_error: str | None = None  # set while writes fail
        self._pending: list[Row] = []
        self._dropped_since_warning = 0
        self._rows_lock = threading.Lock()  # _enqueue may run in any thread
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._next_purge = 0.0  # monotonic time of the next retention pass (0: soon)

    # --- hooks for the component -----------------------------------------------------

    def _guard(self) -> AbstractContextManager[None]:
        """Held around each write and retention pass (the log store uses it to leave out
        the records its own writes log)."""
        return contextlib.nullcontext()

    def _on_batch_refused(self, exc: Exception) -> None:
        """The database refused a batch; it is about to be written row by row."""

    def _on_row_refused(self, row: Row, exc: Exception) -> None:
        """The database refused `row`; it is dropped (and already counted)."""

    # --- buffering -------------------------------------------------------------------

    def _enqueue(self, row: Row) -> int | None:
        """Keep `row` for the next flush: how many rows wait now, or None when the
        buffer is full and it was dropped."""
        with self._rows_lock:
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                self._dropped_since_warning += 1
                return None
            self._pending.append(row)
            return len(self._pending)

    # --- the background task ---------------------------------------------------------

    def _start_writer(self, name: str) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=name)

    async def _stop_writer(self) -> int:
        """End the task and write the rest; returns how many rows could not be written."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._end_task(self._task)
            self._task = None
        await self.flush()
        return len(self._pending)

    async def _end_task(self, task: asyncio.Task[None]) -> None:
        try:
            # shield: on timeout, cancel it ourselves below (and wait for that)
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
        except TimeoutError:  # a hung write: abandon it, the last flush tries once more
            if self.texts.stop_timed_out:
                logger.warning(self.texts.stop_timed_out)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            if self._stopping:
                return  # _stop_writer writes the rest
            await self.flush()
            if self.retention_days and time.monotonic() >= self._next_purge:
                self._next_purge = time.monotonic() + PURGE_INTERVAL_S
                await self._purge(self.retention_days)

    # --- writing ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Write every waiting row now, `chunk_size` per transaction. Never raises."""
        async with self._flush_lock:
            while batch := self._head():
                with self._guard():
                    try:
                        written = await self._write(batch)
                    except Exception as exc:  # the database is unreachable: keep, retry later
                        self._keep(exc)
                        return
                # only a flush takes rows, and one at a time: the head is still `batch`
                with self._rows_lock:
                    del self._pending[: len(batch)]
                self.written += written
            self._report_recovery()

    def _head(self) -> list[Row]:
        with self._rows_lock:
            return self._pending[: self.chunk_size]

    def _keep(self, exc: Exception) -> None:
        self.failed_flushes += 1
        if self.last_error is None:  # one warning per outage, not one per flush
            logger.warning(self.texts.cannot_write, len(self._pending), short_error(exc))
        self.last_error = short_error(exc)

    def _report_recovery(self) -> None:
        if self.last_error is not None:
            self.last_error = None
            logger.info(self.texts.writing_again)
        # reset before logging: the log store may drop the warning itself, counted anew
        with self._rows_lock:
            dropped, self._dropped_since_warning = self._dropped_since_warning, 0
        if dropped:
            logger.warning(self.texts.dropped_while_full, dropped)

    async def _write(self, batch: list[Row]) -> int:
        """Insert the batch in one transaction; returns how many rows were written."""
        try:
            await self._insert(batch)
            return len(batch)
        except REFUSED as exc:
            # a row the database refuses, or rows a retried batch already wrote
            self._on_batch_refused(exc)
        written = 0
        for row in batch:
            try:
                await self._insert([row])
                written += 1
            except REFUSED as exc:
                with self._rows_lock:  # _enqueue counts drops from other threads
                    self.dropped += 1
                self._on_row_refused(row, exc)
        return written

    async def _insert(self, rows: list[Row]) -> None:
        async with self.store.engine.begin() as connection:
            await connection.execute(insert(self.table), rows)

    # --- retention -------------------------------------------------------------------

    async def _purge(self, days: int) -> None:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        with self._guard():
            try:
                deleted = await self.purge_older_than(cutoff)
            except Exception as exc:  # retention waits for the next pass
                logger.warning(self.texts.retention_failed, short_error(exc))
                return
        if deleted:
            logger.info(self.texts.purged, deleted, days)

    async def purge_older_than(self, cutoff: datetime) -> int:
        """Delete rows whose `ts` is before `cutoff` (naive: UTC), a chunk per
        transaction; returns how many."""
        cutoff = to_utc(cutoff)
        column = self.table.c
        deleted = 0
        while True:
            chunk = select(column.id).where(column.ts < cutoff).limit(self.purge_chunk)
            async with self.store.engine.begin() as connection:
                result = await connection.execute(
                    delete(self.table).where(column.id.in_(chunk.scalar_subquery()))
                )
            count = max(int(result.rowcount or 0), 0)
            deleted += count
            self.purged += count
            if count < self.purge_chunk:
                return deleted


def short_error(exc: BaseException) -> str:
    """The exception's type and first line (the driver's own message when wrapped)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def to_utc(value: datetime) -> datetime:
    """Aware UTC. A naive datetime is taken to be UTC already (SQLite returns those)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
