"""/api/v1/logs…: log records persisted by the log sink, read back through the real app
(SQLite file); the live tail over SSE and persistence across a restart against a real
server process."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from loguru import logger
from sqlalchemy import create_engine, insert

from kblabs.observability.log_store import LogQuery, LogStore
from kblabs.store import Store
from kblabs.store.tables import log_records
from tests.conftest import AppClient, make_settings, running_app
from tests.integration.test_platform_analytics import make_store, store_env  # noqa: F401

pytestmark = pytest.mark.anyio


def log_store_of(app_client: AppClient) -> LogStore:
    return app_client.app.state.log_store  # type: ignore[attr-defined]


async def logs(app_client: AppClient, path: str = "/api/v1/logs", **params: Any) -> Any:
    response = await app_client.client.get(path, params=params, headers=app_client.auth)
    assert response.status_code == 200, response.text
    assert response.json()["ok"] is True
    return response.json()["data"]


def marker() -> str:
    return f"mark-{uuid.uuid4().hex[:10]}"


def old_row(record_id: str, age: timedelta, message: str) -> dict[str, Any]:
    return {
        "id": record_id,
        "ts": datetime.now(UTC) - age,
        "level": "info",
        "level_no": 20,
        "message": message,
        "module": "test",
        "plugin": None,
        "request_id": None,
        "trace_id": None,
        "execution_id": None,
        "namespace_id": None,
        "fields": None,
    }


# --- persistence and reads ------------------------------------------------------------------


async def test_a_request_leaves_records_findable_by_its_request_id(app_client: AppClient) -> None:
    rid = f"req-{uuid.uuid4().hex[:8]}"
    response = await app_client.client.get(
        "/api/v1/health", headers={**app_client.auth, "X-Request-Id": rid}
    )
    assert response.status_code == 200
    found = await logs(app_client, requestId=rid)
    assert found["total"] == 1 and found["hasMore"] is False
    record = found["logs"][0]
    assert record["module"] == "access" and record["level"] == "info"
    assert record["msg"].startswith("GET /api/v1/health 200")
    assert record["requestId"] == rid and record["time"].endswith("Z")
    assert record["fields"]["status"] == 200 and record["fields"]["route"] == "/api/v1/health"
    assert len(record["id"]) == 26

    one = await logs(app_client, f"/api/v1/logs/{record['id']}")
    assert one == record
    related = await logs(app_client, f"/api/v1/logs/{record['id']}/related")
    assert related["requestId"] == rid and [r["id"] for r in related["logs"]] == [record["id"]]

    missing = await app_client.client.get("/api/v1/logs/01NOTAREALRECORD", headers=app_client.auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "LOG_NOT_FOUND"
    assert (await app_client.client.get(f"/api/v1/logs/{record['id']}")).status_code == 401


async def test_filters_select_what_they_name(app_client: AppClient) -> None:
    mark = marker()
    before = datetime.now(UTC) - timedelta(seconds=1)
    logger.bind(plugin="@kb/alpha", runId="run-1", traceId=f"{mark}-t", attempt=3).warning(
        "alpha warns about the Needle {}", mark
    )
    logger.bind(plugin="@kb/beta", executionId="ex-2", traceId=f"{mark}-t").error(
        "beta fails {} with token=s3cret-value", mark
    )
    logger.bind(plugin="@kb/alpha").info("alpha is fine {}", mark)
    logger.debug("a debug line {} is never stored", mark)

    def messages(page: dict[str, Any]) -> list[str]:
        return [r["msg"].split(" ", 1)[0] for r in page["logs"]]

    assert messages(await logs(app_client, search=mark)) == ["alpha", "beta", "alpha"]
    assert messages(await logs(app_client, search=mark, level="warning")) == ["beta", "alpha"]
    assert messages(await logs(app_client, search=mark, level="warn")) == ["beta", "alpha"]
    assert messages(await logs(app_client, search=mark, level="error,info")) == ["alpha", "beta"]
    assert messages(await logs(app_client, search=mark, level="debug")) == [
        "alpha",
        "beta",
        "alpha",
    ]  # debug lines were not kept at all
    assert (await logs(app_client, search=mark, plugin="@kb/alpha"))["total"] == 2
    assert messages(await logs(app_client, executionId="run-1")) == ["alpha"]
    assert messages(await logs(app_client, executionId="ex-2")) == ["beta"]
    assert (await logs(app_client, traceId=f"{mark}-t"))["total"] == 2
    assert (await logs(app_client, search=f"NEEDLE {mark}".lower()))["total"] == 1
    assert (await logs(app_client, search=mark, to=before.isoformat()))["total"] == 0
    assert (await logs(app_client, search=mark, **{"from": "1m"}))["total"] == 3

    warned = (await logs(app_client, search=mark, level="warning", plugin="@kb/alpha"))["logs"][0]
    assert warned["plugin"] == "@kb/alpha" and warned["executionId"] == "run-1"
    assert warned["fields"] == {"attempt": 3}
    failed = (await logs(app_client, executionId="ex-2"))["logs"][0]
    assert "s3cret-value" not in failed["msg"] and "token=[REDACTED]" in failed["msg"]
    related = await logs(app_client, f"/api/v1/logs/{failed['id']}/related")
    assert [r["msg"].split(" ", 1)[0] for r in related["logs"]] == ["alpha", "beta"]  # oldest first


async def test_paging_is_newest_first_with_total_and_has_more(app_client: AppClient) -> None:
    mark = marker()
    for n in range(7):
        logger.info("line {} {}", n, mark)
    page = await logs(app_client, search=mark, limit=3)
    assert [r["msg"] for r in page["logs"]] == [f"line {n} {mark}" for n in (6, 5, 4)]
    assert page["total"] == 7 and page["hasMore"] is True
    last = await logs(app_client, search=mark, limit=3, offset=6)
    assert [r["msg"] for r in last["logs"]] == [f"line 0 {mark}"] and last["hasMore"] is False
    ids = [r["id"] for r in (await logs(app_client, search=mark))["logs"]]
    assert ids == sorted(ids, reverse=True)  # ULIDs: time order


async def test_bad_parameters_name_the_parameter(app_client: AppClient) -> None:
    for params, field in (
        ({"level": "loud"}, "level"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"offset": "x"}, "offset"),
        ({"from": "last tuesday"}, "from"),
        ({"search": "x" * 1001}, "search"),
    ):
        for path in ("/api/v1/logs", "/api/v1/logs/stats"):
            if path.endswith("stats") and field in ("limit", "offset"):
                continue
            response = await app_client.client.get(path, params=params, headers=app_client.auth)
            assert response.status_code == 400, (path, params, response.text)
            assert response.json()["error"]["details"][0]["field"] == field


async def test_stats_count_by_level_and_plugin(app_client: AppClient) -> None:
    mark = marker()
    logger.bind(plugin="@kb/one").info("one {}", mark)
    logger.bind(plugin="@kb/one").warning("two {}", mark)
    logger.bind(plugin="@kb/two").error("three {}", mark)
    logger.info("four {}", mark)
    stats = await logs(app_client, "/api/v1/logs/stats", search=mark)
    assert stats["total"] == 4
    assert stats["byLevel"] == {"info": 2, "warning": 1, "error": 1}
    assert stats["byPlugin"] == {"@kb/one": 2, "@kb/two": 1}
    assert stats["oldest"] <= stats["newest"]
    assert stats["sink"]["persistLevel"] == "info" and stats["sink"]["dropped"] == 0
    everything = await logs(app_client, "/api/v1/logs/stats")
    assert everything["total"] > 4  # the startup lines are there too


async def test_an_internal_error_is_stored_with_its_traceback(app_client: AppClient) -> None:
    rid = f"boom-{uuid.uuid4().hex[:8]}"
    response = await app_client.client.get(
        "/api/v1/debug/error", headers={**app_client.auth, "X-Request-Id": rid}
    )
    assert response.status_code == 500
    found = await logs(app_client, requestId=rid, level="error")
    assert found["total"] == 1
    assert "provoked internal error" in found["logs"][0]["fields"]["exception"]


async def test_non_admins_see_only_their_namespace(app_client: AppClient) -> None:
    mark = marker()
    logger.bind(tenantId="default").info("tenant line {}", mark)
    logger.bind(namespaceId="other").info("other tenant line {}", mark)
    logger.info("platform line {}", mark)
    auth = app_client.app.state.runtime.auth  # type: ignore[attr-defined]
    viewer = {
        "Authorization": f"Bearer {(await auth.create_api_key('v', 'viewer', 'default'))['token']}"
    }
    seen = await app_client.client.get("/api/v1/logs", params={"search": mark}, headers=viewer)
    assert [r["msg"] for r in seen.json()["data"]["logs"]] == [f"tenant line {mark}"]
    assert seen.json()["data"]["logs"][0]["namespaceId"] == "default"
    platform = (await logs(app_client, search=f"platform line {mark}"))["logs"][0]
    hidden = await app_client.client.get(f"/api/v1/logs/{platform['id']}", headers=viewer)
    assert hidden.status_code == 404
    other = await app_client.client.get(
        "/api/v1/logs", params={"namespace": "other"}, headers=viewer
    )
    assert other.status_code == 403
    stats = await app_client.client.get(
        "/api/v1/logs/stats", params={"search": mark}, headers=viewer
    )
    assert stats.json()["data"]["total"] == 1
    # the admin sees everything, or one namespace when asked
    assert (await logs(app_client, search=mark))["total"] == 3
    assert (await logs(app_client, search=mark, namespace="other"))["total"] == 1


async def test_retention_purge_deletes_old_rows_only(app_client: AppClient) -> None:
    store: Store = app_client.app.state.runtime.store  # type: ignore[attr-defined]
    mark = marker()
    rows = [
        old_row("00000000000000000000000OLD", timedelta(days=8), f"old {mark}"),
        old_row("00000000000000000000000NEW", timedelta(days=6), f"recent {mark}"),
    ]
    async with store.engine.begin() as connection:
        await connection.execute(insert(log_records), rows)
    assert (await logs(app_client, search=mark))["total"] == 2
    deleted = await log_store_of(app_client).purge_older_than(datetime.now(UTC) - timedelta(days=7))
    assert deleted == 1
    assert [r["msg"] for r in (await logs(app_client, search=mark))["logs"]] == [f"recent {mark}"]
    assert (await logs(app_client, search="Needle-never-logged"))["total"] == 0


async def test_persist_level_and_streaming_switches(project: Path) -> None:
    config = {"observability": {"logPersistLevel": "warn", "logBufferSize": 0}}
    async with running_app(project, config, KB_DEBUG_ROUTES="1") as client:
        mark = marker()
        logger.info("kept only at info {}", mark)
        logger.warning("kept at warning {}", mark)
        found = await logs(client, search=mark)
        assert [r["level"] for r in found["logs"]] == ["warning"]
        response = await client.client.get("/api/v1/logs/stream", headers=client.auth)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "LOG_STREAMING_DISABLED"
        assert "Log streaming not enabled" in response.json()["error"]["message"]


async def test_records_wait_and_then_drop_while_the_database_is_down(project: Path) -> None:
    settings = make_settings(project)
    down = Store(settings)  # never started: every write fails
    sink = LogStore(settings, down, flush_interval_s=3600, batch_size=2, max_pending=3)
    await sink.start()
    try:
        mark = marker()
        for n in range(5):
            logger.info("waiting {} {}", n, mark)
        await sink.flush()
        assert sink.health()[0] == "degraded" and sink.failed_flushes >= 1
        assert sink.dropped >= 2 and sink.status()["pending"] == 3
        waiting = [row["message"] for row in sink._pending]
        assert waiting == [f"waiting {n} {mark}" for n in range(3)]  # its own warning is not
    finally:
        await sink.stop()


# --- a real server: the live tail and a restart ----------------------------------------------


async def next_event(lines: AsyncIterator[str]) -> dict[str, Any]:
    """The data of the next `event: log` frame."""
    event = None
    async for line in lines:
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: ") and event == "log":
            return json.loads(line[len("data: ") :])
    raise AssertionError("the stream ended")


async def event_for(lines: AsyncIterator[str], request_id: str) -> dict[str, Any]:
    while True:
        record = await next_event(lines)
        if record["requestId"] == request_id:
            return record


async def test_the_live_tail_streams_records_logged_after_connecting(
    live_server_factory,
) -> None:
    server = live_server_factory(KB_DEBUG_ROUTES="1").start()
    async with httpx.AsyncClient(base_url=server.url, headers=server.auth, timeout=30) as client:
        async with client.stream("GET", "/api/v1/logs/stream", params={"level": "error"}) as errors:
            assert errors.status_code == 200
            assert errors.headers["content-type"].startswith("text/event-stream")
            error_lines = errors.aiter_lines()
            assert await anext(error_lines) == ": connected"
            async with client.stream("GET", "/api/v1/logs/stream") as everything:
                all_lines = everything.aiter_lines()
                assert await anext(all_lines) == ": connected"
                info = await client.get("/api/v1/health", headers={"X-Request-Id": "sse-info"})
                boom = await client.get("/api/v1/debug/error", headers={"X-Request-Id": "sse-err"})
                assert (info.status_code, boom.status_code) == (200, 500)
                # unfiltered: the access line of the first request arrives
                record = await asyncio.wait_for(event_for(all_lines, "sse-info"), 20)
                assert record["module"] == "access" and record["level"] == "info"
                assert record["msg"].startswith("GET /api/v1/health 200")
            # level=error: the first record is the error, not the earlier info line
            first = await asyncio.wait_for(next_event(error_lines), 20)
            assert first["level"] == "error" and first["requestId"] == "sse-err"
            assert "provoked internal error" in first["fields"]["exception"]
        # the replay of recent records: ?tail=
        async with client.stream(
            "GET", "/api/v1/logs/stream", params={"level": "error", "tail": "5"}
        ) as replay:
            lines = replay.aiter_lines()
            assert await anext(lines) == ": connected"
            again = await asyncio.wait_for(next_event(lines), 20)
            assert again["id"] == first["id"]
    assert server.stop() == 0


def test_records_survive_a_restart_and_old_ones_expire(live_server_factory) -> None:
    server = live_server_factory().start()
    response = httpx.get(
        f"{server.url}/api/v1/health", headers={**server.auth, "X-Request-Id": "before-restart"}
    )
    assert response.status_code == 200
    assert server.stop() == 0
    # while it is down: a record older than the retention (7 days by default)
    engine = create_engine(f"sqlite:///{server.data_dir / 'kblabs.db'}")
    with engine.begin() as connection:
        connection.execute(
            insert(log_records), [old_row("0000000000000000000000STALE", timedelta(days=9), "x")]
        )
    engine.dispose()

    server.start()
    found = httpx.get(
        f"{server.url}/api/v1/logs", params={"requestId": "before-restart"}, headers=server.auth
    ).json()["data"]
    assert found["total"] == 1 and found["logs"][0]["msg"].startswith("GET /api/v1/health 200")
    deadline = time.monotonic() + 20  # the first retention pass follows the first flush
    while True:
        stale = httpx.get(
            f"{server.url}/api/v1/logs/0000000000000000000000STALE", headers=server.auth
        )
        if stale.status_code == 404:
            break
        assert time.monotonic() < deadline, "the stale record was not purged"
        time.sleep(0.1)
    assert stale.json()["error"]["code"] == "LOG_NOT_FOUND"
    assert server.stop() == 0


async def test_the_log_store_on_each_database(
    tmp_path: Path,
    store_env: dict[str, str],  # noqa: F811
) -> None:
    store = make_store(tmp_path / "project", store_env)
    await store.start()
    sink = LogStore(store.settings, store)
    await sink.start()
    try:
        mark = marker()
        logger.bind(plugin="@kb/db", traceId=f"{mark}-t", size=1.5).warning("Disk {} low", mark)
        logger.bind(traceId=f"{mark}-t").info("then {} fine", mark)
        page = await sink.query(LogQuery(search=f"DISK {mark}".lower(), min_level=30))
        assert [r["msg"] for r in page["logs"]] == [f"Disk {mark} low"]
        assert page["logs"][0]["fields"] == {"size": 1.5}
        assert len(await sink.related(page["logs"][0], None)) == 2
        stats = await sink.stats(LogQuery(trace_id=f"{mark}-t"))
        assert stats["byLevel"] == {"info": 1, "warning": 1} and stats["byPlugin"] == {"@kb/db": 1}
        assert await sink.purge_older_than(datetime.now(UTC) + timedelta(seconds=1)) >= 2
        assert (await sink.query(LogQuery(search=mark)))["total"] == 0
    finally:
        await sink.stop()
        await store.stop()
