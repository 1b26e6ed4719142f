"""What every adapter of a token promises (reference §D.2), as typing Protocols.

Code that uses an adapter depends on these, never on a built-in class, so that a
configuration change (memory → redis, sqlite → duckdb) changes no caller. Protocols are
structural: an adapter does not inherit from them, it only has the methods.

Methods are async except the logger's (logging must be usable anywhere) and the event
bus's `subscribe`/unsubscribe (registration is bookkeeping, not I/O). Methods the
reference marks optional (`zadd`, `read_stream`, `chat_with_tools`…) are left out: a
caller that wants one checks with `getattr`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

# --- cache ------------------------------------------------------------------------------


@runtime_checkable
class Cache(Protocol):
    """JSON values under string keys, each with an optional TTL in milliseconds."""

    async def get(self, key: str) -> Any | None:
        """The value (a fresh copy), or None when absent or expired."""
        ...

    async def set(self, key: str, value: Any, ttl_ms: int | None = None) -> None:
        """Store a JSON-serialisable value; `ttl_ms` None means the adapter's default."""
        ...

    async def delete(self, key: str) -> bool:
        """True when the key existed."""
        ...

    async def clear(self, pattern: str | None = None) -> int:
        """Remove the keys matching a glob (`plugin:x:*`), or every key; returns how many."""
        ...


# --- storage ----------------------------------------------------------------------------


@runtime_checkable
class Storage(Protocol):
    """Bytes under relative, `/`-separated paths (`reports/2026/01.json`)."""

    async def read(self, path: str) -> bytes | None:
        """The content, or None when there is no such file."""
        ...

    async def write(self, path: str, data: bytes) -> None:
        """Create or replace the file; readers see the old or the new content, never half."""
        ...

    async def delete(self, path: str) -> bool:
        """True when a file was removed."""
        ...

    async def list(self, prefix: str = "") -> list[str]:
        """Paths of the files whose path starts with `prefix`, sorted."""
        ...

    async def exists(self, path: str) -> bool: ...


# --- event bus --------------------------------------------------------------------------

EventHandler = Callable[[str, Any], Awaitable[None] | None]
"""`handler(topic, event)`; async or plain. Its errors are logged, never propagated."""

Unsubscribe = Callable[[], None]


@runtime_checkable
class EventBus(Protocol):
    async def publish(self, topic: str, event: Any) -> None:
        """Deliver `event` to every subscriber whose topic or glob matches `topic`."""
        ...

    def subscribe(self, topic: str, handler: EventHandler) -> Unsubscribe:
        """`topic` is an exact name (`workflow.run.completed`) or a glob (`workflow.*`).
        Returns a function that removes this subscription (calling it twice is fine)."""
        ...


# --- logger -----------------------------------------------------------------------------


@runtime_checkable
class Logger(Protocol):
    """Structured logging: a message plus fields (`plugin_id=…`, `run_id=…`). Sync."""

    def debug(self, message: str, **fields: Any) -> None: ...

    def info(self, message: str, **fields: Any) -> None: ...

    def warn(self, message: str, **fields: Any) -> None: ...

    def error(self, message: str, exc: BaseException | None = None, **fields: Any) -> None: ...

    def child(self, **fields: Any) -> Logger:
        """A logger that adds `fields` to every record (on top of this one's)."""
        ...


# --- analytics --------------------------------------------------------------------------

ActorType = Literal["user", "agent", "ci"]


class Actor(TypedDict, total=False):
    type: ActorType
    id: str
    name: str


class EventSource(TypedDict):
    product: str
    version: str


class AnalyticsEvent(TypedDict):
    """One event in the `kb.v1` shape, as `get_events` returns it (JSON-ready)."""

    id: str
    schema: str  # "kb.v1"
    type: str
    ts: str  # ISO-8601 UTC with Z: when it happened
    ingestTs: str  # when the platform received it
    source: EventSource
    runId: str | None
    actor: Actor | None
    ctx: dict[str, Any] | None
    payload: dict[str, Any] | None


class EventPage(TypedDict):
    events: list[AnalyticsEvent]
    total: int
    hasMore: bool


class EventStats(TypedDict):
    totalEvents: int
    byType: dict[str, int]
    bySource: dict[str, int]  # source.product → count
    byActor: dict[str, int]  # actor.id → count


MAX_EVENT_LIMIT = 500


@dataclass(frozen=True)
class EventFilters:
    """What `get_events`/`get_stats` select. Bounds are inclusive; `limit` is clamped to
    1..500 and `offset` to ≥ 0 (validation with messages belongs to the HTTP layer)."""

    namespace_id: str | None = "default"  # None: every namespace (admin views)
    type: str | Sequence[str] | None = None  # one type or any of several
    source: str | None = None  # source.product
    actor: str | None = None  # actor.id
    run_id: str | None = None
    from_ts: datetime | None = None
    to_ts: datetime | None = None
    limit: int = 50
    offset: int = 0
    types: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        wanted = (self.type,) if isinstance(self.type, str) else tuple(self.type or ())
        object.__setattr__(self, "types", wanted)
        object.__setattr__(self, "limit", max(1, min(int(self.limit), MAX_EVENT_LIMIT)))
        object.__setattr__(self, "offset", max(0, int(self.offset)))


@runtime_checkable
class Analytics(Protocol):
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
        """Record an event. Never raises: a bad or unwritable event is dropped with a
        warning in the log, because analytics must never break the caller."""
        ...

    async def flush(self) -> None:
        """Write what is buffered now. Never raises."""
        ...

    async def get_events(self, filters: EventFilters | None = None) -> EventPage:
        """Newest first."""
        ...

    async def get_stats(self, filters: EventFilters | None = None) -> EventStats:
        """Counts over the events the filters select (limit/offset ignored)."""
        ...


# --- LLM, embeddings, vector store: interfaces only (no built-in yet) -------------------


class LLMOptions(TypedDict, total=False):
    model: str
    temperature: float
    max_tokens: int
    stop: list[str]
    system_prompt: str
    metadata: dict[str, Any]  # tier, provider, resource, cache_decision_trace
    execution: dict[str, Any]  # cache {mode, scope, ttlSec, key}, stream {mode, …}


class LLMUsage(TypedDict, total=False):
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    billable_prompt_tokens: int


@dataclass
class LLMResponse:
    content: str
    model: str
    usage: LLMUsage = field(default_factory=lambda: LLMUsage())


@runtime_checkable
class LLM(Protocol):
    """Optional extras, looked up with getattr: `get_protocol_capabilities()` (absent:
    cache off, stream on) and `chat_with_tools(messages, opts)` (no fallback)."""

    async def complete(self, prompt: str, opts: LLMOptions | None = None) -> LLMResponse: ...

    def stream(self, prompt: str, opts: LLMOptions | None = None) -> AsyncIterator[str]: ...


@runtime_checkable
class Embeddings(Protocol):
    dimensions: int

    async def embed(self, text: str) -> list[float]: ...

    async def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        """Same order as `texts`; all or nothing."""
        ...

    def get_dimensions(self) -> int:
        """The length of every vector this adapter returns (= `dimensions`)."""
        ...


class VectorRecord(TypedDict, total=False):
    id: str  # required
    vector: list[float]  # required
    metadata: dict[str, Any]


class VectorFilter(TypedDict):
    """`field` is a metadata key (a dotted path reaches into nested objects). `ne` and
    `nin` also select records that lack the field; the others need it."""

    field: str
    operator: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]
    value: Any


class VectorMatch(TypedDict):
    id: str
    score: float  # 0..1, best first
    metadata: dict[str, Any]


@runtime_checkable
class VectorStore(Protocol):
    """Records live in collections, and collections in namespaces (tenants): a call sees
    only its own `namespace`/`collection` pair. Optional extras, looked up with getattr:
    `get(ids, *, namespace, collection) -> list[VectorRecord]` and
    `drop_collection(*, namespace, collection) -> bool`."""

    async def search(
        self,
        vector: Sequence[float],
        limit: int,
        filter: VectorFilter | Sequence[VectorFilter] | None = None,
        *,
        namespace: str = "default",
        collection: str = "default",
    ) -> list[VectorMatch]:
        """`filter`: one condition or a list of them, all of which must hold. A
        collection that does not exist gives []."""
        ...

    async def upsert(
        self,
        records: Sequence[VectorRecord],
        *,
        namespace: str = "default",
        collection: str = "default",
    ) -> None:
        """Insert or replace by `id`; the collection is created by the first upsert."""
        ...

    async def delete(
        self, ids: Sequence[str], *, namespace: str = "default", collection: str = "default"
    ) -> None: ...

    async def count(self, *, namespace: str = "default", collection: str = "default") -> int: ...
