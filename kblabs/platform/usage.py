"""Adapter usage: the analytics wrappers that record it, and the summaries that read it.

Writing (reference §D.1 "Analytics also wraps embeddings, vectorStore, cache and
storage"): `AdapterRegistry.start()` hands each started cache, storage, embeddings and
vector store adapter to `track_usage`, which puts a thin proxy in front of it when an
analytics adapter is configured. The proxy forwards every call (anything it does not
know, `stats`, `health`, `stop`, `drop_collection`, `get`…, goes straight through
`__getattr__`) and records one event per tracked call with `analytics.track()`, an
in-memory append:

    embeddings.embed.completed     {adapter, count, dimensions, durationMs}  (embed, embed_batch)
    vectorStore.search.completed   {collection, namespace, limit, results, durationMs}
    vectorStore.upsert.completed   {collection, namespace, count, durationMs}
    vectorStore.delete.completed   {collection, namespace, count, durationMs}
    cache.hit | cache.miss         {calls, durationMsTotal}                  (get, tallied)
    cache.set.completed            {calls, durationMsTotal}                  (set, tallied)
    storage.read.completed         {bytes, durationMs}
    storage.write.completed        {bytes, durationMs}
    <token>.<method>.failed        {error: {code, type, message}, durationMs, + the call's fields}

Cache calls are frequent and cheap, so they are not one event each: the cache proxy
tallies them per (namespace, type) and records one event per tally with `calls` and
`durationMsTotal`, every `TALLY_SECONDS`, every `TALLY_MAX_CALLS` calls, before analytics
is read (`flush_usage`) and when the adapters stop. Readers count `calls` for such events
and 1 for an event without it (older per-call events).

The exception of a failed call is re-raised unchanged. Events go to the namespace the
call passed (`namespace=`, as vector stores take), else to the one the caller is charged
to (`charged_to()`: the platform API and plugin operations set the caller's namespace),
else to "default" (the server's own calls). The LLM adapter is not
wrapped: it records `llm.completion.completed`, `llm.chatWithTools.completed`,
`llm.stream.completed` and `llm.<method>.failed` itself, with {model, tier, provider,
promptTokens, completionTokens, totalTokens, costUsd, durationMs, retries}.

Reading: `usage()` and `daily_stats()` turn `SqlAnalytics.aggregate()` rows (grouped in
SQL) into GET /api/v1/adapters/{adapter}/usage and …/daily-stats. Only the grouped rows
reach Python (at most `MAX_AGGREGATE_ROWS` of them: periods x types x breakdown values).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, MutableSequence, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loguru import logger

from kblabs.platform.adapters.sql_analytics import (
    GROUP_BY,
    AggregateQuery,
    AggregateRow,
    SqlAnalytics,
    event_path,
    iso,
    period_labels,
)

DEFAULT_NAMESPACE = "default"
TALLY_SECONDS = 10.0  # cache calls are recorded at least this often…
TALLY_MAX_CALLS = 10_000  # …and after this many
_charged: ContextVar[str | None] = ContextVar("kb_usage_namespace", default=None)


@contextlib.contextmanager
def charged_to(namespace: str) -> Iterator[None]:
    """Adapter calls made inside are recorded in `namespace` (the caller's tenant)."""
    token = _charged.set(namespace)
    try:
        yield
    finally:
        _charged.reset(token)


# --- writing: the wrappers ---------------------------------------------------------------


class Tracked:
    """Base of the usage proxies. `__wrapped__` is the adapter itself."""

    __slots__ = ("__wrapped__", "_analytics", "_name")
    token = ""

    def __init__(self, inner: Any, analytics: Any, name: str) -> None:
        object.__setattr__(self, "__wrapped__", inner)
        object.__setattr__(self, "_analytics", analytics)
        object.__setattr__(self, "_name", name)

    def __getattr__(self, name: str) -> Any:
        if name == "__wrapped__":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.__wrapped__, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__wrapped__, name, value)

    def __repr__(self) -> str:
        return f"<usage-tracked {self.token} {self.__wrapped__!r}>"

    @staticmethod
    def _namespace(namespace: Any = None) -> str:
        """The namespace a call is recorded in: its own, else the one charged, else default."""
        if isinstance(namespace, str) and namespace:
            return namespace
        return _charged.get() or DEFAULT_NAMESPACE

    async def _track(self, type: str, payload: dict[str, Any], namespace: Any = None) -> None:
        target = self._namespace(namespace)
        try:
            await self._analytics.track(type, payload, namespace_id=target)
        except Exception as exc:  # track() must not raise; a foreign adapter might
            logger.warning("usage: could not record {}: {}", type, exc)

    async def flush_usage(self) -> None:
        """Record what this proxy holds back (only the cache's tally does)."""

    async def _failed(
        self, method: str, exc: Exception, started: float, fields: dict[str, Any]
    ) -> None:
        code = getattr(exc, "code", None)
        error = {
            "code": code if isinstance(code, str | int) else type(exc).__name__,
            "type": type(exc).__name__,
            "message": str(getattr(exc, "message", None) or exc)[:300],
        }
        payload = {**fields, "error": error, "durationMs": _since(started)}
        await self._track(f"{self.token}.{method}.failed", payload, fields.get("namespace"))


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _size(value: Any) -> int | None:
    try:
        return len(value)
    except TypeError:
        return None


class TrackedCache(Tracked):
    """Failures are recorded one by one; successful gets and sets are tallied."""

    __slots__ = ("_tallied_calls", "_tally", "_tally_started")
    token = "cache"

    def __init__(self, inner: Any, analytics: Any, name: str) -> None:
        super().__init__(inner, analytics, name)
        self._reset_tally()

    def _reset_tally(self) -> None:
        # (namespace, type) → [calls, total ms]; object.__setattr__: ours, not the adapter's
        object.__setattr__(self, "_tally", {})
        object.__setattr__(self, "_tallied_calls", 0)
        object.__setattr__(self, "_tally_started", time.monotonic())

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            value = await self.__wrapped__.get(key, *args, **kwargs)
        except Exception as exc:
            await self._failed("get", exc, started, {})
            raise
        hit = "cache.hit" if value is not None else "cache.miss"
        await self._count(hit, started, kwargs.get("namespace"))
        return value

    async def set(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await self.__wrapped__.set(key, value, *args, **kwargs)
        except Exception as exc:
            await self._failed("set", exc, started, {})
            raise
        await self._count("cache.set.completed", started, kwargs.get("namespace"))
        return result

    async def _count(self, type: str, started: float, namespace: Any) -> None:
        entry = self._tally.setdefault((self._namespace(namespace), type), [0, 0.0])
        entry[0] += 1
        entry[1] += _since(started)
        object.__setattr__(self, "_tallied_calls", self._tallied_calls + 1)
        due = time.monotonic() - self._tally_started >= TALLY_SECONDS
        if due or self._tallied_calls >= TALLY_MAX_CALLS:
            await self.flush_usage()

    async def flush_usage(self) -> None:
        """Record what the tally holds, one event per (namespace, type)."""
        tally = self._tally
        self._reset_tally()
        for (namespace, type), (calls, total_ms) in tally.items():
            payload = {"calls": calls, "durationMsTotal": round(total_ms, 3)}
            await self._track(type, payload, namespace)

    async def stop(self) -> None:
        await self.flush_usage()
        stop = getattr(self.__wrapped__, "stop", None)
        if stop is not None:
            await stop()

    # protocol members that are not tracked (explicit, so isinstance checks that do not
    # consult __getattr__ still see them)
    async def delete(self, key: str, *args: Any, **kwargs: Any) -> Any:
        return await self.__wrapped__.delete(key, *args, **kwargs)

    async def clear(self, *args: Any, **kwargs: Any) -> Any:
        return await self.__wrapped__.clear(*args, **kwargs)


class TrackedStorage(Tracked):
    __slots__ = ()
    token = "storage"

    async def read(self, path: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            data = await self.__wrapped__.read(path, *args, **kwargs)
        except Exception as exc:
            await self._failed("read", exc, started, {})
            raise
        payload = {"bytes": _size(data) or 0, "durationMs": _since(started)}
        await self._track("storage.read.completed", payload, kwargs.get("namespace"))
        return data

    async def write(self, path: str, data: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await self.__wrapped__.write(path, data, *args, **kwargs)
        except Exception as exc:
            await self._failed("write", exc, started, {"bytes": _size(data)})
            raise
        payload = {"bytes": _size(data), "durationMs": _since(started)}
        await self._track("storage.write.completed", payload, kwargs.get("namespace"))
        return result

    async def delete(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return await self.__wrapped__.delete(path, *args, **kwargs)

    async def list(self, *args: Any, **kwargs: Any) -> Any:
        return await self.__wrapped__.list(*args, **kwargs)

    async def exists(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return await self.__wrapped__.exists(path, *args, **kwargs)


class TrackedEmbeddings(Tracked):
    __slots__ = ()
    token = "embeddings"

    @property
    def dimensions(self) -> int:
        return int(self.__wrapped__.dimensions)

    def get_dimensions(self) -> int:
        return int(self.__wrapped__.get_dimensions())

    async def _embed(self, method: str, count: int, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        fields = {"adapter": self._name, "count": count}
        try:
            result = await getattr(self.__wrapped__, method)(*args, **kwargs)
        except Exception as exc:
            await self._failed("embed", exc, started, fields)
            raise
        first = result if method == "embed" else (result[0] if _size(result) else None)
        dimensions = _size(first) if first is not None else None
        if dimensions is None:
            dimensions = getattr(self.__wrapped__, "dimensions", None)
        payload = {**fields, "dimensions": dimensions, "durationMs": _since(started)}
        await self._track("embeddings.embed.completed", payload, kwargs.get("namespace"))
        return result

    async def embed(self, text: str, *args: Any, **kwargs: Any) -> Any:
        return await self._embed("embed", 1, text, *args, **kwargs)

    async def embed_batch(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        return await self._embed("embed_batch", _size(texts) or 0, texts, *args, **kwargs)


class TrackedVectorStore(Tracked):
    __slots__ = ()
    token = "vectorStore"

    @staticmethod
    def _where(kwargs: Mapping[str, Any]) -> dict[str, Any]:
        return {"collection": kwargs.get("collection"), "namespace": kwargs.get("namespace")}

    async def search(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        limit = kwargs["limit"] if "limit" in kwargs else (args[1] if len(args) > 1 else None)
        fields = {**self._where(kwargs), "limit": limit}
        try:
            found = await self.__wrapped__.search(*args, **kwargs)
        except Exception as exc:
            await self._failed("search", exc, started, fields)
            raise
        payload = {**fields, "results": _size(found), "durationMs": _since(started)}
        await self._track("vectorStore.search.completed", payload, fields["namespace"])
        return found

    async def _change(self, method: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        items = args[0] if args else kwargs.get("records", kwargs.get("ids"))
        fields = {**self._where(kwargs), "count": _size(items)}
        try:
            result = await getattr(self.__wrapped__, method)(*args, **kwargs)
        except Exception as exc:
            await self._failed(method, exc, started, fields)
            raise
        payload = {**fields, "durationMs": _since(started)}
        await self._track(f"vectorStore.{method}.completed", payload, fields["namespace"])
        return result

    async def upsert(self, *args: Any, **kwargs: Any) -> Any:
        return await self._change("upsert", *args, **kwargs)

    async def delete(self, *args: Any, **kwargs: Any) -> Any:
        return await self._change("delete", *args, **kwargs)

    async def count(self, *args: Any, **kwargs: Any) -> Any:
        return await self.__wrapped__.count(*args, **kwargs)


WRAPPERS: dict[str, type[Tracked]] = {
    "cache": TrackedCache,
    "storage": TrackedStorage,
    "embeddings": TrackedEmbeddings,
    "vectorStore": TrackedVectorStore,
}


def track_usage(started: MutableSequence[tuple[str, Any]], names: Mapping[str, list[str]]) -> None:
    """Wrap, in place, every started adapter of a tracked token once analytics is among
    `started`. Called after each adapter starts, so a factory that asks for an adapter
    started before it (a vector store for its embeddings) gets the tracked one.
    Nothing is wrapped when analytics is off (absent or `null`), nor a `null` adapter."""
    analytics = dict(started).get("analytics")
    if analytics is None or (names.get("analytics") or ["null"])[0] == "null":
        return
    for index, (token, adapter) in enumerate(started):
        wrapper = WRAPPERS.get(token)
        name = (names.get(token) or [""])[0]
        if wrapper is None or isinstance(adapter, Tracked) or name == "null":
            continue
        started[index] = (token, wrapper(adapter, analytics, name))


async def flush_usage(adapters: Iterable[Any]) -> None:
    """Record what the usage proxies among `adapters` have tallied (before analytics is
    read, and before the adapters stop)."""
    for adapter in adapters:
        if isinstance(adapter, Tracked):
            await adapter.flush_usage()


def unwrap(adapter: Any) -> Any:
    """The adapter behind a usage proxy (or `adapter` itself)."""
    return adapter.__wrapped__ if isinstance(adapter, Tracked) else adapter


# --- reading: usage and daily stats --------------------------------------------------------

# URL name → event type prefix
ADAPTERS = {
    "llm": "llm.",
    "embeddings": "embeddings.",
    "vectorstore": "vectorStore.",
    "cache": "cache.",
    "storage": "storage.",
}
# payload fields summed for each adapter's usage
USAGE_SUMS = {
    "llm": ("promptTokens", "completionTokens", "totalTokens", "costUsd", "durationMs"),
    "embeddings": ("count", "durationMs"),
    "vectorstore": ("count", "results", "durationMs"),
    "cache": ("durationMs", "calls", "durationMsTotal"),
    "storage": ("bytes", "durationMs"),
}
TALLY_FIELDS = ("calls", "durationMsTotal")  # read for every cache query (tallied events)
# metric → payload fields it needs (daily stats)
METRICS: dict[str, tuple[str, ...]] = {
    "calls": (),
    "failed": (),
    "tokens": ("totalTokens", "promptTokens", "completionTokens"),
    "promptTokens": ("promptTokens",),
    "completionTokens": ("completionTokens",),
    "costUsd": ("costUsd",),
    "durationMs": ("durationMs",),  # the average
    "texts": ("count",),  # embedded texts
    "records": ("count",),  # upserted vector records
    "results": ("results",),
    "bytes": ("bytes",),
    "hits": (),
    "misses": (),
    "hitRate": (),
}
DEFAULT_METRICS = {
    "llm": ("calls", "failed", "tokens", "costUsd", "durationMs"),
    "embeddings": ("calls", "failed", "texts", "durationMs"),
    "vectorstore": ("calls", "failed", "records", "results", "durationMs"),
    "cache": ("calls", "hits", "misses", "hitRate", "durationMs"),
    "storage": ("calls", "failed", "bytes", "durationMs"),
}
MAX_PERIODS = 2000
NO_VALUE = "(none)"


def operation_of(prefix: str, event_type: str) -> str:
    """`vectorStore.search.completed` → search; `cache.hit` → get."""
    rest = event_type[len(prefix) :]
    if prefix == "cache." and rest in ("hit", "miss"):
        return "get"
    return rest.rsplit(".", 1)[0] if "." in rest else rest


def is_call(prefix: str, event_type: str) -> bool:
    return event_type.endswith((".completed", ".failed")) or (
        prefix == "cache." and event_type in ("cache.hit", "cache.miss")
    )


@dataclass
class Totals:
    """Counts and sums over some call events."""

    calls: int = 0
    failed: int = 0
    hits: int = 0
    misses: int = 0
    sums: dict[str, float] = field(default_factory=dict)  # over successful calls
    duration_sum: float = 0.0
    duration_count: int = 0

    def add(self, row: AggregateRow) -> None:
        # a tallied event stands for `calls` calls taking `durationMsTotal` ms in all;
        # any other event is one call taking `durationMs`
        tallied = row.counted.get("calls", 0)
        calls = row.count - tallied + int(row.sums.get("calls", 0))
        self.calls += calls
        if row.type.endswith(".failed"):
            self.failed += calls
        elif row.type == "cache.hit":
            self.hits += calls
        elif row.type == "cache.miss":
            self.misses += calls
        else:
            for name, value in row.sums.items():
                if name not in ("durationMs", *TALLY_FIELDS):
                    self.sums[name] = self.sums.get(name, 0.0) + value
        if "durationMs" in row.sums:
            self.duration_sum += row.sums["durationMs"]
            self.duration_count += row.counted["durationMs"]
        if "durationMsTotal" in row.sums:
            self.duration_sum += row.sums["durationMsTotal"]
            self.duration_count += int(row.sums.get("calls", 0))

    def sum(self, name: str) -> float:
        return self.sums.get(name, 0.0)

    def tokens(self) -> int:
        total = self.sum("totalTokens")
        return int(total or self.sum("promptTokens") + self.sum("completionTokens"))

    def avg_duration(self) -> float | None:
        return round(self.duration_sum / self.duration_count, 3) if self.duration_count else None

    def hit_rate(self) -> float | None:
        looked = self.hits + self.misses
        return round(self.hits / looked, 4) if looked else None

    def metric(self, name: str) -> Any:
        if name in ("calls", "failed", "hits", "misses"):
            return getattr(self, name)
        if name == "tokens":
            return self.tokens()
        if name in ("promptTokens", "completionTokens"):
            return int(self.sum(name))
        if name == "costUsd":
            return round(self.sum("costUsd"), 6)
        if name == "durationMs":
            return self.avg_duration()
        if name in ("texts", "records"):
            return int(self.sum("count"))
        if name in ("results", "bytes"):
            return int(self.sum(name))
        if name == "hitRate":
            return self.hit_rate()
        raise KeyError(name)


async def usage(
    analytics: SqlAnalytics,
    adapter: str,
    namespace_id: str | None,
    from_ts: datetime | None,
    to_ts: datetime | None,
) -> dict[str, Any]:
    prefix = ADAPTERS[adapter]
    keys = (("payload", "model"), ("payload", "tier")) if adapter == "llm" else ()
    sums = USAGE_SUMS[adapter]
    query = AggregateQuery(prefix, namespace_id, from_ts, to_ts, keys=keys, sums=sums)
    result = await analytics.aggregate(query)
    total = Totals()
    operations: dict[str, Totals] = {}
    by_model: dict[str, Totals] = {}
    by_tier: dict[str, Totals] = {}
    typed: dict[str, Totals] = {}
    for row in result.rows:
        if not is_call(prefix, row.type):
            continue
        total.add(row)
        operations.setdefault(operation_of(prefix, row.type), Totals()).add(row)
        typed.setdefault(row.type, Totals()).add(row)
        if adapter == "llm":
            by_model.setdefault(row.keys[0] or NO_VALUE, Totals()).add(row)
            by_tier.setdefault(row.keys[1] or NO_VALUE, Totals()).add(row)
    body: dict[str, Any] = {
        "adapter": adapter,
        "from": iso(from_ts) if from_ts else None,
        "to": iso(to_ts) if to_ts else None,
        "totalCalls": total.calls,
        "failedCalls": total.failed,
    }
    if adapter == "llm":
        body |= {
            "promptTokens": int(total.sum("promptTokens")),
            "completionTokens": int(total.sum("completionTokens")),
            "totalTokens": total.tokens(),
            "totalCostUsd": round(total.sum("costUsd"), 6),
            "avgDurationMs": total.avg_duration(),
            "byModel": {name: _llm_group(t) for name, t in sorted(by_model.items())},
            "byTier": {name: _llm_group(t) for name, t in sorted(by_tier.items())},
        }
    else:
        body["avgDurationMs"] = total.avg_duration()
    body["byOperation"] = {
        name: {"calls": t.calls, "failed": t.failed, "avgDurationMs": t.avg_duration()}
        for name, t in sorted(operations.items())
    }
    done = typed.get
    if adapter == "cache":
        body |= {"hits": total.hits, "misses": total.misses, "hitRate": total.hit_rate()}
    elif adapter == "storage":
        body |= {
            "bytesRead": int((done("storage.read.completed") or Totals()).sum("bytes")),
            "bytesWritten": int((done("storage.write.completed") or Totals()).sum("bytes")),
        }
    elif adapter == "embeddings":
        body["texts"] = int((done("embeddings.embed.completed") or Totals()).sum("count"))
    elif adapter == "vectorstore":
        upserts = done("vectorStore.upsert.completed") or Totals()
        body |= {
            "searches": (done("vectorStore.search.completed") or Totals()).calls,
            "upserts": upserts.calls,
            "records": int(upserts.sum("count")),
        }
    body["truncated"] = result.truncated
    return body


def _llm_group(totals: Totals) -> dict[str, Any]:
    return {
        "calls": totals.calls,
        "failed": totals.failed,
        "tokens": totals.tokens(),
        "costUsd": round(totals.sum("costUsd"), 6),
    }


class StatsRequestError(ValueError):
    """A daily-stats parameter is wrong; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def parse_metrics(adapter: str, raw: Sequence[str] | None) -> tuple[str, ...]:
    if not raw:
        return DEFAULT_METRICS[adapter]
    unknown = [name for name in raw if name not in METRICS]
    if unknown:
        raise StatsRequestError(
            "metrics", f"unknown metric {unknown[0]!r} (known: {', '.join(METRICS)})"
        )
    return tuple(dict.fromkeys(raw))


async def daily_stats(
    analytics: SqlAnalytics,
    adapter: str,
    *,
    namespace_id: str | None,
    from_ts: datetime,
    to_ts: datetime,
    group_by: str = "day",
    breakdown_by: str | None = None,
    metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Buckets per period between `from_ts` and `to_ts` (every period, empty ones
    included), each with the chosen metrics and, with `breakdown_by`, the same metrics
    per value of that event path. Raises StatsRequestError naming a bad parameter."""
    if group_by not in GROUP_BY:
        raise StatsRequestError("groupBy", f"must be one of {', '.join(GROUP_BY)}")
    chosen = parse_metrics(adapter, metrics)
    keys: tuple[tuple[str, ...], ...] = ()
    if breakdown_by:
        try:
            keys = (event_path(breakdown_by),)
        except ValueError as exc:
            raise StatsRequestError("breakdownBy", str(exc)) from None
    labels = period_labels(group_by, from_ts, to_ts, MAX_PERIODS)
    if len(labels) > MAX_PERIODS:
        raise StatsRequestError(
            "groupBy", f"from..to spans more than {MAX_PERIODS} {group_by}s; widen groupBy"
        )
    sums = tuple(dict.fromkeys(f for name in chosen for f in METRICS[name]))
    if adapter == "cache":  # every metric of the cache needs the tallies' call counts
        sums = tuple(dict.fromkeys((*sums, *TALLY_FIELDS)))
    prefix = ADAPTERS[adapter]
    query = AggregateQuery(
        prefix, namespace_id, from_ts, to_ts, group_by=group_by, keys=keys, sums=sums
    )
    result = await analytics.aggregate(query)
    periods: dict[str, Totals] = {label: Totals() for label in labels}
    breakdown: dict[str, dict[str, Totals]] = {label: {} for label in labels}
    for row in result.rows:
        if not is_call(prefix, row.type) or row.period is None:
            continue
        periods.setdefault(row.period, Totals()).add(row)
        if keys:
            value = row.keys[0] if row.keys[0] is not None else NO_VALUE
            breakdown.setdefault(row.period, {}).setdefault(value, Totals()).add(row)
    buckets = []
    for label in sorted(periods):
        bucket: dict[str, Any] = {"period": label}
        bucket |= {name: periods[label].metric(name) for name in chosen}
        if keys:
            bucket["breakdown"] = {
                value: {name: totals.metric(name) for name in chosen}
                for value, totals in sorted(breakdown.get(label, {}).items())
            }
        buckets.append(bucket)
    return {
        "adapter": adapter,
        "groupBy": group_by,
        "from": iso(from_ts),
        "to": iso(to_ts),
        "metrics": list(chosen),
        "breakdownBy": breakdown_by or None,
        "buckets": buckets,
        "truncated": result.truncated,
    }
