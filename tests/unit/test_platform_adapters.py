"""The built-in adapters (cache, storage, event bus, logger), the registry and the hooks,
on real files and a real SQLite store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest

from kblabs.config import Settings, load_settings
from kblabs.errors import StartupError
from kblabs.platform import (
    TOKENS,
    AdapterRegistry,
    Analytics,
    Cache,
    Embeddings,
    EventBus,
    Logger,
    PlatformContextMiddleware,
    Storage,
    VectorStore,
    bind_platform,
    current_platform,
    use_analytics,
    use_cache,
    use_embeddings,
    use_event_bus,
    use_llm,
    use_logger,
    use_storage,
    use_vector_store,
)
from kblabs.platform.adapters.fs_storage import FsStorage, StoragePathError
from kblabs.platform.adapters.inprocess_bus import InProcessBusOptions, InProcessEventBus
from kblabs.platform.adapters.loguru_logger import LoguruLogger
from kblabs.platform.adapters.memory_cache import MemoryCache, MemoryCacheOptions
from kblabs.platform.adapters.null import NullCache, NullLogger
from kblabs.store import Store

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1000


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """loguru records (level ≥ DEBUG) emitted during the test."""
    found: list[dict[str, Any]] = []
    handler = logger.add(lambda message: found.append(message.record), level="DEBUG")
    yield found
    logger.remove(handler)


def settings_for(root: Path, config: dict[str, Any] | None = None) -> Settings:
    root.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (root / "kb.config.json").write_text(json.dumps(config))
    settings = load_settings(environ={"KB_PROJECT_ROOT": str(root)})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    started = Store(settings_for(tmp_path / "db"))
    await started.start()
    yield started
    await started.stop()


async def started_registry(root: Path, store: Store, config: dict[str, Any]) -> AdapterRegistry:
    registry = AdapterRegistry(settings_for(root, {"platform": config}), store)
    await registry.start()
    return registry


# --- cache ------------------------------------------------------------------------------


async def test_cache_entries_expire_after_their_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(MemoryCacheOptions(default_ttl_ms=5000), clock=clock)
    await cache.set("short", "a", ttl_ms=1000)
    await cache.set("default", "b")  # the 5 s default
    await cache.set("explicit_none", "c", ttl_ms=None)  # None: the default as well
    clock.advance_ms(999)
    assert await cache.get("short") == "a"
    clock.advance_ms(1)
    assert await cache.get("short") is None
    assert await cache.delete("short") is False
    assert await cache.get("default") == "b"
    assert await cache.get("explicit_none") == "c"
    clock.advance_ms(4000)
    assert await cache.get("default") is None
    assert await cache.get("explicit_none") is None


async def test_cache_without_default_ttl_keeps_values() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    await cache.set("k", {"v": 1})
    clock.advance_ms(365 * 24 * 3600 * 1000)
    assert await cache.get("k") == {"v": 1}


async def test_cache_evicts_the_least_recently_used_entry_when_full() -> None:
    cache = MemoryCache(MemoryCacheOptions(max_entries=2))
    await cache.set("a", 1)
    await cache.set("b", 2)
    assert await cache.get("a") == 1  # a is now more recent than b
    await cache.set("c", 3)
    assert await cache.get("b") is None
    assert await cache.get("a") == 1
    assert await cache.get("c") == 3
    assert cache.stats() == {"entries": 2, "hits": 3, "misses": 1, "evictions": 1}


async def test_cache_hands_out_copies() -> None:
    cache = MemoryCache()
    value = {"list": [1, 2], "nested": {"x": "y"}}
    await cache.set("k", value)
    value["list"].append(3)
    value["nested"]["x"] = "changed"
    got = await cache.get("k")
    assert got == {"list": [1, 2], "nested": {"x": "y"}}
    got["list"].clear()
    assert await cache.get("k") == {"list": [1, 2], "nested": {"x": "y"}}


async def test_cache_refuses_values_it_could_not_store_and_bad_ttls() -> None:
    cache = MemoryCache()
    with pytest.raises(ValueError, match="JSON"):
        await cache.set("k", {1, 2})
    with pytest.raises(ValueError, match="JSON"):
        await cache.set("k", float("nan"))
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("k", 1, ttl_ms=0)
    assert await cache.get("k") is None


async def test_cache_clear_by_glob_and_delete() -> None:
    cache = MemoryCache()
    for key in ("plugin:a:1", "plugin:a:2", "plugin:b:1", "other"):
        await cache.set(key, key)
    assert await cache.clear("plugin:a:*") == 2
    assert await cache.get("plugin:a:1") is None
    assert await cache.get("plugin:b:1") == "plugin:b:1"
    assert await cache.delete("other") is True
    assert await cache.delete("other") is False
    assert await cache.clear() == 1
    assert cache.stats()["entries"] == 0


# --- storage ----------------------------------------------------------------------------


@pytest.fixture
async def storage(tmp_path: Path) -> FsStorage:
    fs = FsStorage(tmp_path / "data" / "storage")
    await fs.start()
    return fs


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


async def test_storage_round_trip(storage: FsStorage) -> None:
    await storage.write("reports/2026/01.json", b'{"n": 1}')
    await storage.write("reports/2026/02.json", b"second")
    await storage.write("readme.txt", bytearray(b"hello"))
    assert await storage.read("reports/2026/01.json") == b'{"n": 1}'
    assert (storage.root / "reports" / "2026" / "02.json").read_bytes() == b"second"
    assert await storage.exists("readme.txt") is True
    assert await storage.exists("reports") is False  # a folder is not a file
    assert await storage.read("missing.txt") is None
    assert await storage.read("reports") is None
    assert await storage.list() == ["readme.txt", "reports/2026/01.json", "reports/2026/02.json"]
    assert await storage.list("reports/") == ["reports/2026/01.json", "reports/2026/02.json"]
    assert await storage.list("reports/2026/0") == ["reports/2026/01.json", "reports/2026/02.json"]
    assert await storage.list("./reports/2026/01") == ["reports/2026/01.json"]
    assert await storage.list("read") == ["readme.txt"]
    assert await storage.list("nothing/here/") == []
    assert await storage.delete("readme.txt") is True
    assert await storage.delete("readme.txt") is False
    assert await storage.exists("readme.txt") is False


async def test_storage_write_replaces_whole_file_and_leaves_no_temp_files(
    storage: FsStorage,
) -> None:
    await storage.write("a/file.bin", b"x" * 10_000)
    await storage.write("a/file.bin", b"short")
    assert await storage.read("a/file.bin") == b"short"
    assert files_under(storage.root) == {"a", "a/file.bin"}
    with pytest.raises(TypeError):
        await storage.write("a/text", "not bytes")  # type: ignore[arg-type]
    # a parent that is a file: the write fails and leaves nothing behind
    with pytest.raises(OSError):
        await storage.write("a/file.bin/inner", b"x")
    assert files_under(storage.root) == {"a", "a/file.bin"}


@pytest.mark.parametrize(
    "path",
    [
        "../escape.txt",
        "a/../../escape.txt",
        "a/../b",
        "..",
        "/etc/passwd",
        "a\\..\\b",
        "",
        "a\x00b",
    ],
)
async def test_storage_refuses_paths_that_could_leave_its_folder(
    storage: FsStorage, tmp_path: Path, path: str
) -> None:
    before = files_under(tmp_path)
    with pytest.raises(StoragePathError) as caught:
        await storage.write(path, b"x")
    assert caught.value.code == "STORAGE_PATH_INVALID" and caught.value.status == 400
    for operation in (storage.read, storage.exists, storage.delete):
        with pytest.raises(StoragePathError):
            await operation(path)
    assert files_under(tmp_path) == before


async def test_storage_refuses_symlinks_that_point_out(storage: FsStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (storage.root / "dirlink").symlink_to(outside, target_is_directory=True)
    (storage.root / "filelink").symlink_to(outside / "secret.txt")
    (storage.root / "dangling").symlink_to(outside / "created-by-write.txt")

    for path in ("dirlink/secret.txt", "filelink", "dangling"):
        with pytest.raises(StoragePathError, match="outside"):
            await storage.read(path)
    for path in ("dirlink/new.txt", "dirlink/sub/new.txt", "filelink", "dangling"):
        with pytest.raises(StoragePathError, match="outside"):
            await storage.write(path, b"overwritten")
    with pytest.raises(StoragePathError):
        await storage.delete("filelink")
    with pytest.raises(StoragePathError):
        await storage.list("dirlink/")

    assert files_under(outside) == {"secret.txt"}
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert await storage.list() == []  # links out are not listed


async def test_storage_follows_symlinks_that_stay_inside(storage: FsStorage) -> None:
    await storage.write("real/data.txt", b"v1")
    (storage.root / "alias").symlink_to(storage.root / "real", target_is_directory=True)
    assert await storage.read("alias/data.txt") == b"v1"
    await storage.write("alias/data.txt", b"v2")
    assert await storage.read("real/data.txt") == b"v2"


# --- event bus --------------------------------------------------------------------------


async def test_event_bus_delivers_by_exact_name_and_glob() -> None:
    bus = InProcessEventBus()
    got: list[tuple[str, str, Any]] = []

    async def exact(topic: str, event: Any) -> None:
        got.append(("exact", topic, event))

    def glob(topic: str, event: Any) -> None:  # plain functions work too
        got.append(("glob", topic, event))

    bus.subscribe("workflow.run.completed", exact)
    bus.subscribe("workflow.*", glob)
    await bus.publish("workflow.run.completed", {"runId": "r1"})
    await bus.publish("workflow.run.failed", {"runId": "r2"})
    await bus.publish("plugin.loaded", {"id": "p"})
    # handlers of one event run concurrently: their relative order is not promised
    assert sorted(got, key=repr) == [
        ("exact", "workflow.run.completed", {"runId": "r1"}),
        ("glob", "workflow.run.completed", {"runId": "r1"}),
        ("glob", "workflow.run.failed", {"runId": "r2"}),
    ]


async def test_event_bus_unsubscribe() -> None:
    bus = InProcessEventBus()
    got: list[str] = []

    async def handler(topic: str, event: Any) -> None:
        got.append(topic)

    unsubscribe_exact = bus.subscribe("a", handler)
    unsubscribe_glob = bus.subscribe("a*", handler)
    await bus.publish("a", None)
    unsubscribe_exact()
    unsubscribe_exact()  # twice is fine
    await bus.publish("a", None)
    unsubscribe_glob()
    await bus.publish("a", None)
    assert got == ["a", "a", "a"]
    assert bus.stats()["subscriptions"] == 0


async def test_a_failing_subscriber_does_not_stop_the_others(
    records: list[dict[str, Any]],
) -> None:
    bus = InProcessEventBus()
    got: list[str] = []

    async def broken(topic: str, event: Any) -> None:
        raise RuntimeError("subscriber bug")

    def broken_sync(topic: str, event: Any) -> None:
        raise KeyError("sync bug")

    async def fine(topic: str, event: Any) -> None:
        got.append(event)

    bus.subscribe("t", broken)
    bus.subscribe("t", broken_sync)
    bus.subscribe("t", fine)
    bus.subscribe("*", fine)
    await bus.publish("t", "e1")  # does not raise
    assert got == ["e1", "e1"]
    assert bus.stats()["handlerErrors"] == 2
    warnings = [r["message"] for r in records if r["level"].name == "WARNING"]
    assert any("subscriber bug" in m for m in warnings)
    assert any("sync bug" in m for m in warnings)


async def test_a_slow_subscriber_times_out(records: list[dict[str, Any]]) -> None:
    bus = InProcessEventBus(InProcessBusOptions(handler_timeout_ms=20))
    never = asyncio.Event()
    got: list[str] = []

    async def stuck(topic: str, event: Any) -> None:
        await never.wait()

    async def fine(topic: str, event: Any) -> None:
        got.append(event)

    bus.subscribe("t", stuck)
    bus.subscribe("t", fine)
    await bus.publish("t", "e")
    assert got == ["e"]
    assert bus.stats()["handlerErrors"] == 1
    assert any("did not finish" in r["message"] for r in records)


# --- logger -----------------------------------------------------------------------------


async def test_loguru_logger_binds_fields(records: list[dict[str, Any]]) -> None:
    log = LoguruLogger({"module": "platform"})
    child = log.child(pluginId="p1")
    child.info("loaded {not a format}", handler="h")
    log.warn("careful")
    try:
        raise ValueError("boom")
    except ValueError as exc:
        child.error("failed", exc, step=2)
    log.debug("details", n=1)

    info, warning, error, debug = records[-4:]
    assert info["message"] == "loaded {not a format}"
    assert info["extra"] == {"module": "platform", "pluginId": "p1", "handler": "h"}
    assert info["function"] == "test_loguru_logger_binds_fields"  # the caller, not the adapter
    assert (warning["level"].name, warning["extra"]) == ("WARNING", {"module": "platform"})
    assert error["level"].name == "ERROR" and error["exception"].value.args == ("boom",)
    assert error["extra"] == {"module": "platform", "pluginId": "p1", "step": 2}
    assert (debug["level"].name, debug["extra"]["n"]) == ("DEBUG", 1)
    assert log.fields == {"module": "platform"}  # the child did not change its parent


# --- registry ---------------------------------------------------------------------------


async def test_registry_defaults(tmp_path: Path, store: Store) -> None:
    registry = await started_registry(tmp_path / "p", store, {})
    try:
        assert registry.configured() == {
            "logger": "loguru",
            "cache": "memory",
            "storage": "fs",
            "eventBus": "inprocess",
            "analytics": "sqlite",
            "embeddings": "hashed",
            "vectorStore": "qdrant",
        }
        assert isinstance(registry.get("cache"), Cache)
        assert isinstance(registry.get("storage"), Storage)
        assert isinstance(registry.get("eventBus"), EventBus)
        assert isinstance(registry.get("logger"), Logger)
        assert isinstance(registry.get("analytics"), Analytics)
        assert isinstance(registry.get("embeddings"), Embeddings)
        assert isinstance(registry.get("vectorStore"), VectorStore)
        for token in ("llm", "state", "nonsense"):
            assert registry.get(token) is None
        storage = registry.get("storage")
        await storage.write("x.txt", b"1")
        assert (registry.settings.data_dir / "storage" / "x.txt").read_bytes() == b"1"
        assert registry.health() == (
            "ok",
            "logger=loguru, cache=memory, storage=fs, eventBus=inprocess, analytics=sqlite, "
            "embeddings=hashed, vectorStore=qdrant",
        )
    finally:
        await registry.stop()


async def test_registry_list_form_null_and_options(tmp_path: Path, store: Store) -> None:
    registry = await started_registry(
        tmp_path / "p",
        store,
        {
            "adapters": {
                "cache": ["null", "memory"],
                "storage": None,
                "analytics": None,
                "eventBus": "inprocess",
                "logger": "null",
                "state": "memory",  # the state broker's: not ours, no warning
                "embeddings": None,
                "vectorStore": None,
            },
            "adapterOptions": {
                "cache": {"maxEntries": 1},  # for the primary (null has no options)
                "storage": {"baseDir": "/nonexistent/never/created"},  # off: not read
                "eventBus": {"handlerTimeoutMs": 1234},
            },
        },
    )
    try:
        assert registry.configured() == {"logger": "null", "cache": "null", "eventBus": "inprocess"}
        assert registry.choices("cache") == ["null", "memory"]
        assert registry.choices("storage") == []
        assert isinstance(registry.get("cache"), NullCache)
        assert isinstance(registry.get("logger"), NullLogger)
        assert registry.get("storage") is None and registry.get("analytics") is None
        assert registry.get("eventBus").handler_timeout_s == 1.234
        assert not Path("/nonexistent/never/created").exists()
    finally:
        await registry.stop()


async def test_registry_storage_base_dir_relative_to_project_root(
    tmp_path: Path, store: Store
) -> None:
    registry = await started_registry(
        tmp_path / "p",
        store,
        {"adapters": {"storage": "fs"}, "adapterOptions": {"storage": {"baseDir": "artifacts"}}},
    )
    try:
        await registry.get("storage").write("out.txt", b"ok")
        assert (tmp_path / "p" / "artifacts" / "out.txt").read_bytes() == b"ok"
    finally:
        await registry.stop()


@pytest.mark.parametrize(
    ("adapters", "options", "message"),
    [
        (
            {"cache": "redis"},
            {},
            "platform.adapters.cache: unknown adapter 'redis'; known: memory, null",
        ),
        (
            {"storage": ["fs", "s3"]},
            {},
            "platform.adapters.storage: unknown adapter 's3'; known: fs, null",
        ),
        (
            {"llm": "anthropic"},
            {},
            "platform.adapters.llm: unknown adapter 'anthropic'; known: openai",
        ),
        ({"cache": []}, {}, "platform.adapters.cache must be an adapter name"),
        ({"eventBus": 3}, {}, "platform.adapters.eventBus must be an adapter name"),
        (
            {},
            {"cache": {"maxEntries": 0}},
            "platform.adapterOptions.cache.maxEntries: Input should be greater than or equal to 1",
        ),
        ({}, {"analytics": {"batchSise": 5}}, "platform.adapterOptions.analytics.batchSise"),
        ({}, {"storage": "here"}, "platform.adapterOptions.storage must be an object"),
    ],
)
async def test_registry_refuses_bad_config_at_start(
    tmp_path: Path, store: Store, adapters: dict[str, Any], options: dict[str, Any], message: str
) -> None:
    settings = settings_for(
        tmp_path / "p", {"platform": {"adapters": adapters, "adapterOptions": options}}
    )
    registry = AdapterRegistry(settings, store)
    with pytest.raises(StartupError) as caught:
        await registry.start()
    assert caught.value.component == "adapters"
    assert message in caught.value.message
    assert registry.configured() == {}


async def test_registry_start_failure_stops_what_it_started(tmp_path: Path, store: Store) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the storage folder should be")
    settings = settings_for(
        tmp_path / "p", {"platform": {"adapterOptions": {"storage": {"baseDir": str(blocker)}}}}
    )
    registry = AdapterRegistry(settings, store)
    with pytest.raises(StartupError, match="storage adapter 'fs'"):
        await registry.start()
    assert registry.get("cache") is None


async def test_registry_warns_about_tokens_it_does_not_handle(
    tmp_path: Path, store: Store, records: list[dict[str, Any]]
) -> None:
    registry = await started_registry(tmp_path / "p", store, {"adapters": {"documentDb": "mongo"}})
    await registry.stop()
    warnings = [r["message"] for r in records if r["level"].name == "WARNING"]
    assert warnings == ["platform.adapters.documentDb is not handled here yet: ignored"]


async def test_registry_metrics(tmp_path: Path, store: Store) -> None:
    metrics = CollectorRegistry()
    registry = AdapterRegistry(settings_for(tmp_path / "p"), store, metrics=metrics)
    await registry.start()
    try:
        cache = registry.get("cache")
        await cache.set("k", 1)
        await cache.get("k")
        await cache.get("missing")
        await registry.flush_usage()  # the cache's tallied usage, as analytics reads do
        text = generate_latest(metrics).decode()
    finally:
        await registry.stop()
    assert 'platform_adapter_info{adapter="memory",token="cache"} 1.0' in text
    assert "platform_cache_hits_total 1.0" in text
    assert "platform_cache_misses_total 1.0" in text
    assert "platform_cache_entries 1.0" in text
    # the three cache calls (set, hit, miss: one tally each) wait in the analytics buffer
    assert "platform_analytics_buffered_events 3.0" in text


# --- hooks ------------------------------------------------------------------------------


async def test_hooks_read_the_bound_registry(tmp_path: Path, store: Store) -> None:
    hooks = (use_cache, use_storage, use_event_bus, use_analytics)
    assert current_platform() is None
    assert all(hook() is None for hook in hooks)
    assert isinstance(use_logger(), LoguruLogger)  # never None

    registry = await started_registry(tmp_path / "a", store, {})
    other = await started_registry(tmp_path / "b", store, {"adapters": {"logger": None}})
    try:
        with bind_platform(registry):
            assert current_platform() is registry
            assert use_cache() is registry.get("cache")
            assert use_storage() is registry.get("storage")
            assert use_event_bus() is registry.get("eventBus")
            assert use_analytics() is registry.get("analytics")
            assert use_logger() is registry.get("logger")
            assert use_llm() is None  # not configured by default
            assert use_embeddings() is registry.get("embeddings")
            assert use_vector_store() is registry.get("vectorStore")

            async def in_a_task() -> Any:
                return use_cache()

            assert await asyncio.create_task(in_a_task()) is registry.get("cache")
            with bind_platform(other):
                assert use_cache() is other.get("cache") is not registry.get("cache")
                assert isinstance(use_logger(), NullLogger)  # switched off, still usable
            assert use_cache() is registry.get("cache")
        assert current_platform() is None
    finally:
        await registry.stop()
        await other.stop()


async def test_platform_context_middleware_binds_each_request(tmp_path: Path, store: Store) -> None:
    registry = await started_registry(tmp_path / "p", store, {})
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(use_cache())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = httpx.ASGITransport(app=PlatformContextMiddleware(app, registry))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/")).status_code == 204
    finally:
        await registry.stop()
    assert seen == [registry.get("cache")]
    assert current_platform() is None


def test_tokens() -> None:
    assert set(TOKENS) == {
        "cache",
        "storage",
        "eventBus",
        "logger",
        "analytics",
        "llm",
        "embeddings",
        "vectorStore",
    }
