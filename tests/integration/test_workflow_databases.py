"""The engine on each database backend (SQLite always; PostgreSQL when reachable):
claims, retries, approvals and the final status settle the same way."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from kblabs.app import create_app
from kblabs.store import Store
from kblabs.store.engine import sqlite_file_engine
from kblabs.workflow.journal import in_tx, now
from kblabs.workflow.queue import JobQueue
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


GROUPED = """
name: Grouped
version: 1
on: {manual: true}
priority: PRIORITY
jobs:
  deploy:
    concurrency: {group: prod}
    steps:
      - run: echo deploying
"""


async def test_two_claims_at_once_never_run_two_jobs_of_one_group(project, database_env):  # noqa: F811
    # Claimer A takes a `prod` job and has not committed yet when an urgent run with
    # another `prod` job arrives and claimer B looks. B must not take it: its snapshot
    # shows the group free, so on PostgreSQL claims have to take turns.
    if not database_env:
        pytest.skip("SQLite has one writer: a second claim waits for the first by design")
    folder = project / ".kb" / "workflows"
    folder.mkdir(parents=True)
    (folder / "grouped.yml").write_text(GROUPED.replace("PRIORITY", "normal"))
    (folder / "urgent.yml").write_text(GROUPED.replace("PRIORITY", "high"))
    settings = make_settings(project, KB_WORKFLOW_WORKERS="false", **database_env)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        engine = app.state.runtime.workflows
        await engine.create_run("grouped")
        other = Store(settings)
        await other.start()
        first, second = JobQueue(engine.store, "a"), JobQueue(other, "b")
        try:
            async with engine.store.engine.connect() as conn:
                await conn.begin()
                held = await conn.run_sync(in_tx, first._take, now(), "token-a")
                assert held is not None and held.job["concurrency_group"] == "prod"
                await engine.create_run("urgent")  # first in line for the next claim
                racing = asyncio.ensure_future(second.claim(expected=True))
                done, _ = await asyncio.wait({racing}, timeout=1.0)
                assert not done, (
                    f"second claim took {racing.result().lease.job_id} while the first was open"
                )
                await conn.commit()
            assert await asyncio.wait_for(racing, 10) is None  # the group is busy now
        finally:
            await other.stop()


TWO_JOBS = """
name: Two
version: 1
on: {manual: true}
jobs:
  first:
    steps: [{run: echo one}, {run: echo two}]
  second:
    steps: [{run: echo three}]
"""


async def test_claims_without_update_returning_read_the_same_rows(project):
    # SQLite before 3.35 has no UPDATE … RETURNING: claims then take a job in three
    # statements. This machine's SQLite has it, so the test turns it off on an engine.
    folder = project / ".kb" / "workflows"
    folder.mkdir(parents=True)
    (folder / "two.yml").write_text(TWO_JOBS)
    settings = make_settings(project, KB_WORKFLOW_WORKERS="false")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        workflows = app.state.runtime.workflows
        run_id, _ = await workflows.create_run("two")
        old_sqlite = sqlite_file_engine(settings.database_url)
        old_sqlite.dialect.update_returning = False
        queue = JobQueue(workflows.store, "old")
        try:
            with old_sqlite.connect() as conn:
                claims = [queue._claim(conn, f"token-{n}", True) for n in range(3)]
        finally:
            old_sqlite.dispose()
    first, second, none = claims
    assert none is None
    assert {first.lease.job_id, second.lease.job_id} == {f"{run_id}:first", f"{run_id}:second"}
    for claim in (first, second):
        assert claim.run["id"] == run_id and claim.run["status"] == "running"
        assert claim.job["status"] == "running" and claim.job["attempt"] == 1
        assert claim.job["lease_token"] == claim.lease.token
        assert {job["id"] for job in claim.jobs} == {f"{run_id}:first", f"{run_id}:second"}
        assert len(claim.steps) == 3
