"""The `workflows` component: the catalog, the workers of this process, the reaper, and
the service API every caller uses (HTTP routes, CLI, the scheduler, child workflows).

Any number of processes may run workers on one database (ARCHITECTURE §6): jobs are
claimed with leases, so none runs twice at once, and the reaper of any process re-queues
the jobs of a process that died. Workers wake at once for work made in this process and
poll every half second for work made elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry
from sqlalchemy import and_, bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from kblabs.config import Settings
from kblabs.errors import KbError
from kblabs.store import Store
from kblabs.store.tables import run_events, run_logs
from kblabs.store.tables import workflow_approvals as approvals
from kblabs.store.tables import workflow_jobs as jobs
from kblabs.store.tables import workflow_runs as runs
from kblabs.store.tables import workflow_steps as steps
from kblabs.workflow import orphans, transitions
from kblabs.workflow.catalog import Catalog
from kblabs.workflow.expressions import ExpressionError, interpolate
from kblabs.workflow.inputs import resolve_inputs
from kblabs.workflow.jobrunner import JobRun, secret_values
from kblabs.workflow.journal import Journal, Tx, iso, now, write, write_in
from kblabs.workflow.metrics import WorkflowMetrics
from kblabs.workflow.queue import JobQueue
from kblabs.workflow.scheduler import Scheduler
from kblabs.workflow.spec import WorkflowSpec, validate_spec
from kblabs.workflow.steps.shell import env_text

IDLE_POLL_S = 0.5
SPEC_CACHE = 256  # workflows whose spec snapshot is kept both ways (object and data)
REAP_EVERY_S = 2.0
RETENTION_EVERY = timedelta(hours=1)
ERROR_BACKOFF_S = 2.0


class WorkflowEngine:
    name = "workflows"

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        plugins: Any = None,  # PluginRegistry
        runner: Any = None,  # PluginRunner
        workers: bool | None = None,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.plugins = plugins
        self.runner = runner
        self.options = settings.workflow
        self.workers_enabled = self.options.workers if workers is None else workers
        self.default_retries = self.options.default_retries
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.catalog = Catalog(settings.project_root, plugins)
        self.journal = Journal(store)
        self.queue = JobQueue(store, self.owner, timedelta(seconds=self.options.lease_seconds))
        self.scheduler = Scheduler(self)
        self.metrics = WorkflowMetrics(self, metrics) if metrics is not None else None
        self.active: dict[str, JobRun] = {}
        # one permit per piece of new work, at most one per worker: a notify wakes one
        # idle worker, not all of them
        self._wake = asyncio.Semaphore(0)
        self._tasks: list[asyncio.Task[None]] = []
        self._retention_at: datetime | None = None
        self.draining = asyncio.Event()  # set at shutdown: event streams end
        # workflow id → (spec, spec.to_data()) of its latest run made here: a run's
        # snapshot is written without dumping the spec again, and read back without
        # parsing it again when it is the same
        self._specs: dict[str, tuple[WorkflowSpec, dict[str, Any]]] = {}

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.journal.start()
        await asyncio.to_thread(orphans.reap, self.settings.data_dir)  # a crash's leftovers
        await self.catalog.refresh()
        await self.scheduler.start()
        if self.plugins is not None:
            self.plugins.listeners.append(lambda change: self.refresh())
        if self.workers_enabled:
            for number in range(self.options.max_parallel_jobs):
                self._tasks.append(
                    asyncio.create_task(self._work(), name=f"workflow-worker-{number}")
                )
        self._tasks.append(asyncio.create_task(self._reap(), name="workflow-reaper"))

    async def refresh(self) -> dict[str, Any]:
        """Reread the catalog and the schedules it declares."""
        change = await self.catalog.refresh()
        await self.scheduler.sync()
        return change

    async def stop(self) -> None:
        """Stop claiming; jobs in progress go back to the queue for another worker."""
        await self.scheduler.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.journal.stop()

    async def drain(self) -> None:
        """Shutdown began: open event streams finish now instead of holding the drain."""
        self.draining.set()
        await self.journal.notify()

    def health(self) -> tuple[str, str]:
        invalid = [e.id for e in self.catalog.entries.values() if e.spec is None]
        if invalid:
            return "degraded", f"workflows that do not validate: {', '.join(sorted(invalid))}"
        mode = (
            f"{self.options.max_parallel_jobs} worker(s)" if self.workers_enabled else "no workers"
        )
        return "ok", f"{len(self.catalog.entries)} workflow(s), {mode}, {len(self.active)} running"

    def spec_data(self, workflow_id: str, spec: WorkflowSpec) -> dict[str, Any]:
        """`spec.to_data()`, dumped once per spec object."""
        known = self._specs.get(workflow_id)
        if known is not None and known[0] is spec:
            return known[1]
        data = spec.to_data()
        if len(self._specs) >= SPEC_CACHE:
            self._specs.pop(next(iter(self._specs)))
        self._specs[workflow_id] = (spec, data)
        return data

    def spec_of(self, workflow_id: str, data: dict[str, Any]) -> WorkflowSpec:
        """A run's spec snapshot as a spec: the object it was made from when the data is
        the same (a spec is never changed in place), else parsed."""
        known = self._specs.get(workflow_id)
        if known is not None and known[1] == data:
            return known[0]
        return WorkflowSpec.model_validate(data)

    async def notify(self) -> None:
        if self._wake._value < self.options.max_parallel_jobs:
            self._wake.release()
        await self.journal.notify()

    # --- workers -------------------------------------------------------------------------

    async def _work(self) -> None:
        expected = False  # is there likely work (then the claim skips its first read)
        while True:
            try:
                claim = await self.queue.claim(expected=expected)
            except Exception as exc:  # the store may be briefly busy: never stop working
                logger.opt(exception=exc).warning("workflow claim failed: {}", exc)
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            if claim is None:
                expected = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.acquire(), IDLE_POLL_S)
                    expected = True  # woken for new work
                continue
            expected = True
            lease = claim.lease
            job = JobRun(self, claim)
            self.active[lease.job_id] = job
            try:
                await job.execute()
            except asyncio.CancelledError:
                await asyncio.shield(self.queue.release(lease))
                raise
            except Exception as exc:  # an engine bug must not kill the worker
                logger.opt(exception=exc).error("job {} crashed the engine: {}", lease.job_id, exc)
                await self._crashed(job, exc)
            finally:
                self.active.pop(lease.job_id, None)

    async def _crashed(self, job: JobRun, exc: Exception) -> None:
        with contextlib.suppress(Exception):
            await job.finish_crashed(
                {"code": "ENGINE_ERROR", "message": f"{type(exc).__name__}: {exc}"}
            )
            await self.notify()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY_S)
            try:
                await asyncio.to_thread(orphans.reap, self.settings.data_dir)
                if await asyncio.to_thread(self.catalog.stamp) != self.catalog.last_stamp:
                    await self.refresh()  # a workflow file was added, changed or removed
                requeued = await self.queue.reap()
                expired = await self._expire_approvals()
                if self.metrics is not None:
                    await self.metrics.refresh()
                await self._apply_retention()
                if requeued or expired:
                    logger.info(
                        "workflow reaper: re-queued {}, expired approvals {}", requeued, expired
                    )
                    await self.notify()
            except Exception as exc:
                logger.opt(exception=exc).warning("workflow reaper failed: {}", exc)

    async def _apply_retention(self) -> None:
        """Once an hour: drop the events and log lines of runs that finished more than
        `workflow.retentionDays` ago (the runs, jobs and steps themselves are kept)."""
        stamp = now()
        if self._retention_at is not None and stamp - self._retention_at < RETENTION_EVERY:
            return
        self._retention_at = stamp
        cutoff = stamp - timedelta(days=self.options.retention_days)
        old = select(runs.c.id).where(runs.c.finished_at < cutoff).scalar_subquery()
        async with self.store.write() as conn:
            events = await conn.execute(delete(run_events).where(run_events.c.run_id.in_(old)))
            lines = await conn.execute(delete(run_logs).where(run_logs.c.run_id.in_(old)))
        if events.rowcount or lines.rowcount:
            logger.info(
                "workflow retention: removed {} events and {} log lines of runs older than {} days",
                events.rowcount,
                lines.rowcount,
                self.options.retention_days,
            )

    # --- runs ----------------------------------------------------------------------------

    async def create_run(
        self,
        workflow_id: str,
        *,
        inputs: dict[str, Any] | None = None,
        trigger: dict[str, Any] | None = None,
        tenant_id: str = "default",
        idempotency_key: str | None = None,
        parent_run_id: str | None = None,
        depth: int = 0,
        env: dict[str, str] | None = None,
        spec: WorkflowSpec | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[str, bool]:
        """(run id, created). An idempotency key already used answers the first run's id
        with created False."""
        spec = spec or self.catalog.runnable(workflow_id)
        resolved = resolve_inputs(spec, inputs or {})
        trigger = {"type": "manual", **(trigger or {})}
        context = {
            "inputs": resolved,
            "trigger": trigger,
            "secrets": secret_values(list(spec.secrets)),
            "env": dict(env or {}),
        }
        try:
            run_env = {**(env or {}), **interpolate(dict(spec.env), context)}
            group = interpolate(spec.concurrency.group, context) if spec.concurrency else None
            job_groups = {
                name: str(interpolate(job.concurrency.group, context))
                for name, job in spec.jobs.items()
                if job.concurrency
            }
        except ExpressionError as exc:
            raise KbError("VALIDATION_ERROR", f"env/concurrency: {exc}", 400) from None
        run_id = str(uuid.uuid4())
        metadata = dict(metadata or {})
        if idempotency_key:
            metadata["idempotencyKey"] = idempotency_key
        if group:
            metadata["concurrencyGroup"] = group
        supersede = Supersede(
            run_group=str(group)
            if group and spec.concurrency and spec.concurrency.cancel_in_progress
            else None,
            job_groups=sorted(
                {
                    job_groups[name]
                    for name, job in spec.jobs.items()
                    if job.concurrency and job.concurrency.cancel_in_progress
                }
            ),
        )
        row = {
            "run_id": run_id,
            "spec": spec,
            "workflow_id": workflow_id,
            "tenant_id": tenant_id,
            "trigger": trigger,
            "inputs": resolved,
            "env": {k: env_text(v) for k, v in run_env.items()},
            "metadata": metadata,
            "idempotency_key": idempotency_key,
            "concurrency_group": str(group) if group else None,
            "parent_run_id": parent_run_id,
            "depth": depth,
            "job_groups": job_groups,
            "spec_data": self.spec_data(workflow_id, spec),  # here, not in the store's thread
        }
        try:
            cancelled = await write(self.store, _insert_run, row, supersede)
        except IntegrityError:
            existing = await self._by_idempotency_key(idempotency_key)
            if existing is None:
                raise
            return existing, False
        for cancelled_id in cancelled:
            self._stop_local(cancelled_id)
        await self.notify()
        return run_id, True

    async def start_job(
        self,
        job_type: str,
        payload: Any = None,
        *,
        trigger: dict[str, Any] | None = None,
        tenant_id: str = "default",
        idempotency_key: str | None = None,
        priority: int | None = None,
    ) -> tuple[str, bool]:
        """A one-step run of `job_type` (`plugin:<id>/<handler>`, `command:<id>`,
        `builtin:shell`…, a bare name meaning `command:<name>`; `workflow:<id>` starts
        that workflow), for the jobs API and cron entries."""
        if job_type.startswith("workflow:"):
            data = payload if isinstance(payload, dict) else {}
            return await self.create_run(
                job_type.removeprefix("workflow:"),
                inputs=data,
                trigger=trigger,
                tenant_id=tenant_id,
                idempotency_key=idempotency_key,
            )
        uses = job_type if ":" in job_type else f"command:{job_type}"
        data = (
            payload
            if isinstance(payload, dict)
            else ({} if payload is None else {"value": payload})
        )
        plugin_step = uses.startswith("plugin:")
        spec, problems = validate_spec(
            {
                "name": f"job {job_type}",
                "version": "1.0.0",
                "on": {"manual": True},
                "priority": _priority_name(priority),
                "jobs": {
                    "main": {
                        "steps": [
                            {"id": "execute", "uses": uses, "with": {} if plugin_step else data}
                        ]
                    }
                },
            }
        )
        if spec is None:
            first = problems[0]
            raise KbError(
                "VALIDATION_ERROR", f"type {job_type!r}: {first['message']}", 400, details=problems
            )
        return await self.create_run(
            f"job:{job_type}",
            inputs=data if plugin_step else {},
            trigger=trigger,
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
            spec=spec,
        )

    async def _by_idempotency_key(self, key: str | None) -> str | None:
        if not key:
            return None
        async with self.store.engine.connect() as conn:
            row = (
                await conn.execute(select(runs.c.id).where(runs.c.idempotency_key == key))
            ).first()
        return row[0] if row else None

    async def cancel_run(self, run_id: str, reason: str = "cancelled by a user") -> str:
        """Cancel a queued or running run; 404 unknown, 409 already finished."""
        before = await write(self.store, transitions.cancel_run, run_id, reason)
        if before is None:
            raise KbError("RUN_NOT_FOUND", f"Run not found: {run_id}", 404)
        if before in transitions.TERMINAL_RUN:
            raise KbError("RUN_NOT_CANCELLABLE", f'Cannot cancel run with status "{before}"', 409)
        self._stop_local(run_id)
        await self._cancel_children(run_id)
        await self.notify()
        return before

    async def _cancel_children(self, run_id: str) -> None:
        async with self.store.engine.connect() as conn:
            children = (
                await conn.execute(
                    select(runs.c.id).where(
                        runs.c.parent_run_id == run_id, runs.c.status.in_(("queued", "running"))
                    )
                )
            ).all()
        for (child_id,) in children:
            with contextlib.suppress(KbError):
                await self.cancel_run(child_id, "its parent run was cancelled")

    def _stop_local(self, run_id: str) -> None:
        """Jobs of the run running in this process stop now (others within a second)."""
        for job in list(self.active.values()):
            if job.lease.run_id == run_id:
                job.stop("cancelled")

    async def rerun(self, run_id: str, actor: str | None = None) -> str:
        row = await self.get_run_row(run_id)
        spec = WorkflowSpec.model_validate(row["spec"])
        trigger = {"type": "rerun", "actor": actor, "payload": {"rerunOf": run_id}}
        new_id, _ = await self.create_run(
            row["workflow_id"],
            inputs=row["inputs"],
            trigger=trigger,
            tenant_id=row["tenant_id"],
            spec=spec,
        )
        return new_id

    async def get_run_row(self, run_id: str) -> Any:
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(select(runs).where(runs.c.id == run_id))).mappings().first()
        if row is None:
            raise KbError("RUN_NOT_FOUND", f"Run not found: {run_id}", 404)
        return row

    # --- approvals -----------------------------------------------------------------------

    async def pending_approvals(self, run_id: str) -> list[dict[str, Any]]:
        await self.get_run_row(run_id)
        async with self.store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(approvals, steps.c.name.label("step_name"))
                    .join(steps, steps.c.id == approvals.c.step_row_id)
                    .where(approvals.c.run_id == run_id, approvals.c.status == "pending")
                    .order_by(approvals.c.created_at)
                )
            ).mappings()
            return [
                {
                    "jobId": row["job_id"],
                    "jobName": row["job_id"].split(":", 1)[1],
                    "stepId": row["step_id"],
                    "specId": row["step_id"],
                    "stepName": row["step_name"],
                    "title": row["title"],
                    "instructions": row["instructions"],
                    "context": row["context"],
                    "waitingSince": iso(row["created_at"]),
                    "expiresAt": iso(row["expires_at"]),
                }
                for row in rows
            ]

    async def resolve_approval(
        self,
        run_id: str,
        job_id: str,
        step_id: str,
        action: str,
        *,
        comment: str | None = None,
        data: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> None:
        """Approve or reject a waiting step; its job resumes on any worker."""
        if action not in ("approve", "reject"):
            raise KbError("VALIDATION_ERROR", 'action must be "approve" or "reject"', 400)
        await self.get_run_row(run_id)
        job_row_id = job_id if job_id.startswith(run_id + ":") else f"{run_id}:{job_id}"
        async with self.store.write() as conn:
            await self._resolve(conn, run_id, job_row_id, step_id, action, comment, data, actor)
        await self.notify()

    async def _resolve(
        self,
        conn: Any,
        run_id: str,
        job_id: str,
        step_id: str,
        action: str,
        comment: str | None,
        data: dict[str, Any] | None,
        actor: str | None,
    ) -> None:
        job = (await conn.execute(select(jobs.c.id).where(jobs.c.id == job_id))).first()
        if job is None:
            raise KbError("JOB_NOT_FOUND", f"Job not found: {job_id}", 404)
        step = (
            (
                await conn.execute(
                    select(steps).where(steps.c.job_id == job_id, steps.c.step_id == step_id)
                )
            )
            .mappings()
            .first()
        )
        if step is None:
            raise KbError("STEP_NOT_FOUND", f"Step not found: {step_id}", 404)
        if step["status"] != "waiting_approval":
            raise KbError(
                "STEP_NOT_WAITING",
                f"Step is not waiting for approval (current status: {step['status']})",
                409,
            )
        approved = action == "approve"
        outputs = {"approved": approved, "action": action, **(data or {})}
        if comment:
            outputs["comment"] = comment
        stamp = now()
        await conn.execute(
            update(approvals)
            .where(approvals.c.step_row_id == step["id"], approvals.c.status == "pending")
            .values(
                status="approved" if approved else "rejected",
                action=action,
                comment=comment,
                data=data,
                resolved_by=actor,
                resolved_at=stamp,
            )
        )
        error = (
            None
            if approved
            else {"code": "APPROVAL_REJECTED", "message": comment or "Approval rejected"}
        )
        await conn.execute(
            update(steps)
            .where(steps.c.id == step["id"])
            .values(
                status="success" if approved else "failed",
                outputs=outputs,
                error=error,
                finished_at=stamp,
            )
        )
        await write_in(conn, _resolved, run_id, job_id, step_id, step["id"], action, actor)

    async def _expire_approvals(self) -> int:
        expired: int = await write(self.store, _expire_due, now())
        return expired

    # --- counts for metrics and stats ----------------------------------------------------

    async def counts(self, tenant_id: str | None = None) -> dict[str, dict[str, int]]:
        """Runs and jobs by status: of one namespace, or (None) of all of them."""
        by_run = select(runs.c.status, func.count()).group_by(runs.c.status)
        by_job = select(jobs.c.status, func.count()).group_by(jobs.c.status)
        if tenant_id is not None:
            by_run = by_run.where(runs.c.tenant_id == tenant_id)
            by_job = by_job.join(runs, runs.c.id == jobs.c.run_id).where(
                runs.c.tenant_id == tenant_id
            )
        async with self.store.engine.connect() as conn:
            run_counts = (await conn.execute(by_run)).all()
            job_counts = (await conn.execute(by_job)).all()
        return {"runs": dict(run_counts), "jobs": dict(job_counts)}


# --- transactions (synchronous: run by the store in one go) ---------------------------------


@dataclass(frozen=True)
class Supersede:
    """The groups whose active holders a new run cancels (`cancelInProgress: true`): its
    run-level group, and the groups of its jobs that ask for it."""

    run_group: str | None = None
    job_groups: list[str] = field(default_factory=list)


def _insert_run(tx: Tx, row: dict[str, Any], supersede: Supersede) -> list[str]:
    """A new run; the active runs it supersedes are cancelled first (same transaction).
    Returns the ids cancelled."""
    active_run = and_(
        runs.c.tenant_id == row["tenant_id"], runs.c.status.in_(("queued", "running"))
    )
    holders: list[tuple[str, str]] = []  # (run id, group)
    if supersede.run_group is not None:
        query = select(runs.c.id).where(active_run, runs.c.concurrency_group == supersede.run_group)
        holders += [(run_id, supersede.run_group) for (run_id,) in tx.execute(query)]
    if supersede.job_groups:
        query = (
            select(jobs.c.run_id, jobs.c.concurrency_group)
            .select_from(jobs.join(runs, runs.c.id == jobs.c.run_id))
            .where(
                active_run,
                jobs.c.concurrency_group.in_(supersede.job_groups),
                jobs.c.status.in_(("queued", "running")),
            )
        )
        holders += [(run_id, group) for run_id, group in tx.execute(query)]
    cancelled: list[str] = []
    for run_id, group in holders:
        if run_id not in cancelled:
            transitions.cancel_run(tx, run_id, f"superseded in concurrency group {group}")
            cancelled.append(run_id)
    transitions.insert_run(tx, **row)
    return cancelled


def _resolved(
    tx: Tx,
    run_id: str,
    job_id: str,
    step_id: str,
    step_row_id: str,
    action: str,
    actor: str | None,
) -> None:
    tx.event(
        run_id,
        "step.updated",
        {"jobId": job_id, "stepId": step_id, "action": action, "actor": actor},
        job_id=job_id,
        step_id=step_row_id,
    )
    transitions.requeue_after_approval(tx, job_id)


def _expire_due(tx: Tx, stamp: datetime) -> int:
    """Approvals past their timeout fail their step; the job resumes (and fails)."""
    due = (
        tx.execute(
            select(approvals).where(
                approvals.c.status == "pending", approvals.c.expires_at < bindparam("b_now")
            ),
            {"b_now": stamp},
        )
        .mappings()
        .all()
    )
    for row in due:
        tx.execute(
            update(approvals)
            .where(approvals.c.step_row_id == row["step_row_id"])
            .values(status="expired", resolved_at=stamp)
        )
        error = {"code": "APPROVAL_TIMEOUT", "message": "no answer before the timeout"}
        tx.execute(
            update(steps)
            .where(steps.c.id == row["step_row_id"])
            .values(status="failed", error=error, finished_at=stamp)
        )
        _expired(tx, row, error)
    return len(due)


def _expired(tx: Tx, row: Any, error: dict[str, Any]) -> None:
    tx.event(
        row["run_id"],
        "step.failed",
        {"error": error},
        job_id=row["job_id"],
        step_id=row["step_row_id"],
    )
    transitions.requeue_after_approval(tx, row["job_id"])


def _priority_name(priority: int | None) -> str:
    """The jobs API's 1 (highest) … 10 as the spec's high / normal / low."""
    if priority is None:
        return "normal"
    if not 1 <= priority <= 10:
        raise KbError("VALIDATION_ERROR", "Priority must be between 1 and 10", 400)
    return "high" if priority <= 3 else "normal" if priority <= 7 else "low"
