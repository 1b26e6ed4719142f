"""One function per `uses` kind. Each gets a `StepCall` (the step, its interpolated
`with` and env, the run and job rows, the engine) and returns a `StepOutcome` or
raises `StepFailed`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import bindparam, delete, insert, select

from kblabs.errors import KbError
from kblabs.store.tables import workflow_approvals as approvals
from kblabs.store.tables import workflow_runs as runs
from kblabs.workflow import transitions
from kblabs.workflow.expressions import ExpressionError, evaluate
from kblabs.workflow.journal import Tx, now, write
from kblabs.workflow.outcome import StepFailed, StepOutcome, Stop, as_outputs
from kblabs.workflow.queue import Lease
from kblabs.workflow.spec import StepSpec
from kblabs.workflow.steps.shell import ShellBlocked, run_shell, shell_env

if TYPE_CHECKING:
    from kblabs.workflow.engine import WorkflowEngine

MAX_WORKFLOW_DEPTH = 3

LogLine = Callable[[str | None, str, int | None, str], None]


@dataclass
class StepCall:
    engine: WorkflowEngine
    run: Any  # the run row
    job: Any  # the job row
    row: dict[str, Any]  # the step row
    spec: StepSpec
    with_: dict[str, Any]
    env: dict[str, str]
    context: dict[str, Any]
    timeout_ms: int
    cwd: Path
    lease: Lease
    log: LogLine

    @property
    def host_context(self) -> dict[str, Any]:
        return {
            "workflowId": self.run["workflow_id"],
            "runId": self.run["id"],
            "jobId": self.job["id"],
            "stepId": self.spec.id,
            "attempt": self.job["attempt"],
        }


async def run_step(call: StepCall) -> StepOutcome:
    uses = call.spec.uses
    runner = KINDS.get(uses.kind if uses.kind != "builtin" else uses.target)
    if runner is None:
        raise StepFailed("INVALID_STEP", f"unsupported uses: {uses}")
    return await runner(call)


def _typed(call: StepCall, parse: Callable[[dict[str, Any]], Any]) -> Any:
    try:
        return parse(call.with_)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StepFailed("INVALID_STEP", f"with.{where}: {first['msg']}") from None


# --- builtin:noop / builtin:shell ------------------------------------------------------------


async def noop(call: StepCall) -> StepOutcome:
    return StepOutcome("success", dict(call.with_))


async def shell(call: StepCall) -> StepOutcome:
    from kblabs.workflow.spec import ShellWith

    typed = _typed(call, ShellWith.model_validate)
    timeout_ms = typed.timeout or call.spec.timeout_ms or call.timeout_ms
    try:
        result = await run_shell(
            typed.command_text,
            cwd=call.cwd,
            env=shell_env({**call.env, **typed.env}),
            timeout_s=timeout_ms / 1000,
            on_line=lambda stream, line, number: call.log(stream, line, number, call.row["id"]),
            ledger=call.engine.settings.data_dir,
        )
    except ShellBlocked as exc:
        raise StepFailed("SHELL_BLOCKED", str(exc)) from None
    outputs = result.outputs()
    if result.timed_out:
        return StepOutcome(
            "failed",
            outputs,
            {"code": "STEP_TIMEOUT", "message": f"Shell command timed out after {timeout_ms}ms"},
        )
    if result.exit_code != 0:
        message = result.stderr.strip()[:500] or (
            f"Step handler reported failure (exitCode: {result.exit_code})"
        )
        return StepOutcome(
            "failed",
            outputs,
            {"code": "HANDLER_REPORTED_FAILURE", "message": message, "exitCode": result.exit_code},
        )
    return StepOutcome("success", outputs)


# --- plugin:<id>/<handler>, command:<id> -----------------------------------------------------


def _plugin(call: StepCall, plugin_id: str) -> Any:
    plugins = call.engine.plugins.plugins if call.engine.plugins else []
    for plugin in plugins:
        if plugin.id == plugin_id or plugin.id.endswith("/" + plugin_id):
            return plugin
    raise StepFailed("COMMAND_RESOLUTION_FAILED", f"Plugin not found: {plugin_id}")


async def _run_handler(call: StepCall, plugin: Any, handler: str, permissions: Any, data: Any):
    from kblabs.plugins.runner import Call

    try:
        result = await call.engine.runner.run(
            plugin,
            Call(
                host="workflow",
                handler_ref=handler,
                input=data,
                permissions=permissions,
                timeout_ms=call.spec.timeout_ms or call.timeout_ms,
                host_context=call.host_context,
                request_id=call.run["id"],
                tenant_id=call.run["tenant_id"],
                cwd=call.cwd,
            ),
        )
    except KbError as exc:
        raise StepFailed(exc.code, exc.message, exc.details) from None
    return StepOutcome("success", as_outputs(result))


async def plugin(call: StepCall) -> StepOutcome:
    uses = call.spec.uses
    found = _plugin(call, uses.plugin_id or "")
    handlers = list(found.manifest.workflows.handlers if found.manifest.workflows else [])
    handlers += found.manifest.jobs.handlers if found.manifest.jobs else []  # cron jobs
    spec = next((h for h in handlers if h.id == uses.handler_id), None)
    if spec is None:
        raise StepFailed(
            "COMMAND_RESOLUTION_FAILED",
            f"Workflow handler not found: {uses.handler_id} in plugin {found.id}",
        )
    data = call.with_ if call.with_ else call.run["inputs"]  # no `with`: the run's inputs
    return await _run_handler(call, found, spec.handler, spec.permissions, data)


async def command(call: StepCall) -> StepOutcome:
    wanted = call.spec.uses.target
    plugins = call.engine.plugins.plugins if call.engine.plugins else []
    for candidate in plugins:
        for cmd in candidate.manifest.cli.commands if candidate.manifest.cli else []:
            names = {cmd.id, ":".join(p for p in (cmd.group, cmd.subgroup, cmd.id) if p)}
            names.add(" ".join(p for p in (cmd.group, cmd.subgroup, cmd.id) if p))
            if wanted in names:
                flags = call.with_.get("flags", call.with_)
                data = {"flags": flags, "argv": list(call.with_.get("argv", []))}
                return await _run_handler(call, candidate, cmd.handler, cmd.permissions, data)
    raise StepFailed("COMMAND_RESOLUTION_FAILED", f"Command not found: {wanted}")


# --- workflow:<id> -------------------------------------------------------------------------


async def workflow(call: StepCall) -> StepOutcome:
    from kblabs.workflow.spec import WorkflowCallWith

    typed = _typed(call, WorkflowCallWith.model_validate)
    depth = call.run["depth"] + 1
    if depth > MAX_WORKFLOW_DEPTH:
        raise StepFailed(
            "WORKFLOW_DEPTH_EXCEEDED", f"workflows nest at most {MAX_WORKFLOW_DEPTH} deep"
        )
    try:
        child_id, _ = await call.engine.create_run(
            call.spec.uses.target,
            inputs=typed.inputs,
            trigger={"type": "workflow", "parentRunId": call.run["id"], "stepId": call.spec.id},
            tenant_id=call.run["tenant_id"],
            parent_run_id=call.run["id"],
            depth=depth,
            env=dict(call.env) if typed.inherit_env else None,
            metadata=(
                {"parentJobId": call.job["id"], "parentStepRowId": call.row["id"]}
                if typed.mode == "wait"
                else None
            ),
        )
    except KbError as exc:
        raise StepFailed(exc.code, exc.message, exc.details) from None
    if typed.mode == "fire-and-forget":
        return StepOutcome("success", {"runId": child_id, "mode": "fire-and-forget"})
    # wait: like an approval, the job gives its worker back until the child ends (the
    # child's last transaction settles this step and re-queues the job)
    if not await write(call.engine.store, _wait_for_child, call.lease, call.row["id"], child_id):
        raise Stop("lease-lost")
    return StepOutcome("waiting")


def _wait_for_child(tx: Tx, lease: Lease, step_row_id: str, child_id: str) -> bool:
    marked = transitions.update_step(
        tx,
        lease,
        step_row_id,
        "step.waitingChild",
        {"childRunId": child_id},
        status="waiting_child",
        outputs={"runId": child_id},
    )
    if not marked:
        return False
    transitions.release_for_approval(tx, lease)
    child = tx.execute(transitions.RUN, {"b_run": child_id}).mappings().one()
    if child["status"] in transitions.TERMINAL_RUN:  # it ended already
        transitions.settle_parent(tx, child, child["status"])
    return True


# --- builtin:approval ----------------------------------------------------------------------


async def approval(call: StepCall) -> StepOutcome:
    """Ask a person; the job gives its worker back until the answer (or the timeout)."""
    from kblabs.workflow.spec import ApprovalWith

    typed = _typed(call, ApprovalWith.model_validate)
    stamp = now()
    expires = stamp + timedelta(milliseconds=typed.timeout_ms) if typed.timeout_ms else None
    approval_row = {
        "step_row_id": call.row["id"],
        "run_id": call.run["id"],
        "job_id": call.job["id"],
        "step_id": call.spec.id,
        "status": "pending",
        "title": typed.title or call.spec.name,
        "instructions": typed.instructions,
        "context": typed.context,
        "expires_at": expires,
        "created_at": stamp,
    }
    payload = {"jobId": call.job["id"], "stepId": call.spec.id, "title": typed.title}
    if not await write(call.engine.store, _ask, call.lease, approval_row, payload):
        raise Stop("lease-lost")
    return StepOutcome("waiting")


def _ask(tx: Tx, lease: Lease, row: dict[str, Any], payload: dict[str, Any]) -> bool:
    if not transitions.lease_holds(tx, lease):
        return False
    tx.execute(  # a gate may ask again: the earlier answer is history
        delete(approvals).where(approvals.c.step_row_id == row["step_row_id"])
    )
    tx.execute(insert(approvals), row)
    transitions.update_step(
        tx,
        lease,
        row["step_row_id"],
        "step.waitingApproval",
        payload,
        status="waiting_approval",
    )
    transitions.release_for_approval(tx, lease)
    return True


# --- builtin:gate ---------------------------------------------------------------------------


async def gate(call: StepCall) -> StepOutcome:
    from kblabs.workflow.spec import GateWith

    raw = call.spec.with_.get("decision")
    typed = _typed(call, lambda data: GateWith.model_validate({**data, "decision": str(raw)}))
    try:
        if str(raw).strip().startswith("${{"):  # `with` was interpolated already
            value = call.with_.get("decision")
        else:  # a bare path or expression: `steps.review.outputs.action`
            value = evaluate(typed.decision.strip(), call.context)
    except ExpressionError as exc:
        raise StepFailed("INVALID_STEP", f"with.decision: {exc}") from None
    key = _decision_key(value)
    route = typed.routes.get(key)
    action = route.action if route else (typed.default or "fail")
    base = {"decisionValue": value}
    if action == "continue":
        return StepOutcome("success", {**base, "action": "continue"})
    if action == "fail" or route is None:
        raise StepFailed("GATE_FAILED", f"Gate failed: decision={key}")
    counter = f"gate:{call.spec.id}:iterations"
    iteration = await _bump(call, counter)
    if iteration >= typed.max_iterations:
        raise StepFailed(
            "GATE_MAX_ITERATIONS",
            f"Gate max iterations reached ({typed.max_iterations}) for step {call.spec.id}",
        )
    if route.context:  # merged into trigger.payload, for this attempt and later ones
        call.context["trigger"] = await _merge_trigger_payload(call, route.context)
    outputs = {
        **base,
        "action": "restart",
        "restartFrom": route.restart_from,
        "iteration": iteration,
    }
    return StepOutcome("restart", outputs, restart_from=route.restart_from)


async def _merge_trigger_payload(call: StepCall, extra: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await write(call.engine.store, _merged_trigger, call.run["id"], extra)
    return result


def _merged_trigger(tx: Tx, run_id: str, extra: dict[str, Any]) -> dict[str, Any]:
    row = tx.execute(
        select(runs.c.trigger).where(runs.c.id == bindparam("b_run")), {"b_run": run_id}
    ).one()
    trigger = dict(row[0] or {})
    trigger["payload"] = {**(trigger.get("payload") or {}), **extra}
    tx.execute(transitions.UPDATE_RUN, {"b_run": run_id, "trigger": trigger})
    return trigger


def _decision_key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


async def _bump(call: StepCall, counter: str) -> int:
    where = (call.run["id"], call.job["id"], call.row["id"])
    count: int = await write(call.engine.store, _bumped, where, counter)
    return count


def _bumped(tx: Tx, where: tuple[str, str, str], counter: str) -> int:
    run_id, job_id, step_row_id = where
    row = tx.execute(transitions.RUN_METADATA, {"b_run": run_id}).one()
    metadata = dict(row[0] or {})
    metadata[counter] = int(metadata.get(counter, 0)) + 1
    tx.execute(transitions.UPDATE_RUN, {"b_run": run_id, "metadata": metadata})
    tx.event(
        run_id,
        "step.updated",
        {"action": "restart", "iteration": metadata[counter]},
        job_id=job_id,
        step_id=step_row_id,
    )
    return int(metadata[counter])


KINDS: dict[str, Callable[[StepCall], Awaitable[StepOutcome]]] = {
    "noop": noop,
    "shell": shell,
    "approval": approval,
    "gate": gate,
    "plugin": plugin,
    "command": command,
    "workflow": workflow,
}
