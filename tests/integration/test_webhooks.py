"""Webhooks on a real server: signatures, 202, handlers run once, retries."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import httpx
import pytest

from tests.conftest import base_env, run_cli
from tests.integration.test_plugins import copy_example, poll

pytestmark = pytest.mark.live

SECRET = "w" * 32


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": "push",
        "Content-Type": "application/json",
    }


@pytest.fixture
def hooked_server(live_server_factory, project):
    folder = copy_example(project)
    assert (
        run_cli("plugin", "link", str(folder), project=project, env=base_env(project)).returncode
        == 0
    )
    return live_server_factory(KB_WEBHOOK_SECRET_GITHUB=SECRET).start()


def pushes(project) -> list[str]:
    log = project / ".kb" / "output" / "pushes.log"
    return log.read_text().splitlines() if log.exists() else []


def test_signatures_are_checked(hooked_server):
    url = f"{hooked_server.url}/api/v1/webhooks/github"
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    assert httpx.post(url, content=body).status_code == 401
    assert httpx.post(url, content=body, headers=signed(body, "x" * 32)).status_code == 401
    unknown = httpx.post(
        f"{hooked_server.url}/api/v1/webhooks/gitlab", content=body, headers=signed(body)
    )
    assert unknown.status_code == 401


def test_a_delivery_runs_its_handler_once_even_when_sent_twice(hooked_server, project):
    url = f"{hooked_server.url}/api/v1/webhooks/github"
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    headers = {**signed(body), "X-GitHub-Delivery": "abc-123"}
    first = httpx.post(url, content=body, headers=headers)
    assert first.status_code == 202
    data = first.json()
    assert data["deliveryId"] == "github:abc-123" and data["event"] == "github:push"
    assert data["handlers"] == [{"pluginId": "@kb-labs/hello", "handler": "kb_hello.hooks:on_push"}]
    assert data["duplicate"] is False
    assert poll(lambda: pushes(project) == ["github:abc-123 refs/heads/main"])
    again = httpx.post(url, content=body, headers=headers)
    assert again.status_code == 202 and again.json()["duplicate"] is True
    time.sleep(1.5)  # give a wrongly re-queued delivery the time to run again
    assert pushes(project) == ["github:abc-123 refs/heads/main"]


def test_events_without_handlers_are_accepted_and_done(hooked_server):
    url = f"{hooked_server.url}/api/v1/webhooks/github"
    body = b"{}"
    headers = {**signed(body), "X-GitHub-Event": "star"}
    response = httpx.post(url, content=body, headers=headers)
    assert response.status_code == 202 and response.json()["handlers"] == []


FLAKY = """
import pathlib

from kblabs.platform.hooks import use_cache


def on_push(ctx, input):
    (pathlib.Path(ctx.outdir) / "cache-bound").parent.mkdir(parents=True, exist_ok=True)
    (pathlib.Path(ctx.outdir) / "cache-bound").write_text(str(use_cache() is not None))
    marker = pathlib.Path(ctx.outdir) / "attempts"
    marker.parent.mkdir(parents=True, exist_ok=True)
    count = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(count))
    if count == 1:
        raise RuntimeError("first attempt fails")
"""


@pytest.mark.anyio
async def test_failed_handlers_are_retried_and_expired_leases_reclaimed(project, monkeypatch):
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from kblabs.app import create_app
    from kblabs.store.tables import webhook_deliveries
    from tests.conftest import make_settings

    folder = copy_example(project, "kb-flaky")
    (folder / "kb_hello" / "hooks.py").write_text(FLAKY)
    assert (
        run_cli("plugin", "link", str(folder), project=project, env=base_env(project)).returncode
        == 0
    )
    monkeypatch.setenv("KB_WEBHOOK_SECRET_GITHUB", SECRET)
    app = create_app(make_settings(project))
    async with app.router.lifespan_context(app):
        queue = app.state.runtime.webhooks
        body = json.dumps({"ref": "x"}).encode()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            sent = await client.post(
                "/api/v1/webhooks/github",
                content=body,
                headers={**signed(body), "X-GitHub-Delivery": "r1"},
            )
        assert sent.status_code == 202

        async def finished(delivery_id: str) -> dict:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                row = await queue.get(delivery_id)
                if row["status"] in ("done", "failed"):
                    return row
                await asyncio.sleep(0.1)
            raise AssertionError(f"{delivery_id} did not finish")

        row = await finished("github:r1")
        assert row["status"] == "done" and row["attempts"] == 2
        assert (project / ".kb" / "output" / "cache-bound").read_text() == "True"

        stale = datetime.now(UTC) - timedelta(minutes=5)
        async with app.state.runtime.store.engine.begin() as conn:
            await conn.execute(
                insert(webhook_deliveries).values(
                    delivery_id="github:crashed",
                    source="github",
                    event="github:push",
                    payload={"ref": "y"},
                    handlers=[{"pluginId": "@kb-labs/hello", "handler": "kb_hello.hooks:on_push"}],
                    status="running",
                    attempts=1,
                    max_attempts=3,
                    available_at=stale,
                    lease_owner="dead-worker",
                    lease_token="t",
                    lease_expires_at=stale,
                    created_at=stale,
                    updated_at=stale,
                    results={},
                )
            )
        reclaimed = await finished("github:crashed")
        assert reclaimed["status"] == "done" and reclaimed["attempts"] == 2
