"""The engine on each database backend (SQLite always; PostgreSQL when reachable):
claims, retries, approvals and the final status settle the same way."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from kblabs.app import create_app
from tests.conftest import make_settings
from tests.integration.test_store import database_env  # noqa: F401 - the fixture

pytestmark = pytest.mark.anyio

FLOW = """
name: Flow
version: 1
on: {manual: true}
jobs:
  flaky:
    retries: {max: 2, backoff: lin, initialIntervalMs: 50}
    steps:
      - run: |
          n=$(cat attempts 2>/dev/null || echo 0); n=$((n+1)); echo $n > attempts
          test $n -ge 2
  gate:
    needs: flaky
    steps:
      - id: ok
        uses: builtin:approval
        with: {title: Ship it?}
      - run: echo shipped
  never:
    needs: flaky
    if: ${{ false }}
    steps:
      - run: echo never
"""


async def test_retries_approvals_and_skips_on_each_backend(project, database_env):  # noqa: F811
    folder = project / ".kb" / "workflows"
    folder.mkdir(parents=True)
    (folder / "flow.yml").write_text(FLOW)
    settings = make_settings(project, **database_env)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        token = (settings.data_dir / "admin.token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            started = await client.post("/api/v1/workflows/flow/runs", headers=auth)
            run_id = started.json()["data"]["runId"]

            async def run_now() -> dict:
                body = (await client.get(f"/api/v1/runs/{run_id}", headers=auth)).json()
                return body["data"]["run"]

            deadline = time.monotonic() + 20
            while not (await client.get(f"/api/v1/runs/{run_id}/approvals", headers=auth)).json()[
                "data"
            ]["pending"]:
                assert time.monotonic() < deadline, await run_now()
                await asyncio.sleep(0.1)
            resolved = await client.post(
                f"/api/v1/runs/{run_id}/approvals/resolve",
                json={"jobId": "gate", "stepId": "ok", "action": "approve"},
                headers=auth,
            )
            assert resolved.status_code == 200, resolved.text
            while (run := await run_now())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline, run
                await asyncio.sleep(0.1)
    jobs = {job["jobName"]: job for job in run["jobs"]}
    assert run["status"] == "success"
    assert jobs["flaky"]["status"] == "success" and jobs["flaky"]["failures"] == 1
    assert jobs["gate"]["status"] == "success"
    assert jobs["gate"]["steps"][0]["outputs"]["approved"] is True
    assert jobs["never"]["status"] == "skipped"
