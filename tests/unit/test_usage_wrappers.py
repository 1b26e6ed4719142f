"""Usage tracking: the proxies put in front of cache, storage, embeddings and vector store
record one analytics event per call (into the real store-backed analytics adapter),
forward everything else, keep the Protocols satisfied and re-raise failures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kblabs.config import load_settings
from kblabs.platform import (
    AdapterRegistry,
    Cache,
    Embeddings,
    EventFilters,
    Storage,
    VectorStore,
    usage,
)
from kblabs.platform.adapters.fs_storage import FsStorage
from kblabs.platform.adapters.memory_cache import MemoryCache, MemoryCacheOptions
from kblabs.platform.adapters.null import NullCache
from kblabs.platform.adapters.sql_analytics import SqlAnalytics, SqlAnalyticsOptions
from kblabs.platform.usage import (
    Tracked,
    TrackedCache,
    TrackedEmbeddings,
    TrackedStorage,
    TrackedVectorStore,
    charged_to,
    track_usage,
    unwrap,
)
from kblabs.store import Store

pytestmark = pytest.mark.anyio

QUIET = {"batch_size": 10_000, "flush_interval_ms": 3_600_000}  # reads flush explicitly


# --- adapters written for the test (the interfaces, nothing of ours) --------------------


class WordEmbeddings:
    """Three dimensions: length, vowels, spaces."""

    dimensions = 3

    def get_dimensions(self) -> int:
        return self.dimensions

    async def embed(self, text: str) -> list[float]:
        return [float(len(text)), float(sum(c in "aeiou" for c in text)), float(text.count(" "))]

    async def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        return [await self.embed(t) for t in texts]


class DictVectorStore:
    """Records per (namespace, collection); search returns everything, best first."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, Any]] = {}
        self.stopped = False

    async def search(
        self,
        vector: Sequence[float],
        limit: int,
        filter: Any = None,
        *,
        namespace: str = "default",
        collection: str = "default",
    ) -> list[dict[str, Any]]:
        found = list(self.data.get((namespace, collection), {}).values())
        return [{"id": r["id"], "score": 1.0, "metadata": {}} for r in found][:limit]

    async def upsert(
        self, records: Sequence[dict[str, Any]], *, namespace: str = "default", collection="default"
    ) -> None:
        for record in records:
            if not record.get("vector"):
                raise ValueError(f"record {record['id']} has no vector")
            self.data.setdefault((namespace, collection), {})[record["id"]] = record

    async def delete(
        self, ids: Sequence[str], *, namespace: str = "default", collection: str = "default"
    ) -> None:
        for record_id in ids:
            self.data.get((namespace, collection), {}).pop(record_id, None)

    async def count(self, *, namespace: str = "default", collection: str = "default") -> int:
        return len(self.data.get((namespace, collection), {}))

    async def drop_collection(self, *, namespace: str = "default", collection: str = "default"):
        return self.data.pop((namespace, collection), None) is not None

    async def stop(self) -> None:
        self.stopped = True


class CodedError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class BrokenStorage(FsStorage):
    async def read(self, path: str) -> bytes | None:
        raise CodedError("DISK_GONE", f"cannot read {path}")


# --- fixtures ---------------------------------------------------------------------------


def settings_for(root: Path, config: dict[str, Any] | None = None):
    root.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (root / "kb.config.json").write_text(json.dumps(config))
    settings = load_settings(environ={"KB_PROJECT_ROOT": str(root)})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    started = Store(settings_for(tmp_path / "project"))
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
async def analytics(store: Store) -> AsyncIterator[SqlAnalytics]:
    adapter = SqlAnalytics(store, SqlAnalyticsOptions(**QUIET))
    await adapter.start()
    yield adapter
    await adapter.stop()


async def recorded(analytics: SqlAnalytics, namespace: str | None = None) -> list[dict[str, Any]]:
    """Every event, oldest first: (type, payload, namespace is checked by filter)."""
    page = await analytics.get_events(EventFilters(namespace_id=namespace, limit=500))
    return list(reversed(page["events"]))


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


# --- the proxies ------------------------------------------------------------------------


async def test_cache_records_hits_misses_and_sets(analytics: SqlAnalytics) -> None:
    inner = MemoryCache(MemoryCacheOptions())
    cache = TrackedCache(inner, analytics, "memory")
    assert isinstance(cache, Cache)
    await cache.set("k", {"v": 1})
    assert await cache.get("k") == {"v": 1}
    assert await cache.get("absent") is None
    assert await cache.delete("k") is True  # untracked, forwarded
    assert await cache.clear() == 0
    assert cache.stats()["hits"] == 1  # an extra of the adapter, through __getattr__
    await cache.get("k")
    assert await recorded(analytics, "default") == []  # tallied, not one event per call
    await cache.flush_usage()
    events = await recorded(analytics, "default")
    assert types(events) == ["cache.set.completed", "cache.hit", "cache.miss"]
    assert [event["payload"]["calls"] for event in events] == [1, 1, 2]
    for event in events:
        assert set(event["payload"]) == {"calls", "durationMsTotal"}
        assert event["payload"]["durationMsTotal"] >= 0
    await cache.flush_usage()
    assert len(await recorded(analytics, "default")) == 3  # an empty tally records nothing


async def test_the_cache_tally_is_recorded_by_count_by_time_and_at_stop(
    analytics: SqlAnalytics, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = TrackedCache(MemoryCache(MemoryCacheOptions()), analytics, "memory")
    monkeypatch.setattr(usage, "TALLY_MAX_CALLS", 5)
    for _ in range(5):
        await cache.get("x")
    assert [e["payload"]["calls"] for e in await recorded(analytics)] == [5]
    monkeypatch.setattr(usage, "TALLY_SECONDS", 0.0)  # every call is due
    with charged_to("team-a"):
        await cache.set("x", 1)
    assert types(await recorded(analytics, "team-a")) == ["cache.set.completed"]
    monkeypatch.setattr(usage, "TALLY_SECONDS", 3600.0)
    await cache.get("x")
    await cache.stop()
    assert types(await recorded(analytics, "default")) == ["cache.miss", "cache.hit"]


async def test_usage_counts_tallied_and_per_call_events_alike(analytics: SqlAnalytics) -> None:
    # per-call events (as recorded before tallies) and tallies are read together
    await analytics.track("cache.hit", {"durationMs": 2.0})
    await analytics.track("cache.hit", {"calls": 9, "durationMsTotal": 18.0})
    await analytics.track("cache.miss", {"calls": 10, "durationMsTotal": 10.0})
    await analytics.track("cache.get.failed", {"error": {"code": "X"}, "durationMs": 5.0})
    totals = await analytics.get_usage("cache", namespace_id="default")
    assert (totals["totalCalls"], totals["hits"], totals["misses"]) == (21, 10, 10)
    assert totals["failedCalls"] == 1 and totals["hitRate"] == 0.5
    assert totals["avgDurationMs"] == round((2 + 18 + 10 + 5) / 21, 3)
    assert totals["byOperation"]["get"]["calls"] == 21
    today = datetime.now(UTC)
    daily = await analytics.get_daily_stats(
        "cache",
        namespace_id="default",
        from_ts=today - timedelta(days=1),
        to_ts=today + timedelta(days=1),
        group_by="day",
    )
    (bucket,) = [b for b in daily["buckets"] if b["calls"]]
    assert (bucket["calls"], bucket["hits"], bucket["misses"]) == (21, 10, 10)


async def test_storage_records_bytes_and_failures(analytics: SqlAnalytics, tmp_path: Path) -> None:
    inner = FsStorage(tmp_path / "files")
    await inner.start()
    storage = TrackedStorage(inner, analytics, "fs")
    assert isinstance(storage, Storage)
    await storage.write("a/b.txt", b"hello world")
    assert await storage.read("a/b.txt") == b"hello world"
    assert await storage.read("missing.txt") is None
    assert await storage.exists("a/b.txt") and await storage.list("a") == ["a/b.txt"]
    assert await storage.delete("a/b.txt") is True

    broken = TrackedStorage(BrokenStorage(tmp_path / "broken"), analytics, "fs")
    with pytest.raises(CodedError) as caught:
        await broken.read("x.txt")
    assert caught.value.code == "DISK_GONE"  # the adapter's own exception, unchanged

    events = await recorded(analytics)
    assert types(events) == [
        "storage.write.completed",
        "storage.read.completed",
        "storage.read.completed",
        "storage.read.failed",
    ]
    assert [e["payload"]["bytes"] for e in events[:3]] == [11, 11, 0]
    failed = events[3]["payload"]
    assert failed["error"] == {
        "code": "DISK_GONE",
        "type": "CodedError",
        "message": "cannot read x.txt",
    }
    assert failed["durationMs"] >= 0


async def test_embeddings_record_counts_and_dimensions(analytics: SqlAnalytics) -> None:
    inner = WordEmbeddings()
    embeddings = TrackedEmbeddings(inner, analytics, "words")
    assert isinstance(embeddings, Embeddings)
    assert embeddings.dimensions == 3 and embeddings.get_dimensions() == 3
    assert await embeddings.embed("a cat") == [5.0, 2.0, 1.0]
    assert len(await embeddings.embed_batch(["one", "two", "three"])) == 3
    embeddings.dimensions = 4  # attribute writes reach the adapter
    assert inner.dimensions == 4
    events = await recorded(analytics)
    assert types(events) == ["embeddings.embed.completed"] * 2
    assert [{k: v for k, v in e["payload"].items() if k != "durationMs"} for e in events] == [
        {"adapter": "words", "count": 1, "dimensions": 3},
        {"adapter": "words", "count": 3, "dimensions": 3},
    ]


async def test_calls_charged_to_a_namespace_are_recorded_there(analytics: SqlAnalytics) -> None:
    embeddings = TrackedEmbeddings(WordEmbeddings(), analytics, "words")
    with charged_to("team-a"):
        await embeddings.embed("for team a")
    await embeddings.embed("the server's own")
    assert len(await recorded(analytics, "team-a")) == 1
    assert len(await recorded(analytics, "default")) == 1


async def test_vector_store_records_collection_namespace_and_sizes(
    analytics: SqlAnalytics,
) -> None:
    inner = DictVectorStore()
    vectors = TrackedVectorStore(inner, analytics, "dict")
    assert isinstance(vectors, VectorStore)
    records = [{"id": "a", "vector": [1.0]}, {"id": "b", "vector": [0.5]}]
    await vectors.upsert(records, namespace="team-a", collection="docs")
    found = await vectors.search([1.0], 5, namespace="team-a", collection="docs")
    assert [m["id"] for m in found] == ["a", "b"]
    assert await vectors.search([1.0], limit=1) == []  # default namespace: empty
    await vectors.delete(["a"], namespace="team-a", collection="docs")
    assert await vectors.count(namespace="team-a", collection="docs") == 1
    assert await vectors.drop_collection(namespace="team-a", collection="docs") is True
    with pytest.raises(ValueError, match="no vector"):
        await vectors.upsert([{"id": "z"}], namespace="team-a", collection="docs")
    await vectors.stop()
    assert inner.stopped

    team = await recorded(analytics, "team-a")
    assert types(team) == [
        "vectorStore.upsert.completed",
        "vectorStore.search.completed",
        "vectorStore.delete.completed",
        "vectorStore.upsert.failed",
    ]
    payloads = [{k: v for k, v in e["payload"].items() if k != "durationMs"} for e in team]
    assert payloads[0] == {"collection": "docs", "namespace": "team-a", "count": 2}
    assert payloads[1] == {"collection": "docs", "namespace": "team-a", "limit": 5, "results": 2}
    assert payloads[2] == {"collection": "docs", "namespace": "team-a", "count": 1}
    assert payloads[3]["error"]["type"] == "ValueError"
    default = await recorded(analytics, "default")
    assert types(default) == ["vectorStore.search.completed"]
    assert default[0]["payload"]["limit"] == 1 and default[0]["payload"]["results"] == 0


# --- wiring -------------------------------------------------------------------------------


async def test_track_usage_wraps_once_and_only_when_analytics_is_on(
    analytics: SqlAnalytics,
) -> None:
    cache, null_cache = MemoryCache(MemoryCacheOptions()), NullCache()
    started: list[tuple[str, Any]] = [("cache", cache)]
    names = {"cache": ["memory"], "analytics": ["sqlite"]}
    track_usage(started, names)  # analytics not started yet: nothing to record into
    assert started[0][1] is cache
    started.append(("analytics", analytics))
    track_usage(started, names)
    wrapped = started[0][1]
    assert isinstance(wrapped, TrackedCache) and unwrap(wrapped) is cache
    started.append(("vectorStore", DictVectorStore()))
    track_usage(started, {**names, "vectorStore": ["dict"]})
    assert started[0][1] is wrapped  # not wrapped twice
    assert isinstance(started[2][1], TrackedVectorStore)
    assert started[1][1] is analytics  # analytics itself is never wrapped

    off = [("cache", null_cache), ("analytics", analytics)]
    track_usage(off, {"cache": ["null"], "analytics": ["sqlite"]})
    assert off[0][1] is null_cache  # a null adapter has no usage worth recording
    plain = [("cache", cache), ("analytics", analytics)]
    track_usage(plain, {"cache": ["memory"], "analytics": ["null"]})
    assert plain[0][1] is cache


async def test_the_registry_hands_out_tracked_adapters(tmp_path: Path, store: Store) -> None:
    config = {"platform": {"adapters": {"embeddings": None, "vectorStore": None}}}
    registry = AdapterRegistry(settings_for(tmp_path / "p", config), store)
    await registry.start()
    try:
        cache, storage = registry.get("cache"), registry.get("storage")
        assert isinstance(cache, Tracked) and isinstance(storage, Tracked)
        assert not isinstance(registry.get("analytics"), Tracked)
        assert isinstance(cache, Cache) and isinstance(storage, Storage)
        await storage.write("r.txt", b"12345")
        await cache.get("nothing")
        await registry.flush_usage()  # as analytics reads do
        analytics = registry.get("analytics")
        assert types(await recorded(analytics)) == ["storage.write.completed", "cache.miss"]
        assert registry.health()[0] == "ok"  # health() of the adapters, through the proxy
    finally:
        await registry.stop()

    off = {"platform": {"adapters": {"analytics": None, "embeddings": None, "vectorStore": None}}}
    registry = AdapterRegistry(settings_for(tmp_path / "q", off), store)
    await registry.start()
    try:
        assert isinstance(registry.get("cache"), MemoryCache)
        assert isinstance(registry.get("storage"), FsStorage)
    finally:
        await registry.stop()
