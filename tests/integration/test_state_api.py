"""The state broker over HTTP, the per-namespace request limiter, and Redis outages."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from contextlib import asynccontextmanager
from urllib.parse import quote

import httpx
import pytest

from kblabs.app import create_app
from tests.conftest import free_port, make_settings

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def client_for(project, config: dict | None = None, **env):
    if config is not None:
        (project / "kb.config.json").write_text(json.dumps(config))
    settings = make_settings(project, **env)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        token = (settings.data_dir / "admin.token").read_text().strip()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def kv(key: str) -> str:
    return f"/api/v1/state/kv/{quote(key, safe='')}"


async def test_put_get_delete_round_trip(project):
    async with client_for(project) as client:
        key = "plugin:@kb-labs/release#1 a/b?c"
        put = await client.put(kv(key), json={"value": {"n": 1}, "ttl": 60_000})
        assert put.status_code == 200 and put.json()["ok"] is True
        assert put.json()["data"]["expiresAt"].endswith("Z")
        got = await client.get(kv(key))
        assert got.status_code == 200
        assert got.json()["data"]["key"] == key and got.json()["data"]["value"] == {"n": 1}
        deleted = await client.delete(kv(key))
        assert deleted.json()["data"]["deleted"] is True
        missing = await client.get(kv(key))
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "KEY_NOT_FOUND"


async def test_null_is_a_value_but_a_missing_value_is_400(project):
    async with client_for(project) as client:
        assert (await client.put(kv("n"), json={"value": None})).status_code == 200
        assert (await client.get(kv("n"))).json()["data"]["value"] is None
        missing = await client.put(kv("n"), json={"ttl": 5})
        assert missing.status_code == 400
        assert missing.json()["error"]["details"][0]["field"] == "value"
        for body in (b"not json", b"[1]", b""):
            response = await client.put(kv("n"), content=body)
            assert response.status_code == 400, body
        bad_ttl = await client.put(kv("n"), json={"value": 1, "ttl": -5})
        assert (
            bad_ttl.status_code == 400 and bad_ttl.json()["error"]["details"][0]["field"] == "ttl"
        )
        unknown = await client.put(kv("n"), json={"value": 1, "tll": 5})
        assert unknown.status_code == 400


async def test_expired_key_is_404(project):
    async with client_for(project) as client:
        await client.put(kv("short"), json={"value": 1, "ttl": 50})
        deadline = time.monotonic() + 5
        status = 200
        while status == 200 and time.monotonic() < deadline:
            status = (await client.get(kv("short"))).status_code
            await asyncio.sleep(0.02)
        assert status == 404


async def test_value_over_the_limit_is_413_and_nothing_is_stored(project):
    config = {"platform": {"adapterOptions": {"state": {"maxValueBytes": 1000}}}}
    async with client_for(project, config) as client:
        too_big = await client.put(kv("big"), json={"value": "x" * 2000})
        assert too_big.status_code == 413
        assert too_big.json()["error"]["code"] == "VALUE_TOO_LARGE"
        assert (await client.get(kv("big"))).status_code == 404


async def test_clear_and_stats(project):
    async with client_for(project) as client:
        for key in ("mind:a", "mind:b", "cache:c"):
            await client.put(kv(key), json={"value": 1})
        cleared = await client.post("/api/v1/state/clear", params={"pattern": "mind:*"})
        assert cleared.json()["data"]["cleared"] == 2
        stats = (await client.get("/api/v1/state/stats")).json()["data"]
        assert stats["backend"] == "memory" and stats["totalEntries"] == 1
        assert set(stats["namespaces"]) == {"cache"}


async def test_lock_endpoints(project):
    async with client_for(project) as client:
        name = quote("deploy/prod@eu", safe="")
        first = await client.post(f"/api/v1/state/locks/{name}", json={"owner": "a", "ttl": 5000})
        assert first.status_code == 200
        token = first.json()["data"]["token"]
        held = await client.post(f"/api/v1/state/locks/{name}", json={"owner": "b"})
        assert held.status_code == 409
        assert held.json()["error"]["code"] == "LOCK_HELD"
        assert held.json()["error"]["details"]["holder"] == "a"
        renewed = await client.post(
            f"/api/v1/state/locks/{name}/renew", json={"owner": "a", "token": token}
        )
        assert renewed.status_code == 200
        wrong = await client.request(
            "DELETE", f"/api/v1/state/locks/{name}", json={"owner": "b", "token": token}
        )
        assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "LOCK_NOT_HELD"
        released = await client.delete(
            f"/api/v1/state/locks/{name}", params={"owner": "a", "token": str(token)}
        )
        assert released.status_code == 200
        again = await client.post(f"/api/v1/state/locks/{name}", json={"owner": "b"})
        assert again.json()["data"]["token"] == token + 1


async def test_counter_and_rate_limit_endpoints(project):
    async with client_for(project) as client:
        assert (await client.post("/api/v1/state/counters/c/incr")).json()["data"]["value"] == 1
        five = await client.post("/api/v1/state/counters/c/incr", json={"by": 4})
        assert five.json()["data"]["value"] == 5
        body = {"limit": 2, "window": 60_000}
        verdicts = [
            (await client.post("/api/v1/state/ratelimit/x", json=body)).json()["data"]
            for _ in range(3)
        ]
        assert [v["allowed"] for v in verdicts] == [True, True, False]
        assert verdicts[2]["retryAfterMs"] > 0 and verdicts[2]["resetAt"].endswith("Z")
        bad = await client.post("/api/v1/state/ratelimit/x", json={"limit": "many", "window": 1})
        assert bad.status_code == 400


async def test_state_metrics_are_exposed(project):
    async with client_for(project) as client:
        await client.put(kv("m"), json={"value": "abc"})
        await client.get(kv("m"))
        text = (await client.get("/metrics")).text
        assert "state_broker_entries_total 1.0" in text
        assert "state_broker_size_bytes 5.0" in text
        assert "state_broker_evictions_total" in text
        assert 'state_broker_operations_total{op="get",status="ok"} 1.0' in text
        assert "state_broker_operation_duration_ms_bucket" in text


LIMITED = {
    "rateLimits": {
        "defaultTier": "tiny",
        "minuteMs": 1000,
        "tiers": {"tiny": {"rpm": 3}, "enterprise": {"rpm": 1000}},
    }
}


async def test_request_limiter_answers_429_then_recovers(project):
    async with client_for(project, LIMITED) as client:
        responses = [await client.get("/api/v1/state/stats") for _ in range(4)]
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        assert [r.headers["x-ratelimit-remaining"] for r in responses[:3]] == ["2", "1", "0"]
        assert all(r.headers["x-ratelimit-limit"] == "3" for r in responses)
        limited = responses[3]
        retry_after = int(limited.headers["retry-after"])
        assert 1 <= retry_after <= 1
        body = limited.json()
        assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert body["retryAfter"] == retry_after and body["limit"] == 3
        assert body["resetAt"].endswith("Z")
        assert int(limited.headers["x-ratelimit-reset"]) >= int(time.time())
        health = await client.get("/api/v1/health")  # exempt
        assert health.status_code == 200
        deadline = time.monotonic() + 5
        status = 429
        while status == 429 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            status = (await client.get("/api/v1/state/stats")).status_code
        assert status == 200


async def test_unknown_tier_is_a_config_error(project):
    from kblabs.config import ConfigError

    (project / "kb.config.json").write_text(json.dumps({"rateLimits": {"defaultTier": "gold"}}))
    with pytest.raises(ConfigError) as caught:
        make_settings(project)
    assert caught.value.problems[0].path == "rateLimits"
    assert "gold" in caught.value.problems[0].message


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed; the outage test starts its own")
    return binary


def start_redis(binary: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("redis-server did not start")


async def test_redis_outage_degrades_and_recovers(project):
    binary = redis_server_binary()
    port = free_port()
    redis_process = start_redis(binary, port)
    config = {
        "platform": {
            "adapters": {"state": "redis"},
            "adapterOptions": {"state": {"url": f"redis://127.0.0.1:{port}/0"}},
        },
        "rateLimits": {"defaultTier": "free"},
    }
    try:
        async with client_for(project, config) as client:
            assert (await client.put(kv("k"), json={"value": 1})).status_code == 200
            redis_process.kill()
            redis_process.wait()
            failed = await client.get(kv("k"))
            assert failed.status_code == 503
            assert failed.json()["error"]["code"] == "STATE_BACKEND_UNAVAILABLE"
            ready = await client.get("/ready")
            assert ready.status_code == 200
            body = ready.json()
            assert body["status"] == "degraded" and body["reason"] == "state_degraded"
            assert body["components"]["state"]["status"] == "degraded"
            # the request limiter fails open: other /api/v1 routes keep working
            assert (await client.get("/api/v1/debug/none")).status_code == 404

            redis_process = start_redis(binary, port)
            deadline = time.monotonic() + 15
            status = "degraded"
            while status == "degraded" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                status = (await client.get("/ready")).json()["status"]
            assert status == "ready"
            assert (await client.put(kv("k"), json={"value": 2})).status_code == 200
    finally:
        redis_process.kill()
        redis_process.wait()


async def test_unreachable_redis_at_start_is_degraded_not_fatal(project):
    config = {
        "platform": {
            "adapters": {"state": "redis"},
            "adapterOptions": {"state": {"url": f"redis://127.0.0.1:{free_port()}/0"}},
        }
    }
    async with client_for(project, config) as client:
        ready = (await client.get("/ready")).json()
        assert ready["components"]["state"]["status"] == "degraded"
        assert "unavailable" in ready["components"]["state"]["message"]


async def test_reserved_and_tenant_keys_need_admin(project):
    async with client_for(project) as client:
        app = client.app
        operator = await app.state.runtime.auth.create_api_key("op", "operator", "default")
        headers = {"Authorization": f"Bearer {operator['token']}"}
        for key in ("tenant:acme:secret", "__requests__:default:minute"):
            response = await client.put(kv(key), json={"value": 1}, headers=headers)
            assert response.status_code == 403, key
        assert (await client.put(kv("tenant:acme:x"), json={"value": 1})).status_code == 200
        other = await app.state.runtime.auth.create_api_key("t", "operator", "acme")
        tenant = {"Authorization": f"Bearer {other['token']}"}
        own = await client.get(kv("x"), headers=tenant)
        assert own.status_code == 200 and own.json()["data"]["value"] == 1  # same keyspace
