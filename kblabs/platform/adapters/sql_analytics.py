"""analytics → "sqlite": `kb.v1` events in the platform store's `analytics_events` table.

Despite the upstream name this writes through the Store's engine, so it is SQLite by
default and PostgreSQL when `store.url` points there.

`track` never touches the database: it checks the event, copies it (JSON) and appends
it to an in-memory buffer. A background task (kblabs.store.buffered_writer) writes the
buffer, a transaction per 1000 events, when `batchSize` events are waiting or
`flushIntervalMs` has passed, and `stop` writes what is left. `track` never raises: a
malformed event, or one that arrives while the buffer holds `maxBufferSize` events (the
database is down), is dropped with a warning. While writes fail the events stay
buffered and the component reports itself degraded; an event the database refuses is
dropped with a warning and does not hold back the others.
Reads (`get_events`, `get_stats`) flush first, so a caller sees its own events.

`aggregate` groups one adapter's events (a type prefix) by period (hour, day, week,
month: computed in SQL on SQLite and PostgreSQL), type and payload keys, with sums of
numeric payload fields; kblabs.platform.usage turns those rows into the usage and
daily-stats answers (`get_usage`, `get_daily_stats`). Events older than
`observability.analyticsRetentionDays` are deleted by the flush task, once an hour.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger
from pydantic import Field
from sqlalchemy import ColumnElement, func, select

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
from kblabs.store.buffered_writer import (
    BufferedTableWriter,
    Row,
    WriterTexts,
    short_error,
    to_utc,
)
from kblabs.store.tables import analytics_events as events_table

SCHEMA = "kb.v1"
MAX_TYPE_LENGTH = 256  # the column sizes: longer values are refused at `track`
MAX_ID_LENGTH = 64
INSERT_CHUNK = 1000
GROUP_BY = ("hour", "day", "week", "month")
MAX_AGGREGATE_ROWS = 10_000
_INF = float("inf")
_PATH_PART = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


class SqlAnalyticsOptions(AdapterOptions):
    batch_size: int = Field(default=100, ge=1)  # write when this many are waiting…
    flush_interval_ms: int = Field(default=1000, ge=10)  # …or this long has passed
    max_buffer_size: int = Field(default=10_000, ge=1)  # beyond this, new events drop
    product: str = Field(default="kblabs", min_length=1)  # source.product by default


class InvalidEvent(ValueError):
    pass


class SqlAnalytics(BufferedTableWriter):
    table = events_table
    texts = WriterTexts("analytics", "events", stop_timed_out=True)

    def __init__(self, store: Store, options: SqlAnalyticsOptions | None = None) -> None:
        options = options or SqlAnalyticsOptions()
        observability = getattr(getattr(store, "settings", None), "observability", None)
        super().__init__(
            store,
            flush_interval_s=options.flush_interval_ms / 1000,
            chunk_size=INSERT_CHUNK,
            max_pending=options.max_buffer_size,
            retention_days=getattr(observability, "analytics_retention_days", None),
        )
        self.batch_size = options.batch_size  # this many waiting wake the writer
        self.default_source: EventSource = {
            "product": options.product,
            "version": kblabs.__version__,
        }

    @property
    def max_buffer_size(self) -> int:
        return self.max_pending

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._start_writer("analytics-flush")

    async def stop(self) -> None:
        if lost := await self._stop_writer():
            logger.error(
                "analytics: {} events could not be written before shutdown and are lost: {}",
                lost,
                self.last_error,
            )

    def health(self) -> tuple[str, str]:
        if self.last_error:
            return "degraded", (
                f"analytics cannot write events ({len(self._pending)} buffered): {self.last_error}"
            )
        return "ok", "analytics writing to the store"

    def stats(self) -> dict[str, int]:
        return {
            "buffered": len(self._pending),
            "written": self.written,
            "dropped": self.dropped,
            "failedFlushes": self.failed_flushes,
        }

    def buffer_status(self) -> dict[str, Any]:
        """GET /api/v1/analytics/buffer/status: the in-memory write buffer."""
        return {
            "size": len(self._pending),
            "maxSize": self.max_buffer_size,
            "batchSize": self.batch_size,
            "flushIntervalMs": round(self.flush_interval_s * 1000),
            "written": self.written,
            "failedFlushes": self.failed_flushes,
            "writing": self.last_error is None,
            "lastError": self.last_error,
        }

    def dlq_status(self) -> dict[str, Any]:
        """GET /api/v1/analytics/dlq/status. There is no dead-letter queue: an event that
        cannot be kept (invalid, refused by the database, or arriving while the buffer is
        full) is dropped and counted; events whose write failed stay in the buffer."""
        return {
            "size": 0,
            "dropped": self.dropped,
            "retrying": len(self._pending) if self.last_error else 0,
            "lastError": self.last_error,
        }

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
        waiting = self._enqueue(row)
        if waiting is None:  # dropped and counted; said once until the next flush
            if self._dropped_since_warning == 1:
                logger.warning(
                    "analytics: buffer full ({} events, writes failing: {}); dropping new events",
                    len(self._pending),
                    self.last_error or "no",
                )
        elif waiting >= self.batch_size and self.last_error is None:
            self._wake.set()  # while writes fail, the interval paces the retries

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
            "source": (
                dict(self.default_source)
                if source is None
                else _json_copy({**self.default_source, **source})
            ),
            "run_id": run_id,
            "actor": _json_copy(actor),
            "ctx": _json_copy(ctx) if ctx else None,
            "payload": _json_copy(payload),
        }

    def _on_batch_refused(self, exc: Exception) -> None:
        logger.warning("analytics: batch refused ({}); writing one by one", short_error(exc))

    def _on_row_refused(self, row: Row, exc: Exception) -> None:
        logger.warning(
            "analytics: dropped event {} ({}): {}", row["id"], row["type"], short_error(exc)
        )

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

    # --- aggregates (usage, daily stats) ---------------------------------------------

    async def aggregate(self, query: AggregateQuery) -> AggregateResult:
        """Counts and payload sums of the events whose type starts with `query.prefix`,
        grouped by (period, type, *keys) in SQL; at most `query.limit` groups."""
        await self.flush()
        table = events_table.c
        columns: list[Any] = [table.type.label("type")]
        if query.group_by:
            dialect = self.store.engine.dialect.name
            columns.append(period_expression(dialect, query.group_by, table.ts).label("period"))
        columns += [_path_expression(path).label(f"k{i}") for i, path in enumerate(query.keys)]
        columns += [
            table.payload[name].as_float().label(f"v{i}") for i, name in enumerate(query.sums)
        ]
        where = [table.type.startswith(query.prefix, autoescape=True)]
        if query.namespace_id is not None:
            where.append(table.namespace_id == query.namespace_id)
        if query.from_ts is not None:
            where.append(table.ts >= to_utc(query.from_ts))
        if query.to_ts is not None:
            where.append(table.ts <= to_utc(query.to_ts))
        # grouped through a subquery: PostgreSQL wants the GROUP BY expressions to be the
        # selected ones, and the same JSON expression twice has two bound parameters
        rows = select(*columns).where(*where).subquery()
        keys = [rows.c.period] if query.group_by else []
        keys += [rows.c.type, *(rows.c[f"k{i}"] for i in range(len(query.keys)))]
        sums: list[Any] = []
        for i in range(len(query.sums)):
            sums += [func.sum(rows.c[f"v{i}"]), func.count(rows.c[f"v{i}"])]
        grouped = (
            select(*keys, func.count(), *sums)
            .group_by(*keys)
            .order_by(*keys)
            .limit(query.limit + 1)
        )
        async with self.store.engine.connect() as connection:
            found = (await connection.execute(grouped)).all()
        result: list[AggregateRow] = []
        for row in found[: query.limit]:
            values = list(row)
            period = str(values.pop(0)) if query.group_by else None
            type_ = values.pop(0)
            key_values = tuple(_key_text(values.pop(0)) for _ in query.keys)
            count = int(values.pop(0))
            sums_of = {name: float(values[2 * i] or 0.0) for i, name in enumerate(query.sums)}
            counted = {name: int(values[2 * i + 1]) for i, name in enumerate(query.sums)}
            result.append(AggregateRow(period, type_, key_values, count, sums_of, counted))
        return AggregateResult(result, truncated=len(found) > query.limit)

    async def get_usage(
        self,
        adapter: str,
        *,
        namespace_id: str | None = "default",
        from_ts: datetime | None = None,
        to_ts: datetime | None = None,
    ) -> dict[str, Any]:
        """GET /api/v1/adapters/{adapter}/usage (see kblabs.platform.usage.usage)."""
        from kblabs.platform.usage import usage

        return await usage(self, adapter, namespace_id, from_ts, to_ts)

    async def get_daily_stats(
        self,
        adapter: str,
        *,
        namespace_id: str | None = "default",
        from_ts: datetime,
        to_ts: datetime,
        group_by: str = "day",
        breakdown_by: str | None = None,
        metrics: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """GET /api/v1/adapters/{adapter}/daily-stats (kblabs.platform.usage.daily_stats)."""
        from kblabs.platform.usage import daily_stats

        return await daily_stats(
            self,
            adapter,
            namespace_id=namespace_id,
            from_ts=from_ts,
            to_ts=to_ts,
            group_by=group_by,
            breakdown_by=breakdown_by,
            metrics=metrics,
        )


@dataclass(frozen=True)
class AggregateQuery:
    prefix: str  # event types starting with this ("llm.", "cache.")
    namespace_id: str | None = "default"  # None: every namespace
    from_ts: datetime | None = None
    to_ts: datetime | None = None
    group_by: str | None = None  # hour | day | week | month; None: no period
    keys: tuple[tuple[str, ...], ...] = ()  # event paths, checked by `event_path`
    sums: tuple[str, ...] = ()  # numeric payload fields to sum
    limit: int = MAX_AGGREGATE_ROWS


@dataclass(frozen=True)
class AggregateRow:
    period: str | None  # "2026-11-27T13:00:00Z" | "2026-11-27" | week's Monday | "2026-11"
    type: str
    keys: tuple[str | None, ...]
    count: int
    sums: dict[str, float]  # payload field → sum (0 when absent)
    counted: dict[str, int]  # payload field → events that had it (for averages)


@dataclass(frozen=True)
class AggregateResult:
    rows: list[AggregateRow]
    truncated: bool


def event_path(text: str) -> tuple[str, ...]:
    """`payload.model`, `source.product`, `actor.id`, `ctx.requestId`, `type`, `runId` →
    a path for `AggregateQuery.keys`; ValueError for anything else."""
    parts = tuple(text.split("."))
    if parts in (("type",), ("runId",), ("namespace",)):
        return parts
    if len(parts) < 2 or len(parts) > 6 or parts[0] not in ("payload", "ctx", "source", "actor"):
        raise ValueError(
            "must be type, runId, namespace or a dot path into payload, ctx, source or actor "
            "(payload.model)"
        )
    if not all(_PATH_PART.match(part) for part in parts[1:]):
        raise ValueError("path parts may hold letters, digits, _ and - only")
    return parts


def _path_expression(path: tuple[str, ...]) -> Any:
    table = events_table.c
    if path == ("type",):
        return table.type
    if path == ("runId",):
        return table.run_id
    if path == ("namespace",):
        return table.namespace_id
    column = {"payload": table.payload, "ctx": table.ctx, "source": table.source}.get(
        path[0], table.actor
    )
    inner = path[1:]
    return (column[inner[0]] if len(inner) == 1 else column[inner]).as_string()


def _key_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def period_expression(dialect: str, group_by: str, column: Any) -> Any:
    """The period label of `column` (a UTC timestamp) as text, in SQL."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}")
    if dialect == "postgresql":
        utc = func.timezone("UTC", column)
        if group_by == "week":
            return func.to_char(func.date_trunc("week", utc), "YYYY-MM-DD")
        pattern = {"hour": 'YYYY-MM-DD"T"HH24:00:00"Z"', "day": "YYYY-MM-DD", "month": "YYYY-MM"}
        return func.to_char(utc, pattern[group_by])
    if dialect != "sqlite":
        raise ValueError(f"period grouping is not written for {dialect}")
    if group_by == "week":  # the Monday of the (ISO) week
        return func.date(column, "weekday 0", "-6 days")
    pattern = {"hour": "%Y-%m-%dT%H:00:00Z", "day": "%Y-%m-%d", "month": "%Y-%m"}
    return func.strftime(pattern[group_by], column)


def period_label(group_by: str, moment: datetime) -> str:
    """The same label as `period_expression`, computed in Python."""
    moment = to_utc(moment)
    if group_by == "hour":
        return moment.strftime("%Y-%m-%dT%H:00:00Z")
    if group_by == "day":
        return moment.strftime("%Y-%m-%d")
    if group_by == "week":
        return (moment - timedelta(days=moment.weekday())).strftime("%Y-%m-%d")
    if group_by == "month":
        return moment.strftime("%Y-%m")
    raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}")


def period_labels(group_by: str, from_ts: datetime, to_ts: datetime, limit: int) -> list[str]:
    """Every period label from `from_ts` to `to_ts` (inclusive), oldest first; at most
    `limit + 1` (so a caller can tell the range was too long)."""
    step = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}
    labels: list[str] = []
    moment, end = to_utc(from_ts), to_utc(to_ts)
    if group_by == "month":
        year, month = moment.year, moment.month
        while (year, month) <= (end.year, end.month) and len(labels) <= limit:
            labels.append(f"{year:04d}-{month:02d}")
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return labels
    # start at the period's beginning, so stepping never skips the last one
    if group_by == "hour":
        moment = moment.replace(minute=0, second=0, microsecond=0)
    else:
        moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        if group_by == "week":
            moment -= timedelta(days=moment.weekday())
    while moment <= end and len(labels) <= limit:
        labels.append(period_label(group_by, moment))
        moment += step[group_by]
    return labels


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


def iso(value: datetime) -> str:
    return to_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def type_name(value: Any) -> str:
    return type(value).__name__


def _check_text(name: str, value: Any, max_length: int) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{name} must be a non-empty string")
    if len(value) > max_length or "\x00" in value:
        raise InvalidEvent(f"{name} must be at most {max_length} characters, without NUL")


_SCALARS = (str, int, float, bool, type(None))


def _json_copy(value: Any) -> Any:
    """A JSON-only deep copy (what the database will store): later changes by the caller
    do not reach the buffer, and odd values (datetimes, UUIDs) become strings now."""
    if value is None:
        return None
    if type(value) is dict and all(
        type(k) is str and type(v) in _SCALARS and v == v and v not in (_INF, -_INF)
        for k, v in value.items()
    ):
        return dict(value)  # flat and plain (usage events): a shallow copy is a deep one
    return json.loads(json.dumps(value, default=str, allow_nan=False))
