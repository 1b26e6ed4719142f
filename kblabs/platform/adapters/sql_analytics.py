"""analytics → "sqlite": `kb.v1` events in the platform store's `analytics_events` table.

Despite the upstream name this writes through the Store's engine, so it is SQLite by
default and PostgreSQL when `store.url` points there.

`track` never touches the database: it checks the event, copies it (JSON) and appends
it to an in-memory buffer. A background task writes the buffer in one transaction when
`batchSize` events are waiting or `flushIntervalMs` has passed, and `stop` writes what
is left. `track` never raises: a malformed event, or one that arrives while the buffer
holds `maxBufferSize` events (the database is down), is dropped with a warning. While
writes fail the events stay buffered and the component reports itself degraded.
Reads (`get_events`, `get_stats`) flush first, so a caller sees its own events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from loguru import logger
from pydantic import Field
from sqlalchemy import ColumnElement, func, insert, select
from sqlalchemy.exc import DataError, IntegrityError

import kblabs
from kblabs.observability import context
from kblabs.platform.interfaces import (
    Actor,
    AnalyticsEvent,
    EventFilters,
    EventPage,
    EventSource,
    EventStats,
)
from kblabs.platform.options import AdapterOptions
from kblabs.store import Store
from kblabs.store.tables import analytics_events as events_table

SCHEMA = "kb.v1"
MAX_TYPE_LENGTH = 256  # the column sizes: longer values are refused at `track`
MAX_ID_LENGTH = 64
INSERT_CHUNK = 1000
STOP_TIMEOUT_S = 10.0


class SqlAnalyticsOptions(AdapterOptions):
    batch_size: int = Field(default=100, ge=1)  # write when this many are waiting…
    flush_interval_ms: int = Field(default=1000, ge=10)  # …or this long has passed
    max_buffer_size: int = Field(default=10_000, ge=1)  # beyond this, new events drop
    product: str = Field(default="kblabs", min_length=1)  # source.product by default


class InvalidEvent(ValueError):
    pass


class SqlAnalytics:
    def __init__(self, store: Store, options: SqlAnalyticsOptions | None = None) -> None:
        options = options or SqlAnalyticsOptions()
        self.store = store
        self.batch_size = options.batch_size
        self.flush_interval_s = options.flush_interval_ms / 1000
        self.max_buffer_size = options.max_buffer_size
        self.default_source: EventSource = {
            "product": options.product,
            "version": kblabs.__version__,
        }
        self._buffer: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.last_error: str | None = None  # set while writes fail
        self.written = 0
        self.dropped = 0
        self.failed_flushes = 0
        self._dropped_since_warning = 0

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="analytics-flush")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                # shield: on timeout, cancel it ourselves below (and wait for that)
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
            except TimeoutError:  # a hung write: abandon it, try once more below
                logger.warning("analytics: the flush task did not stop in time")
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        await self.flush()
        if self._buffer:
            logger.error(
                "analytics: {} events could not be written before shutdown and are lost: {}",
                len(self._buffer),
                self.last_error,
            )

    def health(self) -> tuple[str, str]:
        if self.last_error:
            return "degraded", (
                f"analytics cannot write events ({len(self._buffer)} buffered): {self.last_error}"
            )
        return "ok", "analytics writing to the store"

    def stats(self) -> dict[str, int]:
        return {
            "buffered": len(self._buffer),
            "written": self.written,
            "dropped": self.dropped,
            "failedFlushes": self.failed_flushes,
        }

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            if self._stopping:
                return  # stop() writes the rest
            await self.flush()

    # --- writing ---------------------------------------------------------------------

    async def track(
        self,
        type: str,
        payload: dict[str, Any] | None = None,
        *,
        namespace_id: str = "default",
        run_id: str | None = None,
        actor: Actor | None = None,
        ctx: dict[str, Any] | None = None,
        source: EventSource | None = None,
        ts: datetime | None = None,
    ) -> None:
        try:
            row = self._row(type, payload, namespace_id, run_id, actor, ctx, source, ts)
        except Exception as exc:  # never raise into the caller
            self.dropped += 1
            logger.warning("analytics: dropped an invalid {!r} event: {}", type, exc)
            return
        if len(self._buffer) >= self.max_buffer_size:
            self.dropped += 1
            self._dropped_since_warning += 1
            if self._dropped_since_warning == 1:
                logger.warning(
                    "analytics: buffer full ({} events, writes failing: {}); dropping new events",
                    len(self._buffer),
                    self.last_error or "no",
                )
            return
        self._buffer.append(row)
        if len(self._buffer) >= self.batch_size and self.last_error is None:
            self._wake.set()

    def _row(
        self,
        type: str,
        payload: Any,
        namespace_id: str,
        run_id: str | None,
        actor: Any,
        ctx: Any,
        source: Any,
        ts: datetime | None,
    ) -> dict[str, Any]:
        _check_text("type", type, MAX_TYPE_LENGTH)
        _check_text("namespace_id", namespace_id, MAX_ID_LENGTH)
        if run_id is not None:
            _check_text("run_id", run_id, MAX_ID_LENGTH)
        for name, value in (("payload", payload), ("ctx", ctx), ("actor", actor)):
            if value is not None and not isinstance(value, dict):
                raise InvalidEvent(f"{name} must be an object, not {type_name(value)}")
        ctx = dict(ctx or {})
        request_id, trace_id = context.request_id.get(), context.trace_id.get()
        if request_id and "requestId" not in ctx:
            ctx["requestId"] = request_id
        if trace_id and "traceId" not in ctx:
            ctx["traceId"] = trace_id
        now = datetime.now(UTC)
        return {
            "id": str(uuid.uuid4()),
            "type": type,
            "ts": now if ts is None else to_utc(ts),
            "ingest_ts": now,
            "namespace_id": namespace_id,
            "source": _json_copy({**self.default_source, **(source or {})}),
            "run_id": run_id,
            "actor": _json_copy(actor),
            "ctx": _json_copy(ctx) if ctx else None,
            "payload": _json_copy(payload),
        }

    async def flush(self) -> None:
        async with self._lock:
            while self._buffer:
                batch = self._buffer[:INSERT_CHUNK]
                try:
                    written = await self._write(batch)
                except Exception as exc:  # the database is unreachable: keep, retry later
                    self.failed_flushes += 1
                    if self.last_error is None:
                        logger.warning(
                            "analytics: cannot write {} events, keeping them: {}",
                            len(self._buffer),
                            _short(exc),
                        )
                    self.last_error = _short(exc)
                    return
                del self._buffer[: len(batch)]
                self.written += written
            if self.last_error is not None:
                logger.info("analytics: writing events again")
                self.last_error = None
            if self._dropped_since_warning:
                logger.warning(
                    "analytics: {} events were dropped while the buffer was full",
                    self._dropped_since_warning,
                )
                self._dropped_since_warning = 0

    async def _write(self, batch: list[dict[str, Any]]) -> int:
        """Insert the batch in one transaction; returns how many rows were written."""
        try:
            await self._insert(batch)
            return len(batch)
        except (IntegrityError, DataError) as exc:
            # The batch itself is bad: a row the database refuses, or a retry of rows
            # already written. Write row by row and drop the refused ones.
            logger.warning("analytics: batch refused ({}); writing one by one", _short(exc))
        written = 0
        for row in batch:
            try:
                await self._insert([row])
                written += 1
            except (IntegrityError, DataError) as exc:
                self.dropped += 1
                logger.warning(
                    "analytics: dropped event {} ({}): {}", row["id"], row["type"], _short(exc)
                )
        return written

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        async with self.store.engine.begin() as connection:
            await connection.execute(insert(events_table), rows)

    # --- reading ---------------------------------------------------------------------

    async def get_events(self, filters: EventFilters | None = None) -> EventPage:
        filters = filters or EventFilters()
        await self.flush()
        where = _conditions(filters)
        count = select(func.count()).select_from(events_table).where(*where)
        page = (
            select(events_table)
            .where(*where)
            .order_by(events_table.c.ts.desc(), events_table.c.id.desc())
            .limit(filters.limit)
            .offset(filters.offset)
        )
        async with self.store.engine.connect() as connection:
            total = int((await connection.execute(count)).scalar_one())
            rows = (await connection.execute(page)).mappings().all()
        events = [_event(row) for row in rows]
        return {
            "events": events,
            "total": total,
            "hasMore": filters.offset + len(events) < total,
        }

    async def get_stats(self, filters: EventFilters | None = None) -> EventStats:
        filters = filters or EventFilters()
        await self.flush()
        where = _conditions(filters)
        keys = {
            "byType": events_table.c.type,
            "bySource": events_table.c.source["product"].as_string(),
            "byActor": events_table.c.actor["id"].as_string(),
        }
        stats: dict[str, Any] = {}
        async with self.store.engine.connect() as connection:
            count = select(func.count()).select_from(events_table).where(*where)
            stats["totalEvents"] = int((await connection.execute(count)).scalar_one())
            for name, key in keys.items():
                # grouped through a subquery: the same JSON expression twice would be two
                # different bound parameters, which PostgreSQL does not accept in GROUP BY
                keyed = select(key.label("key")).where(*where).subquery()
                grouped = (
                    select(keyed.c.key, func.count())
                    .where(keyed.c.key.is_not(None))
                    .group_by(keyed.c.key)
                )
                result = await connection.execute(grouped)
                stats[name] = {str(k): int(n) for k, n in result.all()}
        return {
            "totalEvents": stats["totalEvents"],
            "byType": stats["byType"],
            "bySource": stats["bySource"],
            "byActor": stats["byActor"],
        }


def _conditions(filters: EventFilters) -> list[ColumnElement[bool]]:
    table = events_table.c
    where: list[ColumnElement[bool]] = []
    if filters.namespace_id is not None:
        where.append(table.namespace_id == filters.namespace_id)
    if filters.types:
        where.append(table.type.in_(filters.types))
    if filters.source is not None:
        where.append(table.source["product"].as_string() == filters.source)
    if filters.actor is not None:
        where.append(table.actor["id"].as_string() == filters.actor)
    if filters.run_id is not None:
        where.append(table.run_id == filters.run_id)
    if filters.from_ts is not None:
        where.append(table.ts >= to_utc(filters.from_ts))
    if filters.to_ts is not None:
        where.append(table.ts <= to_utc(filters.to_ts))
    return where


def _event(row: Any) -> AnalyticsEvent:
    return {
        "id": row["id"],
        "schema": SCHEMA,
        "type": row["type"],
        "ts": iso(row["ts"]),
        "ingestTs": iso(row["ingest_ts"]),
        "source": row["source"],
        "runId": row["run_id"],
        "actor": row["actor"],
        "ctx": row["ctx"],
        "payload": row["payload"],
    }


def to_utc(value: datetime) -> datetime:
    """Aware UTC. A naive datetime is taken to be UTC already (SQLite returns those)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso(value: datetime) -> str:
    return to_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def type_name(value: Any) -> str:
    return type(value).__name__


def _check_text(name: str, value: Any, max_length: int) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{name} must be a non-empty string")
    if len(value) > max_length or "\x00" in value:
        raise InvalidEvent(f"{name} must be at most {max_length} characters, without NUL")


def _json_copy(value: Any) -> Any:
    """A JSON-only deep copy (what the database will store): later changes by the caller
    do not reach the buffer, and odd values (datetimes, UUIDs) become strings now."""
    if value is None:
        return None
    return json.loads(json.dumps(value, default=str, allow_nan=False))


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
