"""Running one claimed job: its steps in order (pre hooks, steps, onSuccess or
onFailure, post), resuming at the first step that has not finished.

While the job runs a watcher heartbeats its lease and looks for a cancel request
every second; a cancel, a lost lease or the job's timeout stops the step in progress
(a shell step's whole process group is killed). No transaction is held while a step
runs: each state change is its own short transaction, fenced by the lease.

A `builtin:noop` step has nothing to wait for: its start and end (or a step skipped by
its `if`) are kept and written with the job's next write (the next step's start, or the
job's end), in the same transaction. Crash safety is unchanged: a worker that dies
before that write leaves the step queued and it runs again (a noop is harmless to
repeat), and nobody sees a later step start before an earlier one ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from kblabs.errors import KbError
from kblabs.workflow import transitions
from kblabs.workflow.expressions import (
    ExpressionError,
    SecretMasker,
    evaluate_condition,
    interpolate,
)
from kblabs.workflow.journal import Tx, now, write
from kblabs.workflow.outcome import NOT_RETRYABLE, StepFailed, StepOutcome, Stop
from kblabs.workflow.queue import Claim, Lease
from kblabs.workflow.spec import JobSpec, StepSpec
from kblabs.workflow.steps import kinds

if TYPE_CHECKING:
    from kblabs.workflow.engine import WorkflowEngine

# step changes not written yet: [(step row id, its changes)], in order
Pending = list[tuple[str, list[transitions.StepChange]]]

# a step row that will not change again in this attempt (as this worker wrote it)
ENDED = frozenset({"success", "skipped", "failed"})

HEARTBEAT_EVERY_S = 10.0
CANCEL_CHECK_EVERY_S = 1.0
DEFAULT_STEP_TIMEOUT_MS = 300_000


def secret_values(names: list[str]) -> dict[str, str]:
    """`secrets.NAME` from `KB_SECRET_NAME`, else the variable `NAME` itself."""
    found = {}
    for name in names:
        value = os.environ.get(f"KB_SECRET_{name}", os.environ.get(name))
        if value is not None:
            found[name] = value
    return found


class JobRun:
    """One execution of one claimed job (an attempt)."""

    def __init__(self, engine: WorkflowEngine, claim: Claim) -> None:
        self.engine = engine
        self.claim = claim
        self.lease = claim.lease
        self.store = engine.store
        self.stop_reason: str | None = None
        self._body: asyncio.Task[None] | None = None
        # step changes not written yet (noop steps), with the next write: [(row id, changes)]
        self.deferred: Pending = []

    # --- lifecycle -----------------------------------------------------------------------

    async def execute(self) -> None:
        self._body = asyncio.create_task(self._run(), name=f"job {self.lease.job_id}")
        watcher = asyncio.create_task(self._watch(), name=f"watch {self.lease.job_id}")
        try:
            await self._body
        except asyncio.CancelledError:
            if self.stop_reason is None:  # the engine itself is stopping
                raise
            await self._stopped()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.engine.journal.flush()

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._body is not None:
            self._body.cancel()

    async def _watch(self) -> None:
        beat = 0.0
        while True:
            await asyncio.sleep(CANCEL_CHECK_EVERY_S)
            beat += CANCEL_CHECK_EVERY_S
            if beat >= min(HEARTBEAT_EVERY_S, self.engine.queue.lease.total_seconds() / 3):
                beat = 0.0
                if not await self.engine.queue.heartbeat(self.lease):
                    logger.warning("{}: lease lost; stopping this attempt", self.lease.job_id)
                    self.stop("lease-lost")
                    return
            if await self.engine.queue.cancel_requested(self.lease):
                self.stop("cancelled")
                return

    async def _stopped(self) -> None:
        if self.stop_reason == "lease-lost":
            return  # another worker owns the job now: write nothing
        if self.stop_reason == "timeout":
            await self._fail({"code": "JOB_TIMEOUT", "message": "the job ran out of time"}, False)
            return
        spec = getattr(self, "spec", None)  # None when stopped before it was loaded
        await self._finish("cancelled", spec=spec)
        await self.engine.notify()

    # --- the job -------------------------------------------------------------------------

    async def _load(self) -> None:
        """The run, its jobs and steps as the claim read them (same transaction)."""
        self.run_row = self.claim.run
        self.job_row = self.claim.job
        self.job_rows = self.claim.jobs
        self.step_rows = self.claim.steps
        self.spec = self.engine.spec_of(self.run_row["workflow_id"], self.run_row["spec"])
        self.job: JobSpec = self.spec.jobs[self.job_row["name"]]
        names = [*self.spec.secrets, *self.job.secrets]
        for step in [*self.job.steps, *self.job.hooks.pre, *self.job.hooks.post]:
            names += step.secrets
        for step in [*self.job.hooks.on_success, *self.job.hooks.on_failure]:
            names += step.secrets
        self.secrets = secret_values(list(dict.fromkeys(names)))
        self.masker = SecretMasker(list(self.secrets.values()))

    async def _run(self) -> None:
        await self._load()
        try:
            context = self._context()
            # `failure()` / `cancelled()` in a job's `if` look at the jobs it needs
            context["job"] = {"status": self._needs_status(context)}
            runs_at_all = self.job.if_ is None or self._condition(self.job.if_, context)
            context["job"] = {"status": "success"}
        except (StepFailed, ExpressionError) as exc:
            error = exc.to_error() if isinstance(exc, StepFailed) else _invalid(exc)
            await self._fail(error, retryable=False)
            return
        if not runs_at_all:
            await self._finish("skipped", skip_reason=f"if: {self.job.if_}", spec=self.spec)
            await self.engine.notify()
            return
        if self.job.timeout_ms:
            try:
                await asyncio.wait_for(self._sections(context), self.job.timeout_ms / 1000)
            except TimeoutError:
                self.stop_reason = "timeout"
                await self._stopped()
        else:
            await self._sections(context)

    async def _sections(self, context: dict[str, Any]) -> None:
        failure: dict[str, Any] | None = None
        for section in ("pre", "main"):
            if failure is None:
                outcome = await self._section(section, context)
                if outcome == "waiting":
                    return
                failure = outcome if isinstance(outcome, dict) else None
        context["job"] = {"status": "failure" if failure else "success"}
        follow_up = "onFailure" if failure else "onSuccess"
        for section in (follow_up, "post"):
            outcome = await self._section(section, context)
            if outcome == "waiting":
                return
            if isinstance(outcome, dict) and failure is None:
                failure = outcome  # a failing onSuccess/post hook fails the job
        if failure is not None:
            await self._fail(failure, failure.get("code") not in NOT_RETRYABLE)
            return
        try:
            outputs = self._job_outputs(context)
        except ExpressionError as exc:
            await self._fail(_invalid(exc, "outputs"), retryable=False)
            return
        await self.engine.journal.flush()  # the job's last lines before its end event
        await self._finish("success", outputs=outputs, spec=self.spec)
        await self.engine.notify()

    async def _fail(self, error: dict[str, Any], retryable: bool) -> None:
        await self.engine.journal.flush()  # the job's last lines before its end event
        error = self._masked(error)  # it lands in job/run rows and in events
        policy = self.job.retry_policy(self.engine.default_retries)
        failures = self.job_row["failures"]
        if retryable and failures < policy.max:
            delay = timedelta(milliseconds=policy.delay_ms(failures))
            changes = self._take_deferred()
            with contextlib.suppress(_LeaseLost):  # not ours any more: nothing to write
                await write(self.store, _retry, self.lease, changes, error, now() + delay)
        else:
            await self._finish(
                "failed",
                spec=self.spec,
                error=error,
                exhausted_retries=retryable and policy.max > 0,
            )
        await self.engine.notify()

    async def finish_crashed(self, error: dict[str, Any]) -> None:
        """The engine failed running this job: it fails (the steps done are kept)."""
        await self._finish("failed", error=error, spec=getattr(self, "spec", None))

    async def _finish(self, status: str, **options: Any) -> bool:
        """`transitions.finish_job`, after the step changes not written yet (same
        transaction)."""
        changes = self._take_deferred()
        mine = [row for row in getattr(self, "step_rows", []) if row["job_id"] == self.lease.job_id]
        if mine and all(row["status"] in ENDED for row in mine):
            options["steps_closed"] = True  # every step of the job ended: none to close
        try:
            return await write(self.store, _finish, self.lease, changes, status, options)
        except _LeaseLost:  # not ours any more: nothing is written
            return False

    def _take_deferred(self) -> Pending:
        # taken before the write: a caller cancelled while it runs must not repeat them
        changes, self.deferred = self.deferred, []
        return changes

    async def _section(self, section: str, context: dict[str, Any]) -> Any:
        """Run one section; None when it passed, "waiting" for an approval, or the
        error dict of the step that failed the job."""
        specs = transitions.section_steps(self.spec, self.job_row["name"], section)
        rows = [
            r
            for r in self.step_rows
            if r["job_id"] == self.lease.job_id and r["section"] == section
        ]
        index = 0
        while index < len(rows):
            row, spec = rows[index], specs[index]
            outcome = await self._step(row, spec, context, specs, index)
            if outcome.status == "waiting":
                return "waiting"
            if outcome.status == "restart":
                index = await self._restart(rows, specs, outcome.restart_from or "", context)
                continue
            if outcome.status == "failed":
                tolerated = spec.continue_on_error or _next_is_gate(specs, index)
                if not tolerated:
                    return outcome.error or {"code": "STEP_FAILED", "message": "step failed"}
            index += 1
        return None

    async def _step(
        self,
        row: dict[str, Any],
        spec: StepSpec,
        context: dict[str, Any],
        specs: list[StepSpec],
        index: int,
    ) -> StepOutcome:
        if row["status"] in ("success", "skipped"):
            context["steps"][spec.id] = {"outputs": row["outputs"] or {}, "status": row["status"]}
            return StepOutcome(row["status"], row["outputs"] or {})
        if row["status"] == "failed":  # resolved while the job waited (a rejected approval)
            context["steps"][spec.id] = {"outputs": row["outputs"] or {}, "status": "failed"}
            return StepOutcome("failed", row["outputs"] or {}, row["error"])
        try:
            wanted = spec.if_ is None or self._condition(spec.if_, context)
        except StepFailed as exc:
            error = exc.to_error()
            await self._write_step(
                row,
                "step.failed",
                {"error": error},
                status="failed",
                error=error,
                finished_at=now(),
            )
            row.update(status="failed", error=error)
            return StepOutcome("failed", error=error)
        if not wanted:  # nothing to wait for: written with the job's next write
            self.deferred.append(
                (row["id"], [("step.skipped", None, {"status": "skipped", "finished_at": now()})])
            )
            context["steps"][spec.id] = {"outputs": {}, "status": "skipped"}
            row["status"] = "skipped"
            return StepOutcome("skipped")
        start: transitions.StepChange = (
            "step.started",
            {"stepName": spec.name, "uses": str(spec.uses)},
            {"status": "running", "started_at": now(), "attempt": row["attempt"] + 1},
        )
        # a noop has nothing to wait for: its start and end go in one transaction
        instant = spec.uses.is_builtin("noop")
        pending: list[transitions.StepChange] = [start] if instant else []
        if not instant:
            await self._write_changes(row, [start])
        outcome = await self._attempt(row, spec, context)
        if outcome.status == "waiting":
            return outcome
        if outcome.status in ("success", "restart"):
            try:
                outputs = self._declared_outputs(spec, outcome.outputs, context)
                if spec.artifacts:
                    await self._collect_artifacts(row, spec, outputs)
            except (ExpressionError, KbError) as exc:
                error = (
                    _invalid(exc, "outputs") if isinstance(exc, ExpressionError) else exc.to_dict()
                )
                outcome = StepOutcome("failed", outcome.outputs, error)
        if outcome.status in ("success", "restart"):
            done = {"status": "success", "outputs": outputs, "finished_at": now()}
            changes = [*pending, ("step.succeeded", {"outputs": self._masked(outputs)}, done)]
            if instant and outcome.status == "success":  # written with the job's next write
                self.deferred.append((row["id"], changes))
            else:
                await self._write_changes(row, changes)
            row.update(status="success", outputs=outputs)
            context["steps"][spec.id] = {"outputs": outputs, "status": "success"}
            outcome.outputs = outputs
            return outcome
        failed = {
            "status": "failed",
            "error": outcome.error,
            "outputs": outcome.outputs or None,
            "finished_at": now(),
        }
        await self._write_changes(
            row, [*pending, ("step.failed", {"error": self._masked(outcome.error)}, failed)]
        )
        row.update(status="failed", error=outcome.error)
        context["steps"][spec.id] = {"outputs": outcome.outputs, "status": "failed"}
        return outcome

    async def _attempt(
        self, row: dict[str, Any], spec: StepSpec, context: dict[str, Any]
    ) -> StepOutcome:
        try:
            env = {**context["env"], **interpolate(dict(spec.env), context)}
            with_ = interpolate(dict(spec.with_), {**context, "env": env})
            call = kinds.StepCall(
                engine=self.engine,
                run=self.run_row,
                job=self.job_row,
                row=row,
                spec=spec,
                with_=with_,
                env=env,
                context=context,
                timeout_ms=spec.timeout_ms or DEFAULT_STEP_TIMEOUT_MS,
                cwd=Path(self.engine.settings.project_root),
                lease=self.lease,
                log=self._log_line,
            )
            return await kinds.run_step(call)
        except StepFailed as exc:
            return StepOutcome("failed", error=exc.to_error())
        except ExpressionError as exc:
            return StepOutcome("failed", error={"code": "INVALID_STEP", "message": str(exc)})

    async def _restart(
        self,
        rows: list[dict[str, Any]],
        specs: list[StepSpec],
        target: str,
        context: dict[str, Any],
    ) -> int:
        """A gate sent the job back to `target`: that step and the ones after it run
        again (their results are cleared)."""
        index = next(i for i, s in enumerate(specs) if s.id == target)
        cleared = {
            "status": "queued",
            "outputs": None,
            "error": None,
            "started_at": None,
            "finished_at": None,
        }
        for row in rows[index:]:
            self.deferred.append((row["id"], [(None, None, cleared)]))
            row.update(status="queued", outputs=None, error=None)
            context["steps"].pop(row["step_id"], None)
        await self._write_changes(None, [])
        return index

    # --- helpers -------------------------------------------------------------------------

    async def _collect_artifacts(
        self, row: dict[str, Any], spec: StepSpec, outputs: dict[str, Any]
    ) -> None:
        from kblabs.workflow import artifacts

        settings = self.engine.settings
        missing = await artifacts.collect(
            self.store,
            settings.data_dir,
            run_id=self.lease.run_id,
            job_id=self.lease.job_id,
            step_row_id=row["id"],
            spec=spec,
            outputs=outputs,
            cwd=Path(settings.project_root),
        )
        for name in missing:
            self._log_line(None, f"artifact {name!r}: its source was not found", None, row["id"])

    def _needs_status(self, context: dict[str, Any]) -> str:
        results = [need["result"] for need in context["needs"].values()]
        if "cancelled" in results:
            return "cancelled"
        if any(result in ("failed", "skipped") for result in results):
            return "failure"
        return "success"

    def _context(self) -> dict[str, Any]:
        done = {
            row["name"]: {"outputs": row["outputs"] or {}, "result": row["status"]}
            for row in self.job_rows
            if row["status"] in transitions.TERMINAL_JOB
        }
        step_outputs: dict[str, Any] = {}
        for row in self.step_rows:  # every finished step of the run; this job's last
            if row["status"] == "success" and row["job_id"] != self.lease.job_id:
                step_outputs[row["step_id"]] = {
                    "outputs": row["outputs"] or {},
                    "status": "success",
                }
        env = {**self.run_row["env"]}
        base = {
            "inputs": self.run_row["inputs"],
            "trigger": self.run_row["trigger"],
            "secrets": self.secrets,
            "needs": {k: v for k, v in done.items() if k in self.job.needs},
            "steps": step_outputs,
            "job": {"status": "success"},
            "run": {
                "id": self.run_row["id"],
                "workflowId": self.run_row["workflow_id"],
                "attempt": self.job_row["attempt"],
                "jobName": self.job_row["name"],
            },
        }
        base["env"] = {**env, **interpolate(dict(self.job.env), {**base, "env": env})}
        return base

    def _condition(self, text: str, context: dict[str, Any]) -> bool:
        try:
            return evaluate_condition(text, context)
        except ExpressionError as exc:
            raise StepFailed("INVALID_STEP", f"if: {exc}") from None

    def _declared_outputs(
        self, spec: StepSpec, outputs: dict[str, Any], context: dict[str, Any]
    ) -> dict[str, Any]:
        if not spec.outputs:
            return outputs
        scope = {**context, "steps": {**context["steps"], spec.id: {"outputs": outputs}}}
        declared = {name: interpolate(expr, scope) for name, expr in spec.outputs.items()}
        return {**outputs, **declared}

    def _job_outputs(self, context: dict[str, Any]) -> dict[str, Any]:
        return {name: interpolate(expr, context) for name, expr in self.job.outputs.items()}

    def _masked(self, value: Any) -> Any:
        import json

        if not self.secrets:
            return value
        return json.loads(self.masker.mask(json.dumps(value, default=str)))

    def _log_line(
        self, stream: str | None, message: str, line_no: int | None, step_row: str
    ) -> None:
        self.engine.journal.log(
            self.lease.run_id,
            message,
            level="error" if stream == "stderr" else "info",
            job_id=self.lease.job_id,
            step_id=step_row,
            stream=stream,
            line_no=line_no,
            mask=self.masker.mask,
        )

    async def _write_step(
        self,
        row: dict[str, Any],
        event: str,
        payload: dict[str, Any] | None = None,
        **values: Any,
    ) -> None:
        await self._write_changes(row, [(event, payload, values)])

    async def _write_changes(
        self, row: dict[str, Any] | None, changes: list[transitions.StepChange]
    ) -> None:
        """Step changes (each with its event) in one transaction, fenced by the lease,
        after the ones not written yet."""
        pending = self._take_deferred()
        if row is not None and changes:
            pending.append((row["id"], changes))
        if not pending:
            return
        try:
            await write(self.store, _change_steps, self.lease, pending)
        except _LeaseLost:
            raise Stop("lease-lost") from None
        await self.engine.journal.notify()


# --- the transactions (synchronous: run by the store in one go) ------------------------------


class _LeaseLost(Exception):
    """Raised inside a transaction: the job is not ours any more; nothing is written."""


def _change_steps(tx: Tx, lease: Lease, pending: Pending) -> None:
    """Step changes in order; consecutive changes of one row as one UPDATE, and runs
    of rows changed once each as one `change_steps`."""
    batch: Pending = []
    for step_id, changes in pending:
        if batch and batch[-1][0] == step_id:
            batch[-1] = (step_id, [*batch[-1][1], *changes])
            continue
        if any(row_id == step_id for row_id, _ in batch):  # changed again later: in order
            _apply(tx, lease, batch)
            batch = []
        batch.append((step_id, list(changes)))
    _apply(tx, lease, batch)


def _apply(tx: Tx, lease: Lease, batch: Pending) -> None:
    if batch and not transitions.change_steps(tx, lease, batch):
        raise _LeaseLost


def _finish(tx: Tx, lease: Lease, pending: Pending, status: str, options: dict[str, Any]) -> bool:
    _change_steps(tx, lease, pending)
    return transitions.finish_job(tx, lease, status, **options)


def _retry(
    tx: Tx, lease: Lease, pending: Pending, error: dict[str, Any], available_at: Any
) -> bool:
    _change_steps(tx, lease, pending)
    return transitions.retry_job(tx, lease, error, available_at)


def _invalid(exc: Exception, where: str = "") -> dict[str, Any]:
    prefix = f"{where}: " if where else ""
    return {"code": "INVALID_STEP", "message": f"{prefix}{exc}"}


def _next_is_gate(specs: list[StepSpec], index: int) -> bool:
    return index + 1 < len(specs) and specs[index + 1].uses.is_builtin("gate")
