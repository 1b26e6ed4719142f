"""/api/v1/analytics/… and /api/v1/adapters/{adapter}/usage|daily-stats against the real
app (SQLite file); the SQL grouping also on PostgreSQL when it runs here."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kblabs.platform.adapters.sql_analytics import SqlAnalytics, SqlAnalyticsOptions
from kblabs.store import Store
from tests.conftest import AppClient, running_app
from tests.integration.test_platform_analytics import make_store, store_env  # noqa: F401

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC).replace(microsecond=0)


def analytics_of(app_client: AppClient) -> SqlAnalytics:
    return app_client.app.state.runtime.adapters.get("analytics")  # type: ignore[attr-defined]


async def get(app_client: AppClient, path: str, **params: Any) -> httpx.Response:
    return await app_client.client.get(path, params=params, headers=app_client.auth)


async def data(app_client: AppClient, path: str, **params: Any) -> Any:
    response = await get(app_client, path, **params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True and "requestId" in body["meta"]
    return body["data"]


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False
    return body["error"]


async def seed(analytics: SqlAnalytics) -> None:
    """Six events over three days, two namespaces, two sources, two actors."""
    track = analytics.track
    await track(
        "plugin.command.completed",
        {"n": 1},
        ts=NOW - timedelta(days=2),
        run_id="r1",
        actor={"type": "user", "id": "ann"},
        source={"product": "cli", "version": "1"},
    )
    await track(
        "plugin.command.failed",
        {"n": 2},
        ts=NOW - timedelta(days=2, hours=-1),
        run_id="r1",
        actor={"type": "user", "id": "ann"},
    )
    await track(
        "workflow.run.completed",
        {"n": 3},
        ts=NOW - timedelta(days=1),
        actor={"type": "ci", "id": "bot"},
    )
    await track(
        "workflow.run.failed",
        {"n": 4},
        ts=NOW - timedelta(hours=1),
        actor={"type": "ci", "id": "bot"},
    )
    await track("workflow.run.completed", {"n": 5}, ts=NOW)
    await track("workflow.run.completed", {"n": 6}, ts=NOW, namespace_id="other")


# --- events and stats ---------------------------------------------------------------------


async def test_events_filters_and_paging(app_client: AppClient) -> None:
    await seed(analytics_of(app_client))
    events = "/api/v1/analytics/events"
    page = await data(app_client, events)
    assert page["total"] == 5 and page["hasMore"] is False  # "other" is not ours
    assert [e["payload"]["n"] for e in page["events"]] == [5, 4, 3, 2, 1]  # newest first
    first = page["events"][0]
    assert first["schema"] == "kb.v1" and first["ts"].endswith("Z")

    page = await data(app_client, events, limit=2, offset=1)
    assert [e["payload"]["n"] for e in page["events"]] == [4, 3]
    assert page["total"] == 5 and page["hasMore"] is True

    # type: repeated and comma-separated
    response = await app_client.client.get(
        events + "?type=plugin.command.completed,plugin.command.failed&type=workflow.run.failed",
        headers=app_client.auth,
    )
    assert sorted(e["payload"]["n"] for e in response.json()["data"]["events"]) == [1, 2, 4]
    assert [
        e["payload"]["n"] for e in (await data(app_client, events, source="cli"))["events"]
    ] == [1]
    by_actor = await data(app_client, events, actor="bot")
    assert [e["payload"]["n"] for e in by_actor["events"]] == [4, 3]
    assert (await data(app_client, events, runId="r1"))["total"] == 2
    window = await data(
        app_client,
        events,
        **{"from": (NOW - timedelta(days=1, hours=1)).isoformat(), "to": "30m"},
    )
    assert [e["payload"]["n"] for e in window["events"]] == [4, 3]

    # an admin may read another namespace, or all of them
    assert (await data(app_client, events, namespace="other"))["total"] == 1
    assert (await data(app_client, events, namespace="*"))["total"] == 6


async def test_events_parameter_errors_name_the_parameter(app_client: AppClient) -> None:
    events = "/api/v1/analytics/events"
    for params, field in (
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-45"}, "to"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
    ):
        error = error_of(await get(app_client, events, **params), 400)
        assert error["code"] == "VALIDATION_ERROR"
        assert error["details"][0]["field"] == field, (params, error)
        assert error["message"].startswith(f"{field}:")


async def test_stats_count_by_type_source_and_actor(app_client: AppClient) -> None:
    await seed(analytics_of(app_client))
    stats = await data(app_client, "/api/v1/analytics/stats")
    assert stats == {
        "totalEvents": 5,
        "byType": {
            "plugin.command.completed": 1,
            "plugin.command.failed": 1,
            "workflow.run.completed": 2,
            "workflow.run.failed": 1,
        },
        "bySource": {"cli": 1, "kblabs": 4},
        "byActor": {"ann": 2, "bot": 2},
    }
    only_ci = await data(app_client, "/api/v1/analytics/stats", actor="bot")
    assert only_ci["totalEvents"] == 2 and only_ci["byType"] == {
        "workflow.run.completed": 1,
        "workflow.run.failed": 1,
    }


async def test_buffer_and_dlq_status(app_client: AppClient) -> None:
    analytics = analytics_of(app_client)
    await analytics.track("bad", payload="not an object")  # type: ignore[arg-type]
    buffer = await data(app_client, "/api/v1/analytics/buffer/status")
    assert buffer["maxSize"] == 10_000 and buffer["writing"] is True
    assert set(buffer) >= {"size", "batchSize", "flushIntervalMs", "written", "failedFlushes"}
    dlq = await data(app_client, "/api/v1/analytics/dlq/status")
    assert dlq["dropped"] == 1 and dlq["lastError"] is None


async def test_a_viewer_reads_only_its_namespace(app_client: AppClient) -> None:
    await seed(analytics_of(app_client))
    auth = app_client.app.state.runtime.auth  # type: ignore[attr-defined]
    key = await auth.create_api_key("reader", "viewer", "other")
    headers = {"Authorization": f"Bearer {key['token']}"}
    mine = await app_client.client.get("/api/v1/analytics/events", headers=headers)
    assert [e["payload"]["n"] for e in mine.json()["data"]["events"]] == [6]
    for namespace in ("default", "*"):
        response = await app_client.client.get(
            "/api/v1/analytics/stats", params={"namespace": namespace}, headers=headers
        )
        assert error_of(response, 403)["code"] == "FORBIDDEN"
    assert (await app_client.client.get("/api/v1/analytics/events")).status_code == 401


async def test_analytics_switched_off_answers_501(project: Path) -> None:
    async with running_app(project, {"platform": {"adapters": {"analytics": None}}}) as client:
        for path in (
            "/api/v1/analytics/events",
            "/api/v1/analytics/stats",
            "/api/v1/analytics/buffer/status",
            "/api/v1/analytics/dlq/status",
            "/api/v1/adapters/llm/usage",
            "/api/v1/adapters/cache/daily-stats",
        ):
            error = error_of(await get(client, path), 501)
            assert error["code"] == "ANALYTICS_NOT_IMPLEMENTED", path
        # and nothing is wrapped: the cache is the adapter itself
        from kblabs.platform.usage import Tracked

        assert not isinstance(client.app.state.runtime.adapters.get("cache"), Tracked)  # type: ignore[attr-defined]


# --- adapter usage --------------------------------------------------------------------------


async def llm_events(analytics: SqlAnalytics) -> None:
    """What the LLM adapter records (it is not wrapped: it tracks itself)."""

    def payload(model: str, tier: str, prompt: int, completion: int, cost: Any, ms: float):
        return {
            "model": model,
            "tier": tier,
            "provider": "openai",
            "promptTokens": prompt,
            "completionTokens": completion,
            "totalTokens": prompt + completion,
            "costUsd": cost,
            "durationMs": ms,
            "retries": 0,
        }

    await analytics.track("llm.completion.completed", payload("gpt-a", "small", 10, 5, 0.001, 100))
    await analytics.track("llm.completion.completed", payload("gpt-a", "small", 20, 10, 0.002, 300))
    await analytics.track(
        "llm.chatWithTools.completed", payload("gpt-b", "large", 100, 50, 0.1, 200)
    )
    await analytics.track("llm.stream.completed", payload("local", "medium", 7, 3, None, 400))
    failed = payload("gpt-b", "large", 0, 0, None, 50) | {"error": {"code": "LLM_TIMEOUT"}}
    await analytics.track("llm.completion.failed", failed)
    old = NOW - timedelta(days=40)  # outside the default 30-day window
    await analytics.track(
        "llm.completion.completed", payload("gpt-a", "small", 1, 1, 1.0, 1), ts=old
    )
    await analytics.track(
        "llm.completion.completed", payload("gpt-a", "small", 5, 5, 0.5, 10), namespace_id="other"
    )


async def test_llm_usage_sums_tokens_costs_and_groups_by_model_and_tier(
    app_client: AppClient,
) -> None:
    await llm_events(analytics_of(app_client))
    usage = await data(app_client, "/api/v1/adapters/llm/usage")
    assert usage["totalCalls"] == 5 and usage["failedCalls"] == 1
    assert usage["promptTokens"] == 137 and usage["completionTokens"] == 68
    assert usage["totalTokens"] == 205
    assert usage["totalCostUsd"] == pytest.approx(0.103)
    assert usage["avgDurationMs"] == pytest.approx(210.0)  # (100+300+200+400+50)/5
    assert usage["byModel"] == {
        "gpt-a": {"calls": 2, "failed": 0, "tokens": 45, "costUsd": 0.003},
        "gpt-b": {"calls": 2, "failed": 1, "tokens": 150, "costUsd": 0.1},
        "local": {"calls": 1, "failed": 0, "tokens": 10, "costUsd": 0.0},
    }
    assert usage["byTier"]["small"]["calls"] == 2 and usage["byTier"]["large"]["failed"] == 1
    assert usage["byOperation"]["completion"] == {
        "calls": 3,
        "failed": 1,
        "avgDurationMs": pytest.approx(150.0),
    }
    assert set(usage["byOperation"]) == {"completion", "chatWithTools", "stream"}

    wider = await data(app_client, "/api/v1/adapters/llm/usage", **{"from": "60d"})
    assert wider["totalCalls"] == 6 and wider["totalCostUsd"] == pytest.approx(1.103)
    everyone = await data(app_client, "/api/v1/adapters/llm/usage", namespace="*")
    assert everyone["totalCalls"] == 6


async def test_wrapped_adapters_show_up_in_their_usage(app_client: AppClient) -> None:
    registry = app_client.app.state.runtime.adapters  # type: ignore[attr-defined]
    cache, storage = registry.get("cache"), registry.get("storage")
    await cache.set("a", 1)
    await cache.get("a")
    await cache.get("a")
    await cache.get("b")
    await storage.write("u.bin", b"x" * 100)
    await storage.read("u.bin")
    await storage.read("u.bin")
    analytics = analytics_of(app_client)
    await analytics.track(
        "embeddings.embed.completed", {"adapter": "t", "count": 8, "durationMs": 4}
    )
    await analytics.track("embeddings.embed.failed", {"adapter": "t", "count": 2, "durationMs": 1})
    await analytics.track("vectorStore.upsert.completed", {"count": 8, "durationMs": 3})
    await analytics.track("vectorStore.search.completed", {"limit": 5, "results": 5})
    await analytics.track("vectorStore.search.completed", {"limit": 5, "results": 2})

    cache_usage = await data(app_client, "/api/v1/adapters/cache/usage")
    assert cache_usage["totalCalls"] == 4 and cache_usage["failedCalls"] == 0
    assert cache_usage["hits"] == 2 and cache_usage["misses"] == 1
    assert cache_usage["hitRate"] == pytest.approx(0.6667)
    assert cache_usage["byOperation"]["get"]["calls"] == 3
    assert cache_usage["byOperation"]["set"]["calls"] == 1
    storage_usage = await data(app_client, "/api/v1/adapters/storage/usage")
    assert storage_usage["bytesRead"] == 200 and storage_usage["bytesWritten"] == 100
    assert storage_usage["totalCalls"] == 3
    embeddings = await data(app_client, "/api/v1/adapters/embeddings/usage")
    assert embeddings["texts"] == 8 and embeddings["totalCalls"] == 2
    assert embeddings["failedCalls"] == 1
    vectors = await data(app_client, "/api/v1/adapters/vectorstore/usage")
    assert (vectors["searches"], vectors["upserts"], vectors["records"]) == (2, 1, 8)

    error = error_of(await get(app_client, "/api/v1/adapters/teleporter/usage"), 404)
    assert error["code"] == "ADAPTER_NOT_FOUND"
    error = error_of(await get(app_client, "/api/v1/adapters/llm/usage", to="nonsense"), 400)
    assert error["details"][0]["field"] == "to"


# --- daily stats -----------------------------------------------------------------------------


async def test_daily_stats_buckets_breakdown_and_metrics(app_client: AppClient) -> None:
    analytics = analytics_of(app_client)
    day = datetime(2026, 3, 4, tzinfo=UTC)  # a Wednesday
    for when, model, tokens, cost in (
        (day + timedelta(hours=1), "gpt-a", 10, 0.01),
        (day + timedelta(hours=1, minutes=30), "gpt-b", 20, 0.02),
        (day + timedelta(hours=23), "gpt-a", 30, 0.03),
        (day + timedelta(days=2, hours=5), "gpt-a", 40, 0.04),
        (day + timedelta(days=40), "gpt-a", 50, 0.05),  # outside the window
    ):
        payload = {"model": model, "totalTokens": tokens, "costUsd": cost, "durationMs": 10}
        await analytics.track("llm.completion.completed", payload, ts=when)
    await analytics.track("llm.completion.failed", {"model": "gpt-b", "durationMs": 30}, ts=day)

    window = {
        "from": day.isoformat(),
        "to": (day + timedelta(days=3) - timedelta(seconds=1)).isoformat(),
    }
    stats = await data(
        app_client,
        "/api/v1/adapters/llm/daily-stats",
        **window,
        breakdownBy="payload.model",
        metrics="calls,failed,tokens,costUsd,durationMs",
    )
    assert stats["groupBy"] == "day" and stats["breakdownBy"] == "payload.model"
    assert [b["period"] for b in stats["buckets"]] == ["2026-03-04", "2026-03-05", "2026-03-06"]
    first, empty, last = stats["buckets"]
    assert (first["calls"], first["failed"], first["tokens"]) == (4, 1, 60)
    assert first["costUsd"] == pytest.approx(0.06) and first["durationMs"] == pytest.approx(15.0)
    assert first["breakdown"]["gpt-a"] == {
        "calls": 2,
        "failed": 0,
        "tokens": 40,
        "costUsd": pytest.approx(0.04),
        "durationMs": 10.0,
    }
    assert first["breakdown"]["gpt-b"]["failed"] == 1
    assert empty == {
        "period": "2026-03-05",
        "calls": 0,
        "failed": 0,
        "tokens": 0,
        "costUsd": 0.0,
        "durationMs": None,
        "breakdown": {},
    }
    assert last["tokens"] == 40 and set(last["breakdown"]) == {"gpt-a"}

    hourly = await data(
        app_client, "/api/v1/adapters/llm/daily-stats", **window, groupBy="hour", metrics="calls"
    )
    assert len(hourly["buckets"]) == 72
    busy = {b["period"]: b["calls"] for b in hourly["buckets"] if b["calls"]}
    assert busy == {
        "2026-03-04T00:00:00Z": 1,
        "2026-03-04T01:00:00Z": 2,
        "2026-03-04T23:00:00Z": 1,
        "2026-03-06T05:00:00Z": 1,
    }
    weekly = await data(app_client, "/api/v1/adapters/llm/daily-stats", **window, groupBy="week")
    assert [(b["period"], b["calls"]) for b in weekly["buckets"]] == [("2026-03-02", 5)]
    assert weekly["metrics"] == ["calls", "failed", "tokens", "costUsd", "durationMs"]
    monthly = await data(
        app_client,
        "/api/v1/adapters/llm/daily-stats",
        groupBy="month",
        **{"from": day.isoformat(), "to": (day + timedelta(days=45)).isoformat()},
    )
    assert [(b["period"], b["calls"]) for b in monthly["buckets"]] == [
        ("2026-03", 5),
        ("2026-04", 1),
    ]


async def test_daily_stats_parameter_errors(app_client: AppClient) -> None:
    path = "/api/v1/adapters/cache/daily-stats"
    for params, field in (
        ({"groupBy": "fortnight"}, "groupBy"),
        ({"metrics": "calls,vibes"}, "metrics"),
        ({"breakdownBy": "payload"}, "breakdownBy"),
        ({"breakdownBy": "secrets.key"}, "breakdownBy"),
        ({"breakdownBy": "payload.a b"}, "breakdownBy"),
        ({"groupBy": "hour", "from": "400d"}, "groupBy"),  # more than 2000 buckets
        ({"from": "1d", "to": "2d"}, "from"),
    ):
        error = error_of(await get(app_client, path, **params), 400)
        assert error["code"] == "VALIDATION_ERROR"
        assert error["details"][0]["field"] == field, (params, error)
    ok = await data(app_client, path)
    assert len(ok["buckets"]) in (30, 31)  # the last 30 days, both ends included
    assert ok["metrics"] == ["calls", "hits", "misses", "hitRate", "durationMs"]


# --- retention ---------------------------------------------------------------------------------


async def test_retention_deletes_old_events_only(project: Path) -> None:
    async with running_app(project) as client:  # the default keeps 90 days
        analytics = analytics_of(client)
        await analytics.track("old.one", ts=NOW - timedelta(days=6))
        await analytics.track("new.one", ts=NOW - timedelta(days=4))
        assert (await data(client, "/api/v1/analytics/events"))["total"] == 2
    config = {"observability": {"analyticsRetentionDays": 5}}
    async with running_app(project, config) as client:
        analytics = analytics_of(client)
        # the flush task makes a retention pass after its first flush, then hourly
        deadline = time.monotonic() + 15
        while analytics.purged == 0:
            assert time.monotonic() < deadline, "no retention pass"
            await asyncio.sleep(0.05)
        page = await data(client, "/api/v1/analytics/events")
        assert [e["type"] for e in page["events"]] == ["new.one"]
        assert await analytics.purge_older_than(NOW) == 1
        assert (await data(client, "/api/v1/analytics/events"))["total"] == 0


# --- the SQL on both databases -------------------------------------------------------------


async def test_grouping_in_sql_on_each_database(
    tmp_path: Path,
    store_env: dict[str, str],  # noqa: F811
) -> None:
    store: Store = make_store(tmp_path / "project", store_env)
    await store.start()
    analytics = SqlAnalytics(store, SqlAnalyticsOptions(flush_interval_ms=3_600_000))
    await analytics.start()
    try:
        sunday = datetime(2026, 3, 8, 23, 30, tzinfo=UTC)
        for when, model in ((sunday, "m1"), (sunday + timedelta(hours=1), "m2")):
            payload = {"model": model, "totalTokens": 5, "costUsd": 0.5, "durationMs": 2}
            await analytics.track("llm.completion.completed", payload, ts=when)
        await analytics.track("llm.completion.completed", {"model": None}, ts=sunday)
        window = {"from_ts": sunday - timedelta(days=1), "to_ts": sunday + timedelta(days=1)}
        weekly = await analytics.get_daily_stats(
            "llm", group_by="week", breakdown_by="payload.model", **window
        )
        # Sunday belongs to the week of Monday the 2nd; Monday the 9th starts a new one
        assert [(b["period"], b["calls"]) for b in weekly["buckets"]] == [
            ("2026-03-02", 2),
            ("2026-03-09", 1),
        ]
        assert weekly["buckets"][0]["breakdown"] == {
            "(none)": {"calls": 1, "failed": 0, "tokens": 0, "costUsd": 0.0, "durationMs": None},
            "m1": {"calls": 1, "failed": 0, "tokens": 5, "costUsd": 0.5, "durationMs": 2.0},
        }
        hourly = await analytics.get_daily_stats("llm", group_by="hour", **window)
        busy = [(b["period"], b["calls"]) for b in hourly["buckets"] if b["calls"]]
        assert busy == [("2026-03-08T23:00:00Z", 2), ("2026-03-09T00:00:00Z", 1)]
        usage = await analytics.get_usage("llm", **window)
        assert usage["totalCalls"] == 3 and usage["totalTokens"] == 10
        assert usage["byModel"]["(none)"]["calls"] == 1
    finally:
        await analytics.stop()
        await store.stop()
