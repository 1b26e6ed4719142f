"""The log sink behind /api/v1/logs: loguru records → the `log_records` table, and a ring
buffer of recent records for live subscribers (GET /api/v1/logs/stream).

`LogStore` is a component (started right after the store, stopped right before it). At
start it adds one loguru sink at `observability.logPersistLevel` (INFO by default, so
DEBUG stays out). The sink runs in whatever thread logged, so it only does cheap work:
it turns the record into a row (ULID-like id, UTC time, level, message with secrets
redacted, module, plugin, request/trace/execution ids, namespace, the other bound fields
as JSON), appends it to the ring buffer and to a bounded list of rows to write, and hands
it to subscribers on the event loop. A background task (kblabs.store.buffered_writer)
writes the list in batches (one transaction per `batch_size` rows) every
`flush_interval_s` or as soon as a batch is full, through the store's async engine, so
no request ever waits for it. While the database is unreachable rows stay in the list;
beyond `max_pending` new rows are dropped and counted. Reads flush first, so a caller
finds the lines its own request wrote.

What is never persisted: records logged while this sink writes (its own warnings) and
SQLAlchemy/driver records (with `store.echo` they would describe our own inserts: an
endless loop). Records older than `observability.logRetentionDays` are deleted hourly.

Several apps in one process (tests) each add their own sink: each stores every record
of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import threading
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loguru import logger
from sqlalchemy import ColumnElement, func, or_, select

from kblabs.config import Settings
from kblabs.observability import context
from kblabs.observability.logging import redact_text
from kblabs.store import Store
from kblabs.store.buffered_writer import BufferedTableWriter, WriterTexts, to_utc
from kblabs.store.tables import log_records as table

if TYPE_CHECKING:
    from loguru import Message

# loguru's level numbers; `warn`/`fatal` are the original's names for warning/critical
LEVELS = {
    "trace": 5,
    "debug": 10,
    "info": 20,
    "success": 25,
    "warning": 30,
    "error": 40,
    "critical": 50,
}
LEVEL_ALIASES = {"warn": "warning", "fatal": "critical"}

MAX_MESSAGE = 16_000  # characters kept of a message
MAX_FIELDS_JSON = 16_000  # characters of bound fields (JSON) kept; more is cut to a preview
MAX_ID = 128
MAX_RELATED = 500
SUBSCRIBER_QUEUE = 1000

# bound fields with a column of their own (the first present wins)
PLUGIN_KEYS = ("plugin", "pluginId")
EXECUTION_KEYS = ("executionId", "execution_id", "runId", "run_id")
NAMESPACE_KEYS = ("namespaceId", "tenantId", "namespace_id", "tenant_id", "tenant")
OWN_KEYS = frozenset(
    {"module", "requestId", "traceId", *PLUGIN_KEYS, *EXECUTION_KEYS, *NAMESPACE_KEYS}
)
# never persisted: their records describe the writes this sink makes
SKIPPED_MODULES = ("sqlalchemy", "aiosqlite", "asyncpg")

_writing: ContextVar[bool] = ContextVar("kb_log_store_writing", default=False)


def level_number(name: str) -> int | None:
    lowered = name.strip().lower()
    return LEVELS.get(LEVEL_ALIASES.get(lowered, lowered))


# --- ids -------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits → two characters
_RANDOM_MASK = (1 << 80) - 1


def _base32(value: int, pairs: int) -> str:
    """`value` as 2 * `pairs` Crockford characters, most significant first."""
    chunks = []
    for _ in range(pairs):
        chunks.append(_PAIRS[value & 1023])
        value >>= 10
    return "".join(reversed(chunks))


class UlidFactory:
    """26-character ULIDs (48-bit milliseconds + 80 random bits, Crockford base32),
    monotonic within the process: ids sort in the order they were made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0
        self._prefix = ""

    def new(self, ms: int) -> str:
        with self._lock:
            if ms <= self._last_ms:
                random = (self._last_random + 1) & _RANDOM_MASK
                if random == 0:  # 2**80 ids in one millisecond: borrow the next one
                    self._last_ms += 1
                    self._prefix = _base32(self._last_ms, 5)
            else:
                random = secrets.randbits(80)
                self._last_ms = ms
                self._prefix = _base32(ms, 5)  # 48 bits in 10 characters (2 zero bits)
            self._last_random = random
            prefix = self._prefix
        return prefix + _base32(random, 8)


new_ulid = UlidFactory().new


# --- queries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogQuery:
    """What GET /api/v1/logs selects. Bounds are inclusive."""

    namespace_id: str | None = None  # None: every record (admins)
    from_ts: datetime | None = None
    to_ts: datetime | None = None
    min_level: int | None = None  # this level or worse
    levels: tuple[int, ...] = ()  # exactly these levels
    plugin: str | None = None
    execution_id: str | None = None
    trace_id: str | None = None
    request_id: str | None = None
    search: str | None = None  # case-insensitive substring of the message
    limit: int = 100
    offset: int = 0


def conditions(query: LogQuery) -> list[ColumnElement[bool]]:
    c = table.c
    where: list[ColumnElement[bool]] = []
    if query.namespace_id is not None:
        where.append(c.namespace_id == query.namespace_id)
    if query.from_ts is not None:
        where.append(c.ts >= to_utc(query.from_ts))
    if query.to_ts is not None:
        where.append(c.ts <= to_utc(query.to_ts))
    if query.min_level is not None:
        where.append(c.level_no >= query.min_level)
    if query.levels:
        where.append(c.level_no.in_(query.levels))
    for column, value in (
        (c.plugin, query.plugin),
        (c.execution_id, query.execution_id),
        (c.trace_id, query.trace_id),
        (c.request_id, query.request_id),
    ):
        if value is not None:
            where.append(column == value)
    if query.search:
        where.append(c.message.icontains(query.search, autoescape=True))
    return where


def to_api(row: Any) -> dict[str, Any]:
    """A stored (or buffered) row as the API returns it."""
    return {
        "id": row["id"],
        "time": _iso(row["ts"]),
        "level": row["level"],
        "msg": row["message"],
        "module": row["module"],
        "plugin": row["plugin"],
        "requestId": row["request_id"],
        "traceId": row["trace_id"],
        "executionId": row["execution_id"],
        "namespaceId": row["namespace_id"],
        "fields": row["fields"] or {},
    }


# --- live subscribers ------------------------------------------------------------------


@dataclass(eq=False)
class Subscriber:
    min_level: int | None = None
    levels: frozenset[int] = frozenset()
    plugin: str | None = None
    namespace_id: str | None = None  # None: every record
    queue: asyncio.Queue[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE)
    )
    dropped: int = 0

    def accepts(self, row: dict[str, Any]) -> bool:
        if self.min_level is not None and row["level_no"] < self.min_level:
            return False
        if self.levels and row["level_no"] not in self.levels:
            return False
        if self.plugin is not None and row["plugin"] != self.plugin:
            return False
        return self.namespace_id is None or row["namespace_id"] == self.namespace_id


# --- the component ---------------------------------------------------------------------


class LogStore(BufferedTableWriter):
    name = "log-store"
    table = table
    texts = WriterTexts(
        "log store",
        "records",
        writing_again="writing log records again",
        dropped_while_full="{} records were dropped (buffer full)",
    )

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        flush_interval_s: float = 1.0,
        batch_size: int = 500,
        max_pending: int = 10_000,
    ) -> None:
        observability = settings.observability
        super().__init__(
            store,
            flush_interval_s=flush_interval_s,
            chunk_size=batch_size,
            max_pending=max_pending,
            retention_days=observability.log_retention_days,
        )
        self.persist = observability.log_persist_level != "off"
        self.capture_level = (
            LEVELS[observability.log_persist_level] if self.persist else LEVELS["info"]
        )
        size = observability.log_buffer_size
        self.ring: deque[dict[str, Any]] | None = deque(maxlen=size) if size else None
        self._ring_lock = threading.Lock()  # the sink may run in any thread
        self.batch_size = batch_size  # a full batch wakes the writer
        self._handler_id: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self.subscribers: set[Subscriber] = set()
        self.draining = asyncio.Event()

    @property
    def streaming(self) -> bool:
        return self.ring is not None

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.draining.clear()
        if self.persist or self.ring is not None:
            self._handler_id = logger.add(
                self._sink,
                level=self.capture_level,
                format="{message}",
                backtrace=False,
                diagnose=False,
                catch=True,
            )
        if self.persist:
            self._start_writer("log-store")

    async def stop(self) -> None:
        if self._handler_id is not None:
            with contextlib.suppress(ValueError):  # removed elsewhere (logger.remove())
                logger.remove(self._handler_id)
            self._handler_id = None
        await self.drain()
        if unwritten := await self._stop_writer():
            logger.warning(
                "log store: {} records could not be written before shutdown: {}",
                unwritten,
                self.last_error,
            )

    async def drain(self) -> None:
        """Shutdown began: live streams end now instead of holding the drain."""
        self.draining.set()
        for subscriber in list(self.subscribers):
            self._offer(subscriber, None)

    def health(self) -> tuple[str, str]:
        if self.last_error:
            return "degraded", (
                f"log records cannot be written ({len(self._pending)} waiting): {self.last_error}"
            )
        return "ok", "persisting log records" if self.persist else "log persistence off"

    def status(self) -> dict[str, Any]:
        return {
            "persistLevel": _level_name(self.capture_level) if self.persist else "off",
            "pending": len(self._pending),
            "written": self.written,
            "dropped": self.dropped,
            "failedFlushes": self.failed_flushes,
            "lastError": self.last_error,
            "subscribers": len(self.subscribers),
            "buffered": len(self.ring) if self.ring is not None else None,
        }

    # --- the sink --------------------------------------------------------------------

    def _sink(self, message: Message) -> None:
        record = message.record
        extra = record["extra"]
        module = str(extra.get("module") or record["name"] or "")
        if _writing.get() or module.startswith(SKIPPED_MODULES):
            return
        ts = record["time"].astimezone(UTC)
        fields = {k: v for k, v in extra.items() if k not in OWN_KEYS}
        if record["exception"] is not None:
            fields["exception"] = _exception_text(record["exception"])
        row = {
            "id": new_ulid(int(ts.timestamp() * 1000)),
            "ts": ts,
            "level": record["level"].name.lower(),
            "level_no": record["level"].no,
            "message": _redact(record["message"])[:MAX_MESSAGE],
            "module": module[:256] or None,
            "plugin": _first(extra, PLUGIN_KEYS, 256),
            "request_id": _first(extra, ("requestId",), MAX_ID) or _id(context.request_id.get()),
            "trace_id": _first(extra, ("traceId",), MAX_ID) or _id(context.trace_id.get()),
            "execution_id": _first(extra, EXECUTION_KEYS, MAX_ID),
            "namespace_id": _first(extra, NAMESPACE_KEYS, 64),
            "fields": _fields(fields) if fields else None,
        }
        if self.ring is not None:
            with self._ring_lock:
                self.ring.append(row)
        # a full buffer drops the row (counted); exactly a batch waiting wakes the writer
        wake = self.persist and self._enqueue(row) == self.batch_size
        if self.subscribers or wake:
            self._on_loop(self._deliver, row, wake)

    def _on_loop(self, fn: Any, *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
            return
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(fn, *args)

    def _deliver(self, row: dict[str, Any], wake: bool) -> None:
        if wake:
            self._wake.set()
        for subscriber in list(self.subscribers):
            if subscriber.accepts(row):
                self._offer(subscriber, row)

    @staticmethod
    def _offer(subscriber: Subscriber, row: dict[str, Any] | None) -> None:
        try:
            subscriber.queue.put_nowait(row)
        except asyncio.QueueFull:  # a slow reader loses lines, never slows the sink
            subscriber.dropped += 1

    # --- live subscribers ------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Subscriber:
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def recent(self, subscriber: Subscriber, count: int) -> list[dict[str, Any]]:
        """The last `count` buffered records `subscriber` accepts, oldest first."""
        if self.ring is None or count <= 0:
            return []
        with self._ring_lock:
            rows = list(self.ring)
        return [row for row in rows if subscriber.accepts(row)][-count:]

    # --- writing ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Write every waiting row now (a batch per transaction). Never raises."""
        if self.persist:
            await super().flush()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        # records logged while we write or purge (a failed write's warning) are not
        # persisted: writing them could log again, without end
        token = _writing.set(True)
        try:
            yield
        finally:
            _writing.reset(token)

    # --- reading ---------------------------------------------------------------------

    async def query(self, query: LogQuery) -> dict[str, Any]:
        """`{logs, total, hasMore}`, newest first."""
        await self.flush()
        where = conditions(query)
        count = select(func.count()).select_from(table).where(*where)
        page = (
            select(table)
            .where(*where)
            .order_by(table.c.id.desc())
            .limit(query.limit)
            .offset(query.offset)
        )
        async with self.store.engine.connect() as connection:
            total = int((await connection.execute(count)).scalar_one())
            rows = (await connection.execute(page)).mappings().all()
        logs = [to_api(row) for row in rows]
        return {"logs": logs, "total": total, "hasMore": query.offset + len(logs) < total}

    async def get(self, record_id: str) -> dict[str, Any] | None:
        await self.flush()
        async with self.store.engine.connect() as connection:
            found = (
                (await connection.execute(select(table).where(table.c.id == record_id)))
                .mappings()
                .first()
            )
        return to_api(found) if found is not None else None

    async def related(
        self, record: dict[str, Any], namespace_id: str | None
    ) -> list[dict[str, Any]]:
        """Records sharing the record's trace id or request id, oldest first (at most
        MAX_RELATED), the record itself included."""
        same: list[ColumnElement[bool]] = []
        if record["traceId"]:
            same.append(table.c.trace_id == record["traceId"])
        if record["requestId"]:
            same.append(table.c.request_id == record["requestId"])
        if not same:
            return [record]
        where = [or_(*same)]
        if namespace_id is not None:
            where.append(table.c.namespace_id == namespace_id)
        page = select(table).where(*where).order_by(table.c.id).limit(MAX_RELATED)
        async with self.store.engine.connect() as connection:
            rows = (await connection.execute(page)).mappings().all()
        return [to_api(row) for row in rows]

    async def stats(self, query: LogQuery) -> dict[str, Any]:
        await self.flush()
        where = conditions(query)
        async with self.store.engine.connect() as connection:
            summary = (
                await connection.execute(
                    select(func.count(), func.min(table.c.ts), func.max(table.c.ts)).where(*where)
                )
            ).one()
            by_level = (
                await connection.execute(
                    select(table.c.level, func.count()).where(*where).group_by(table.c.level)
                )
            ).all()
            by_plugin = (
                await connection.execute(
                    select(table.c.plugin, func.count())
                    .where(*where, table.c.plugin.is_not(None))
                    .group_by(table.c.plugin)
                )
            ).all()
        return {
            "total": int(summary[0]),
            "oldest": _iso(summary[1]) if summary[1] is not None else None,
            "newest": _iso(summary[2]) if summary[2] is not None else None,
            "byLevel": {str(level): int(n) for level, n in by_level},
            "byPlugin": {str(plugin): int(n) for plugin, n in by_plugin},
            "sink": self.status(),
        }


# --- helpers ---------------------------------------------------------------------------


def _first(extra: dict[str, Any], keys: Iterable[str], limit: int) -> str | None:
    for key in keys:
        value = extra.get(key)
        if value is not None and value != "":
            return str(value)[:limit]
    return None


def _id(value: str | None) -> str | None:
    return value[:MAX_ID] if value else None


_SCALARS = (int, bool, type(None))


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return len(value) <= 2000
    if kind is float:
        return math.isfinite(value)
    return kind in _SCALARS


def _redact(text: str) -> str:
    """redact_text, skipped for text that cannot hold what it looks for (most lines)."""
    if "=" in text or "earer" in text or "EARER" in text:
        return redact_text(text)
    return text


def _fields(fields: dict[str, Any]) -> dict[str, Any]:
    """JSON-only, secrets redacted, bounded."""
    if len(fields) <= 32 and all(map(_plain, fields.values())):
        # flat and small (an access line): no JSON round trip
        return {str(k): _redact(v) if type(v) is str else v for k, v in fields.items()}
    text = redact_text(json.dumps(fields, default=str))
    if len(text) > MAX_FIELDS_JSON:
        return {"_truncated": True, "_preview": text[:2000]}
    try:
        value = json.loads(text)
    except ValueError:  # a redaction broke the JSON: keep the text
        return {"_text": text[:2000]}
    return value if isinstance(value, dict) else {"_value": value}


def _exception_text(exception: Any) -> str:
    lines = traceback.format_exception(exception.type, exception.value, exception.traceback)
    return redact_text("".join(lines))[-8000:]


def _level_name(number: int) -> str:
    return next((name for name, no in LEVELS.items() if no == number), str(number))


def _iso(value: datetime) -> str:
    return to_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")
