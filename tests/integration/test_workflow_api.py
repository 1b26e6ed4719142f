"""The workflow engine through its HTTP API, in-process: the real app (lifespan, workers,
reaper) served over httpx's ASGI transport, workflows written to `.kb/workflows/`.

Each test writes the workflows it needs, asks the catalog to refresh, starts runs through
`POST /api/v1/workflows/{id}/runs` and reads the results back through `GET /api/v1/runs/…`,
as a client would. Real shell steps run; nothing in the engine is stubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from kblabs.app import create_app
from tests.conftest import base_env, make_settings, run_cli

pytestmark = pytest.mark.anyio

TERMINAL = frozenset({"success", "failed", "cancelled", "skipped", "dlq"})
EXAMPLE_PLUGIN = Path(__file__).parents[2] / "examples" / "plugins" / "kb-hello"
WAIT_S = 15.0

# Workflow handlers of the built-in plugins: in every catalog.
BUILTIN_WORKFLOWS = ["@kb-labs/mind/index", "@kb-labs/mind/query"]


# --- helpers ---------------------------------------------------------------------------------


def workflow(jobs: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A spec with the boilerplate filled in (name, version, a manual trigger)."""
    return {
        "name": "test workflow",
        "version": "1.0.0",
        "on": {"manual": True},
        **top,
        "jobs": jobs,
    }


def write_workflow(project: Path, stem: str, spec: dict[str, Any] | str) -> Path:
    """`.kb/workflows/<stem>.yml`; a dict is written as JSON (JSON is YAML 1.2)."""
    folder = project / ".kb" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.yml"
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec, indent=2))
    return path


def when(value: str | None) -> datetime:
    assert value, "timestamp missing"
    return datetime.fromisoformat(value)


def job_of(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(job for job in run["jobs"] if job["jobName"] == name)


def step_of(run: dict[str, Any], job: str, step_id: str) -> dict[str, Any]:
    return next(step for step in job_of(run, job)["steps"] if step["stepId"] == step_id)


def counter_command(path: Path, succeed_from: int) -> str:
    """A shell command that counts its runs in `path` and fails until run `succeed_from`."""
    return (
        f"n=$(cat {path} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {path}; "
        f'echo "attempt $n"; [ "$n" -ge {succeed_from} ] || {{ echo "fail $n" >&2; exit 1; }}'
    )


def sse_events(body: str) -> list[dict[str, Any]]:
    """Parse a finished text/event-stream body into `{id, event, data}` dicts."""
    found = []
    for block in body.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.lstrip(" ")
        if "data" in fields:
            found.append(
                {
                    # `<event seq>.<log seq>`
                    "id": tuple(int(p) for p in fields["id"].split("."))
                    if "id" in fields
                    else None,
                    "event": fields.get("event"),
                    "data": json.loads(fields["data"]),
                }
            )
    return found


@dataclass
class Api:
    client: httpx.AsyncClient
    headers: dict[str, str]
    project: Path

    async def get(self, path: str, headers: dict[str, str] | None = None, **kwargs: Any):
        return await self.client.get(path, headers={**self.headers, **(headers or {})}, **kwargs)

    async def post(self, path: str, headers: dict[str, str] | None = None, **kwargs: Any):
        return await self.client.post(path, headers={**self.headers, **(headers or {})}, **kwargs)

    async def install(self, workflow_id: str, spec: dict[str, Any] | str) -> None:
        """Write the workflow file and have the catalog read it."""
        write_workflow(self.project, workflow_id, spec)
        answer = await self.post("/api/v1/workflows/refresh")
        assert answer.status_code == 200, answer.text
        assert workflow_id in answer.json()["data"]["workflowIds"]

    async def start(
        self, workflow_id: str, inputs: dict[str, Any] | None = None, **body: Any
    ) -> str:
        answer = await self.post(
            f"/api/v1/workflows/{workflow_id}/runs", json={"inputs": inputs or {}, **body}
        )
        assert answer.status_code == 201, answer.text
        data = answer.json()["data"]
        assert data["status"] == "queued" and data["created"] is True
        return data["runId"]

    async def run(self, run_id: str) -> dict[str, Any]:
        answer = await self.get(f"/api/v1/runs/{run_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]["run"]

    async def until(
        self, run_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = WAIT_S
    ) -> dict[str, Any]:
        """Poll the run until `check(run)` holds; fail with the last state at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            run = await self.run(run_id)
            if check(run):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} did not get there in {timeout}s:\n{run}")
            await asyncio.sleep(0.05)

    async def finished(self, run_id: str, timeout: float = WAIT_S) -> dict[str, Any]:
        return await self.until(run_id, lambda run: run["status"] in TERMINAL, timeout)

    async def step_status(
        self, run_id: str, job: str, step_id: str, status: str, timeout: float = WAIT_S
    ) -> dict[str, Any]:
        return await self.until(
            run_id, lambda run: step_of(run, job, step_id)["status"] == status, timeout
        )

    async def logs(self, run_id: str, **params: Any) -> list[dict[str, Any]]:
        answer = await self.get(f"/api/v1/runs/{run_id}/logs", params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]["logs"]

    async def pending(self, run_id: str) -> list[dict[str, Any]]:
        answer = await self.get(f"/api/v1/runs/{run_id}/approvals")
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]["pending"]

    async def resolve(self, run_id: str, **body: Any) -> httpx.Response:
        return await self.post(f"/api/v1/runs/{run_id}/approvals/resolve", json=body)


@contextlib.asynccontextmanager
async def open_api(
    project: Path, config: dict[str, Any] | None = None, **env: str
) -> AsyncIterator[Api]:
    """The real app for `project` (with `kb.config.json` = config), started and stopped."""
    if config is not None:
        (project / "kb.config.json").write_text(json.dumps(config))
    settings = make_settings(project, **env)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            token = (settings.data_dir / "admin.token").read_text().strip()
            yield Api(client, {"Authorization": f"Bearer {token}"}, project)


@pytest.fixture
async def api(project: Path) -> AsyncIterator[Api]:
    async with open_api(project) as opened:
        yield opened


def error_of(answer: httpx.Response) -> dict[str, Any]:
    body = answer.json()
    assert body["ok"] is False, body
    return body["error"]


# --- success path ----------------------------------------------------------------------------

PIPELINE = """\
# YAML 1.2: `on` stays a string key.
name: Build and ship
version: "1.10"
on:
  manual: true
inputs:
  target: {type: string, required: true}
  count: {type: number, default: 2}
env:
  WF_VAR: from-workflow
  SHARED: workflow
jobs:
  build:
    env:
      JOB_VAR: from-job
      SHARED: job
    steps:
      - id: compile
        env:
          SHARED: step
        run: |
          echo "target=${{ inputs.target }} wf=$WF_VAR job=$JOB_VAR shared=$SHARED"
          echo "expr wf=${{ env.WF_VAR }} job=${{ env.JOB_VAR }}"
          echo '::kb-output::{"artifact": "app-${{ inputs.target }}.tar", "size": 40}'
          echo '::kb-output::{"size": 42}'
      - id: check
        uses: builtin:noop
        with:
          size: ${{ steps.compile.outputs.size }}
          count: ${{ inputs.count }}
          label: size ${{ steps.compile.outputs.size }} x ${{ inputs.count }}
          both: ${{ steps.compile.outputs.size > 41 && inputs.target == 'linux' }}
    outputs:
      artifact: ${{ steps.compile.outputs.artifact }}
      size: ${{ steps.check.outputs.size }}
  test-unit:
    needs: build
    steps:
      - id: unit
        run: echo "unit ${{ needs.build.outputs.artifact }} size=${{ needs.build.outputs.size }}"
  test-lint:
    needs: [build]
    steps:
      - id: lint
        run: |
          echo '::kb-output::{"warnings": 0, "tool": "ruff"}'
    outputs:
      warnings: ${{ steps.lint.outputs.warnings }}
  ship:
    needs: [test-unit, test-lint]
    steps:
      - id: publish
        run: |
          echo "ship warnings=${{ needs.test-lint.outputs.warnings }}" \
            "unit=${{ needs.test-unit.result }}"
"""


async def test_multi_job_run_interpolates_and_passes_outputs(api: Api):
    await api.install("pipeline", PIPELINE)
    run_id = await api.start("pipeline", {"target": "linux"})
    run = await api.finished(run_id)

    assert run["status"] == "success", run
    assert run["workflowId"] == "pipeline" and run["name"] == "Build and ship"
    assert run["version"] == "1.10"  # quoted, so not the number 1.1
    assert run["inputs"] == {"target": "linux", "count": 2}
    assert run["trigger"]["type"] == "manual"
    assert run["error"] is None
    assert [job["jobName"] for job in run["jobs"]] == ["build", "test-unit", "test-lint", "ship"]
    for job in run["jobs"]:
        assert job["status"] == "success" and job["attempt"] == 1 and job["failures"] == 0
        for step in job["steps"]:
            assert step["status"] == "success" and step["attempt"] == 1
            assert when(step["startedAt"]) <= when(step["finishedAt"])
        assert when(job["startedAt"]) <= when(job["finishedAt"])

    compile_ = step_of(run, "build", "compile")
    assert compile_["uses"] == "builtin:shell"
    assert compile_["outputs"]["stdout"].splitlines() == [
        "target=linux wf=from-workflow job=from-job shared=step",
        "expr wf=from-workflow job=from-job",
    ]
    assert compile_["outputs"]["artifact"] == "app-linux.tar"
    assert compile_["outputs"]["size"] == 42  # the later ::kb-output:: line wins
    assert compile_["outputs"]["exitCode"] == 0 and compile_["outputs"]["ok"] is True

    # A value that is exactly one expression keeps its type; text around it makes a string.
    check = step_of(run, "build", "check")
    assert check["uses"] == "builtin:noop"
    assert check["outputs"] == {"size": 42, "count": 2, "label": "size 42 x 2", "both": True}
    assert job_of(run, "build")["outputs"] == {"artifact": "app-linux.tar", "size": 42}
    assert job_of(run, "test-lint")["outputs"] == {"warnings": 0}
    assert step_of(run, "test-unit", "unit")["outputs"]["stdout"] == "unit app-linux.tar size=42"
    assert step_of(run, "ship", "publish")["outputs"]["stdout"] == "ship warnings=0 unit=success"

    # needs are honoured: a job starts only after everything it needs has finished.
    build, unit, lint, ship = (job_of(run, n) for n in ("build", "test-unit", "test-lint", "ship"))
    assert job_of(run, "ship")["needs"] == ["test-unit", "test-lint"]
    assert when(unit["startedAt"]) >= when(build["finishedAt"])
    assert when(lint["startedAt"]) >= when(build["finishedAt"])
    assert when(ship["startedAt"]) >= max(when(unit["finishedAt"]), when(lint["finishedAt"]))
    assert when(run["createdAt"]) <= when(run["startedAt"]) <= when(build["startedAt"])
    assert when(run["finishedAt"]) >= when(ship["finishedAt"])
    assert run["durationMs"] is not None and run["durationMs"] >= 0


async def test_step_env_is_visible_to_expressions_of_the_same_step(api: Api):
    await api.install(
        "step-env",
        workflow(
            {
                "only": {
                    "steps": [
                        {"id": "s", "env": {"MINE": "step-value"}, "run": "echo '${{ env.MINE }}'"}
                    ]
                }
            }
        ),
    )
    run = await api.finished(await api.start("step-env"))
    assert step_of(run, "only", "s")["outputs"]["stdout"] == "step-value"


async def test_stdout_json_object_becomes_outputs_without_markers(api: Api):
    await api.install(
        "json-out",
        workflow({"j": {"steps": [{"id": "s", "run": """echo '{"answer": 42, "ok2": true}'"""}]}}),
    )
    run = await api.finished(await api.start("json-out"))
    outputs = step_of(run, "j", "s")["outputs"]
    assert outputs["answer"] == 42 and outputs["ok2"] is True and outputs["exitCode"] == 0


async def test_list_runs_pages_counts_and_filters(api: Api):
    await api.install("ok", workflow({"j": {"steps": [{"run": "true"}]}}))
    await api.install("bad", workflow({"j": {"steps": [{"run": "exit 1"}]}}))
    ok_ids = [await api.start("ok") for _ in range(3)]
    bad_id = await api.start("bad")
    for run_id in [*ok_ids, bad_id]:
        await api.finished(run_id)

    everything = (await api.get("/api/v1/runs")).json()["data"]
    assert everything["total"] == 4
    newest_first = [bad_id, *reversed(ok_ids)]
    assert [run["id"] for run in everything["runs"]] == newest_first

    page = (await api.get("/api/v1/runs", params={"limit": 2, "offset": 1})).json()["data"]
    assert page["total"] == 4  # the total before paging
    assert [run["id"] for run in page["runs"]] == newest_first[1:3]
    summary = page["runs"][0]
    assert {"id", "workflowId", "status", "trigger", "createdAt", "startedAt"} <= set(summary)
    assert "finishedAt" in summary and "durationMs" in summary and "error" in summary

    failed = (await api.get("/api/v1/runs", params={"status": "failed"})).json()["data"]
    assert failed["total"] == 1 and [run["id"] for run in failed["runs"]] == [bad_id]
    assert failed["runs"][0]["error"]["code"] == "HANDLER_REPORTED_FAILURE"
    both = (await api.get("/api/v1/runs", params={"status": "success,failed"})).json()["data"]
    assert both["total"] == 4
    none = (await api.get("/api/v1/runs", params={"status": "dlq"})).json()["data"]
    assert none == {"runs": [], "total": 0}
    by_workflow = (await api.get("/api/v1/runs", params={"workflowId": "ok"})).json()["data"]
    assert by_workflow["total"] == 3

    of_ok = (await api.get("/api/v1/workflows/ok/runs", params={"limit": 1})).json()["data"]
    assert of_ok["workflowId"] == "ok" and of_ok["total"] == 3
    assert [run["id"] for run in of_ok["runs"]] == [ok_ids[-1]]
    unknown = (await api.get("/api/v1/workflows/nope/runs")).json()["data"]
    assert unknown["runs"] == [] and unknown["total"] == 0
    bad_limit = await api.get("/api/v1/runs", params={"limit": "many"})
    assert bad_limit.status_code == 400


async def test_get_unknown_run_is_404(api: Api):
    for path in ("", "/logs", "/events", "/approvals"):
        answer = await api.get(f"/api/v1/runs/00000000-0000-0000-0000-000000000000{path}")
        assert answer.status_code == 404, (path, answer.text)
        assert error_of(answer)["code"] == "RUN_NOT_FOUND"


# --- the catalog -----------------------------------------------------------------------------


async def test_workflow_list_get_and_ids_with_slash_colon_and_at(api: Api):
    odd_id = "team/build:v2@beta"
    write_workflow(
        api.project,
        "odd",
        workflow(
            {"j": {"steps": [{"id": "s", "run": "echo '${{ run.workflowId }}'"}]}},
            id=odd_id,
            name="Odd one",
            description="ids with separators #ci",
            inputs={"who": {"type": "string", "default": "me", "description": "who"}},
        ),
    )
    write_workflow(api.project, "plain", workflow({"j": {"steps": [{"run": "true"}]}}, name="A"))
    refreshed = (await api.post("/api/v1/workflows/refresh")).json()["data"]
    assert refreshed == {
        "workflowsLoaded": 2 + len(BUILTIN_WORKFLOWS),
        "workflowIds": [*BUILTIN_WORKFLOWS, "plain", odd_id],
    }

    listed = (await api.get("/api/v1/workflows", params={"source": "standalone"})).json()
    listed = listed["data"]
    assert listed["total"] == 2
    assert [info["id"] for info in listed["workflows"]] == ["plain", odd_id]  # by name
    info = next(w for w in listed["workflows"] if w["id"] == odd_id)
    assert info["source"] == "standalone" and info["status"] == "active"
    assert info["name"] == "Odd one" and info["version"] == "1.0.0"
    assert info["inputs"] == {
        "who": {"type": "string", "description": "who", "required": False, "default": "me"}
    }
    assert info["triggers"]["manual"] is True
    assert "ci" in info["tags"] and info["path"].endswith("odd.yml")

    for path in (odd_id, quote(odd_id, safe="")):
        answer = await api.get(f"/api/v1/workflows/{path}")
        assert answer.status_code == 200, (path, answer.text)
        assert answer.json()["data"]["id"] == odd_id
    tagged = (await api.get("/api/v1/workflows", params={"tags": "ci"})).json()["data"]
    assert [w["id"] for w in tagged["workflows"]] == [odd_id]

    run_id = await api.start(quote(odd_id, safe=""))
    run = await api.finished(run_id)
    assert run["status"] == "success" and run["workflowId"] == odd_id
    assert step_of(run, "j", "s")["outputs"]["stdout"] == odd_id
    of_odd = (await api.get(f"/api/v1/workflows/{odd_id}/runs")).json()["data"]
    assert of_odd["workflowId"] == odd_id and [r["id"] for r in of_odd["runs"]] == [run_id]

    missing = await api.get("/api/v1/workflows/team/nothing:here")
    assert missing.status_code == 404 and error_of(missing)["code"] == "WORKFLOW_NOT_FOUND"
    start_missing = await api.post("/api/v1/workflows/nothing/runs", json={})
    assert start_missing.status_code == 404
    assert error_of(start_missing)["code"] == "WORKFLOW_NOT_FOUND"


async def test_invalid_workflow_is_listed_with_its_problems_and_refuses_to_start(api: Api):
    write_workflow(
        api.project,
        "broken",
        workflow(
            {
                "a": {"needs": "b", "steps": [{"uses": "builtin:teleport"}]},
                "b": {"needs": ["a", "ghost"], "steps": [{"run": "true", "contineOnError": True}]},
            }
        ),
    )
    write_workflow(api.project, "syntax", "name: x\non: {manual: true\n")
    write_workflow(api.project, "fine", workflow({"j": {"steps": [{"run": "true"}]}}))
    await api.post("/api/v1/workflows/refresh")

    invalid = (await api.get("/api/v1/workflows", params={"status": "invalid"})).json()["data"]
    assert sorted(w["id"] for w in invalid["workflows"]) == ["broken", "syntax"]
    broken = next(w for w in invalid["workflows"] if w["id"] == "broken")
    assert broken["status"] == "invalid"
    paths = {problem["path"] for problem in broken["problems"]}
    assert "jobs.a.steps[0].uses" in paths
    assert "jobs.b.needs[1]" in paths  # unknown job "ghost"
    assert "jobs.b.steps[0].contineOnError" in paths
    assert any("cycle" in p["message"] for p in broken["problems"])
    active = (await api.get("/api/v1/workflows", params={"status": "active"})).json()["data"]
    assert [w["id"] for w in active["workflows"]] == [*BUILTIN_WORKFLOWS, "fine"]
    syntax = (await api.get("/api/v1/workflows/syntax")).json()["data"]
    assert "invalid YAML" in syntax["problems"][0]["message"]

    refused = await api.post("/api/v1/workflows/broken/runs", json={})
    assert refused.status_code == 422
    error = error_of(refused)
    assert error["code"] == "WORKFLOW_INVALID"
    assert {p["path"] for p in error["details"]} == paths
    assert (await api.get("/api/v1/runs")).json()["data"]["total"] == 0


async def test_plugin_workflow_handler_runs_after_linking(project: Path):
    folder = project / "plugins" / "kb-hello"
    shutil.copytree(EXAMPLE_PLUGIN, folder, ignore=shutil.ignore_patterns("__pycache__"))
    linked = run_cli("plugin", "link", str(folder), project=project, env=base_env(project))
    assert linked.returncode == 0, linked.stderr
    async with open_api(project) as api:
        handler_id = "@kb-labs/hello/greet"
        listed = (await api.get("/api/v1/workflows", params={"source": "manifest"})).json()
        assert handler_id in [w["id"] for w in listed["data"]["workflows"]]
        for path in (handler_id, quote(handler_id, safe="")):
            info = await api.get(f"/api/v1/workflows/{path}")
            assert info.status_code == 200, info.text
            assert info.json()["data"]["source"] == "manifest"
            assert info.json()["data"]["pluginId"] == "@kb-labs/hello"

        run = await api.finished(await api.start(handler_id, {"name": "ada"}))
        assert run["status"] == "success", run
        assert run["workflowId"] == handler_id
        step = step_of(run, "run", "handler")
        assert step["uses"] == "plugin:@kb-labs/hello/greet"
        assert step["outputs"] == {"greeting": "hello ada"}

        # The same handler as a step of a standalone workflow, with `with`.
        await api.install(
            "greets",
            workflow(
                {
                    "j": {
                        "steps": [
                            {
                                "id": "hi",
                                "uses": "plugin:@kb-labs/hello/greet",
                                "with": {"name": "${{ inputs.who }}"},
                            },
                            {"id": "echo", "run": "echo '${{ steps.hi.outputs.greeting }}'"},
                            {"id": "nope", "uses": "plugin:@kb-labs/hello/nothing"},
                        ]
                    }
                },
                inputs={"who": {"type": "string", "default": "bob"}},
            ),
        )
        run = await api.finished(await api.start("greets"))
        assert step_of(run, "j", "hi")["outputs"] == {"greeting": "hello bob"}
        assert step_of(run, "j", "echo")["outputs"]["stdout"] == "hello bob"
        nope = step_of(run, "j", "nope")
        assert nope["status"] == "failed"
        assert nope["error"]["code"] == "COMMAND_RESOLUTION_FAILED"
        assert "nothing" in nope["error"]["message"]
        assert run["status"] == "failed"


# --- inputs ----------------------------------------------------------------------------------

TYPED_INPUTS = workflow(
    {"j": {"steps": [{"id": "echo", "uses": "builtin:noop", "with": {"all": "${{ inputs }}"}}]}},
    inputs={
        "name": {"type": "string", "required": True},
        "retries": {"type": "number", "default": 3},
        "ratio": {"type": "number"},
        "dry": {"type": "boolean", "default": False},
        "level": {"type": "string", "enum": ["low", "high"], "default": "low"},
    },
)


async def test_inputs_defaults_and_coercion(api: Api):
    await api.install("typed", TYPED_INPUTS)
    run_id = await api.start("typed", {"name": 7, "ratio": "0.5", "dry": "TRUE", "level": "high"})
    run = await api.finished(run_id)
    expected = {"name": "7", "retries": 3, "ratio": 0.5, "dry": True, "level": "high"}
    assert run["inputs"] == expected
    assert step_of(run, "j", "echo")["outputs"] == {"all": expected}

    run = await api.finished(await api.start("typed", {"name": "n", "retries": "5"}))
    assert run["inputs"] == {"name": "n", "retries": 5, "dry": False, "level": "low"}

    legacy = await api.post("/api/v1/workflows/typed/runs", json={"input": {"name": "old"}})
    assert legacy.status_code == 201
    run = await api.finished(legacy.json()["data"]["runId"])
    assert run["inputs"]["name"] == "old"


@pytest.mark.parametrize(
    ("inputs", "problems"),
    [
        ({}, {"inputs.name": "required"}),
        ({"name": "x", "bogus": 1}, {"inputs.bogus": "unknown input"}),
        ({"name": "x", "level": "medium"}, {"inputs.level": "must be one of low, high"}),
        ({"name": "x", "retries": "many"}, {"inputs.retries": "expected a number"}),
        ({"name": "x", "dry": "maybe"}, {"inputs.dry": "expected a boolean"}),
        ({"name": ["x"]}, {"inputs.name": "expected a string"}),
        (
            {"retries": True, "typo": 1},
            {"inputs.typo": "unknown", "inputs.name": "required", "inputs.retries": "number"},
        ),
    ],
)
async def test_bad_inputs_are_400_naming_each_field(api: Api, inputs, problems):
    await api.install("typed", TYPED_INPUTS)
    answer = await api.post("/api/v1/workflows/typed/runs", json={"inputs": inputs})
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert error["code"] == "VALIDATION_ERROR"
    details = {d["field"]: d["message"] for d in error["details"]}
    assert set(details) == set(problems)
    for field, fragment in problems.items():
        assert fragment in details[field], details
    assert (await api.get("/api/v1/runs")).json()["data"]["total"] == 0


async def test_run_body_is_checked(api: Api):
    await api.install("typed", TYPED_INPUTS)
    not_object = await api.post("/api/v1/workflows/typed/runs", json={"inputs": [1, 2]})
    assert not_object.status_code == 400
    extra = await api.post("/api/v1/workflows/typed/runs", json={"inputs": {}, "bogus": 1})
    assert extra.status_code == 400
    assert (await api.get("/api/v1/runs")).json()["data"]["total"] == 0


# --- failure semantics -----------------------------------------------------------------------


async def test_failing_shell_step_fails_job_and_run_and_skips_dependents(api: Api):
    await api.install(
        "fails",
        workflow(
            {
                "build": {
                    "steps": [
                        {"id": "ok", "run": "echo fine"},
                        {"id": "boom", "run": "echo partial; echo 'it broke' >&2; exit 3"},
                        {"id": "never", "run": "echo never > never.txt"},
                    ]
                },
                "test": {"needs": "build", "steps": [{"run": "echo test > test.txt"}]},
                "deploy": {"needs": ["test"], "steps": [{"run": "true"}]},
                "docs": {"steps": [{"id": "docs", "run": "echo docs"}]},
            }
        ),
    )
    run = await api.finished(await api.start("fails"))
    assert run["status"] == "failed"
    assert run["error"]["code"] == "HANDLER_REPORTED_FAILURE"
    assert "build" in run["error"]["message"] and "it broke" in run["error"]["message"]

    boom = step_of(run, "build", "boom")
    assert boom["status"] == "failed"
    assert boom["error"] == {
        "code": "HANDLER_REPORTED_FAILURE",
        "message": "it broke",
        "exitCode": 3,
    }
    assert boom["outputs"]["exitCode"] == 3 and boom["outputs"]["ok"] is False
    assert boom["outputs"]["stdout"] == "partial"
    assert step_of(run, "build", "ok")["status"] == "success"
    assert step_of(run, "build", "never")["status"] != "success"
    assert not (api.project / "never.txt").exists()
    build = job_of(run, "build")
    assert build["status"] == "failed" and build["error"]["code"] == "HANDLER_REPORTED_FAILURE"

    test, deploy = job_of(run, "test"), job_of(run, "deploy")
    assert test["status"] == "skipped" and "build" in test["skipReason"]
    assert deploy["status"] == "skipped" and "test" in deploy["skipReason"]
    assert test["startedAt"] is None and not (api.project / "test.txt").exists()
    assert job_of(run, "docs")["status"] == "success"  # independent of the failure


async def test_exit_without_stderr_names_the_exit_code(api: Api):
    await api.install("quiet", workflow({"j": {"steps": [{"id": "q", "run": "exit 7"}]}}))
    run = await api.finished(await api.start("quiet"))
    assert step_of(run, "j", "q")["error"]["message"] == (
        "Step handler reported failure (exitCode: 7)"
    )


async def test_continue_on_error_lets_the_job_go_on(api: Api):
    await api.install(
        "tolerant",
        workflow(
            {
                "j": {
                    "steps": [
                        {"id": "flaky", "run": "exit 2", "continueOnError": True},
                        {
                            "id": "after",
                            "run": "echo 'flaky=${{ steps.flaky.status }} "
                            "code=${{ steps.flaky.outputs.exitCode }}'",
                        },
                    ]
                },
                "next": {"needs": "j", "steps": [{"run": "true"}]},
            }
        ),
    )
    run = await api.finished(await api.start("tolerant"))
    assert run["status"] == "success", run
    assert step_of(run, "j", "flaky")["status"] == "failed"
    assert step_of(run, "j", "after")["outputs"]["stdout"] == "flaky=failed code=2"
    assert job_of(run, "j")["status"] == "success"
    assert job_of(run, "next")["status"] == "success"


async def test_job_continue_on_error_does_not_fail_the_run(api: Api):
    await api.install(
        "job-tolerant",
        workflow(
            {
                "optional": {"continueOnError": True, "steps": [{"run": "exit 1"}]},
                "after": {"needs": "optional", "steps": [{"id": "s", "run": "echo ran"}]},
            }
        ),
    )
    run = await api.finished(await api.start("job-tolerant"))
    assert job_of(run, "optional")["status"] == "failed"
    assert step_of(run, "after", "s")["outputs"]["stdout"] == "ran"
    assert run["status"] == "success", run


async def test_job_if_false_skips_the_job_and_its_dependents(api: Api):
    await api.install(
        "conditional",
        workflow(
            {
                "always": {"steps": [{"run": "true"}]},
                "release": {
                    "if": "${{ inputs.release }}",
                    "steps": [{"run": "echo released > released.txt"}],
                },
                "announce": {"needs": "release", "steps": [{"run": "echo x > announced.txt"}]},
            },
            inputs={"release": {"type": "boolean", "default": False}},
        ),
    )
    run = await api.finished(await api.start("conditional"))
    assert run["status"] == "success", run
    release = job_of(run, "release")
    assert release["status"] == "skipped" and "inputs.release" in release["skipReason"]
    assert job_of(run, "announce")["status"] == "skipped"
    assert "release" in job_of(run, "announce")["skipReason"]
    assert not (api.project / "released.txt").exists()
    assert not (api.project / "announced.txt").exists()

    run = await api.finished(await api.start("conditional", {"release": True}))
    assert [job["status"] for job in run["jobs"]] == ["success"] * 3
    assert (api.project / "announced.txt").exists()


async def test_run_whose_jobs_are_all_skipped_is_skipped(api: Api):
    await api.install("nothing", workflow({"j": {"if": "false", "steps": [{"run": "true"}]}}))
    run = await api.finished(await api.start("nothing"))
    assert run["status"] == "skipped"
    assert job_of(run, "j")["status"] == "skipped"


async def test_step_if_false_skips_only_that_step(api: Api):
    await api.install(
        "step-if",
        workflow(
            {
                "j": {
                    "steps": [
                        {"id": "probe", "run": 'echo \'::kb-output::{"go": "no"}\''},
                        {
                            "id": "maybe",
                            "if": "steps.probe.outputs.go == 'yes'",
                            "run": "echo ran > maybe.txt",
                        },
                        {"id": "never", "if": False, "run": "echo ran > never.txt"},
                        {"id": "after", "run": "echo 'maybe=${{ steps.maybe.status }}'"},
                    ]
                }
            }
        ),
    )
    run = await api.finished(await api.start("step-if"))
    assert run["status"] == "success"
    assert step_of(run, "j", "maybe")["status"] == "skipped"
    assert step_of(run, "j", "never")["status"] == "skipped"
    assert step_of(run, "j", "maybe")["startedAt"] is None
    assert step_of(run, "j", "after")["outputs"]["stdout"] == "maybe=skipped"
    assert not (api.project / "maybe.txt").exists()
    assert not (api.project / "never.txt").exists()


@pytest.mark.parametrize("where", ["step", "job"])
async def test_bad_if_expression_fails_with_invalid_step(api: Api, where: str):
    step: dict[str, Any] = {"id": "s", "run": "true"}
    job: dict[str, Any] = {"steps": [step]}
    (step if where == "step" else job)["if"] = "nosuch.thing =="
    await api.install("bad-if", workflow({"j": job}))
    run = await api.finished(await api.start("bad-if"))
    assert run["status"] == "failed"
    assert job_of(run, "j")["error"]["code"] == "INVALID_STEP"
    assert "nosuch.thing" in job_of(run, "j")["error"]["message"]
    if where == "step":
        assert step_of(run, "j", "s")["status"] == "failed"
        assert step_of(run, "j", "s")["error"]["code"] == "INVALID_STEP"


async def test_steps_that_never_run_end_skipped(api: Api):
    await api.install(
        "leftovers",
        workflow(
            {
                "build": {
                    "steps": [{"id": "boom", "run": "exit 3"}, {"id": "never", "run": "true"}],
                    "hooks": {"onSuccess": [{"id": "yay", "run": "true"}]},
                },
                "test": {"needs": "build", "steps": [{"id": "t", "run": "true"}]},
            }
        ),
    )
    run = await api.finished(await api.start("leftovers"))
    assert run["status"] == "failed"
    statuses = {
        (job["jobName"], step["stepId"]): step["status"]
        for job in run["jobs"]
        for step in job["steps"]
    }
    assert statuses == {
        ("build", "boom"): "failed",
        ("build", "never"): "skipped",
        ("build", "yay"): "skipped",
        ("test", "t"): "skipped",
    }


def hooks_workflow(log: Path, main_command: str) -> dict[str, Any]:
    def note(text: str) -> str:
        return f"echo {text} >> {log}"

    return workflow(
        {
            "j": {
                "hooks": {
                    "pre": [{"id": "setup", "run": note("pre")}],
                    "onSuccess": [{"id": "celebrate", "run": note("onSuccess")}],
                    "onFailure": [
                        {"id": "alert", "run": note("onFailure-${{ job.status }}")},
                    ],
                    "post": [{"id": "cleanup", "run": note("post-${{ job.status }}")}],
                },
                "steps": [{"id": "main", "run": f"{note('main')}; {main_command}"}],
            }
        }
    )


async def test_hooks_run_in_order_on_success(api: Api):
    log = api.project / "hooks.log"
    await api.install("hooks-ok", hooks_workflow(log, "true"))
    run = await api.finished(await api.start("hooks-ok"))
    assert run["status"] == "success", run
    assert log.read_text().split() == ["pre", "main", "onSuccess", "post-success"]
    steps = {step["stepId"]: step for step in job_of(run, "j")["steps"]}
    assert [s["section"] for s in job_of(run, "j")["steps"]] == [
        "pre",
        "main",
        "onSuccess",
        "onFailure",
        "post",
    ]
    assert steps["setup"]["status"] == steps["celebrate"]["status"] == "success"
    assert steps["cleanup"]["status"] == "success"
    assert steps["alert"]["status"] != "success" and steps["alert"]["startedAt"] is None


async def test_hooks_run_in_order_on_failure(api: Api):
    log = api.project / "hooks.log"
    await api.install("hooks-fail", hooks_workflow(log, "exit 4"))
    run = await api.finished(await api.start("hooks-fail"))
    assert run["status"] == "failed"
    assert log.read_text().split() == ["pre", "main", "onFailure-failure", "post-failure"]
    steps = {step["stepId"]: step for step in job_of(run, "j")["steps"]}
    assert steps["main"]["status"] == "failed"
    assert steps["alert"]["status"] == steps["cleanup"]["status"] == "success"
    assert steps["celebrate"]["startedAt"] is None
    assert job_of(run, "j")["error"]["code"] == "HANDLER_REPORTED_FAILURE"


async def test_failing_pre_hook_skips_the_steps_but_runs_on_failure_and_post(api: Api):
    log = api.project / "hooks.log"
    spec = hooks_workflow(log, "true")
    spec["jobs"]["j"]["hooks"]["pre"] = [{"id": "setup", "run": f"echo pre >> {log}; exit 1"}]
    await api.install("pre-fails", spec)
    run = await api.finished(await api.start("pre-fails"))
    assert run["status"] == "failed"
    assert log.read_text().split() == ["pre", "onFailure-failure", "post-failure"]


async def test_failing_post_hook_fails_a_successful_job(api: Api):
    await api.install(
        "post-fails",
        workflow(
            {"j": {"hooks": {"post": [{"id": "p", "run": "exit 9"}]}, "steps": [{"run": "true"}]}}
        ),
    )
    run = await api.finished(await api.start("post-fails"))
    assert run["status"] == "failed"
    assert job_of(run, "j")["status"] == "failed"


async def test_step_and_job_timeouts(api: Api):
    await api.install(
        "timeouts",
        workflow(
            {
                "step": {"steps": [{"id": "nap", "timeoutMs": 300, "run": "sleep 10"}]},
                "shell": {"steps": [{"id": "nap", "run": "sleep 10", "with": {"timeout": 300}}]},
                "job": {
                    "timeoutMs": 500,
                    "retries": {"max": 3},
                    "steps": [{"run": "true"}, {"id": "nap", "run": "sleep 10"}],
                },
            }
        ),
    )
    started = time.monotonic()
    run = await api.until(
        await api.start("timeouts"),
        lambda r: all(job["status"] in TERMINAL for job in r["jobs"]),
        timeout=8,
    )
    assert time.monotonic() - started < 5
    assert run["status"] == "failed"
    for name in ("step", "shell"):
        nap = step_of(run, name, "nap")
        assert nap["status"] == "failed"
        assert nap["error"] == {
            "code": "STEP_TIMEOUT",
            "message": "Shell command timed out after 300ms",
        }
    job = job_of(run, "job")
    assert job["status"] == "failed" and job["error"]["code"] == "JOB_TIMEOUT"
    assert job["failures"] == 0  # a job timeout is final, not retried


async def test_dangerous_command_is_blocked_and_not_retried(api: Api):
    await api.install(
        "danger",
        workflow(
            {
                "j": {
                    "retries": {"max": 3, "initialIntervalMs": 100},
                    "steps": [{"id": "wipe", "run": "echo hi; rm -rf /tmp/nothing-here; RM -RF /"}],
                }
            }
        ),
    )
    run = await api.finished(await api.start("danger"))
    assert run["status"] == "failed"
    wipe = step_of(run, "j", "wipe")
    assert wipe["error"]["code"] == "SHELL_BLOCKED"
    assert wipe["error"]["message"].startswith('Dangerous command blocked: "rm -rf /"')
    assert job_of(run, "j")["failures"] == 0
    assert await api.logs(run["id"]) == []  # it never ran


async def test_concurrency_group_serialises_runs_or_cancels_the_older(api: Api):
    serial = workflow(
        {"j": {"steps": [{"run": "sleep 1.5"}]}},
        concurrency={"group": "deploy-${{ inputs.env }}"},
        inputs={"env": {"type": "string", "default": "prod"}},
    )
    await api.install("serial", serial)
    first_id, second_id = await api.start("serial"), await api.start("serial")
    other_env = await api.start("serial", {"env": "staging"})
    first, second = await api.finished(first_id), await api.finished(second_id)
    assert first["status"] == second["status"] == "success"
    assert first["metadata"]["concurrencyGroup"] == "deploy-prod"
    assert when(second["startedAt"]) >= when(first["finishedAt"])  # one at a time
    staging = await api.finished(other_env)
    assert when(staging["startedAt"]) < when(first["finishedAt"])  # another group

    newest = workflow(
        {"j": {"steps": [{"id": "s", "run": "sleep 20"}]}},
        concurrency={"group": "latest", "cancelInProgress": True},
    )
    await api.install("newest", newest)
    old_id = await api.start("newest")
    await api.step_status(old_id, "j", "s", "running")
    new_id = await api.start("newest")
    old = await api.finished(old_id, timeout=5)
    assert old["status"] == "cancelled"
    assert "latest" in old["error"]["message"]
    await api.step_status(new_id, "j", "s", "running", timeout=5)
    assert (await api.post(f"/api/v1/runs/{new_id}/cancel")).status_code == 200


async def test_job_level_cancel_in_progress_supersedes_the_run_holding_the_group(api: Api):
    held = {"steps": [{"id": "s", "run": "sleep 20"}]}
    await api.install(
        "pusher",
        workflow(
            {
                "deploy": {**held, "concurrency": {"group": "env-prod", "cancelInProgress": True}},
                "free": {"steps": [{"id": "s", "run": "sleep 20"}]},
            }
        ),
    )
    await api.install(  # same job group, without cancelInProgress: only waits its turn
        "waiter", workflow({"deploy": {**held, "concurrency": {"group": "env-prod"}}})
    )
    bystander = await api.start("waiter")
    await api.step_status(bystander, "deploy", "s", "running")
    first = await api.start("pusher")  # its deploy job queues behind the bystander
    await api.step_status(first, "free", "s", "running")
    second = await api.start("pusher")
    for superseded in (bystander, first):
        run = await api.finished(superseded, timeout=5)
        assert run["status"] == "cancelled"
        assert run["error"]["message"] == "superseded in concurrency group env-prod"
    await api.step_status(second, "deploy", "s", "running", timeout=5)
    assert (await api.post(f"/api/v1/runs/{second}/cancel")).status_code == 200


async def test_child_workflow_step_waits_for_its_run(api: Api):
    await api.install(
        "child",
        workflow(
            {"c": {"steps": [{"id": "say", "run": "echo 'child got ${{ inputs.word }}'"}]}},
            inputs={"word": {"type": "string", "required": True}},
        ),
    )
    await api.install(
        "parent",
        workflow(
            {
                "p": {
                    "steps": [
                        {
                            "id": "call",
                            "uses": "workflow:child",
                            "with": {"inputs": {"word": "hi"}},
                        },
                        {"id": "bad", "uses": "workflow:child", "continueOnError": True},
                        {"id": "after", "run": "echo '${{ steps.call.outputs.status }}'"},
                    ]
                }
            }
        ),
    )
    run = await api.finished(await api.start("parent"))
    assert run["status"] == "success", run
    call = step_of(run, "p", "call")
    assert call["outputs"]["status"] == "success"
    child = await api.run(call["outputs"]["runId"])
    assert child["parentRunId"] == run["id"] and child["trigger"]["type"] == "workflow"
    assert step_of(child, "c", "say")["outputs"]["stdout"] == "child got hi"
    bad = step_of(run, "p", "bad")
    assert bad["status"] == "failed" and bad["error"]["code"] == "VALIDATION_ERROR"
    assert step_of(run, "p", "after")["outputs"]["stdout"] == "success"


# --- retries ---------------------------------------------------------------------------------


def retry_workflow(counter: Path, succeed_from: int, retries: int) -> dict[str, Any]:
    return workflow(
        {
            "flaky": {
                "retries": {"max": retries, "backoff": "lin", "initialIntervalMs": 100},
                "steps": [
                    {"id": "once", "run": f"echo once >> {counter}.once"},
                    {"id": "try", "run": counter_command(counter, succeed_from)},
                ],
            }
        }
    )


async def test_retries_then_success_resume_at_the_failed_step(api: Api):
    counter = api.project / "count"
    await api.install("retry", retry_workflow(counter, succeed_from=3, retries=2))
    started = time.monotonic()
    run = await api.finished(await api.start("retry"))
    elapsed = time.monotonic() - started

    assert run["status"] == "success", run
    flaky = job_of(run, "flaky")
    assert flaky["failures"] == 2 and flaky["attempt"] == 3
    assert flaky["status"] == "success"
    assert counter.read_text().strip() == "3"
    # the step that had succeeded does not run again on a retry
    assert (api.project / "count.once").read_text().split() == ["once"]
    assert elapsed >= 0.3  # lin backoff: 100 ms, then 200 ms
    assert step_of(run, "flaky", "try")["outputs"]["stdout"] == "attempt 3"

    events = sse_events(
        (await api.get(f"/api/v1/runs/{run['id']}/events", headers={"Last-Event-ID": "0"})).text
    )
    retrying = [e["data"] for e in events if e["data"]["type"] == "job.retrying"]
    assert len(retrying) == 2
    assert all(e["payload"]["error"]["code"] == "HANDLER_REPORTED_FAILURE" for e in retrying)


async def test_retries_exhausted_is_dlq_and_rerun_makes_a_new_run(api: Api):
    counter = api.project / "count"
    await api.install("retry", retry_workflow(counter, succeed_from=4, retries=1))
    first_id = await api.start("retry")
    first = await api.finished(first_id)
    assert first["status"] == "dlq", first
    assert job_of(first, "flaky")["status"] == "failed"
    assert job_of(first, "flaky")["failures"] == 1
    assert first["error"]["code"] == "HANDLER_REPORTED_FAILURE"
    assert "flaky" in first["error"]["message"]
    assert counter.read_text().strip() == "2"
    listed = (await api.get("/api/v1/runs", params={"status": "dlq"})).json()["data"]
    assert [r["id"] for r in listed["runs"]] == [first_id]

    answer = await api.post(f"/api/v1/runs/{first_id}/rerun")
    assert answer.status_code == 201, answer.text
    data = answer.json()["data"]
    assert data["rerunOf"] == first_id and data["runId"] != first_id
    second = await api.finished(data["runId"])
    assert second["status"] == "success"  # attempt 4 of the counter succeeds
    assert second["trigger"]["type"] == "rerun"
    assert second["trigger"]["payload"] == {"rerunOf": first_id}
    assert (await api.run(first_id))["status"] == "dlq"  # terminal states stay

    unknown = await api.post("/api/v1/runs/00000000-0000-0000-0000-000000000000/rerun")
    assert unknown.status_code == 404


async def test_no_retries_by_default(api: Api):
    counter = api.project / "count"
    await api.install("default", workflow({"j": {"steps": [{"run": counter_command(counter, 2)}]}}))
    run = await api.finished(await api.start("default"))
    assert run["status"] == "failed"  # not dlq: no retry policy was configured
    assert counter.read_text().strip() == "1"


# --- approvals -------------------------------------------------------------------------------


def approval_workflow(**approval: Any) -> dict[str, Any]:
    return workflow(
        {
            "release": {
                "retries": {"max": 2, "initialIntervalMs": 100},
                "steps": [
                    {"id": "prepare", "run": "echo prepared"},
                    {
                        "id": "review",
                        "name": "Release review",
                        "uses": "builtin:approval",
                        "with": {
                            "title": "Ship ${{ inputs.version }}?",
                            "instructions": "look at the changelog",
                            "context": {"version": "${{ inputs.version }}"},
                            **approval,
                        },
                    },
                    {
                        "id": "ship",
                        "run": "echo 'approved=${{ steps.review.outputs.approved }} "
                        "by=${{ steps.review.outputs.comment }} "
                        "ticket=${{ steps.review.outputs.ticket }}'",
                    },
                ],
            }
        },
        inputs={"version": {"type": "string", "default": "1.2.3"}},
    )


async def test_approval_waits_without_holding_a_worker_then_approve(project: Path):
    config = {"workflow": {"maxParallelJobs": 1}}
    async with open_api(project, config) as api:
        await api.install("gated", approval_workflow())
        await api.install("quick", workflow({"j": {"steps": [{"run": "echo quick"}]}}))
        run_id = await api.start("gated")
        run = await api.step_status(run_id, "release", "review", "waiting_approval")
        assert run["status"] == "running"
        assert job_of(run, "release")["status"] == "waiting"
        assert step_of(run, "release", "review")["startedAt"] is not None
        assert step_of(run, "release", "ship")["status"] == "queued"

        # The only worker is free: another run completes while the approval waits.
        other = await api.finished(await api.start("quick"), timeout=5)
        assert other["status"] == "success"
        assert (await api.run(run_id))["status"] == "running"

        pending = await api.pending(run_id)
        assert len(pending) == 1
        entry = pending[0]
        assert entry["jobId"] == f"{run_id}:release"
        assert entry["stepId"] == "review"
        assert entry["title"] == "Ship 1.2.3?"
        assert entry["instructions"] == "look at the changelog"
        assert entry["context"] == {"version": "1.2.3"}
        assert entry["waitingSince"] and entry["expiresAt"] is None

        answer = await api.resolve(
            run_id,
            jobId="release",
            stepId="review",
            action="approve",
            comment="ann",
            data={"ticket": "REL-7"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"] == {
            "runId": run_id,
            "jobId": "release",
            "stepId": "review",
            "action": "approve",
            "resolved": True,
        }
        run = await api.finished(run_id)
        assert run["status"] == "success", run
        review = step_of(run, "release", "review")
        assert review["status"] == "success"
        assert review["outputs"] == {
            "approved": True,
            "action": "approve",
            "comment": "ann",
            "ticket": "REL-7",
        }
        ship = step_of(run, "release", "ship")
        assert ship["outputs"]["stdout"] == "approved=true by=ann ticket=REL-7"
        assert step_of(run, "release", "prepare")["attempt"] == 1  # not re-run on resume
        assert await api.pending(run_id) == []

        again = await api.resolve(run_id, jobId="release", stepId="review", action="approve")
        assert again.status_code == 409
        assert "current status: success" in error_of(again)["message"]


async def test_pending_approval_names_its_step(api: Api):
    await api.install("gated", approval_workflow())
    run_id = await api.start("gated")
    await api.step_status(run_id, "release", "review", "waiting_approval")
    assert (await api.pending(run_id))[0]["stepName"] == "Release review"


async def test_rejected_approval_fails_the_job_without_retrying(api: Api):
    await api.install("gated", approval_workflow())
    run_id = await api.start("gated")
    await api.step_status(run_id, "release", "review", "waiting_approval")
    answer = await api.resolve(
        run_id, jobId=f"{run_id}:release", stepId="review", action="reject", comment="not now"
    )
    assert answer.status_code == 200, answer.text
    run = await api.finished(run_id)
    assert run["status"] == "failed", run  # not dlq: a rejection is not retried
    review = step_of(run, "release", "review")
    assert review["status"] == "failed"
    assert review["error"] == {"code": "APPROVAL_REJECTED", "message": "not now"}
    assert review["outputs"]["approved"] is False and review["outputs"]["action"] == "reject"
    release = job_of(run, "release")
    assert release["status"] == "failed" and release["error"]["code"] == "APPROVAL_REJECTED"
    assert release["failures"] == 0
    assert step_of(run, "release", "ship")["startedAt"] is None


async def test_resolve_errors(api: Api):
    await api.install("gated", approval_workflow())
    run_id = await api.start("gated")
    await api.step_status(run_id, "release", "review", "waiting_approval")

    cases = [
        ({}, 400, "Missing required fields: jobId, stepId, action"),
        ({"jobId": "release", "stepId": "review"}, 400, "Missing required fields: action"),
        ({"jobId": "release", "stepId": "review", "action": "maybe"}, 400, "approve"),
        ({"jobId": "nope", "stepId": "review", "action": "approve"}, 404, "Job not found"),
        ({"jobId": "release", "stepId": "nope", "action": "approve"}, 404, "Step not found"),
        (
            {"jobId": "release", "stepId": "prepare", "action": "approve"},
            409,
            "Step is not waiting for approval (current status: success)",
        ),
    ]
    for body, status, message in cases:
        answer = await api.resolve(run_id, **body)
        assert answer.status_code == status, (body, answer.text)
        assert message in error_of(answer)["message"], (body, answer.text)

    unknown = await api.resolve(
        "00000000-0000-0000-0000-000000000000", jobId="release", stepId="review", action="approve"
    )
    assert unknown.status_code == 404 and "Run not found" in error_of(unknown)["message"]
    not_json = await api.post(
        f"/api/v1/runs/{run_id}/approvals/resolve",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert not_json.status_code == 400
    # nothing above touched the waiting step
    assert len(await api.pending(run_id)) == 1
    assert (await api.run(run_id))["status"] == "running"


async def test_approval_timeout_fails_with_approval_timeout(api: Api):
    await api.install("gated", approval_workflow(timeoutMs=300))
    run_id = await api.start("gated")
    run = await api.step_status(run_id, "release", "review", "waiting_approval")
    assert (await api.pending(run_id))[0]["expiresAt"] is not None
    run = await api.finished(run_id, timeout=12)  # the reaper looks every 5 s
    assert run["status"] == "failed", run
    review = step_of(run, "release", "review")
    assert review["status"] == "failed" and review["error"]["code"] == "APPROVAL_TIMEOUT"
    assert job_of(run, "release")["error"]["code"] == "APPROVAL_TIMEOUT"
    assert job_of(run, "release")["failures"] == 0
    assert await api.pending(run_id) == []
    late = await api.resolve(run_id, jobId="release", stepId="review", action="approve")
    assert late.status_code == 409


async def test_cancel_a_run_waiting_for_approval(api: Api):
    await api.install("gated", approval_workflow())
    run_id = await api.start("gated")
    await api.step_status(run_id, "release", "review", "waiting_approval")
    answer = await api.post(f"/api/v1/runs/{run_id}/cancel")
    assert answer.status_code == 200
    assert answer.json()["data"] == {"cancelled": True, "runId": run_id}
    run = await api.finished(run_id)
    assert run["status"] == "cancelled"
    assert job_of(run, "release")["status"] == "cancelled"
    assert step_of(run, "release", "review")["status"] == "cancelled"
    assert await api.pending(run_id) == []
    late = await api.resolve(run_id, jobId="release", stepId="review", action="approve")
    assert late.status_code == 409
    await asyncio.sleep(0.3)
    assert (await api.run(run_id))["status"] == "cancelled"


# --- gates -----------------------------------------------------------------------------------


def review_workflow(reject_route: Any) -> dict[str, Any]:
    return workflow(
        {
            "release": {
                "steps": [
                    {"id": "draft", "run": "echo draft >> drafts.txt"},
                    {"id": "review", "uses": "builtin:approval", "with": {"title": "ok?"}},
                    {
                        "id": "decide",
                        "uses": "builtin:gate",
                        "with": {
                            "decision": "steps.review.outputs.action",
                            "routes": {"approve": "continue", "reject": reject_route},
                        },
                    },
                    {"id": "ship", "run": "echo 'shipped ${{ trigger.payload.again }}'"},
                ]
            }
        }
    )


async def test_gate_routes_on_an_approval(api: Api):
    await api.install("review", review_workflow("fail"))
    approved_id = await api.start("review")
    await api.step_status(approved_id, "release", "review", "waiting_approval")
    answer = await api.resolve(approved_id, jobId="release", stepId="review", action="approve")
    assert answer.status_code == 200
    run = await api.finished(approved_id)
    assert run["status"] == "success", run
    decide = step_of(run, "release", "decide")
    assert decide["outputs"] == {"decisionValue": "approve", "action": "continue"}
    assert step_of(run, "release", "ship")["status"] == "success"

    rejected_id = await api.start("review")
    await api.step_status(rejected_id, "release", "review", "waiting_approval")
    answer = await api.resolve(rejected_id, jobId="release", stepId="review", action="reject")
    assert answer.status_code == 200
    run = await api.finished(rejected_id)
    assert run["status"] == "failed"
    # the rejection itself did not fail the job (a gate follows); the gate's route did
    assert job_of(run, "release")["error"]["code"] == "GATE_FAILED"
    assert step_of(run, "release", "review")["error"]["code"] == "APPROVAL_REJECTED"
    assert step_of(run, "release", "ship")["startedAt"] is None


async def test_gate_on_a_rejected_approval_restarts_the_review(api: Api):
    await api.install(
        "review-loop", review_workflow({"restartFrom": "draft", "context": {"again": 1}})
    )
    run_id = await api.start("review-loop")
    await api.step_status(run_id, "release", "review", "waiting_approval")
    rejected = await api.resolve(
        run_id, jobId="release", stepId="review", action="reject", comment="redo"
    )
    assert rejected.status_code == 200, rejected.text

    # The rejection does not fail the job: the next step is a gate that routes on it.
    run = await api.until(
        run_id,
        lambda r: (
            r["status"] in TERMINAL
            or (
                step_of(r, "release", "review")["status"] == "waiting_approval"
                and (api.project / "drafts.txt").read_text().count("draft") == 2
            )
        ),
    )
    assert run["status"] == "running", run
    assert run["metadata"]["gate:decide:iterations"] == 1
    approved = await api.resolve(run_id, jobId="release", stepId="review", action="approve")
    assert approved.status_code == 200, approved.text

    run = await api.finished(run_id)
    assert run["status"] == "success", run
    decide = step_of(run, "release", "decide")
    assert decide["outputs"]["action"] == "continue"
    assert decide["outputs"]["decisionValue"] == "approve"
    assert step_of(run, "release", "review")["outputs"]["approved"] is True
    assert step_of(run, "release", "ship")["outputs"]["stdout"] == "shipped 1"
    assert (api.project / "drafts.txt").read_text().split() == ["draft", "draft"]


def loop_workflow(counter: Path, done_at: int, **gate: Any) -> dict[str, Any]:
    return workflow(
        {
            "loop": {
                "steps": [
                    {
                        "id": "work",
                        "run": f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); "
                        f"echo $n > {counter}; "
                        f"if [ $n -ge {done_at} ]; then d=true; else d=false; fi; "
                        'echo "::kb-output::{\\"done\\": $d, \\"n\\": $n}"',
                    },
                    {
                        "id": "check",
                        "uses": "builtin:gate",
                        "with": {
                            "decision": "steps.work.outputs.done",
                            "routes": {"true": "continue", "false": {"restartFrom": "work"}},
                            **gate,
                        },
                    },
                    {"id": "after", "run": "echo 'n=${{ steps.work.outputs.n }}'"},
                ]
            }
        }
    )


async def test_gate_on_a_step_output_loops_until_done(api: Api):
    counter = api.project / "n"
    await api.install("loop", loop_workflow(counter, done_at=3))
    run = await api.finished(await api.start("loop"))
    assert run["status"] == "success", run
    assert counter.read_text().strip() == "3"
    assert run["metadata"]["gate:check:iterations"] == 2  # two restarts
    check = step_of(run, "loop", "check")
    assert check["outputs"]["action"] == "continue" and check["outputs"]["decisionValue"] is True
    assert step_of(run, "loop", "after")["outputs"]["stdout"] == "n=3"


async def test_gate_stops_at_max_iterations(api: Api):
    counter = api.project / "n"
    await api.install("loop", loop_workflow(counter, done_at=10, maxIterations=2))
    run = await api.finished(await api.start("loop"))
    assert run["status"] == "failed"
    check = step_of(run, "loop", "check")
    assert check["status"] == "failed"
    assert check["error"]["code"] == "GATE_MAX_ITERATIONS"
    assert check["error"]["message"] == "Gate max iterations reached (2) for step check"
    assert counter.read_text().strip() == "2"  # one restart, then the limit


def verdict_workflow(value: str, decision: str, **extra: Any) -> dict[str, Any]:
    return workflow(
        {
            "j": {
                "steps": [
                    {"id": "probe", "run": f'echo \'::kb-output::{{"verdict": "{value}"}}\''},
                    {
                        "id": "g",
                        "uses": "builtin:gate",
                        "with": {
                            "decision": decision,
                            "routes": {"good": "continue", "bad": "fail"},
                            **extra,
                        },
                    },
                ]
            }
        }
    )


async def test_gate_fail_route_and_default(api: Api):
    decision = "steps.probe.outputs.verdict"
    await api.install("bad", verdict_workflow("bad", decision))
    run = await api.finished(await api.start("bad"))
    assert run["status"] == "failed"
    assert step_of(run, "j", "g")["error"] == {
        "code": "GATE_FAILED",
        "message": "Gate failed: decision=bad",
    }
    await api.install("good", verdict_workflow("good", decision))
    assert (await api.finished(await api.start("good")))["status"] == "success"
    await api.install("odd", verdict_workflow("odd", decision))
    run = await api.finished(await api.start("odd"))
    assert run["status"] == "failed"  # no route, no default: fail
    assert step_of(run, "j", "g")["error"]["code"] == "GATE_FAILED"
    await api.install("odd-ok", verdict_workflow("odd", decision, default="continue"))
    assert (await api.finished(await api.start("odd-ok")))["status"] == "success"


async def test_gate_decision_may_be_an_interpolation(api: Api):
    await api.install("bad", verdict_workflow("bad", "${{ steps.probe.outputs.verdict }}"))
    run = await api.finished(await api.start("bad"))
    assert step_of(run, "j", "g")["error"]["code"] == "GATE_FAILED"
    await api.install("good", verdict_workflow("good", "${{ steps.probe.outputs.verdict }}"))
    assert (await api.finished(await api.start("good")))["status"] == "success"


# --- cancel ------------------------------------------------------------------------------------


async def test_cancel_a_running_run_and_the_errors(api: Api):
    await api.install("slow", workflow({"j": {"steps": [{"run": "sleep 30"}]}}))
    await api.install("fast", workflow({"j": {"steps": [{"run": "true"}]}}))
    finished = await api.finished(await api.start("fast"))
    again = await api.post(f"/api/v1/runs/{finished['id']}/cancel")
    assert again.status_code == 409
    assert error_of(again)["message"] == 'Cannot cancel run with status "success"'
    unknown = await api.post("/api/v1/runs/00000000-0000-0000-0000-000000000000/cancel")
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "RUN_NOT_FOUND"

    run_id = await api.start("slow")
    await api.step_status(run_id, "j", "step-0", "running")
    cancelled = await api.post(f"/api/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["data"] == {"cancelled": True, "runId": run_id}
    run = await api.finished(run_id, timeout=5)
    assert run["status"] == "cancelled" and run["finishedAt"] is not None
    assert run["error"]["code"] == "CANCELLED"
    run = await api.until(run_id, lambda r: job_of(r, "j")["status"] == "cancelled", timeout=5)
    twice = await api.post(f"/api/v1/runs/{run_id}/cancel")
    assert twice.status_code == 409
    assert error_of(twice)["message"] == 'Cannot cancel run with status "cancelled"'
    await asyncio.sleep(0.5)
    assert (await api.run(run_id))["status"] == "cancelled"  # sticky


async def test_cancel_marks_the_running_step_cancelled(api: Api):
    await api.install("slow", workflow({"j": {"steps": [{"id": "nap", "run": "sleep 30"}]}}))
    run_id = await api.start("slow")
    await api.step_status(run_id, "j", "nap", "running")
    assert (await api.post(f"/api/v1/runs/{run_id}/cancel")).status_code == 200
    run = await api.until(run_id, lambda r: job_of(r, "j")["status"] == "cancelled", timeout=5)
    nap = step_of(run, "j", "nap")
    assert nap["status"] == "cancelled" and nap["finishedAt"] is not None


# --- idempotency -------------------------------------------------------------------------------


async def test_idempotency_key_returns_the_first_run(api: Api):
    await api.install("once", workflow({"j": {"steps": [{"run": "echo x >> once.txt"}]}}))
    headers = {"Idempotency-Key": "deploy-42"}
    first = await api.post("/api/v1/workflows/once/runs", json={}, headers=headers)
    second = await api.post("/api/v1/workflows/once/runs", json={}, headers=headers)
    assert first.status_code == 201 and first.json()["data"]["created"] is True
    assert second.status_code == 200, second.text
    assert second.json()["data"]["created"] is False
    assert second.json()["data"]["runId"] == first.json()["data"]["runId"]

    by_body = await api.post("/api/v1/workflows/once/runs", json={"idempotencyKey": "deploy-42"})
    assert by_body.json()["data"]["runId"] == first.json()["data"]["runId"]
    other = await api.post("/api/v1/workflows/once/runs", json={}, headers={"Idempotency-Key": "b"})
    assert other.status_code == 201
    assert other.json()["data"]["runId"] != first.json()["data"]["runId"]

    for answer in (first, other):
        await api.finished(answer.json()["data"]["runId"])
    assert (await api.get("/api/v1/runs")).json()["data"]["total"] == 2
    assert (api.project / "once.txt").read_text().split() == ["x", "x"]
    run = await api.run(first.json()["data"]["runId"])
    assert run["metadata"]["idempotencyKey"].endswith("deploy-42")


# --- logs, secrets, events ---------------------------------------------------------------------


async def test_logs_in_order_with_streams_levels_and_paging(api: Api):
    await api.install(
        "chatty",
        workflow(
            {
                "first": {
                    "steps": [
                        {
                            "id": "talk",
                            "run": "echo one; echo two >&2; echo three; "
                            "echo '::kb-output::{\"hidden\": 1}'; echo four >&2",
                        }
                    ]
                },
                "second": {"needs": "first", "steps": [{"id": "more", "run": "echo five"}]},
            }
        ),
    )
    run = await api.finished(await api.start("chatty"))
    run_id = run["id"]
    lines = await api.logs(run_id)
    # stdout and stderr are read concurrently: each stream keeps its order
    assert sorted(line["message"] for line in lines[:4]) == ["four", "one", "three", "two"]
    assert lines[4]["message"] == "five"  # the second job's line comes after the first's
    for line in lines:
        expected = ("stderr", "error") if line["message"] in ("two", "four") else ("stdout", "info")
        assert (line["stream"], line["level"]) == expected, line
    stdout = [line["message"] for line in lines if line["stream"] == "stdout"]
    stderr = [line["message"] for line in lines if line["stream"] == "stderr"]
    assert stdout == ["one", "three", "five"] and stderr == ["two", "four"]
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
    assert all(line["timestamp"] for line in lines)
    talk = step_of(run, "first", "talk")
    assert {line["stepId"] for line in lines[:4]} == {talk["id"]}
    assert "::kb-output::" not in " ".join(line["message"] for line in lines)

    errors = await api.logs(run_id, level="error")
    assert [line["message"] for line in errors] == ["two", "four"]
    page = await api.logs(run_id, limit=2, offset=3)
    assert [line["message"] for line in page] == [lines[3]["message"], "five"]
    of_job = await api.logs(run_id, jobId="second")
    assert [line["message"] for line in of_job] == ["five"]
    of_step = await api.logs(run_id, stepId=talk["id"])
    assert len(of_step) == 4


async def test_secrets_are_masked_in_logs_outputs_and_events(api: Api, monkeypatch):
    secret = "s3cr3t-value-xyz"
    monkeypatch.setenv("KB_SECRET_TOKEN", secret)
    await api.install(
        "secretive",
        workflow(
            {
                "j": {
                    "steps": [
                        {
                            "id": "use",
                            "run": "echo 'token is ${{ secrets.TOKEN }}'; "
                            'echo "env has $TOKEN_ENV" >&2; '
                            'echo \'::kb-output::{"leak": "${{ secrets.TOKEN }}"}\'',
                            "env": {"TOKEN_ENV": "${{ secrets.TOKEN }}"},
                        },
                        {
                            "id": "len",
                            "run": 'printf "%s" "$TOKEN_ENV" | wc -c',
                            "env": {"TOKEN_ENV": "${{ secrets.TOKEN }}"},
                        },
                    ]
                }
            },
            secrets=["TOKEN"],
        ),
    )
    run = await api.finished(await api.start("secretive"))
    assert run["status"] == "success", run
    # the real value reached the process ...
    assert step_of(run, "j", "len")["outputs"]["stdout"].strip() == str(len(secret))
    # ... and is masked wherever it is shown
    messages = [line["message"] for line in await api.logs(run["id"])]
    assert "token is ***" in messages and "env has ***" in messages
    outputs = step_of(run, "j", "use")["outputs"]
    assert outputs["leak"] == "***"
    assert outputs["stdout"] == "token is ***" and outputs["stderr"] == "env has ***"
    everything = (await api.get(f"/api/v1/runs/{run['id']}")).text
    assert secret not in everything
    events = await api.get(f"/api/v1/runs/{run['id']}/events", headers={"Last-Event-ID": "0"})
    assert "***" in events.text and secret not in events.text
    assert secret not in (await api.get(f"/api/v1/runs/{run['id']}/logs")).text


async def test_events_of_a_finished_run(api: Api):
    await api.install(
        "evented",
        workflow(
            {
                "a": {"steps": [{"id": "s", "run": "echo hi"}]},
                "b": {"needs": "a", "steps": [{"id": "t", "run": "exit 1"}]},
            }
        ),
    )
    run_id = await api.start("evented")
    await api.finished(run_id)

    fresh = await api.get(f"/api/v1/runs/{run_id}/events")
    assert fresh.status_code == 200
    assert fresh.headers["content-type"].startswith("text/event-stream")
    assert "no-cache" in fresh.headers["cache-control"]
    assert fresh.text.startswith(": connected")
    snapshot_only = sse_events(fresh.text)
    assert len(snapshot_only) == 1  # a finished run: the snapshot, then the stream ends
    snapshot = snapshot_only[0]
    assert snapshot["event"] == "workflow.event"
    assert snapshot["data"]["type"] == "run.snapshot"
    assert snapshot["data"]["payload"]["status"] == "failed"
    assert snapshot["data"]["payload"]["id"] == run_id

    replay = sse_events(
        (await api.get(f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": "0"})).text
    )
    types = [event["data"]["type"] for event in replay]
    assert types[0] == "run.created" and types[-1] == "run.failed"
    for expected in ("run.started", "job.started", "step.started", "step.succeeded", "step.failed"):
        assert expected in types, types
    assert types.count("job.started") == 2
    ids = [event["id"] for event in replay]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert snapshot["id"] == ids[-1]  # the snapshot carries the last sequence number
    assert all(event["data"]["runId"] == run_id for event in replay)
    step_failed = next(e["data"] for e in replay if e["data"]["type"] == "step.failed")
    assert step_failed["jobId"] == f"{run_id}:b"
    assert step_failed["payload"]["error"]["code"] == "HANDLER_REPORTED_FAILURE"

    middle = ids[len(ids) // 2]
    tail = sse_events(
        (
            await api.get(
                f"/api/v1/runs/{run_id}/events",
                headers={"Last-Event-ID": ".".join(map(str, middle))},
            )
        ).text
    )
    assert [event["id"] for event in tail] == [i for i in ids if i > middle]
    bad = await api.get(f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400


# --- removed paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/workflows/{wf}/run"),
        ("POST", "/api/v1/workflows/runs/{run}/cancel"),
        ("GET", "/api/v1/runs/{run}/pending-approvals"),
        ("POST", "/api/v1/runs/{run}/approve"),
        ("GET", "/api/v1/cron"),
    ],
)
async def test_removed_legacy_paths_answer_404(api: Api, method: str, path: str):
    await api.install("real", workflow({"j": {"steps": [{"id": "r", "run": "true"}]}}))
    run_id = await api.start("real")
    await api.finished(run_id)
    url = path.format(wf="real", run=run_id)
    answer = await api.client.request(
        method,
        url,
        headers=api.headers,
        json={"jobId": "j", "stepId": "r", "action": "approve"} if method == "POST" else None,
    )
    assert answer.status_code == 404, (url, answer.status_code, answer.text)
    assert (await api.get("/api/v1/runs")).json()["data"]["total"] == 1  # nothing started


async def test_stats_count_runs_and_workflows(api: Api):
    await api.install("fast", workflow({"j": {"steps": [{"run": "true"}]}}))
    write_workflow(api.project, "broken", "name: [")
    await api.post("/api/v1/workflows/refresh")
    await api.finished(await api.start("fast"))
    stats = (await api.get("/api/v1/stats")).json()["data"]
    builtins = len(BUILTIN_WORKFLOWS)
    assert stats["workflows"] == {"total": 2 + builtins, "active": 1 + builtins, "invalid": 1}
    assert stats["runs"].get("success") == 1
    assert stats["jobs"].get("success") == 1
