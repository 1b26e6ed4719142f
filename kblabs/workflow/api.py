"""/api/v1/workflows, /api/v1/runs… (reference workflow §11), with the envelope.

Workflow ids may contain `/`, `:` and `@` (`@kb-labs/hello/greet`), so routes that
end in a fixed word (`…/runs`) are registered before the catch-all `{id:path}` ones.
Runs belong to the caller's namespace: another tenant's run answers 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from kblabs.auth.identity import identity_of, namespace_of
from kblabs.auth.roles import requires
from kblabs.errors import KbError
from kblabs.http.envelope import ok
from kblabs.http.validation import json_body
from kblabs.workflow.engine import WorkflowEngine
from kblabs.workflow.journal import TERMINAL_EVENTS
from kblabs.workflow.transitions import TERMINAL_RUN
from kblabs.workflow.views import describe_run, list_runs

KEEPALIVE_S = 15.0
SSE_POLL_S = 0.5


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    inputs: dict[str, Any] | None = None
    input: dict[str, Any] | None = None  # the original's legacy name
    trigger: dict[str, Any] | None = None
    idempotency_key: str | None = Field(default=None, alias="idempotencyKey", max_length=256)


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    job_id: str | None = Field(default=None, alias="jobId")
    step_id: str | None = Field(default=None, alias="stepId")
    action: str | None = None
    comment: str | None = Field(default=None, max_length=4000)
    data: dict[str, Any] | None = None


def _engine(request: Request) -> WorkflowEngine:
    return request.app.state.runtime.workflows


def int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise KbError("VALIDATION_ERROR", f"{name} must be an integer", 400) from None


async def _own_run(request: Request, run_id: str) -> Any:
    row = await _engine(request).get_run_row(run_id)
    if row["tenant_id"] != namespace_of(request.scope):
        raise KbError("RUN_NOT_FOUND", f"Run not found: {run_id}", 404)
    return row


# --- workflows -----------------------------------------------------------------------------


@requires("viewer")
async def list_workflows(request: Request) -> JSONResponse:
    """The catalog: `?source=standalone|plugin|manifest&status=active|invalid&tags=a,b`."""
    query = request.query_params
    tags = [t for t in (query.get("tags") or "").split(",") if t]
    found = _engine(request).catalog.list(
        source=query.get("source"), status=query.get("status"), tags=tags or None
    )
    return ok(request, {"workflows": found, "total": len(found)})


@requires("operator")
async def refresh_workflows(request: Request) -> JSONResponse:
    """Reload `.kb/workflows/*` and the plugins' workflows now."""
    return ok(request, await _engine(request).refresh())


@requires("viewer")
async def validate_workflow(request: Request) -> JSONResponse:
    """Check a spec without saving it: `{"text": "<YAML or JSON>"}` or `{"spec": {…}}`.
    200 `{valid, name, version, jobs}`, or 400 with every problem and its path."""
    from kblabs.workflow.spec import load_spec, validate_spec

    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise KbError("VALIDATION_ERROR", f"request body is not valid JSON: {exc}", 400) from None
    if isinstance(body, dict) and isinstance(body.get("text"), str):
        spec, problems = load_spec(body["text"], source=str(body.get("source") or "request"))
    elif isinstance(body, dict) and "spec" in body:
        spec, problems = validate_spec(body["spec"])
    else:
        raise KbError("VALIDATION_ERROR", 'send {"text": "<YAML or JSON>"} or {"spec": {...}}', 400)
    if spec is None:
        first = problems[0]
        where = f"{first['path']}: " if first["path"] else ""
        raise KbError(
            "VALIDATION_ERROR",
            f"{where}{first['message']}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            400,
            details=problems,
        )
    return ok(
        request,
        {"valid": True, "name": spec.name, "version": spec.version, "jobs": list(spec.jobs)},
    )


@requires("viewer")
async def get_workflow(request: Request) -> JSONResponse:
    """One workflow's `WorkflowInfo`. Only GET exists here: the original's
    `POST …/{id}/run` and friends are gone and answer 404, not 405."""
    workflow_id = request.path_params["workflow_id"]
    if request.method != "GET":
        raise KbError("NOT_FOUND", f"no route for {request.method} {request.url.path}", 404)
    return ok(request, _engine(request).catalog.get(workflow_id).info())


@requires("viewer")
async def workflow_runs(request: Request) -> JSONResponse:
    """Runs of one workflow, newest first: `?limit=50&offset=0&status=`."""
    workflow_id = request.path_params["workflow_id"]
    async with _engine(request).store.engine.connect() as conn:
        found, total = await list_runs(
            conn,
            tenant_id=namespace_of(request.scope),
            workflow_id=workflow_id,
            status=request.query_params.get("status"),
            limit=int_param(request, "limit", 50),
            offset=int_param(request, "offset", 0),
        )
    return ok(request, {"workflowId": workflow_id, "runs": found, "total": total})


@requires("operator")
async def start_run(request: Request) -> JSONResponse:
    """Start a run: `{inputs?, trigger?, idempotencyKey?}` (or header `Idempotency-Key`);
    201 with the new run, 200 with the earlier run for a key already used."""
    body = await json_body(request, RunBody, optional=True)
    identity = identity_of(request.scope)
    # who and how are the server's to say; a caller may only add a payload
    trigger = {
        "type": "manual",
        "actor": identity.subject if identity else None,
        "payload": (body.trigger or {}).get("payload"),
    }
    workflow_id = request.path_params["workflow_id"]
    key = request.headers.get("idempotency-key") or body.idempotency_key
    namespace = namespace_of(request.scope)
    engine = _engine(request)
    run_id, created = await engine.create_run(
        workflow_id,
        inputs=body.inputs if body.inputs is not None else (body.input or {}),
        trigger=trigger,
        tenant_id=namespace,
        idempotency_key=f"{namespace}:{workflow_id}:{key}" if key else None,
    )
    status = "queued" if created else (await engine.get_run_row(run_id))["status"]
    return ok(
        request, {"runId": run_id, "status": status, "created": created}, 201 if created else 200
    )


# --- runs ----------------------------------------------------------------------------------


@requires("viewer")
async def runs(request: Request) -> JSONResponse:
    """Runs of the caller's namespace, newest first: `?status=&workflowId=&limit&offset`."""
    async with _engine(request).store.engine.connect() as conn:
        found, total = await list_runs(
            conn,
            tenant_id=namespace_of(request.scope),
            workflow_id=request.query_params.get("workflowId"),
            status=request.query_params.get("status"),
            limit=int_param(request, "limit", 50),
            offset=int_param(request, "offset", 0),
        )
    return ok(request, {"runs": found, "total": total})


@requires("viewer")
async def get_run(request: Request) -> JSONResponse:
    run_id = request.path_params["run_id"]
    await _own_run(request, run_id)
    async with _engine(request).store.engine.connect() as conn:
        run = await describe_run(conn, run_id)
    return ok(request, {"run": run})


@requires("operator")
async def cancel_run(request: Request) -> JSONResponse:
    run_id = request.path_params["run_id"]
    await _own_run(request, run_id)
    await _engine(request).cancel_run(run_id)
    return ok(request, {"cancelled": True, "runId": run_id})


@requires("operator")
async def rerun(request: Request) -> JSONResponse:
    """A new run of the same workflow with the same inputs (terminal states are final)."""
    run_id = request.path_params["run_id"]
    await _own_run(request, run_id)
    identity = identity_of(request.scope)
    new_id = await _engine(request).rerun(run_id, identity.subject if identity else None)
    return ok(request, {"runId": new_id, "rerunOf": run_id, "status": "queued"}, 201)


@requires("viewer")
async def run_logs(request: Request) -> JSONResponse:
    """Log lines, oldest first: `?jobId&stepId&level&limit=100&offset=0&after=<seq>`."""
    run_id = request.path_params["run_id"]
    await _own_run(request, run_id)
    query = request.query_params
    job_id = query.get("jobId")
    if job_id and not job_id.startswith(run_id + ":"):
        job_id = f"{run_id}:{job_id}"
    lines = await _engine(request).journal.logs(
        run_id,
        job_id=job_id,
        step_id=query.get("stepId"),
        level=query.get("level"),
        after=int_param(request, "after", 0),
        limit=max(1, min(int_param(request, "limit", 100), 1000)),
        offset=max(0, int_param(request, "offset", 0)),
    )
    return ok(request, {"runId": run_id, "logs": lines})


@requires("viewer")
async def approvals(request: Request) -> JSONResponse:
    run_id = request.path_params["run_id"]
    await _own_run(request, run_id)
    return ok(
        request, {"runId": run_id, "pending": await _engine(request).pending_approvals(run_id)}
    )


@requires("operator")
async def resolve_approval(request: Request) -> JSONResponse:
    """`{jobId, stepId, action: approve|reject, comment?, data?}`."""
    run_id = request.path_params["run_id"]
    body = await json_body(request, ResolveBody, optional=True)
    missing = [
        n
        for n, v in (("jobId", body.job_id), ("stepId", body.step_id), ("action", body.action))
        if not v
    ]
    if missing:
        raise KbError("VALIDATION_ERROR", f"Missing required fields: {', '.join(missing)}", 400)
    await _own_run(request, run_id)
    identity = identity_of(request.scope)
    await _engine(request).resolve_approval(
        run_id,
        str(body.job_id),
        str(body.step_id),
        str(body.action),
        comment=body.comment,
        data=body.data,
        actor=identity.subject if identity else None,
    )
    return ok(
        request,
        {
            "runId": run_id,
            "jobId": body.job_id,
            "stepId": body.step_id,
            "action": body.action,
            "resolved": True,
        },
    )


@requires("viewer")
async def run_artifacts(request: Request) -> JSONResponse:
    from kblabs.workflow.artifacts import list_for_run

    run_id = request.path_params["run_id"]
    await _own_run(request, run_id)
    return ok(
        request, {"runId": run_id, "artifacts": await list_for_run(_engine(request).store, run_id)}
    )


@requires("viewer")
async def download_artifact(request: Request) -> FileResponse:
    import mimetypes

    from kblabs.workflow.artifacts import open_artifact

    run_id = request.path_params["run_id"]
    await _own_run(request, run_id)
    engine = _engine(request)
    path, name = await open_artifact(
        engine.store, engine.settings.data_dir, run_id, request.path_params["artifact_id"]
    )
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, filename=name)


# --- events (SSE) ----------------------------------------------------------------------------


@requires("viewer")
async def run_events(request: Request) -> StreamingResponse:
    """Server-sent events: a `run.snapshot` first, then every event and log line
    (`log.appended`) as it happens. Each frame's `id:` is `<event seq>.<log seq>`;
    reconnect with `Last-Event-ID` to resume without gaps. The stream ends after the
    run's terminal event."""
    run_id = request.path_params["run_id"]
    await _own_run(request, run_id)
    raw = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    return StreamingResponse(
        _stream(_engine(request), run_id, _cursor(raw)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )


def _cursor(raw: str | None) -> tuple[int, int] | None:
    """`Last-Event-ID` as (event seq, log seq); a bare number is an event seq."""
    if not raw:
        return None
    try:
        events, _, logs = raw.partition(".")
        return int(events), int(logs or 0)
    except ValueError:
        raise KbError(
            "VALIDATION_ERROR", "Last-Event-ID must be <event seq>[.<log seq>]", 400
        ) from None


async def _finished(engine: WorkflowEngine, run_id: str) -> bool:
    return (await engine.get_run_row(run_id))["status"] in TERMINAL_RUN


def _frame(cursor: tuple[int, int], data: dict[str, Any]) -> bytes:
    body = json.dumps(data, default=str)
    return f"id: {cursor[0]}.{cursor[1]}\nevent: workflow.event\ndata: {body}\n\n".encode()


def _log_event(run_id: str, line: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "log.appended",
        "runId": run_id,
        "jobId": line["jobId"],
        "stepId": line["stepId"],
        "payload": {k: line[k] for k in ("level", "message", "stream", "lineNo", "timestamp")},
        "timestamp": line["timestamp"],
    }


async def _stream(
    engine: WorkflowEngine, run_id: str, cursor: tuple[int, int] | None
) -> AsyncIterator[bytes]:
    yield b": connected\n\n"
    journal = engine.journal
    if cursor is None:  # a fresh subscriber: the whole run first, then what follows
        events = await journal.events(run_id, 0, limit=1_000_000)
        cursor = (events[-1]["seq"] if events else 0, await journal.last_log_seq(run_id))
        async with engine.store.engine.connect() as conn:
            snapshot = await describe_run(conn, run_id)
        yield _frame(cursor, {"type": "run.snapshot", "runId": run_id, "payload": snapshot})
        if snapshot and snapshot["status"] in TERMINAL_RUN:
            return
    idle, finished, last_look = 0.0, False, False
    while True:
        lines = await journal.logs(run_id, after=cursor[1], limit=500)
        events = [] if finished else await journal.events(run_id, cursor[0])
        # one stream in time order: log lines and events interleaved as they happened
        merged = sorted(
            [(line["timestamp"], 1, line) for line in lines]
            + [(event["timestamp"], 0, event) for event in events],
            key=lambda item: (item[0], item[1]),
        )
        for _, is_log, item in merged:
            if is_log:
                cursor = (cursor[0], item["seq"])
                yield _frame(cursor, _log_event(run_id, item))
                continue
            cursor = (item["seq"], cursor[1])
            yield _frame(cursor, item)
            if item["type"] in TERMINAL_EVENTS:
                finished = True  # the last log lines, if any, then the end
        if finished and not lines:
            return
        if not merged and last_look:
            return
        if not merged and await _finished(engine, run_id):
            last_look = True  # it ended meanwhile: one more read for what it wrote last
            continue
        if engine.draining.is_set():
            return  # the server is shutting down; the client reconnects elsewhere
        if lines or events:
            idle = 0.0
            continue
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield b": keep-alive\n\n"
        async with journal.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(journal.changed.wait(), SSE_POLL_S)
        idle += SSE_POLL_S


# --- stats ---------------------------------------------------------------------------------


@requires("viewer")
async def stats(request: Request) -> JSONResponse:
    """Runs, jobs and running executions of the caller's namespace; the catalog and the
    queue (an operational figure: no ids) are shared."""
    engine = _engine(request)
    namespace = namespace_of(request.scope)
    counts = await engine.counts(namespace)
    entries = engine.catalog.entries.values()
    queued, oldest = await engine.queue.depth()
    return ok(
        request,
        {
            "workflows": {
                "total": len(engine.catalog.entries),
                "active": sum(1 for e in entries if e.spec is not None),
                "invalid": sum(1 for e in entries if e.spec is None),
            },
            "runs": counts["runs"],
            "jobs": counts["jobs"],
            "queue": {"due": queued, "oldestAgeSeconds": oldest},
            "activeExecutions": [
                {"id": job.lease.job_id, "runId": job.lease.run_id, "status": "running"}
                for job in engine.active.values()
                if job.claim.run["tenant_id"] == namespace
            ],
        },
    )


routes = [
    Route("/api/v1/workflows", list_workflows, methods=["GET"]),
    Route("/api/v1/workflows/refresh", refresh_workflows, methods=["POST"]),
    Route("/api/v1/workflows/validate", validate_workflow, methods=["POST"]),
    Route("/api/v1/workflows/{workflow_id:path}/runs", workflow_runs, methods=["GET"]),
    Route("/api/v1/workflows/{workflow_id:path}/runs", start_run, methods=["POST"]),
    Route(
        "/api/v1/workflows/{workflow_id:path}",
        get_workflow,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    ),
    Route("/api/v1/runs", runs, methods=["GET"]),
    Route("/api/v1/runs/{run_id}", get_run, methods=["GET"]),
    Route("/api/v1/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/api/v1/runs/{run_id}/rerun", rerun, methods=["POST"]),
    Route("/api/v1/runs/{run_id}/logs", run_logs, methods=["GET"]),
    Route("/api/v1/runs/{run_id}/events", run_events, methods=["GET"]),
    Route("/api/v1/runs/{run_id}/approvals", approvals, methods=["GET"]),
    Route("/api/v1/runs/{run_id}/approvals/resolve", resolve_approval, methods=["POST"]),
    Route("/api/v1/runs/{run_id}/artifacts", run_artifacts, methods=["GET"]),
    Route("/api/v1/runs/{run_id}/artifacts/{artifact_id}", download_artifact, methods=["GET"]),
    Route("/api/v1/stats", stats, methods=["GET"]),
]
