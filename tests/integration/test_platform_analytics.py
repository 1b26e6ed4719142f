"""The store-backed analytics adapter on SQLite and, when it runs here, PostgreSQL:
batching, flush at stop, the buffer bound, reads with filters, stats, outages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from sqlalchemy import func, select

from kblabs.config import load_settings
from kblabs.platform import AdapterRegistry, EventFilters, bind_platform, use_analytics
from kblabs.platform.adapters.sql_analytics import SqlAnalytics, SqlAnalyticsOptions
from kblabs.store import Store
from kblabs.store.tables import analytics_events
from tests.integration.test_store import _drop_postgres_database, _postgres_database

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
QUIET = {"batch_size": 10_000, "flush_interval_ms": 3_600_000}  # only explicit flushes


@pytest.fixture(params=["sqlite", "postgres"])
async def store_env(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {}
        return
    name, reason = await _postgres_database()
    if name is None:
        pytest.skip(reason)
    from tests.integration.test_store import POSTGRES_ADMIN_URL

    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield {"KB_DATABASE_URL": f"{base}/{name}"}
    finally:
        await _drop_postgres_database(name)


def make_store(root: Path, env: dict[str, str], config: dict[str, Any] | None = None) -> Store:
    root.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (root / "kb.config.json").write_text(json.dumps(config))
    settings = load_settings(environ={"KB_PROJECT_ROOT": str(root), **env})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Store(settings)


@pytest.fixture
async def store(tmp_path: Path, store_env: dict[str, str]) -> AsyncIterator[Store]:
    started = make_store(tmp_path / "project", store_env)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    found: list[str] = []
    handler = logger.add(lambda m: found.append(m.record["message"]), level="WARNING")
    yield found
    logger.remove(handler)


async def stored_rows(store: Store) -> int:
    async with store.engine.connect() as connection:
        count = select(func.count()).select_from(analytics_events)
        return int((await connection.execute(count)).scalar_one())


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> None:
    """Poll an async check until it is true or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)


async def started_analytics(store: Store, **options: Any) -> SqlAnalytics:
    analytics = SqlAnalytics(store, SqlAnalyticsOptions(**options))
    await analytics.start()
    return analytics


# --- batching ---------------------------------------------------------------------------


async def test_events_are_written_in_batches_of_batch_size(store: Store) -> None:
    analytics = await started_analytics(store, batch_size=3, flush_interval_ms=3_600_000)
    try:
        await analytics.track("a.one")
        await analytics.track("a.two")
        await asyncio.sleep(0.05)  # room for a wrong early write (not a timing assertion)
        assert await stored_rows(store) == 0
        assert analytics.stats()["buffered"] == 2
        await analytics.track("a.three")
        await eventually(lambda: _rows_equal(store, 3))
        assert analytics.stats() == {"buffered": 0, "written": 3, "dropped": 0, "failedFlushes": 0}
    finally:
        await analytics.stop()


async def _rows_equal(store: Store, expected: int) -> bool:
    return await stored_rows(store) == expected


async def test_events_are_written_after_the_flush_interval(store: Store) -> None:
    analytics = await started_analytics(store, batch_size=1000, flush_interval_ms=30)
    try:
        await analytics.track("tick")
        await eventually(lambda: _rows_equal(store, 1))
    finally:
        await analytics.stop()


async def test_stop_writes_what_is_buffered(store: Store) -> None:
    analytics = await started_analytics(store, **QUIET)
    for n in range(5):
        await analytics.track("on.stop", {"n": n})
    assert await stored_rows(store) == 0
    await analytics.stop()
    assert await stored_rows(store) == 5


async def test_a_full_buffer_drops_new_events_with_one_warning(
    store: Store, warnings: list[str]
) -> None:
    analytics = await started_analytics(store, max_buffer_size=3, **QUIET)
    try:
        for n in range(6):
            await analytics.track("burst", {"n": n})
        assert analytics.stats()["buffered"] == 3
        assert analytics.stats()["dropped"] == 3
        assert sum("buffer full" in w for w in warnings) == 1
        page = await analytics.get_events(EventFilters(type="burst"))
        assert sorted(e["payload"]["n"] for e in page["events"]) == [0, 1, 2]
        assert any("3 events were dropped" in w for w in warnings)
    finally:
        await analytics.stop()


# --- track never raises -----------------------------------------------------------------


async def test_track_never_raises_and_copies_what_it_keeps(
    store: Store, warnings: list[str]
) -> None:
    analytics = await started_analytics(store, **QUIET)
    try:
        payload = {"list": [1], "when": datetime(2026, 1, 2, tzinfo=UTC)}
        await analytics.track("ok.event", payload)
        payload["list"].append(2)  # after track: not recorded
        bad: list[tuple[Any, dict[str, Any]]] = [
            (None, {}),
            ("", {}),
            ("x" * 257, {}),
            ("t", {"payload": ["not", "an", "object"]}),
            ("t", {"payload": {"nan": float("nan")}}),
            ("t", {"payload": {"loop": None}}),
            ("t", {"run_id": "r" * 65}),
            ("t", {"namespace_id": ""}),
            ("t", {"ts": "yesterday"}),
        ]
        bad[5][1]["payload"]["loop"] = bad[5][1]["payload"]  # a cycle
        for event_type, extra in bad:
            await analytics.track(event_type, **extra)
        assert analytics.stats()["dropped"] == len(bad)
        assert sum("dropped an invalid" in w for w in warnings) == len(bad)
        events = (await analytics.get_events(EventFilters(namespace_id=None)))["events"]
        assert [e["type"] for e in events] == ["ok.event"]
        assert events[0]["payload"] == {"list": [1], "when": "2026-01-02 00:00:00+00:00"}
    finally:
        await analytics.stop()


async def test_an_unreachable_store_keeps_events_and_degrades(
    store: Store, warnings: list[str]
) -> None:
    analytics = SqlAnalytics(store, SqlAnalyticsOptions(**QUIET))  # no flush task
    await analytics.track("during.outage")
    await store.stop()  # the database goes away
    await analytics.flush()  # does not raise
    assert analytics.stats()["buffered"] == 1
    assert analytics.stats()["failedFlushes"] == 1
    status, message = analytics.health()
    assert status == "degraded" and "1 buffered" in message
    assert any("cannot write 1 events" in w for w in warnings)

    await store.start()  # back again
    await analytics.flush()
    assert analytics.health()[0] == "ok"
    assert await stored_rows(store) == 1


# --- reading ----------------------------------------------------------------------------


async def seed(analytics: SqlAnalytics) -> None:
    """Seven events over seven minutes, in two namespaces."""
    specs = [
        ("workflow.run.completed", "workflow", {"type": "user", "id": "u1", "name": "Ann"}, 0),
        ("workflow.run.failed", "workflow", {"type": "user", "id": "u2", "name": "Bob"}, 1),
        ("llm.completion.completed", "mind", {"type": "agent", "id": "a1", "name": "bot"}, 2),
        ("workflow.run.completed", "workflow", {"type": "ci", "id": "ci", "name": "CI"}, 3),
        ("llm.completion.completed", "mind", {"type": "user", "id": "u1", "name": "Ann"}, 4),
        ("cache.hit", None, None, 5),
    ]
    for event_type, product, actor, minute in specs:
        await analytics.track(
            event_type,
            {"minute": minute},
            actor=actor,  # type: ignore[arg-type]
            source={"product": product, "version": "1.2.3"} if product else None,
            run_id=f"run-{minute}",
            ts=T0 + timedelta(minutes=minute),
        )
    await analytics.track("workflow.run.completed", {"minute": 6}, namespace_id="team-b")


async def test_get_events_returns_kb_v1_events_newest_first(store: Store) -> None:
    analytics = await started_analytics(store, **QUIET)
    try:
        await seed(analytics)
        page = await analytics.get_events()  # flushes first
        assert page["total"] == 6 and page["hasMore"] is False
        assert [e["payload"]["minute"] for e in page["events"]] == [5, 4, 3, 2, 1, 0]
        first = page["events"][-1]
        assert set(first) == {
            "id",
            "schema",
            "type",
            "ts",
            "ingestTs",
            "source",
            "runId",
            "actor",
            "ctx",
            "payload",
        }
        assert first["schema"] == "kb.v1"
        assert first["type"] == "workflow.run.completed"
        assert first["ts"] == "2024-03-01T12:00:00.000Z"
        assert first["ingestTs"].endswith("Z") and first["ingestTs"] > first["ts"]
        assert first["source"] == {"product": "workflow", "version": "1.2.3"}
        assert first["runId"] == "run-0"
        assert first["actor"] == {"type": "user", "id": "u1", "name": "Ann"}
        assert first["ctx"] is None
        default_source = page["events"][0]["source"]
        assert default_source["product"] == "kblabs" and default_source["version"]
    finally:
        await analytics.stop()


async def test_get_events_filters(store: Store) -> None:
    analytics = await started_analytics(store, **QUIET)
    try:
        await seed(analytics)

        async def minutes(**filters: Any) -> list[int]:
            page = await analytics.get_events(EventFilters(**filters))
            return [e["payload"]["minute"] for e in page["events"]]

        assert await minutes(type="workflow.run.completed") == [3, 0]
        assert await minutes(type=["workflow.run.failed", "cache.hit"]) == [5, 1]
        assert await minutes(source="mind") == [4, 2]
        assert await minutes(actor="u1") == [4, 0]
        assert await minutes(run_id="run-3") == [3]
        # from/to are inclusive, and any time zone works
        assert await minutes(from_ts=T0 + timedelta(minutes=2)) == [5, 4, 3, 2]
        assert await minutes(to_ts=T0 + timedelta(minutes=1)) == [1, 0]
        local = timezone_plus_two()
        assert await minutes(
            from_ts=(T0 + timedelta(minutes=1)).astimezone(local),
            to_ts=(T0 + timedelta(minutes=3)).astimezone(local),
        ) == [3, 2, 1]
        assert await minutes(type="workflow.run.completed", from_ts=T0 + timedelta(seconds=1)) == [
            3
        ]
        assert await minutes(type="nothing.like.this") == []
        # namespaces: the default one, another one, all
        assert await minutes(namespace_id="team-b") == [6]
        assert len(await minutes(namespace_id=None)) == 7
    finally:
        await analytics.stop()


def timezone_plus_two() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=2))


async def test_get_events_pages_with_limit_and_offset(store: Store) -> None:
    analytics = await started_analytics(store, **QUIET)
    try:
        await seed(analytics)
        seen = []
        offset = 0
        while True:
            page = await analytics.get_events(EventFilters(limit=4, offset=offset))
            assert page["total"] == 6
            seen += [e["payload"]["minute"] for e in page["events"]]
            if not page["hasMore"]:
                break
            offset += 4
        assert seen == [5, 4, 3, 2, 1, 0]
        beyond = await analytics.get_events(EventFilters(limit=4, offset=100))
        assert beyond == {"events": [], "total": 6, "hasMore": False}
        assert EventFilters(limit=10_000).limit == 500
        assert EventFilters(limit=0, offset=-3) == EventFilters(limit=1, offset=0)
    finally:
        await analytics.stop()


async def test_get_stats(store: Store) -> None:
    analytics = await started_analytics(store, **QUIET)
    try:
        await seed(analytics)
        assert await analytics.get_stats() == {
            "totalEvents": 6,
            "byType": {
                "workflow.run.completed": 2,
                "workflow.run.failed": 1,
                "llm.completion.completed": 2,
                "cache.hit": 1,
            },
            "bySource": {"workflow": 3, "mind": 2, "kblabs": 1},
            "byActor": {"u1": 2, "u2": 1, "a1": 1, "ci": 1},
        }
        mind = await analytics.get_stats(EventFilters(source="mind"))
        assert mind == {
            "totalEvents": 2,
            "byType": {"llm.completion.completed": 2},
            "bySource": {"mind": 2},
            "byActor": {"a1": 1, "u1": 1},
        }
        team_b = await analytics.get_stats(EventFilters(namespace_id="team-b"))
        assert team_b["totalEvents"] == 1 and team_b["byActor"] == {}
    finally:
        await analytics.stop()


# --- through the registry and the hooks -------------------------------------------------


async def test_default_registry_records_analytics_into_the_store(
    tmp_path: Path, store_env: dict[str, str]
) -> None:
    config = {"platform": {"adapterOptions": {"analytics": {"product": "studio"}}}}
    store = make_store(tmp_path / "project", store_env, config)
    await store.start()
    registry = AdapterRegistry(store.settings, store)
    await registry.start()
    try:
        with bind_platform(registry):
            analytics = use_analytics()
            assert analytics is not None
            await analytics.track("plugin.command.completed", {"ok": True}, run_id="r1")
        assert registry.configured()["analytics"] == "sqlite"
        assert registry.health()[0] == "ok"
    finally:
        await registry.stop()  # flushes
    try:
        assert await stored_rows(store) == 1
        async with store.engine.connect() as connection:
            row = (await connection.execute(select(analytics_events))).mappings().one()
        assert row["type"] == "plugin.command.completed"
        assert row["namespace_id"] == "default"
        assert row["source"]["product"] == "studio"
        assert row["payload"] == {"ok": True}
    finally:
        await store.stop()
