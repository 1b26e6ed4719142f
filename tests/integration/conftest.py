"""Fixtures for integration tests: state brokers on both backends (Redis skips when absent)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from kblabs.state.service import StateBroker
from tests.conftest import make_settings

REDIS_URL = os.environ.get("KB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


async def redis_reachable() -> str:
    """ "" when Redis answers, else why not."""
    try:
        import redis.asyncio as redis
    except ImportError:
        return "the redis package is not installed (pip install -e '.[redis]')"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:
        return f"Redis not reachable at {REDIS_URL}: {exc}"
    finally:
        await client.aclose()
    return ""


def write_state_config(project: Path, backend: str, **options) -> str:
    prefix = f"kb:test:{uuid.uuid4().hex[:10]}:"
    state = {"url": REDIS_URL, "prefix": prefix, **options} if backend == "redis" else options
    config = {"platform": {"adapters": {"state": backend}, "adapterOptions": {"state": state}}}
    (project / "kb.config.json").write_text(json.dumps(config))
    return prefix


async def drop_prefix(prefix: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def broker(request, project):
    """A started StateBroker on each backend, removed afterwards."""
    if request.param == "redis":
        reason = await redis_reachable()
        if reason:
            pytest.skip(reason)
    prefix = write_state_config(project, request.param)
    broker = StateBroker(make_settings(project), CollectorRegistry())
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
        if request.param == "redis":
            await drop_prefix(prefix)


@pytest.fixture
def server(live_server_factory, project):
    """A real server with short gateway timings and an internal secret."""
    from tests.integration.hostclient import INTERNAL, TIMINGS

    (project / "kb.config.json").write_text(json.dumps({"gateway": TIMINGS}))
    return live_server_factory(GATEWAY_INTERNAL_SECRET=INTERNAL).start()
