"""Ways to start runs other than `POST /api/v1/workflows/{id}/runs`:

    /api/v1/crons[/{id}[/trigger|pause|resume]]   cron schedules (reference §9, §11)
    /api/v1/jobs[/{id}[/cancel]]                   one-step "broker" jobs
    POST /api/v1/hooks/{workflowId}                a signed webhook starts a workflow

A hook authenticates by HMAC-SHA256 of the raw body (`X-KB-Signature: sha256=…` or
GitHub's `X-Hub-Signature-256`) with the secret named by the workflow's
`on.webhook.secret` (read from `KB_SECRET_<NAME>` or `<NAME>`), answers 202 with the
run id, and starts one run per delivery id (`X-KB-Delivery` / `X-GitHub-Delivery`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kblabs.auth.identity import namespace_of
from kblabs.auth.roles import requires
from kblabs.errors import KbError
from kblabs.http.envelope import ok
from kblabs.http.validation import json_body
from kblabs.rest.webhooks import signature_ok
from kblabs.workflow.api import int_param
from kblabs.workflow.engine import WorkflowEngine
from kblabs.workflow.jobrunner import secret_values
from kblabs.workflow.views import describe_run, list_runs

DELIVERY_HEADERS = ("x-kb-delivery", "x-github-delivery", "x-delivery-id")


def _engine(request: Request) -> WorkflowEngine:
    return request.app.state.runtime.workflows


# --- crons ---------------------------------------------------------------------------------


class CronBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str | None = Field(default=None, max_length=256)
    schedule: str | None = None
    job_type: str | None = Field(default=None, alias="jobType")
    payload: Any = None
    timezone: str = "UTC"
    enabled: bool = True
    catch_up: Literal["none", "latest"] = Field(default="none", alias="catchUp")


async def _own_cron(request: Request) -> Any:
    """The path's schedule, if it is in the caller's namespace (else 404, as unknown)."""
    scheduler = _engine(request).scheduler
    return await scheduler.get(request.path_params["cron_id"], namespace_of(request.scope))


@requires("viewer")
async def list_crons(request: Request) -> JSONResponse:
    crons = await _engine(request).scheduler.list(namespace_of(request.scope))
    return ok(request, {"crons": crons})


@requires("operator")
async def create_cron(request: Request) -> JSONResponse:
    """`{id, schedule, jobType, payload?, timezone='UTC', enabled=true, catchUp='none'}`
    → 201."""
    body = await json_body(request, CronBody)
    missing = [
        n
        for n, v in (("id", body.id), ("schedule", body.schedule), ("jobType", body.job_type))
        if not v
    ]
    if missing:
        raise KbError("VALIDATION_ERROR", f"Missing required fields: {', '.join(missing)}", 400)
    created = await _engine(request).scheduler.create(
        str(body.id),
        str(body.schedule),
        str(body.job_type),
        payload=body.payload,
        timezone=body.timezone,
        enabled=body.enabled,
        tenant_id=namespace_of(request.scope),
        catch_up=body.catch_up,
    )
    return ok(request, created, 201)


@requires("viewer")
async def get_cron(request: Request) -> JSONResponse:
    from kblabs.workflow.scheduler import schedule_view

    return ok(request, schedule_view(await _own_cron(request)))


@requires("operator")
async def delete_cron(request: Request) -> JSONResponse:
    await _own_cron(request)
    await _engine(request).scheduler.remove(request.path_params["cron_id"])
    return ok(request, {"deleted": True, "id": request.path_params["cron_id"]})


@requires("operator")
async def trigger_cron(request: Request) -> JSONResponse:
    """Fire a schedule now (outside its timetable)."""
    await _own_cron(request)
    run_id = await _engine(request).scheduler.fire(request.path_params["cron_id"])
    return ok(request, {"triggered": True, "runId": run_id}, 201)


@requires("operator")
async def pause_cron(request: Request) -> JSONResponse:
    await _own_cron(request)
    await _engine(request).scheduler.set_enabled(request.path_params["cron_id"], False)
    return ok(request, {"id": request.path_params["cron_id"], "enabled": False})


@requires("operator")
async def resume_cron(request: Request) -> JSONResponse:
    await _own_cron(request)
    await _engine(request).scheduler.set_enabled(request.path_params["cron_id"], True)
    return ok(request, {"id": request.path_params["cron_id"], "enabled": True})


# --- broker jobs ---------------------------------------------------------------------------


class JobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str | None = Field(default=None, max_length=512)
    payload: Any = None
    priority: int | None = None


@requires("operator")
async def create_job(request: Request) -> JSONResponse:
    """`{type, payload?, priority? 1..10}` → a one-step run; `{jobId}` is its run id."""
    body = await json_body(request, JobBody)
    if not body.type:
        raise KbError("VALIDATION_ERROR", "Missing required field: type", 400)
    run_id, _ = await _engine(request).start_job(
        body.type,
        body.payload,
        trigger={"type": "api"},
        tenant_id=namespace_of(request.scope),
        priority=body.priority,
    )
    return ok(request, {"jobId": run_id, "runId": run_id}, 201)


@requires("viewer")
async def list_jobs(request: Request) -> JSONResponse:
    async with _engine(request).store.engine.connect() as conn:
        found, total = await list_runs(
            conn,
            tenant_id=namespace_of(request.scope),
            workflow_prefix="job:",
            status=request.query_params.get("status"),
            limit=int_param(request, "limit", 50),
            offset=int_param(request, "offset", 0),
        )
    return ok(request, {"jobs": found, "total": total})


@requires("viewer")
async def get_job(request: Request) -> JSONResponse:
    run_id = request.path_params["job_id"]
    async with _engine(request).store.engine.connect() as conn:
        run = await describe_run(conn, run_id)
    if run is None or run["tenantId"] != namespace_of(request.scope):
        raise KbError("JOB_NOT_FOUND", f"Job not found: {run_id}", 404)
    return ok(request, run)


@requires("viewer")
async def job_steps(request: Request) -> JSONResponse:
    """Every step of a broker job, flat, with its job's id and name."""
    run_id = request.path_params["job_id"]
    async with _engine(request).store.engine.connect() as conn:
        run = await describe_run(conn, run_id)
    if run is None or run["tenantId"] != namespace_of(request.scope):
        raise KbError("JOB_NOT_FOUND", f"Job not found: {run_id}", 404)
    flat = [
        {**step, "jobId": job["id"], "jobName": job["jobName"]}
        for job in run["jobs"]
        for step in job["steps"]
    ]
    return ok(request, {"jobId": run_id, "steps": flat})


@requires("viewer")
async def job_logs(request: Request) -> JSONResponse:
    run_id = request.path_params["job_id"]
    try:
        row = await _engine(request).get_run_row(run_id)
    except KbError:
        row = None
    if row is None or row["tenant_id"] != namespace_of(request.scope):
        raise KbError("JOB_NOT_FOUND", f"Job not found: {run_id}", 404)
    lines = await _engine(request).journal.logs(
        run_id,
        level=request.query_params.get("level"),
        limit=max(1, min(int_param(request, "limit", 100), 1000)),
        offset=max(0, int_param(request, "offset", 0)),
    )
    return ok(request, {"jobId": run_id, "logs": lines})


@requires("operator")
async def cancel_job(request: Request) -> JSONResponse:
    run_id = request.path_params["job_id"]
    row = await _engine(request).get_run_row(run_id)
    if row["tenant_id"] != namespace_of(request.scope):
        raise KbError("JOB_NOT_FOUND", f"Job not found: {run_id}", 404)
    await _engine(request).cancel_run(run_id)
    return ok(request, {"cancelled": True, "jobId": run_id})


# --- webhook trigger -----------------------------------------------------------------------


async def hook(request: Request) -> JSONResponse:
    """A signed delivery starts the workflow (202 + run id); a repeated delivery id
    answers the first run."""
    engine = _engine(request)
    workflow_id = request.path_params["workflow_id"]
    entry = engine.catalog.entries.get(workflow_id)
    trigger = entry.spec.on.webhook if entry and entry.spec else None
    secret_name = trigger.secret if trigger else None
    secret = secret_values([secret_name]).get(secret_name) if secret_name else None
    body = await request.body()
    presented = request.headers.get("x-kb-signature") or request.headers.get("x-hub-signature-256")
    if trigger is None or secret is None or not signature_ok(secret, body, presented):
        # one answer for "no such hook" and "bad signature": nothing to probe
        raise KbError("UNAUTHORIZED", "unknown hook or bad signature", 401)
    for name, expected in (trigger.headers or {}).items():
        if request.headers.get(name) != expected:
            raise KbError("VALIDATION_ERROR", f"header {name} must be {expected!r}", 400)
    try:
        payload = json.loads(body) if body.strip() else None
    except ValueError:
        payload = body.decode("utf-8", "replace")
    delivery = next((request.headers[h] for h in DELIVERY_HEADERS if h in request.headers), None)
    inputs = (
        payload.get("inputs")
        if isinstance(payload, dict) and isinstance(payload.get("inputs"), dict)
        else {}
    )
    run_id, created = await engine.create_run(
        workflow_id,
        inputs=inputs,
        trigger={"type": "webhook", "payload": payload, "deliveryId": delivery},
        idempotency_key=f"hook:{workflow_id}:{delivery}" if delivery else None,
    )
    return JSONResponse(
        {"ok": True, "data": {"runId": run_id, "status": "queued", "duplicate": not created}},
        status_code=202,
    )


routes = [
    Route("/api/v1/crons", list_crons, methods=["GET"]),
    Route("/api/v1/crons", create_cron, methods=["POST"]),
    Route("/api/v1/crons/{cron_id:path}/trigger", trigger_cron, methods=["POST"]),
    Route("/api/v1/crons/{cron_id:path}/pause", pause_cron, methods=["POST"]),
    Route("/api/v1/crons/{cron_id:path}/resume", resume_cron, methods=["POST"]),
    Route("/api/v1/crons/{cron_id:path}", get_cron, methods=["GET"]),
    Route("/api/v1/crons/{cron_id:path}", delete_cron, methods=["DELETE"]),
    Route("/api/v1/jobs", list_jobs, methods=["GET"]),
    Route("/api/v1/jobs", create_job, methods=["POST"]),
    Route("/api/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/api/v1/jobs/{job_id}/steps", job_steps, methods=["GET"]),
    Route("/api/v1/jobs/{job_id}/logs", job_logs, methods=["GET"]),
    Route("/api/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/api/v1/hooks/{workflow_id:path}", hook, methods=["POST"]),
]
