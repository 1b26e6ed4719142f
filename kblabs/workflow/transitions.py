"""Every state change of a run, a job or a step, each decided in one transaction.

The rules (ARCHITECTURE §8, reference workflow §6):
- a job that finishes unblocks or skips its dependents, and the run's status is computed
  in the same transaction, so no reader ever sees a finished job in a running-forever
  run, and two finishing jobs cannot flip the run back and forth;
- terminal states are sticky: a cancelled or finished run never changes again (a rerun
  is a new run);
- a worker's writes are fenced by its lease token: after its lease expired and another
  worker took the job over, the first worker's late results are discarded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from kblabs.store.tables import workflow_approvals as approvals
from kblabs.store.tables import workflow_jobs as jobs
from kblabs.store.tables import workflow_runs as runs
from kblabs.store.tables import workflow_steps as steps
from kblabs.workflow.journal import add_event, now
from kblabs.workflow.queue import Lease, fenced
from kblabs.workflow.spec import WorkflowSpec

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}
TERMINAL_RUN = frozenset({"success", "failed", "cancelled", "skipped", "dlq"})
TERMINAL_JOB = frozenset({"success", "failed", "cancelled", "skipped"})
SECTIONS = ("pre", "main", "onSuccess", "onFailure", "post")
# A job whose `if` names one of these runs even when a job it needs did not succeed.
RUNS_AFTER_FAILURE = ("always()", "failure()", "failed()", "cancelled()")


def job_row_id(run_id: str, job_name: str) -> str:
    return f"{run_id}:{job_name}"


def step_row_id(job_id: str, section: str, index: int) -> str:
    return f"{job_id}:{section}:{index}"


def section_steps(spec: WorkflowSpec, job_name: str, section: str) -> list[Any]:
    job = spec.jobs[job_name]
    if section == "main":
        return list(job.steps)
    return list(
        getattr(
            job.hooks, {"onSuccess": "on_success", "onFailure": "on_failure"}.get(section, section)
        )
    )


# --- creating a run ----------------------------------------------------------------------


async def insert_run(
    conn: AsyncConnection,
    *,
    run_id: str,
    spec: WorkflowSpec,
    workflow_id: str,
    tenant_id: str,
    trigger: dict[str, Any],
    inputs: dict[str, Any],
    env: dict[str, str],
    metadata: dict[str, Any],
    idempotency_key: str | None,
    concurrency_group: str | None,
    parent_run_id: str | None,
    depth: int,
    job_groups: dict[str, str] | None = None,
) -> None:
    stamp = now()
    rank = PRIORITY_RANK[spec.priority]
    await conn.execute(
        insert(runs).values(
            id=run_id,
            tenant_id=tenant_id,
            workflow_id=workflow_id,
            name=spec.name,
            version=spec.version,
            status="queued",
            trigger=trigger,
            inputs=inputs,
            env=env,
            metadata=metadata,
            spec=spec.to_data(),
            idempotency_key=idempotency_key,
            concurrency_group=concurrency_group,
            parent_run_id=parent_run_id,
            depth=depth,
            priority=rank,
            cancel_requested=False,
            created_at=stamp,
        )
    )
    for name, job in spec.jobs.items():
        job_id = job_row_id(run_id, name)
        await conn.execute(
            insert(jobs).values(
                id=job_id,
                run_id=run_id,
                name=name,
                status="blocked" if job.needs else "queued",
                priority=PRIORITY_RANK[spec.job_priority(name)],
                needs=list(job.needs),
                pending_deps=len(job.needs),
                attempt=0,
                failures=0,
                available_at=stamp,
                concurrency_group=(job_groups or {}).get(name),
                cancel_requested=False,
                created_at=stamp,
            )
        )
        rows = [
            {
                "id": step_row_id(job_id, section, index),
                "run_id": run_id,
                "job_id": job_id,
                "section": section,
                "idx": index,
                "step_id": step.id,
                "name": step.name,
                "uses": str(step.uses),
                "status": "queued",
                "attempt": 0,
            }
            for section in SECTIONS
            for index, step in enumerate(section_steps(spec, name, section))
        ]
        if rows:
            await conn.execute(insert(steps), rows)
    await add_event(
        conn,
        run_id,
        "run.created",
        {"status": "queued", "name": spec.name, "version": spec.version},
    )


# --- steps -------------------------------------------------------------------------------


async def lease_holds(conn: AsyncConnection, lease: Lease) -> bool:
    row = (await conn.execute(select(jobs.c.id).where(fenced(lease)))).first()
    return row is not None


async def update_step(
    conn: AsyncConnection,
    lease: Lease,
    step_id: str,
    event: str | None = None,
    payload: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """Change a step row if the job is still ours; False when the lease is lost. The
    lease check is part of the UPDATE (one statement, no separate read)."""
    ours = exists().where(jobs.c.id == lease.job_id, jobs.c.lease_token == lease.token)
    changed = await conn.execute(update(steps).where(steps.c.id == step_id, ours).values(**values))
    if changed.rowcount != 1:
        return False
    if event:
        await add_event(conn, lease.run_id, event, payload, job_id=lease.job_id, step_id=step_id)
    return True


# --- finishing a job ---------------------------------------------------------------------


async def release_for_approval(conn: AsyncConnection, lease: Lease) -> bool:
    """The job waits for a person: its worker slot and lease are given back."""
    result = await conn.execute(
        update(jobs)
        .where(fenced(lease))
        .values(status="waiting", lease_owner=None, lease_token=None, lease_expires_at=None)
    )
    return result.rowcount == 1


async def requeue_after_approval(conn: AsyncConnection, job_id: str) -> None:
    await conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == "waiting")
        .values(status="queued", available_at=now())
    )


async def retry_job(
    conn: AsyncConnection, lease: Lease, error: dict[str, Any], available_at: datetime
) -> bool:
    """A failed attempt with retries left: back to the queue at `available_at`; the
    steps that did not succeed (and the hooks) run again, the successful ones do not."""
    result = await conn.execute(
        update(jobs)
        .where(fenced(lease))
        .values(
            status="queued",
            failures=jobs.c.failures + 1,
            available_at=available_at,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            error=error,
        )
    )
    if result.rowcount != 1:
        return False
    await conn.execute(
        update(steps)
        .where(
            steps.c.job_id == lease.job_id,
            (steps.c.status != "success") | steps.c.section.in_(("onSuccess", "onFailure", "post")),
        )
        .values(status="queued", outputs=None, error=None, started_at=None, finished_at=None)
    )
    await add_event(
        conn,
        lease.run_id,
        "job.retrying",
        {
            "jobName": lease.job_id.split(":", 1)[1],
            "error": error,
            "availableAt": available_at.isoformat(),
        },
        job_id=lease.job_id,
    )
    return True


async def finish_job(
    conn: AsyncConnection,
    lease: Lease,
    status: str,
    *,
    outputs: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    skip_reason: str | None = None,
    exhausted_retries: bool = False,
    spec: WorkflowSpec | None = None,
) -> bool:
    """A job's final answer: success, failed, cancelled or skipped. Dependents are
    unblocked or skipped and the run's status settled, all in this transaction."""
    run = (await conn.execute(select(runs).where(runs.c.id == lease.run_id))).mappings().one()
    if run["status"] in TERMINAL_RUN:
        status = "cancelled" if status not in TERMINAL_JOB - {"success"} else status
    stamp = now()
    result = await conn.execute(
        update(jobs)
        .where(fenced(lease))
        .values(
            status=status,
            outputs=outputs,
            error=error,
            skip_reason=skip_reason,
            finished_at=stamp,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )
    )
    if result.rowcount != 1:
        return False
    await close_steps(conn, lease.job_id, status)
    name = lease.job_id.split(":", 1)[1]
    event = {"success": "job.succeeded", "failed": "job.failed"}.get(status, f"job.{status}")
    payload: dict[str, Any] = {"jobName": name}
    if error:
        payload["error"] = error
    await add_event(conn, lease.run_id, event, payload, job_id=lease.job_id)
    spec = spec or WorkflowSpec.model_validate(run["spec"])  # the caller's copy saves a parse
    if exhausted_retries:
        await _remember(conn, lease.run_id, dlq_job=name)
    await settle_dependents(conn, lease.run_id, spec, name, status)
    await settle_run(conn, lease.run_id, spec)
    return True


async def close_steps(conn: AsyncConnection, job_id: str, job_status: str) -> None:
    """A finished job's steps that never ran are `skipped`; one cut off mid-run (cancel,
    timeout) or still waiting for a person is `cancelled`."""
    stamp = now()
    await conn.execute(
        update(steps)
        .where(steps.c.job_id == job_id, steps.c.status == "queued")
        .values(status="skipped", finished_at=stamp)
    )
    cut = "cancelled" if job_status in ("cancelled", "failed") else "skipped"
    await conn.execute(
        update(steps)
        .where(
            steps.c.job_id == job_id,
            steps.c.status.in_(("running", "waiting_approval", "waiting_child")),
        )
        .values(status=cut, finished_at=stamp)
    )


async def _remember(conn: AsyncConnection, run_id: str, **values: Any) -> None:
    row = (await conn.execute(select(runs.c.metadata).where(runs.c.id == run_id))).one()
    await conn.execute(
        update(runs).where(runs.c.id == run_id).values(metadata={**row[0], **values})
    )


def _counts_as_done(spec: WorkflowSpec, job_name: str, status: str) -> bool:
    job = spec.jobs[job_name]
    return status == "success" or (status == "failed" and job.continue_on_error)


async def settle_dependents(
    conn: AsyncConnection, run_id: str, spec: WorkflowSpec, job_name: str, status: str
) -> None:
    """Unblock jobs that needed `job_name`, or skip them (and theirs) when it failed."""
    done = _counts_as_done(spec, job_name, status)
    for dependent, job in spec.jobs.items():
        if job_name not in job.needs:
            continue
        dependent_id = job_row_id(run_id, dependent)
        row = (await conn.execute(select(jobs).where(jobs.c.id == dependent_id))).mappings().one()
        if row["status"] != "blocked":
            continue
        tolerant = job.if_ is not None and any(fn in job.if_ for fn in RUNS_AFTER_FAILURE)
        if done or tolerant:
            left = row["pending_deps"] - 1
            values: dict[str, Any] = {"pending_deps": left}
            if left == 0:
                values.update(status="queued", available_at=now())
            await conn.execute(update(jobs).where(jobs.c.id == dependent_id).values(**values))
        else:
            reason = f"needs {job_name} ({status})"
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == dependent_id)
                .values(status="skipped", skip_reason=reason, finished_at=now())
            )
            await close_steps(conn, dependent_id, "skipped")
            await add_event(
                conn,
                run_id,
                "job.skipped",
                {"jobName": dependent, "reason": reason},
                job_id=dependent_id,
            )
            await settle_dependents(conn, run_id, spec, dependent, "skipped")


async def settle_run(conn: AsyncConnection, run_id: str, spec: WorkflowSpec) -> None:
    """When no job can move any more, the run's final status."""
    run = (await conn.execute(select(runs).where(runs.c.id == run_id))).mappings().one()
    if run["status"] in TERMINAL_RUN:
        return
    rows = (await conn.execute(select(jobs).where(jobs.c.run_id == run_id))).mappings().all()
    if any(row["status"] not in TERMINAL_JOB for row in rows):
        return
    failed = [
        row
        for row in rows
        if row["status"] == "failed" and not spec.jobs[row["name"]].continue_on_error
    ]
    if failed:
        dlq_job = (run["metadata"] or {}).get("dlq_job")
        status = "dlq" if dlq_job else "failed"
        first = next((row for row in failed if row["name"] == dlq_job), failed[0])
        error = {
            "message": f"job {first['name']} failed"
            + (" after its retries" if status == "dlq" else "")
            + (f": {first['error'].get('message')}" if first["error"] else ""),
            "jobId": first["id"],
            "code": (first["error"] or {}).get("code"),
        }
    elif all(row["status"] == "skipped" for row in rows):
        status, error = "skipped", None
    elif any(row["status"] == "cancelled" for row in rows):
        status, error = "cancelled", None
    else:
        status, error = "success", None
    await finalize_run(conn, run, status, error)


async def finalize_run(
    conn: AsyncConnection, run: Any, status: str, error: dict[str, Any] | None
) -> bool:
    stamp = now()
    started = run["started_at"] or run["created_at"]
    duration = int((stamp - _aware(started)).total_seconds() * 1000)
    result = await conn.execute(
        update(runs)
        .where(runs.c.id == run["id"], runs.c.status.not_in(TERMINAL_RUN))
        .values(status=status, error=error, finished_at=stamp, duration_ms=duration)
    )
    if result.rowcount != 1:
        return False
    event = {"success": "run.finished", "cancelled": "run.cancelled", "skipped": "run.skipped"}
    payload: dict[str, Any] = {"status": status, "name": run["name"], "durationMs": duration}
    if error:
        payload["error"] = error
    await add_event(conn, run["id"], event.get(status, "run.failed"), payload)
    if run["parent_run_id"]:
        await settle_parent(conn, run, status)
    return True


async def settle_parent(conn: AsyncConnection, child: Any, status: str) -> None:
    """A child run waited for by a `workflow:` step ended: settle that step and give the
    parent's job back to the queue."""
    meta = child["metadata"] or {}
    step_id, job_id = meta.get("parentStepRowId"), meta.get("parentJobId")
    if not step_id or not job_id:
        return  # fire-and-forget
    done = status == "success"
    error = (
        None
        if done
        else {"code": "CHILD_RUN_FAILED", "message": f"child run {child['id']} ended {status}"}
    )
    settled = await conn.execute(
        update(steps)
        .where(steps.c.id == step_id, steps.c.status == "waiting_child")
        .values(
            status="success" if done else "failed",
            outputs={"runId": child["id"], "status": status, "result": child["result"]},
            error=error,
            finished_at=now(),
        )
    )
    if settled.rowcount != 1:
        return
    payload = {"childRunId": child["id"], "status": status}
    await add_event(
        conn,
        child["parent_run_id"],
        "step.succeeded" if done else "step.failed",
        payload,
        job_id=job_id,
        step_id=step_id,
    )
    await requeue_after_approval(conn, job_id)


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- cancelling --------------------------------------------------------------------------


async def cancel_run(conn: AsyncConnection, run_id: str, reason: str) -> str | None:
    """Cancel a queued or running run; returns its status before, or None if unknown.
    Running jobs are flagged; their workers stop them (killing processes) and finish."""
    run = (await conn.execute(select(runs).where(runs.c.id == run_id))).mappings().first()
    if run is None:
        return None
    if run["status"] in TERMINAL_RUN:
        return str(run["status"])
    stamp = now()
    await conn.execute(update(runs).where(runs.c.id == run_id).values(cancel_requested=True))
    idle = (
        await conn.execute(
            select(jobs.c.id).where(
                jobs.c.run_id == run_id, jobs.c.status.in_(("queued", "blocked", "waiting"))
            )
        )
    ).all()
    await conn.execute(
        update(jobs)
        .where(jobs.c.run_id == run_id, jobs.c.status.in_(("queued", "blocked", "waiting")))
        .values(status="cancelled", finished_at=stamp, lease_owner=None, lease_token=None)
    )
    for (job_id,) in idle:
        await close_steps(conn, job_id, "cancelled")
    await conn.execute(
        update(jobs)
        .where(jobs.c.run_id == run_id, jobs.c.status == "running")
        .values(cancel_requested=True)
    )
    await conn.execute(
        update(approvals)
        .where(approvals.c.run_id == run_id, approvals.c.status == "pending")
        .values(status="cancelled", resolved_at=stamp)
    )
    await conn.execute(
        update(steps)
        .where(steps.c.run_id == run_id, steps.c.status.in_(("waiting_approval", "waiting_child")))
        .values(status="cancelled", finished_at=stamp)
    )
    await finalize_run(conn, run, "cancelled", {"message": reason, "code": "CANCELLED"})
    return str(run["status"])


def running_jobs_of(run_id: str) -> Any:
    return and_(jobs.c.run_id == run_id, jobs.c.status == "running")
