"""Cron schedules, broker jobs and signed hooks start runs (in-process app)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kblabs.app import create_app
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

NIGHTLY = """
name: Nightly
version: 1
on:
  schedule:
    cron: "0 3 * * *"
jobs:
  main:
    steps:
      - run: echo nightly
"""

HOOKED = """
name: Hooked
version: 1
on:
  webhook:
    secret: HOOK_SECRET
    headers:
      X-Event: push
inputs:
  ref:
    type: string
    default: main
jobs:
  main:
    steps:
      - run: echo "ref=${{ inputs.ref }} by ${{ trigger.payload.pusher }}"
"""


def write_workflow(project: Path, name: str, text: str) -> None:
    folder = project / ".kb" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yml").write_text(text)


async def finished(client, auth, run_id: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = (await client.get(f"/api/v1/runs/{run_id}", headers=auth)).json()["data"]["run"]
        if run["status"] not in ("queued", "running"):
            return run
        assert time.monotonic() < deadline, f"run still {run['status']}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def app(project, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    write_workflow(project, "nightly", NIGHTLY)
    write_workflow(project, "hooked", HOOKED)
    async with started(project) as client_auth_app:
        yield client_auth_app


async def test_a_workflow_schedule_is_listed_led_and_fired_once_per_minute(app):
    client, auth, application = app
    scheduler = application.state.runtime.workflows.scheduler
    crons = (await client.get("/api/v1/crons", headers=auth)).json()["data"]["crons"]
    (nightly,) = [c for c in crons if c["id"] == "workflow:nightly"]
    assert nightly["schedule"] == "0 3 * * *" and nightly["source"] == "workflow"
    deadline = time.monotonic() + 10
    while not scheduler.leading or not nightly["nextRun"]:
        assert time.monotonic() < deadline, "the scheduler did not take the lease"
        await asyncio.sleep(0.2)
        crons = (await client.get("/api/v1/crons", headers=auth)).json()["data"]["crons"]
        nightly = next(c for c in crons if c["id"] == "workflow:nightly")
    assert "T03:00:00" in nightly["nextRun"]
    # a fire run late (a busy leader) is still named by its scheduled time
    planned = datetime.fromisoformat(nightly["nextRun"])
    late = planned + timedelta(seconds=7, microseconds=300)
    assert scheduler._fire_time("workflow:nightly", late) == planned

    # the same fire minute twice (two leaders overlapping) starts one run
    from kblabs.workflow.journal import now

    minute = now().replace(second=0, microsecond=0)
    first = await scheduler.fire("workflow:nightly", minute)
    second = await scheduler.fire("workflow:nightly", minute)
    assert first == second
    run = await finished(client, auth, first)
    assert run["status"] == "success" and run["trigger"]["type"] == "schedule"


async def test_crons_api_takes_catch_up_latest_or_none_and_nothing_else(app):
    client, auth, _ = app
    body = {"id": "nightly-catch-up", "schedule": "0 3 * * *", "jobType": "builtin:noop"}
    created = await client.post("/api/v1/crons", json={**body, "catchUp": "latest"}, headers=auth)
    assert created.status_code == 201 and created.json()["data"]["catchUp"] == "latest"
    crons = (await client.get("/api/v1/crons", headers=auth)).json()["data"]["crons"]
    by_id = {c["id"]: c for c in crons}
    assert by_id["nightly-catch-up"]["catchUp"] == "latest"
    assert by_id["workflow:nightly"]["catchUp"] == "none"
    plain = await client.post("/api/v1/crons", json={**body, "id": "plain"}, headers=auth)
    assert plain.json()["data"]["catchUp"] == "none"
    bad = await client.post(
        "/api/v1/crons", json={**body, "id": "odd", "catchUp": "sometimes"}, headers=auth
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "VALIDATION_ERROR"
    assert bad.json()["error"]["message"].startswith("catchUp:")
    gone = await client.get("/api/v1/crons/odd", headers=auth)
    assert gone.status_code == 404


async def test_pausing_forgets_the_planned_fire(app):
    """A fire skipped while paused is not a missed one: resumed while no process leads,
    the schedule has no stale `nextRun` for a `catchUp: latest` leader to catch up."""
    client, auth, application = app
    body = {"id": "hourly", "schedule": "0 * * * *", "jobType": "builtin:noop"}
    await client.post("/api/v1/crons", json={**body, "catchUp": "latest"}, headers=auth)
    assert (await led(client, auth, application, "hourly"))["nextRun"]
    await client.post("/api/v1/crons/hourly/pause", headers=auth)
    assert (await client.get("/api/v1/crons/hourly", headers=auth)).json()["data"][
        "nextRun"
    ] is None


CATCHING_UP = """
name: Tidy
version: 1
on:
  schedule:
    cron: "{cron}"{catch_up}
jobs:
  main:
    steps:
      - run: echo tidy
"""


@contextlib.asynccontextmanager
async def started(project: Path) -> AsyncIterator[tuple]:
    """One server life on the project's SQLite file (each start is a new scheduler)."""
    import httpx

    settings = make_settings(project)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            token = (settings.data_dir / "admin.token").read_text().strip()
            yield client, {"Authorization": f"Bearer {token}"}, application


async def led(client, auth, application, schedule_id: str) -> dict:
    """The schedule once this process leads and has loaded it: its `nextRun` is the
    leader's, in the future (a catch-up, if any, happens before it is written)."""
    scheduler = application.state.runtime.workflows.scheduler
    deadline = time.monotonic() + 15
    while True:
        cron = (await client.get(f"/api/v1/crons/{schedule_id}", headers=auth)).json()["data"]
        planned = cron["nextRun"] and datetime.fromisoformat(cron["nextRun"])
        if scheduler.leading and planned and planned > datetime.now(UTC):
            return cron
        assert time.monotonic() < deadline, f"the scheduler did not load {schedule_id}: {cron}"
        await asyncio.sleep(0.2)


async def schedule_runs(client, auth, workflow_id: str) -> list[dict]:
    answer = await client.get(f"/api/v1/workflows/{workflow_id}/runs", headers=auth)
    return [r for r in answer.json()["data"]["runs"] if r["trigger"]["type"] == "schedule"]


def plan_in_the_past(project: Path, schedule_id: str, when: datetime) -> None:
    """What a server that was down looks like: the fire its last leader planned has gone
    by. Written straight into the SQLite file while no server runs."""
    from sqlalchemy import create_engine, update

    from kblabs.store.tables import workflow_schedules

    engine = create_engine(f"sqlite:///{make_settings(project).data_dir / 'kblabs.db'}")
    with engine.begin() as conn:
        changed = conn.execute(
            update(workflow_schedules)
            .where(workflow_schedules.c.id == schedule_id)
            .values(next_run_at=when)
        )
        assert changed.rowcount == 1
    engine.dispose()


def two_missed_fires(start: datetime) -> tuple[str, datetime]:
    """An hourly cron that fired 6 and 3 minutes ago (whole minutes) and not again for
    the next 50: the test sees no fire of its own, and the latest missed one is known."""
    latest = (start - timedelta(minutes=3)).replace(second=0, microsecond=0)
    earlier = latest - timedelta(minutes=3)
    minutes = ",".join(str(m) for m in sorted({earlier.minute, latest.minute}))
    return f"{minutes} * * * *", latest


async def test_catch_up_latest_runs_the_latest_missed_fire_once(project):
    start = datetime.now(UTC)
    cron, latest = two_missed_fires(start)
    write_workflow(project, "tidy", CATCHING_UP.format(cron=cron, catch_up="\n    catchUp: latest"))
    async with started(project) as (client, auth, application):
        assert (await led(client, auth, application, "workflow:tidy"))["catchUp"] == "latest"
        assert await schedule_runs(client, auth, "tidy") == []  # a new schedule missed nothing

    plan_in_the_past(project, "workflow:tidy", start - timedelta(minutes=10))
    async with started(project) as (client, auth, application):
        cron_view = await led(client, auth, application, "workflow:tidy")
        (run,) = await schedule_runs(client, auth, "tidy")
        assert run["trigger"]["payload"] == {
            "cronJobId": "workflow:tidy",
            "scheduledAt": latest.isoformat(),
        }
        assert cron_view["lastRunId"] == run["id"]
        assert (await finished(client, auth, run["id"]))["status"] == "success"

    # restarted again, the row as that leader left it: nothing more was missed
    async with started(project) as (client, auth, application):
        await led(client, auth, application, "workflow:tidy")
        assert [r["id"] for r in await schedule_runs(client, auth, "tidy")] == [run["id"]]

    # a leader reading the same stale row again (two leaders, a crash before the row was
    # written) finds the run of that fire instead of starting another
    plan_in_the_past(project, "workflow:tidy", start - timedelta(minutes=10))
    async with started(project) as (client, auth, application):
        await led(client, auth, application, "workflow:tidy")
        assert [r["id"] for r in await schedule_runs(client, auth, "tidy")] == [run["id"]]


async def test_without_catch_up_missed_fires_are_skipped(project):
    start = datetime.now(UTC)
    cron, _ = two_missed_fires(start)
    write_workflow(project, "tidy", CATCHING_UP.format(cron=cron, catch_up=""))
    async with started(project) as (client, auth, application):
        assert (await led(client, auth, application, "workflow:tidy"))["catchUp"] == "none"
    plan_in_the_past(project, "workflow:tidy", start - timedelta(minutes=10))
    async with started(project) as (client, auth, application):
        await led(client, auth, application, "workflow:tidy")
        assert await schedule_runs(client, auth, "tidy") == []


def test_latest_fire_looks_back_from_now_whatever_the_downtime():
    from kblabs.workflow.scheduler import latest_fire
    from kblabs.workflow.spec import cron_trigger

    until = datetime(2026, 3, 4, 10, 7, 30, 500000, tzinfo=UTC)
    every_second = cron_trigger("* * * * * *", "UTC")
    # a year of one fire a second: far more than any step-by-step walk would take
    year_ago = until - timedelta(days=365)
    assert latest_fire(every_second, year_ago, until) == until.replace(microsecond=0)
    daily = cron_trigger("0 3 * * *", "Europe/Berlin")  # 03:00 in Berlin is 02:00 UTC
    assert latest_fire(daily, year_ago, until) == datetime(2026, 3, 4, 2, tzinfo=UTC)
    assert latest_fire(daily, datetime(2026, 3, 4, 2, 0, 1, tzinfo=UTC), until) is None
    assert latest_fire(daily, until + timedelta(hours=1), until) is None  # planned ahead


async def test_crons_api_create_trigger_pause_resume_delete(app):
    client, auth, _ = app
    body = {
        "id": "hourly-echo",
        "schedule": "0 * * * *",
        "jobType": "builtin:noop",
        "payload": {"x": 1},
    }
    created = await client.post("/api/v1/crons", json=body, headers=auth)
    assert created.status_code == 201 and created.json()["data"]["source"] == "api"
    again = await client.post("/api/v1/crons", json=body, headers=auth)
    assert again.status_code == 409
    bad = await client.post(
        "/api/v1/crons", json={**body, "id": "x", "schedule": "61 * * * *"}, headers=auth
    )
    assert bad.status_code == 400 and "61" in bad.json()["error"]["message"]
    missing = await client.post("/api/v1/crons", json={"id": "y"}, headers=auth)
    assert missing.json()["error"]["message"] == "Missing required fields: schedule, jobType"

    fired = await client.post("/api/v1/crons/hourly-echo/trigger", headers=auth)
    run = await finished(client, auth, fired.json()["data"]["runId"])
    assert run["status"] == "success" and run["jobs"][0]["steps"][0]["outputs"] == {"x": 1}

    paused = await client.post("/api/v1/crons/hourly-echo/pause", headers=auth)
    assert paused.json()["data"]["enabled"] is False
    listed = (await client.get("/api/v1/crons/hourly-echo", headers=auth)).json()["data"]
    assert listed["enabled"] is False and listed["lastRunId"] == run["id"]
    await client.post("/api/v1/crons/hourly-echo/resume", headers=auth)
    assert (await client.delete("/api/v1/crons/hourly-echo", headers=auth)).status_code == 200
    gone = await client.post("/api/v1/crons/hourly-echo/trigger", headers=auth)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "CRON_NOT_FOUND"
    declared = await client.delete("/api/v1/crons/workflow:nightly", headers=auth)
    assert declared.status_code == 409


async def test_broker_jobs_run_one_step(app):
    client, auth, _ = app
    made = await client.post(
        "/api/v1/jobs",
        json={"type": "builtin:noop", "payload": {"a": 1}, "priority": 2},
        headers=auth,
    )
    assert made.status_code == 201
    job_id = made.json()["data"]["jobId"]
    run = await finished(client, auth, job_id)
    assert run["status"] == "success" and run["workflowId"] == "job:builtin:noop"
    listed = (await client.get("/api/v1/jobs", headers=auth)).json()["data"]
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    assert (await client.get(f"/api/v1/jobs/{job_id}", headers=auth)).json()["data"]["id"] == job_id
    steps = (await client.get(f"/api/v1/jobs/{job_id}/steps", headers=auth)).json()["data"]
    assert [(s["jobName"], s["stepId"], s["status"]) for s in steps["steps"]] == [
        ("main", "execute", "success")
    ]
    logs = await client.get(f"/api/v1/jobs/{job_id}/logs", headers=auth)
    assert logs.json()["data"]["logs"] == []
    unknown = await client.get("/api/v1/jobs/nope/steps", headers=auth)
    assert unknown.status_code == 404
    bad = await client.post("/api/v1/jobs", json={"type": "x", "priority": 11}, headers=auth)
    assert bad.status_code == 400 and "between 1 and 10" in bad.json()["error"]["message"]
    none = await client.post("/api/v1/jobs", json={}, headers=auth)
    assert none.json()["error"]["message"] == "Missing required field: type"


def signed(body: bytes, secret: str = "s3cret") -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-KB-Signature": f"sha256={digest}", "X-Event": "push", "X-KB-Delivery": "d-1"}


async def test_a_signed_hook_starts_the_workflow_once_per_delivery(app):
    client, auth, _ = app
    body = json.dumps({"inputs": {"ref": "dev"}, "pusher": "ada"}).encode()
    first = await client.post("/api/v1/hooks/hooked", content=body, headers=signed(body))
    assert first.status_code == 202, first.text
    run_id = first.json()["data"]["runId"]
    again = await client.post("/api/v1/hooks/hooked", content=body, headers=signed(body))
    assert again.json()["data"] == {"runId": run_id, "status": "queued", "duplicate": True}
    run = await finished(client, auth, run_id)
    assert run["status"] == "success" and run["trigger"]["type"] == "webhook"
    assert run["jobs"][0]["steps"][0]["outputs"]["stdout"] == "ref=dev by ada"

    forged = await client.post("/api/v1/hooks/hooked", content=body, headers=signed(body, "nope"))
    assert forged.status_code == 401
    unknown = await client.post("/api/v1/hooks/nightly", content=body, headers=signed(body))
    assert unknown.status_code == 401  # no webhook trigger: same answer as a bad signature
    headers = {**signed(body), "X-Event": "tag"}
    wrong = await client.post("/api/v1/hooks/hooked", content=body, headers=headers)
    assert wrong.status_code == 400 and "X-Event" in wrong.json()["error"]["message"]


ARTIFACTS = """
name: Report
version: 1
on: {manual: true}
jobs:
  main:
    steps:
      - id: make
        run: |
          echo "# Report" > report.md
          echo '::kb-output::{"summary": {"files": 3}}'
        artifacts:
          report.md: {type: markdown, source: report.md, label: Report}
          summary.json: {type: json, source: outputs.summary, label: Summary}
          missing.txt: {type: log, source: nothere.txt, label: Missing}
"""


async def test_declared_artifacts_are_stored_listed_and_downloadable(app, project):
    client, auth, _ = app
    write_workflow(project, "report", ARTIFACTS)
    await client.post("/api/v1/workflows/refresh", headers=auth)
    run_id = (await client.post("/api/v1/workflows/report/runs", headers=auth)).json()["data"][
        "runId"
    ]
    run = await finished(client, auth, run_id)
    assert run["status"] == "success"
    listed = (await client.get(f"/api/v1/runs/{run_id}/artifacts", headers=auth)).json()["data"]
    by_name = {a["name"]: a for a in listed["artifacts"]}
    assert set(by_name) == {"report.md", "summary.json"}
    (project / "report.md").unlink()  # the workspace moves on; the artifact stays
    got = await client.get(
        f"/api/v1/runs/{run_id}/artifacts/{by_name['report.md']['id']}", headers=auth
    )
    assert got.status_code == 200 and got.text == "# Report\n"
    summary = await client.get(
        f"/api/v1/runs/{run_id}/artifacts/{by_name['summary.json']['id']}", headers=auth
    )
    assert summary.json() == {"files": 3}
    logs = (await client.get(f"/api/v1/runs/{run_id}/logs", headers=auth)).json()["data"]["logs"]
    assert any("missing.txt" in line["message"] for line in logs)
    nothing = await client.get(f"/api/v1/runs/{run_id}/artifacts/nope", headers=auth)
    assert nothing.status_code == 404


GROUPED = """
name: Deploy
version: 1
on: {manual: true}
inputs:
  env: {type: string, default: prod}
  wait: {type: number, default: 1}
  replace: {type: boolean, default: false}
concurrency:
  group: deploy-${{ inputs.env }}
jobs:
  main:
    steps:
      - run: sleep ${{ inputs.wait }}
"""


async def status_of(client, auth, run_id: str) -> str:
    return (await client.get(f"/api/v1/runs/{run_id}", headers=auth)).json()["data"]["run"][
        "status"
    ]


async def test_one_run_per_concurrency_group_at_a_time(app, project):
    client, auth, _ = app
    write_workflow(project, "deploy", GROUPED)
    await client.post("/api/v1/workflows/refresh", headers=auth)

    async def start(**inputs) -> str:
        answer = await client.post(
            "/api/v1/workflows/deploy/runs", json={"inputs": inputs}, headers=auth
        )
        return answer.json()["data"]["runId"]

    first = await start(wait=30)
    deadline = time.monotonic() + 10
    while await status_of(client, auth, first) != "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    second = await start(wait=0)
    other_group = await start(env="staging", wait=0)
    assert (await finished(client, auth, other_group))["status"] == "success"
    assert await status_of(client, auth, second) == "queued"  # waits for its group
    await client.post(f"/api/v1/runs/{first}/cancel", headers=auth)
    assert (await finished(client, auth, first))["status"] == "cancelled"
    assert (await finished(client, auth, second))["status"] == "success"


async def test_cancel_in_progress_replaces_the_running_run(app, project):
    client, auth, _ = app
    write_workflow(
        project,
        "deploy",
        GROUPED.replace(
            "deploy-${{ inputs.env }}", "deploy-${{ inputs.env }}\n  cancelInProgress: true"
        ),
    )
    await client.post("/api/v1/workflows/refresh", headers=auth)
    first = (
        await client.post(
            "/api/v1/workflows/deploy/runs", json={"inputs": {"wait": 30}}, headers=auth
        )
    ).json()["data"]["runId"]
    deadline = time.monotonic() + 10
    while await status_of(client, auth, first) != "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    started = time.monotonic()
    second = (
        await client.post(
            "/api/v1/workflows/deploy/runs", json={"inputs": {"wait": 0}}, headers=auth
        )
    ).json()["data"]["runId"]
    run = await finished(client, auth, first)
    assert run["status"] == "cancelled" and "superseded" in run["error"]["message"]
    assert (await finished(client, auth, second))["status"] == "success"
    assert time.monotonic() - started < 5  # the 30 s sleep was killed, not waited for


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("name: x\nversion: 1\non: {manual: true}\njobs: {}\n", "jobs", "at least 1"),
        (
            "name: x\nversion: 1\non: {manual: true}\njobs:\n"
            "  a: {needs: b, steps: [{run: 'true'}]}\n",
            "jobs.a.needs",
            "unknown job 'b'",
        ),
        (
            "name: x\nversion: 1\non: {manual: true}\njobs:\n"
            "  a: {needs: b, steps: [{run: 'true'}]}\n  b: {needs: a, steps: [{run: 'true'}]}\n",
            "jobs.a.needs",
            "cycle",
        ),
        (
            "name: x\nversion: 1\non: {manual: true}\njobs:\n  a:\n    steps:\n"
            "      - run: 'true'\n      - uses: nope:thing\n",
            "jobs.a.steps[1].uses",
            "",
        ),
        ("name: x\nversion: 1\non: {manual: true}\njobs: [", "", "invalid YAML"),
        (
            "name: x\nversion: 1\non:\n  schedule: {cron: '* * * * *', catchUp: sometimes}\n"
            "jobs:\n  a: {steps: [{run: 'true'}]}\n",
            "on.schedule.catchUp",
            "'none' or 'latest'",
        ),
    ],
)
async def test_validate_names_the_path_of_every_bad_spec(app, text, path, words):
    client, auth, _ = app
    answer = await client.post("/api/v1/workflows/validate", json={"text": text}, headers=auth)
    assert answer.status_code == 400, answer.text
    problems = answer.json()["error"]["details"]
    assert any(p["path"] == path and words in p["message"] for p in problems), problems


async def test_validate_accepts_a_good_spec(app):
    client, auth, _ = app
    answer = await client.post("/api/v1/workflows/validate", json={"text": NIGHTLY}, headers=auth)
    assert answer.json()["data"] == {
        "valid": True,
        "name": "Nightly",
        "version": "1",
        "jobs": ["main"],
    }


def test_cli_validate_exits_2_naming_each_path(tmp_path, project):
    from tests.conftest import base_env, run_cli

    bad = tmp_path / "bad.yml"
    bad.write_text(
        "name: x\nversion: 1\non: {manual: true}\njobs:\n  a: {needs: b, steps: [{run: 'true'}]}\n"
    )
    good = tmp_path / "good.yml"
    good.write_text(NIGHTLY)
    result = run_cli(
        "workflow", "validate", str(good), str(bad), project=project, env=base_env(project)
    )
    assert result.returncode == 2
    assert "jobs.a.needs: unknown job 'b'" in result.stderr and "good.yml: valid" in result.stdout
    ok = run_cli(
        "--json", "workflow", "validate", str(good), project=project, env=base_env(project)
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True


async def test_a_new_workflow_file_is_picked_up_without_a_refresh(app, project):
    client, auth, _ = app
    write_workflow(project, "fresh", NIGHTLY.replace("Nightly", "Fresh"))
    deadline = time.monotonic() + 10  # the engine looks at the folder every 2 s
    while True:
        listed = (await client.get("/api/v1/workflows", headers=auth)).json()["data"]
        if "fresh" in [w["id"] for w in listed["workflows"]]:
            break
        assert time.monotonic() < deadline, "the new file was not picked up"
        await asyncio.sleep(0.2)
    (project / ".kb" / "workflows" / "fresh.yml").unlink()
    deadline = time.monotonic() + 10
    while "fresh" in [
        w["id"]
        for w in (await client.get("/api/v1/workflows", headers=auth)).json()["data"]["workflows"]
    ]:
        assert time.monotonic() < deadline, "the removed file is still listed"
        await asyncio.sleep(0.2)


PARENT = """
name: Parent
version: 1
on: {manual: true}
jobs:
  main:
    steps:
      - id: call
        uses: workflow:child
        with: {inputs: {n: 2}}
      - run: echo "child ${{ steps.call.outputs.status }}"
"""

CHILD = """
name: Child
version: 1
on: {manual: true}
inputs:
  n: {type: number, default: 1}
jobs:
  main:
    steps:
      - run: echo ${{ inputs.n }}
"""


async def test_a_waiting_parent_gives_its_worker_to_the_child(project, monkeypatch):
    """One worker slot in all: the parent's `workflow:` step releases it while the child
    runs (it used to hold it, and parent and child waited for each other forever)."""
    import httpx

    write_workflow(project, "parent", PARENT)
    write_workflow(project, "child", CHILD)
    settings = make_settings(project, KB_WORKFLOW_MAX_PARALLEL_JOBS="1")
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            auth = {
                "Authorization": "Bearer " + (settings.data_dir / "admin.token").read_text().strip()
            }
            started = await client.post("/api/v1/workflows/parent/runs", headers=auth)
            run = await finished(client, auth, started.json()["data"]["runId"])
            assert run["status"] == "success", run
            steps = run["jobs"][0]["steps"]
            assert steps[0]["outputs"]["status"] == "success"
            assert steps[1]["outputs"]["stdout"] == "child success"
            child_id = steps[0]["outputs"]["runId"]
            child = (await client.get(f"/api/v1/runs/{child_id}", headers=auth)).json()["data"][
                "run"
            ]
            assert child["parentRunId"] == run["id"] and child["status"] == "success"


async def operator_in(client, auth, namespace: str) -> dict[str, str]:
    registered = await client.post(
        "/auth/register",
        json={"name": f"ci-{namespace}", "role": "operator", "namespaceId": namespace},
        headers=auth,
    )
    assert registered.status_code == 201, registered.text
    body = registered.json()
    pair = await client.post(
        "/auth/token", json={"clientId": body["clientId"], "clientSecret": body["clientSecret"]}
    )
    return {"Authorization": f"Bearer {pair.json()['accessToken']}"}


async def test_crons_and_stats_are_per_namespace(app):
    client, admin, _ = app
    team_a = await operator_in(client, admin, "team-a")
    body = {"id": "a-nightly", "schedule": "0 4 * * *", "jobType": "builtin:noop"}
    assert (await client.post("/api/v1/crons", json=body, headers=team_a)).status_code == 201

    def ids(answer) -> set[str]:
        assert answer.status_code == 200, answer.text
        return {cron["id"] for cron in answer.json()["data"]["crons"]}

    assert ids(await client.get("/api/v1/crons", headers=team_a)) == {"a-nightly"}
    seen_by_admin = ids(await client.get("/api/v1/crons", headers=admin))
    assert "a-nightly" not in seen_by_admin and "workflow:nightly" in seen_by_admin
    # another namespace's schedule is not found, whatever the action
    for method, path in (
        ("GET", ""),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("POST", "/trigger"),
        ("DELETE", ""),
    ):
        answer = await client.request(
            method, f"/api/v1/crons/workflow:nightly{path}", headers=team_a
        )
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "CRON_NOT_FOUND"
    assert (await client.get("/api/v1/crons/workflow:nightly", headers=admin)).json()["data"][
        "enabled"
    ]

    # stats count the caller's runs only
    started = await client.post("/api/v1/crons/a-nightly/trigger", headers=team_a)
    assert started.status_code == 201, started.text
    await finished(client, team_a, started.json()["data"]["runId"])

    def total(answer) -> int:
        return sum(answer.json()["data"]["runs"].values())

    assert total(await client.get("/api/v1/stats", headers=team_a)) == 1
    assert total(await client.get("/api/v1/stats", headers=admin)) == 0
