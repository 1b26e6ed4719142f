"""Runs as the API shows them (`WorkflowRun` with its jobs and steps), read in one
connection, with the run's secrets masked wherever they could appear."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from kblabs.store.tables import workflow_jobs as jobs
from kblabs.store.tables import workflow_runs as runs
from kblabs.store.tables import workflow_steps as steps
from kblabs.workflow.expressions import SecretMasker
from kblabs.workflow.jobrunner import secret_values
from kblabs.workflow.journal import iso

MAX_PAGE = 500


def masker_for(run: Any) -> SecretMasker | None:
    spec = run["spec"] or {}
    names = list(spec.get("secrets") or [])
    for job in (spec.get("jobs") or {}).values():
        names += job.get("secrets") or []
        hooks = job.get("hooks") or {}
        for step in [*(job.get("steps") or []), *[s for h in hooks.values() for s in h or []]]:
            names += step.get("secrets") or []
    values = list(secret_values(names).values())
    return SecretMasker(values) if values else None


def masked(value: Any, masker: SecretMasker | None) -> Any:
    if masker is None or value is None:
        return value
    return json.loads(masker.mask(json.dumps(value, default=str)))


ACTIVE_RUN = frozenset({"queued", "running"})
# the columns `run_summary` reads
SUMMARY_COLUMNS = [
    runs.c.id,
    runs.c.workflow_id,
    runs.c.name,
    runs.c.version,
    runs.c.status,
    runs.c.tenant_id,
    runs.c.trigger,
    runs.c.created_at,
    runs.c.started_at,
    runs.c.finished_at,
    runs.c.duration_ms,
    runs.c.parent_run_id,
    runs.c.error,
]


def run_summary(run: Any) -> dict[str, Any]:
    return {
        "id": run["id"],
        "workflowId": run["workflow_id"],
        "name": run["name"],
        "version": run["version"],
        "status": run["status"],
        "tenantId": run["tenant_id"],
        "trigger": run["trigger"],
        "createdAt": iso(run["created_at"]),
        "startedAt": iso(run["started_at"]),
        "finishedAt": iso(run["finished_at"]),
        "durationMs": run["duration_ms"],
        "parentRunId": run["parent_run_id"],
        "error": run["error"],
    }


def step_view(row: Any, masker: SecretMasker | None) -> dict[str, Any]:
    return {
        "id": row["id"],
        "stepId": row["step_id"],
        "name": row["name"],
        "section": row["section"],
        "index": row["idx"],
        "uses": row["uses"],
        "status": row["status"],
        "attempt": row["attempt"],
        "startedAt": iso(row["started_at"]),
        "finishedAt": iso(row["finished_at"]),
        "outputs": masked(row["outputs"], masker),
        "error": masked(row["error"], masker),
    }


def job_view(row: Any, step_rows: list[Any], masker: SecretMasker | None) -> dict[str, Any]:
    return {
        "id": row["id"],
        "runId": row["run_id"],
        "jobName": row["name"],
        "status": row["status"],
        "attempt": row["attempt"],
        "failures": row["failures"],
        "needs": row["needs"],
        "pendingDependencies": row["pending_deps"],
        "priority": row["priority"],
        "availableAt": iso(row["available_at"]),
        "startedAt": iso(row["started_at"]),
        "finishedAt": iso(row["finished_at"]),
        "skipReason": row["skip_reason"],
        "outputs": masked(row["outputs"], masker),
        "error": masked(row["error"], masker),
        "steps": [step_view(s, masker) for s in step_rows if s["job_id"] == row["id"]],
    }


async def describe_run(conn: AsyncConnection, run_id: str) -> dict[str, Any] | None:
    run = (await conn.execute(select(runs).where(runs.c.id == run_id))).mappings().first()
    if run is None:
        return None
    job_rows = (
        (
            await conn.execute(
                select(jobs).where(jobs.c.run_id == run_id).order_by(jobs.c.created_at)
            )
        )
        .mappings()
        .all()
    )
    order = {"pre": 0, "main": 1, "onSuccess": 2, "onFailure": 3, "post": 4}
    step_rows = sorted(
        (await conn.execute(select(steps).where(steps.c.run_id == run_id))).mappings().all(),
        key=lambda s: (s["job_id"], order.get(s["section"], 9), s["idx"]),
    )
    masker = masker_for(run)
    return {
        **run_summary(run),
        "inputs": masked(run["inputs"], masker),
        "env": masked(run["env"], masker),
        "metadata": run["metadata"],
        "result": masked(run["result"], masker),
        "jobs": [job_view(job, step_rows, masker) for job in job_rows],
    }


async def list_runs(
    conn: AsyncConnection,
    *,
    tenant_id: str | None,
    workflow_id: str | None = None,
    workflow_prefix: str | None = None,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    where = []
    statuses = status.split(",") if status else []
    # Only active runs wanted (a queue watcher's poll): they are few, so the status index
    # is the one to use. Without statistics SQLite picks the tenant index instead (every
    # run of the tenant, then a sort): the tenant and workflow terms are written so no
    # index applies to them (`x || ''`, the same test on any database).
    by_status = bool(statuses) and set(statuses) <= ACTIVE_RUN
    tenant_col = runs.c.tenant_id.concat("") if by_status else runs.c.tenant_id
    workflow_col = runs.c.workflow_id.concat("") if by_status else runs.c.workflow_id
    if tenant_id is not None:
        where.append(tenant_col == tenant_id)
    if workflow_id:
        where.append(workflow_col == workflow_id)
    if workflow_prefix:
        where.append(runs.c.workflow_id.startswith(workflow_prefix, autoescape=True))
    if statuses:
        where.append(runs.c.status.in_(statuses))
    total = (await conn.execute(select(func.count()).select_from(runs).where(*where))).scalar_one()
    if total <= max(0, offset):  # nothing on this page: no scan of the newest-first order
        return [], int(total)
    rows = (
        await conn.execute(
            select(*SUMMARY_COLUMNS)  # not the spec, inputs, env: JSON nobody reads here
            .where(*where)
            .order_by(runs.c.created_at.desc())
            .limit(max(1, min(limit, MAX_PAGE)))
            .offset(max(0, offset))
        )
    ).mappings()
    return [run_summary(row) for row in rows], int(total)
