"""Every state change of a run, a job or a step, each decided in one transaction.

The rules (ARCHITECTURE §8, reference workflow §6):
- a job that finishes unblocks or skips its dependents, and the run's status is computed
  in the same transaction, so no reader ever sees a finished job in a running-forever
  run, and two finishing jobs cannot flip the run back and forth;
- terminal states are sticky: a cancelled or finished run never changes again (a rerun
  is a new run);
- a worker's writes are fenced by its lease token: after its lease expired and another
  worker took the job over, the first worker's late results are discarded.

Each function is synchronous and takes a `Tx` (journal.py): the caller runs it, with
whatever else belongs to the same transaction, through `journal.write` (one hop to the
store's thread on SQLite) or `journal.write_in` (inside an async transaction it holds).
The statements are built once, with bound parameters: building one costs several times
what running it does. An UPDATE built without `.values()` sets the columns named in its
parameters; its own WHERE parameters are named `b_*` so they never clash with a column.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, bindparam, case, exists, insert, or_, select, update

from kblabs.store.tables import workflow_approvals as approvals
from kblabs.store.tables import workflow_jobs as jobs
from kblabs.store.tables import workflow_runs as runs
from kblabs.store.tables import workflow_steps as steps
from kblabs.workflow.journal import Tx, aware, now
from kblabs.workflow.queue import NO_LEASE, Lease
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


# --- statements, built once --------------------------------------------------------------

INSERT_RUN = insert(runs)
INSERT_JOB = insert(jobs)
INSERT_STEPS = insert(steps)
RUN = select(runs).where(runs.c.id == bindparam("b_run"))
# what finishing a job needs of its run (not the spec, inputs, env: JSON to decode)
RUN_STATE = select(
    runs.c.id,
    runs.c.status,
    runs.c.name,
    runs.c.metadata,
    runs.c.result,
    runs.c.parent_run_id,
    runs.c.created_at,
    runs.c.started_at,
).where(runs.c.id == bindparam("b_run"))
RUN_SPEC = select(runs.c.spec).where(runs.c.id == bindparam("b_run"))
RUN_METADATA = select(runs.c.metadata).where(runs.c.id == bindparam("b_run"))
JOB = select(jobs).where(jobs.c.id == bindparam("b_job"))
JOBS_OF_RUN = select(jobs).where(jobs.c.run_id == bindparam("b_run"))
JOB_STATES = select(jobs.c.id, jobs.c.name, jobs.c.status, jobs.c.error).where(
    jobs.c.run_id == bindparam("b_run")
)
STEPS_OF_RUN = (
    select(steps)
    .where(steps.c.run_id == bindparam("b_run"))
    .order_by(steps.c.job_id, steps.c.section, steps.c.idx)
)
LEASE_HOLDS = select(jobs.c.id).where(
    jobs.c.id == bindparam("b_job"), jobs.c.lease_token == bindparam("b_token")
)
# a step of a job that is still ours (the lease check is part of the UPDATE)
UPDATE_STEP = update(steps).where(
    steps.c.id == bindparam("b_step"),
    exists().where(jobs.c.id == bindparam("b_job"), jobs.c.lease_token == bindparam("b_token")),
)
UPDATE_STEP_WHERE_STATUS = update(steps).where(
    steps.c.id == bindparam("b_step"), steps.c.status == bindparam("b_status")
)
UPDATE_JOB_FENCED = update(jobs).where(
    jobs.c.id == bindparam("b_job"), jobs.c.lease_token == bindparam("b_token")
)
UPDATE_JOB = update(jobs).where(jobs.c.id == bindparam("b_job"))
UPDATE_RUN = update(runs).where(runs.c.id == bindparam("b_run"))
REQUEUE_WAITING = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_job"), jobs.c.status == "waiting")
    .values(status="queued", available_at=bindparam("b_stamp"))
)
RETRY_JOB = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_job"), jobs.c.lease_token == bindparam("b_token"))
    .values(
        status="queued",
        failures=jobs.c.failures + 1,
        available_at=bindparam("b_at"),
        **NO_LEASE,
        error=bindparam("b_error"),
    )
)
RETRY_STEPS = (
    update(steps)
    .where(
        steps.c.job_id == bindparam("b_job"),
        (steps.c.status != "success") | steps.c.section.in_(("onSuccess", "onFailure", "post")),
    )
    .values(status="queued", outputs=None, error=None, started_at=None, finished_at=None)
)
# close_steps: never-ran steps are skipped, cut-off ones `b_cut` (one statement; `or_`
# rather than `in_`, whose list SQLAlchemy expands again at every execution)
CLOSE_STEPS = (
    update(steps)
    .where(
        steps.c.job_id == bindparam("b_job"),
        or_(
            *(
                steps.c.status == status
                for status in ("queued", "running", "waiting_approval", "waiting_child")
            )
        ),
    )
    .values(
        status=case(
            (steps.c.status == "queued", "skipped"), else_=bindparam("b_cut", type_=String())
        ),
        finished_at=bindparam("b_stamp"),
    )
)
FINALIZE_RUN = update(runs).where(  # not yet terminal (`!=` each: no list to expand)
    runs.c.id == bindparam("b_run"), *(runs.c.status != status for status in TERMINAL_RUN)
)
CANCEL_IDLE_JOBS = (
    update(jobs)
    .where(
        jobs.c.run_id == bindparam("b_run"),
        jobs.c.status.in_(("queued", "blocked", "waiting")),
    )
    .values(status="cancelled", finished_at=bindparam("b_stamp"), **NO_LEASE)
)
IDLE_JOBS = select(jobs.c.id).where(
    jobs.c.run_id == bindparam("b_run"), jobs.c.status.in_(("queued", "blocked", "waiting"))
)
FLAG_RUNNING_JOBS = (
    update(jobs)
    .where(jobs.c.run_id == bindparam("b_run"), jobs.c.status == "running")
    .values(cancel_requested=True)
)
CANCEL_APPROVALS = (
    update(approvals)
    .where(approvals.c.run_id == bindparam("b_run"), approvals.c.status == "pending")
    .values(status="cancelled", resolved_at=bindparam("b_stamp"))
)
CANCEL_WAITING_STEPS = (
    update(steps)
    .where(
        steps.c.run_id == bindparam("b_run"),
        steps.c.status.in_(("waiting_approval", "waiting_child")),
    )
    .values(status="cancelled", finished_at=bindparam("b_stamp"))
)


# --- creating a run ----------------------------------------------------------------------


def insert_run(
    tx: Tx,
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
    spec_data: dict[str, Any] | None = None,
) -> None:
    stamp = now()
    rank = PRIORITY_RANK[spec.priority]
    tx.execute(
        INSERT_RUN,
        {
            "id": run_id,
            "tenant_id": tenant_id,
            "workflow_id": workflow_id,
            "name": spec.name,
            "version": spec.version,
            "status": "queued",
            "trigger": trigger,
            "inputs": inputs,
            "env": env,
            "metadata": metadata,
            "spec": spec_data if spec_data is not None else spec.to_data(),
            "idempotency_key": idempotency_key,
            "concurrency_group": concurrency_group,
            "parent_run_id": parent_run_id,
            "depth": depth,
            "priority": rank,
            "cancel_requested": False,
            "created_at": stamp,
        },
    )
    job_rows = []
    step_rows = []
    for name, job in spec.jobs.items():
        job_id = job_row_id(run_id, name)
        job_rows.append(
            {
                "id": job_id,
                "run_id": run_id,
                "name": name,
                "status": "blocked" if job.needs else "queued",
                "priority": PRIORITY_RANK[spec.job_priority(name)],
                "needs": list(job.needs),
                "pending_deps": len(job.needs),
                "attempt": 0,
                "failures": 0,
                "available_at": stamp,
                "concurrency_group": (job_groups or {}).get(name),
                "cancel_requested": False,
                "created_at": stamp,
            }
        )
        step_rows += [
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
    tx.execute(INSERT_JOB, job_rows)
    if step_rows:
        tx.execute(INSERT_STEPS, step_rows)
    tx.event(
        run_id,
        "run.created",
        {"status": "queued", "name": spec.name, "version": spec.version},
    )


# --- steps -------------------------------------------------------------------------------

# (event, payload, column values) of one change of a step row
StepChange = tuple[str | None, dict[str, Any] | None, dict[str, Any]]


def lease_holds(tx: Tx, lease: Lease) -> bool:
    row = tx.execute(LEASE_HOLDS, {"b_job": lease.job_id, "b_token": lease.token}).first()
    return row is not None


def update_step(
    tx: Tx,
    lease: Lease,
    step_id: str,
    event: str | None = None,
    payload: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """Change a step row if the job is still ours; False when the lease is lost. The
    lease check is part of the UPDATE (one statement, no separate read)."""
    return change_step(tx, lease, step_id, [(event, payload, values)])


def change_step(tx: Tx, lease: Lease, step_id: str, changes: list[StepChange]) -> bool:
    """Several changes of one step row (a start and an end) as one fenced UPDATE with
    the values merged, each change's event recorded in order; False when the lease is
    lost."""
    return change_steps(tx, lease, [(step_id, changes)])


def change_steps(tx: Tx, lease: Lease, rows: list[tuple[str, list[StepChange]]]) -> bool:
    """`change_step` for several step rows (each listed once); rows changed alike (the
    same columns) go in one executemany where the driver counts its rows. False when
    the lease is lost (then some rows may have changed: the caller rolls back)."""
    params = []
    for step_id, changes in rows:
        values: dict[str, Any] = {}
        for _, _, more in changes:
            values.update(more)
        params.append({"b_step": step_id, "b_job": lease.job_id, "b_token": lease.token, **values})
    alike = all(p.keys() == params[0].keys() for p in params)
    if len(params) > 1 and alike and tx.conn.dialect.supports_sane_multi_rowcount:
        if tx.execute(UPDATE_STEP, params).rowcount != len(params):
            return False
    else:
        for one in params:
            if tx.execute(UPDATE_STEP, one).rowcount != 1:
                return False
    for step_id, changes in rows:
        for event, payload, _ in changes:
            if event:
                tx.event(lease.run_id, event, payload, job_id=lease.job_id, step_id=step_id)
    return True


# --- finishing a job ---------------------------------------------------------------------


def release_for_approval(tx: Tx, lease: Lease) -> bool:
    """The job waits for a person: its worker slot and lease are given back."""
    result = tx.execute(
        UPDATE_JOB_FENCED,
        {
            "b_job": lease.job_id,
            "b_token": lease.token,
            "status": "waiting",
            "lease_owner": None,
            "lease_token": None,
            "lease_expires_at": None,
        },
    )
    return result.rowcount == 1


def requeue_after_approval(tx: Tx, job_id: str) -> None:
    tx.execute(REQUEUE_WAITING, {"b_job": job_id, "b_stamp": now()})


def retry_job(tx: Tx, lease: Lease, error: dict[str, Any], available_at: datetime) -> bool:
    """A failed attempt with retries left: back to the queue at `available_at`; the
    steps that did not succeed (and the hooks) run again, the successful ones do not."""
    result = tx.execute(
        RETRY_JOB,
        {"b_job": lease.job_id, "b_token": lease.token, "b_at": available_at, "b_error": error},
    )
    if result.rowcount != 1:
        return False
    tx.execute(RETRY_STEPS, {"b_job": lease.job_id})
    tx.event(
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


def finish_job(
    tx: Tx,
    lease: Lease,
    status: str,
    *,
    outputs: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    skip_reason: str | None = None,
    exhausted_retries: bool = False,
    spec: WorkflowSpec | None = None,
    steps_closed: bool = False,
) -> bool:
    """A job's final answer: success, failed, cancelled or skipped. Dependents are
    unblocked or skipped and the run's status settled, all in this transaction.
    `steps_closed`: the caller knows every step of the job ended (none to close)."""
    run: Any = tx.execute(RUN_STATE, {"b_run": lease.run_id}).mappings().one()
    if run["status"] in TERMINAL_RUN:
        status = "cancelled" if status not in TERMINAL_JOB - {"success"} else status
    stamp = now()
    result = tx.execute(
        UPDATE_JOB_FENCED,
        {
            "b_job": lease.job_id,
            "b_token": lease.token,
            "status": status,
            "outputs": outputs,
            "error": error,
            "skip_reason": skip_reason,
            "finished_at": stamp,
            "lease_owner": None,
            "lease_token": None,
            "lease_expires_at": None,
        },
    )
    if result.rowcount != 1:
        return False
    if not steps_closed:
        close_steps(tx, lease.job_id, status)
    name = lease.job_id.split(":", 1)[1]
    event = {"success": "job.succeeded", "failed": "job.failed"}.get(status, f"job.{status}")
    payload: dict[str, Any] = {"jobName": name}
    if error:
        payload["error"] = error
    tx.event(lease.run_id, event, payload, job_id=lease.job_id)
    if spec is None:  # the caller's copy saves a read and a parse
        spec = WorkflowSpec.model_validate(tx.execute(RUN_SPEC, {"b_run": lease.run_id}).scalar())
    if exhausted_retries:
        run = {**run, "metadata": _remember(tx, lease.run_id, dlq_job=name)}
    settle_dependents(tx, lease.run_id, spec, name, status)
    # the run's only job: its state is the one just written (a run's jobs never change)
    alone = [{"id": lease.job_id, "name": name, "status": status, "error": error}]
    settle_run(tx, lease.run_id, spec, run, alone if len(spec.jobs) == 1 else None)
    return True


def close_steps(tx: Tx, job_id: str, job_status: str) -> None:
    """A finished job's steps that never ran are `skipped`; one cut off mid-run (cancel,
    timeout) or still waiting for a person is `cancelled`."""
    cut = "cancelled" if job_status in ("cancelled", "failed") else "skipped"
    tx.execute(CLOSE_STEPS, {"b_job": job_id, "b_cut": cut, "b_stamp": now()})


def _remember(tx: Tx, run_id: str, **values: Any) -> dict[str, Any]:
    row = tx.execute(RUN_METADATA, {"b_run": run_id}).one()
    metadata = {**row[0], **values}
    tx.execute(UPDATE_RUN, {"b_run": run_id, "metadata": metadata})
    return metadata


def _counts_as_done(spec: WorkflowSpec, job_name: str, status: str) -> bool:
    job = spec.jobs[job_name]
    return status == "success" or (status == "failed" and job.continue_on_error)


def settle_dependents(tx: Tx, run_id: str, spec: WorkflowSpec, job_name: str, status: str) -> None:
    """Unblock jobs that needed `job_name`, or skip them (and theirs) when it failed."""
    done = _counts_as_done(spec, job_name, status)
    for dependent, job in spec.jobs.items():
        if job_name not in job.needs:
            continue
        dependent_id = job_row_id(run_id, dependent)
        row = tx.execute(JOB, {"b_job": dependent_id}).mappings().one()
        if row["status"] != "blocked":
            continue
        tolerant = job.if_ is not None and any(fn in job.if_ for fn in RUNS_AFTER_FAILURE)
        if done or tolerant:
            left = row["pending_deps"] - 1
            values: dict[str, Any] = {"pending_deps": left}
            if left == 0:
                values.update(status="queued", available_at=now())
            tx.execute(UPDATE_JOB, {"b_job": dependent_id, **values})
        else:
            reason = f"needs {job_name} ({status})"
            tx.execute(
                UPDATE_JOB,
                {
                    "b_job": dependent_id,
                    "status": "skipped",
                    "skip_reason": reason,
                    "finished_at": now(),
                },
            )
            close_steps(tx, dependent_id, "skipped")
            tx.event(
                run_id,
                "job.skipped",
                {"jobName": dependent, "reason": reason},
                job_id=dependent_id,
            )
            settle_dependents(tx, run_id, spec, dependent, "skipped")


def settle_run(
    tx: Tx, run_id: str, spec: WorkflowSpec, run: Any = None, jobs_now: Any = None
) -> None:
    """When no job can move any more, the run's final status. `run`: its row as read in
    this transaction (with any change made since), else it is read; `jobs_now`: the
    id, name, status and error of each of its jobs, when the caller knows them."""
    if run is None:
        run = tx.execute(RUN_STATE, {"b_run": run_id}).mappings().one()
    if run["status"] in TERMINAL_RUN:
        return
    rows = jobs_now or tx.execute(JOB_STATES, {"b_run": run_id}).mappings().all()
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
    finalize_run(tx, run, status, error)


def finalize_run(tx: Tx, run: Any, status: str, error: dict[str, Any] | None) -> bool:
    stamp = now()
    started = run["started_at"] or run["created_at"]
    duration = int((stamp - aware(started)).total_seconds() * 1000)
    result = tx.execute(
        FINALIZE_RUN,
        {
            "b_run": run["id"],
            "status": status,
            "error": error,
            "finished_at": stamp,
            "duration_ms": duration,
        },
    )
    if result.rowcount != 1:
        return False
    event = {"success": "run.finished", "cancelled": "run.cancelled", "skipped": "run.skipped"}
    payload: dict[str, Any] = {"status": status, "name": run["name"], "durationMs": duration}
    if error:
        payload["error"] = error
    tx.event(run["id"], event.get(status, "run.failed"), payload)
    if run["parent_run_id"]:
        settle_parent(tx, run, status)
    return True


def settle_parent(tx: Tx, child: Any, status: str) -> None:
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
    settled = tx.execute(
        UPDATE_STEP_WHERE_STATUS,
        {
            "b_step": step_id,
            "b_status": "waiting_child",
            "status": "success" if done else "failed",
            "outputs": {"runId": child["id"], "status": status, "result": child["result"]},
            "error": error,
            "finished_at": now(),
        },
    )
    if settled.rowcount != 1:
        return
    payload = {"childRunId": child["id"], "status": status}
    tx.event(
        child["parent_run_id"],
        "step.succeeded" if done else "step.failed",
        payload,
        job_id=job_id,
        step_id=step_id,
    )
    requeue_after_approval(tx, job_id)


# --- cancelling --------------------------------------------------------------------------


def cancel_run(tx: Tx, run_id: str, reason: str) -> str | None:
    """Cancel a queued or running run; returns its status before, or None if unknown.
    Running jobs are flagged; their workers stop them (killing processes) and finish."""
    run = tx.execute(RUN, {"b_run": run_id}).mappings().first()
    if run is None:
        return None
    if run["status"] in TERMINAL_RUN:
        return str(run["status"])
    stamp = now()
    tx.execute(UPDATE_RUN, {"b_run": run_id, "cancel_requested": True})
    idle = tx.execute(IDLE_JOBS, {"b_run": run_id}).all()
    tx.execute(CANCEL_IDLE_JOBS, {"b_run": run_id, "b_stamp": stamp})
    for (job_id,) in idle:
        close_steps(tx, job_id, "cancelled")
    tx.execute(FLAG_RUNNING_JOBS, {"b_run": run_id})
    tx.execute(CANCEL_APPROVALS, {"b_run": run_id, "b_stamp": stamp})
    tx.execute(CANCEL_WAITING_STEPS, {"b_run": run_id, "b_stamp": stamp})
    finalize_run(tx, run, "cancelled", {"message": reason, "code": "CANCELLED"})
    return str(run["status"])


def running_jobs_of(run_id: str) -> Any:
    return and_(jobs.c.run_id == run_id, jobs.c.status == "running")
