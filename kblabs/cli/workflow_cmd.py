"""`workflow list|run|runs|show|logs|cancel|rerun|approve|reject|approvals`: the workflow
engine of a running server, through its HTTP API (`kblabs/workflow/api.py`).

The server is `--url` (default: `KB_GATEWAY_URL`, else the config's host and port, as for
`status`); the bearer token is `--token`, else `KB_TOKEN`, else `<dataDir>/admin.token`.
`run --wait` follows the run's event stream (`…/events`, SSE) and reconnects with
`Last-Event-ID`; `--follow` polls `…/logs?after=<seq>` every 0.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from rich.console import Console, RenderableType
from rich.text import Text
from rich.tree import Tree

from kblabs.cli.context import CliContext
from kblabs.cli.server_api import TOKEN_ENV, Api, ApiError, NoToken, Unreachable, token_for
from kblabs.errors import ExitCode

if TYPE_CHECKING:
    pass

LOG_POLL_S = 0.5
LOG_PAGE = 1000  # the server's largest page
RECONNECT_TRIES = 10
RECONNECT_DELAY_S = 1.0
TERMINAL = frozenset({"success", "failed", "cancelled", "skipped", "dlq"})
NOT_STARTED = frozenset({None, "queued", "pending", "blocked"})

STATUS_STYLE = {
    "success": "green",
    "failed": "red",
    "dlq": "red",
    "cancelled": "yellow",
    "skipped": "dim",
    "running": "cyan",
    "queued": "dim",
    "blocked": "dim",
    "waiting": "magenta",
    "waiting_approval": "magenta",
}


# --- parser ------------------------------------------------------------------------------


def register(commands) -> None:
    parser = commands.add_parser("workflow", help="workflows and runs on a running server")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    def action(name: str, help: str, handler: Callable[..., Awaitable[ExitCode]]):
        sub = actions.add_parser(name, help=help)
        sub.add_argument("--url", help="server URL (default: KB_GATEWAY_URL or the config)")
        sub.add_argument("--token", help=f"bearer token (default: {TOKEN_ENV}, else admin.token)")
        sub.set_defaults(handler=_command(handler))
        return sub

    ls = action("list", "the workflow catalog", _list)
    ls.add_argument("--source", help="standalone, plugin or manifest")
    ls.add_argument("--status", help="active or invalid")

    run = action("run", "start a run of a workflow", _run)
    run.add_argument("workflow_id", metavar="WORKFLOW_ID")
    run.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="KEY=VALUE|@FILE",
        dest="inputs",
        help="an input, or @FILE: a JSON object of inputs (repeatable, later ones win; "
        "the server converts values to the declared types)",
    )
    run.add_argument("--inputs-json", metavar="JSON", help="inputs as a JSON object")
    run.add_argument("--idempotency-key", metavar="KEY", help="start at most one run per key")
    _wait_flags(run)

    runs = action("runs", "recent runs, newest first", _runs)
    runs.add_argument("--workflow", metavar="ID", help="runs of this workflow only")
    runs.add_argument("--status", help="e.g. running, or failed,cancelled")
    runs.add_argument("--limit", type=int, default=20, help="how many (default 20, max 500)")

    show = action("show", "a run with its jobs and steps", _show)
    show.add_argument("run_id", metavar="RUN_ID")

    logs = action("logs", "a run's log lines", _logs)
    logs.add_argument("run_id", metavar="RUN_ID")
    logs.add_argument("--job", metavar="JOB", help="lines of this job only")
    logs.add_argument("--step", metavar="STEP", help="lines of this step only (its id)")
    logs.add_argument("--follow", action="store_true", help="keep printing until the run ends")

    cancel = action("cancel", "cancel a queued or running run", _cancel)
    cancel.add_argument("run_id", metavar="RUN_ID")

    rerun = action("rerun", "a new run with the same inputs", _rerun)
    rerun.add_argument("run_id", metavar="RUN_ID")
    _wait_flags(rerun)

    for name, verb in (("approve", "approve"), ("reject", "reject")):
        resolve = action(name, f"{verb} a step waiting for approval", _resolve)
        resolve.add_argument("run_id", metavar="RUN_ID")
        resolve.add_argument("job_id", metavar="JOB_ID")
        resolve.add_argument("step_id", metavar="STEP_ID")
        resolve.add_argument("--comment", help="recorded with the decision")
        resolve.set_defaults(resolve_action=name)

    pending = action("approvals", "steps of a run waiting for approval", _approvals)
    pending.add_argument("run_id", metavar="RUN_ID")

    crons = action("crons", "cron schedules: list them, or trigger|pause|resume|delete one", _crons)
    crons.add_argument(
        "cron_action",
        nargs="?",
        default="list",
        choices=CRON_ACTIONS,
        metavar="ACTION",
        help=f"{'|'.join(CRON_ACTIONS)} (default: list)",
    )
    crons.add_argument("cron_id", nargs="?", metavar="ID", help="the schedule (all but list)")

    check = actions.add_parser(
        "validate", help="check workflow files here, no server needed (exit 2 on problems)"
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(handler=_validate)


def _validate(ctx: CliContext) -> ExitCode:
    """Every problem of every file, with its path (`jobs.build.steps[2].uses`)."""
    from pathlib import Path

    from kblabs.workflow.spec import load_spec

    results: list[dict[str, Any]] = []
    for name in ctx.args.files:
        path = Path(name)
        try:
            spec, problems = load_spec(path.read_text(encoding="utf-8"), source=str(path))
        except OSError as exc:
            spec, problems = None, [{"path": "", "message": f"cannot read {path}: {exc}"}]
        results.append({"file": str(path), "valid": spec is not None, "problems": problems})
    valid = all(r["valid"] for r in results)
    if ctx.output.as_json:
        ctx.output.result({"ok": valid, "files": results}, lambda c: None)
    else:
        for result in results:
            if result["valid"]:
                ctx.output.console.print(f"{result['file']}: valid", markup=False)
            for problem in result["problems"]:
                where = f"{problem['path']}: " if problem["path"] else ""
                ctx.output.errors.print(
                    f"{result['file']}: {where}{problem['message']}", markup=False
                )
    return ExitCode.OK if valid else ExitCode.USAGE


def _wait_flags(parser) -> None:
    parser.add_argument(
        "--wait", action="store_true", help="wait for the run to end (exit 0 only on success)"
    )
    parser.add_argument(
        "--follow", action="store_true", help="like --wait, and print log lines as they come"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --wait/--follow: give up after this long (exit 1; default: no limit)",
    )


# --- HTTP ------------------------------------------------------------------------------


def _q(value: str, safe: str = "") -> str:
    return quote(value, safe=safe)


def _command(work: Callable[[CliContext, Api], Awaitable[ExitCode]]):
    """A handler: find the server and the token, run `work`, turn errors into exit codes."""

    def handler(ctx: CliContext) -> ExitCode:
        from kblabs.cli.status_cmd import server_url

        try:
            url = server_url(ctx)
            token = token_for(ctx)
        except NoToken as exc:
            ctx.output.failure(str(exc), code="NO_TOKEN")
            return ExitCode.USAGE

        async def main() -> ExitCode:
            api = Api(url, token)
            try:
                return await work(ctx, api)
            finally:
                await api.close()

        try:
            return asyncio.run(main())
        except ApiError as exc:
            _report(ctx, exc)
            return ExitCode.USAGE if exc.code == "USAGE" else ExitCode.FAILURE
        except Unreachable as exc:
            ctx.output.failure(str(exc), code="UNREACHABLE", url=exc.url)
            return ExitCode.UNREACHABLE

    return handler


def _report(ctx: CliContext, exc: ApiError) -> None:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details is not None:
        error["details"] = exc.details
    payload: dict[str, Any] = {"ok": False, "error": error}
    if exc.status is not None:
        payload["httpStatus"] = exc.status
    if ctx.output.as_json:
        ctx.output.result(payload, lambda console: None)
        return
    errors = ctx.output.errors
    errors.print(Text.assemble((f"{exc.code}:", "red"), f" {exc.message}"))
    for detail in exc.details if isinstance(exc.details, list) else []:
        if isinstance(detail, dict) and detail.get("message"):
            where = detail.get("field") or detail.get("path") or ""
            text = f"  {where}: {detail['message']}" if where else f"  {detail['message']}"
            errors.print(text, markup=False)


# --- workflows -----------------------------------------------------------------------------


async def _list(ctx: CliContext, api: Api) -> ExitCode:
    data = await api.call(
        "GET", "/api/v1/workflows", params={"source": ctx.args.source, "status": ctx.args.status}
    )

    def human(console: Console) -> None:
        from rich.table import Table

        table = Table(box=None)
        table.add_column("id", no_wrap=True, min_width=_widest(data.get("workflows", []), "id"))
        for column in ("name", "source", "status"):
            table.add_column(column)
        for entry in data.get("workflows", []):
            table.add_row(
                entry.get("id", ""),
                entry.get("name") or "",
                entry.get("source") or "",
                _status(entry.get("status") or "", active="green", invalid="red"),
            )
        _print_table(console, table)
        if not data.get("workflows"):
            console.print("no workflows (files go in .kb/workflows/*.yml)")

    ctx.output.result({"ok": True, **data}, human)
    return ExitCode.OK


async def _run(ctx: CliContext, api: Api) -> ExitCode:
    args = ctx.args
    inputs: dict[str, Any] = {}
    if args.inputs_json:
        try:
            inputs = json.loads(args.inputs_json)
        except ValueError as exc:
            raise ApiError("USAGE", f"--inputs-json is not JSON: {exc}") from None
        if not isinstance(inputs, dict):
            raise ApiError("USAGE", "--inputs-json must be a JSON object")
    for pair in args.inputs:
        if pair.startswith("@"):
            inputs.update(_inputs_file(pair[1:]))
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ApiError("USAGE", f"--input takes KEY=VALUE or @FILE, not {pair!r}")
        inputs[key] = value
    body: dict[str, Any] = {"inputs": inputs}
    if args.idempotency_key:
        body["idempotencyKey"] = args.idempotency_key
    path = f"/api/v1/workflows/{_q(args.workflow_id, safe='/:@')}/runs"
    started = await api.call("POST", path, body=body)
    return await _started(ctx, api, started)


def _inputs_file(name: str) -> dict[str, Any]:
    """`--input @FILE`: a JSON object of inputs (values keep their JSON types)."""
    from pathlib import Path

    try:
        inputs = json.loads(Path(name).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ApiError("USAGE", f"--input @{name}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise ApiError("USAGE", f"--input @{name}: not JSON: {exc}") from None
    if not isinstance(inputs, dict):
        raise ApiError("USAGE", f"--input @{name}: must hold a JSON object of inputs")
    return inputs


async def _started(ctx: CliContext, api: Api, started: dict[str, Any]) -> ExitCode:
    """After `run` or `rerun`: print the id, and wait or follow if asked to."""
    args, out = ctx.args, ctx.output
    run_id = str(started["runId"])
    if not (args.wait or args.follow):

        def print_id(console: Console) -> None:
            console.print(run_id, markup=False)
            if started.get("created") is False:
                out.errors.print("(an existing run: this idempotency key was used before)")

        out.result({"ok": True, **started}, print_id)
        return ExitCode.OK
    if not out.as_json:
        out.console.print(run_id, markup=False)
        if started.get("created") is False:
            out.errors.print("(an existing run: this idempotency key was used before)")
    timeout = args.timeout if args.timeout and args.timeout > 0 else None
    watch = Watch(api, run_id, out.console, show=not out.as_json, follow=args.follow)
    try:
        run = await asyncio.wait_for(watch.run(), timeout)
    except TimeoutError:
        raise ApiError(
            "TIMEOUT", f"run {run_id} is still {watch.status} after {args.timeout:g} s"
        ) from None
    status = str(run.get("status"))
    payload: dict[str, Any] = {"ok": status == "success", **started, "status": status, "run": run}
    if args.follow:
        payload["logs"] = watch.lines
    if status != "success":
        error = run.get("error")
        error = error if isinstance(error, dict) else {}
        payload["error"] = {
            "code": f"RUN_{status.upper()}",
            "message": str(error.get("message") or f"the run ended with status {status}"),
        }

    def human(console: Console) -> None:
        line = Text.assemble(f"run {run_id} ", _status(status))
        if run.get("durationMs") is not None:
            line.append(f" ({_ms(run['durationMs'])})")
        if status != "success":
            line.append(f": {payload['error']['message']}")
        console.print(line)

    out.result(payload, human)
    return ExitCode.OK if status == "success" else ExitCode.FAILURE


# --- runs ----------------------------------------------------------------------------------


async def _runs(ctx: CliContext, api: Api) -> ExitCode:
    args = ctx.args
    data = await api.call(
        "GET",
        "/api/v1/runs",
        params={"workflowId": args.workflow, "status": args.status, "limit": args.limit},
    )

    def human(console: Console) -> None:
        from rich.table import Table

        table = Table(box=None)
        table.add_column("id", no_wrap=True, min_width=_widest(data.get("runs", []), "id"))
        table.add_column("workflow", overflow="fold")
        table.add_column("status", no_wrap=True)
        table.add_column("created")
        table.add_column("duration", no_wrap=True)
        for run in data.get("runs", []):
            table.add_row(
                run.get("id", ""),
                run.get("workflowId") or "",
                _status(run.get("status") or ""),
                _when(run.get("createdAt")),
                _ms(run.get("durationMs")),
            )
        _print_table(console, table)
        console.print(f"{len(data.get('runs', []))} of {data.get('total', 0)} run(s)")

    ctx.output.result({"ok": True, **data}, human)
    return ExitCode.OK


async def _get_run(api: Api, run_id: str) -> dict[str, Any]:
    data = await api.call("GET", f"/api/v1/runs/{_q(run_id)}")
    return data.get("run") or {}


async def _show(ctx: CliContext, api: Api) -> ExitCode:
    run = await _get_run(api, ctx.args.run_id)
    ctx.output.result({"ok": True, "run": run}, lambda console: console.print(run_tree(run)))
    return ExitCode.OK


async def _cancel(ctx: CliContext, api: Api) -> ExitCode:
    run_id = ctx.args.run_id
    data = await api.call("POST", f"/api/v1/runs/{_q(run_id)}/cancel")
    ctx.output.result(
        {"ok": True, **data}, lambda c: c.print(f"cancelled run {run_id}", markup=False)
    )
    return ExitCode.OK


async def _rerun(ctx: CliContext, api: Api) -> ExitCode:
    started = await api.call("POST", f"/api/v1/runs/{_q(ctx.args.run_id)}/rerun")
    return await _started(ctx, api, started)


async def _approvals(ctx: CliContext, api: Api) -> ExitCode:
    run_id = ctx.args.run_id
    data = await api.call("GET", f"/api/v1/runs/{_q(run_id)}/approvals")

    def human(console: Console) -> None:
        from rich.table import Table

        pending = data.get("pending", [])
        if not pending:
            console.print(f"run {run_id}: nothing waiting for approval", markup=False)
            return
        table = Table("job", "step", "title", "waiting since", "expires", box=None)
        for row in pending:
            table.add_row(
                _job_name(run_id, row.get("jobId")),
                row.get("stepId") or "",
                row.get("title") or "",
                _when(row.get("waitingSince")),
                _when(row.get("expiresAt")) or "never",
            )
        _print_table(console, table)

    ctx.output.result({"ok": True, **data}, human)
    return ExitCode.OK


async def _resolve(ctx: CliContext, api: Api) -> ExitCode:
    args = ctx.args
    body: dict[str, Any] = {
        "jobId": args.job_id,
        "stepId": args.step_id,
        "action": args.resolve_action,
    }
    if args.comment:
        body["comment"] = args.comment
    data = await api.call("POST", f"/api/v1/runs/{_q(args.run_id)}/approvals/resolve", body=body)
    done = "approved" if args.resolve_action == "approve" else "rejected"
    ctx.output.result(
        {"ok": True, **data},
        lambda c: c.print(
            f"{done} {args.job_id}/{args.step_id} of run {args.run_id}", markup=False
        ),
    )
    return ExitCode.OK


# --- logs ----------------------------------------------------------------------------------


async def _logs(ctx: CliContext, api: Api) -> ExitCode:
    args, out = ctx.args, ctx.output
    run = await _get_run(api, args.run_id)
    names = step_names(run)
    params: dict[str, Any] = {}
    keep: set[str] | None = None
    if args.job:
        jobs = [j for j in run.get("jobs", []) if args.job in (j.get("jobName"), j.get("id"))]
        if not jobs:
            raise ApiError("JOB_NOT_FOUND", f"run {args.run_id} has no job {args.job}")
        params["jobId"] = jobs[0]["id"]
    if args.step:
        rows = [
            step["id"]
            for job in run.get("jobs", [])
            if not args.job or job["id"] == params["jobId"]
            for step in job.get("steps", [])
            if args.step in (step.get("stepId"), step.get("id"))
        ]
        if not rows:
            raise ApiError("STEP_NOT_FOUND", f"run {args.run_id} has no step {args.step}")
        if len(rows) == 1:
            params["stepId"] = rows[0]  # the row id: every server version filters by it
        else:  # the same step id in several jobs: filter here
            keep = set(rows)
    lines: list[dict[str, Any]] = []

    def printed(line: dict[str, Any]) -> None:
        if keep is not None and line.get("stepId") not in keep:
            return
        lines.append(line)
        if not out.as_json:
            out.console.print(log_text(line, names))

    status = str(run.get("status"))
    if args.follow and status not in TERMINAL:
        watch = Watch(api, args.run_id, out.console, show=False, follow=True, names=names)
        watch.on_line, watch.log_params = printed, params
        status = str((await watch.run()).get("status"))
    else:
        await fetch_logs(api, args.run_id, params, 0, printed)

    def human(console: Console) -> None:
        if not lines:
            console.print(f"(no log lines; the run is {status})")

    out.result({"ok": True, "runId": args.run_id, "status": status, "logs": lines}, human)
    return ExitCode.OK


async def fetch_logs(
    api: Api,
    run_id: str,
    params: dict[str, Any],
    after: int,
    emit: Callable[[dict[str, Any]], None],
) -> int:
    """Every line after `after` (page by page); returns the last seq seen."""
    while True:
        data = await api.call(
            "GET",
            f"/api/v1/runs/{_q(run_id)}/logs",
            params={**params, "after": after, "limit": LOG_PAGE},
        )
        batch = data.get("logs", [])
        for line in batch:
            after = max(after, int(line.get("seq") or 0))
            emit(line)
        if len(batch) < LOG_PAGE:
            return after


# --- watching a run --------------------------------------------------------------------------

STEP_EVENTS = {
    "step.started": "running",
    "step.succeeded": "success",
    "step.failed": "failed",
    "step.skipped": "skipped",
    "step.waitingApproval": "waiting_approval",
}
JOB_EVENTS = {
    "job.started": "running",
    "job.succeeded": "success",
    "job.failed": "failed",
    "job.skipped": "skipped",
    "job.cancelled": "cancelled",
}
RUN_EVENTS = {
    "run.created": "queued",
    "run.started": "running",
    "run.finished": "success",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
    "run.skipped": "skipped",
}


class Watch:
    """Follow a run to its end: events from the SSE stream update a copy of the run (shown
    live on a terminal, as one line per change otherwise); with `follow`, log lines are
    polled alongside. `run()` returns the run as the server describes it at the end."""

    def __init__(
        self,
        api: Api,
        run_id: str,
        console: Console,
        *,
        show: bool,
        follow: bool,
        names: dict[str, str] | None = None,
    ) -> None:
        self.api = api
        self.run_id = run_id
        self.console = console
        self.show = show
        self.follow = follow
        self.names = names or {}
        self.state: dict[str, Any] = {}
        self.lines: list[dict[str, Any]] = []
        self.log_params: dict[str, Any] = {}
        self.on_line: Callable[[dict[str, Any]], None] = self._print_line
        self.live: Any = None
        self._done = asyncio.Event()

    @property
    def status(self) -> str:
        return str(self.state.get("status") or "unknown")

    async def run(self) -> dict[str, Any]:
        # the run first: a log line names its step, and a fast run can be over (its log
        # written) before the event stream connects
        await self._refresh()
        tasks = [asyncio.create_task(self._events())]
        if self.follow:
            tasks.append(asyncio.create_task(self._logs()))
        if self.show and self.console.is_terminal:
            from rich.live import Live

            self.live = Live(
                Text(f"run {self.run_id}: connecting…"),
                console=self.console,
                refresh_per_second=8,
            )
            self.live.start()
        try:
            await asyncio.gather(*tasks)
            await self._refresh()  # the final word, with durations and errors
            self._render()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.live is not None:
                self.live.stop()
                self.live = None
        return self.state

    # events

    async def _events(self) -> None:
        import httpx

        last_id: str | None = None
        failures = 0
        while True:
            problem: Unreachable | None = None
            try:
                async for event in self.api.events(self.run_id, last_id):
                    failures = 0
                    last_id = event.get("_id") or last_id
                    if str(event.get("type") or "").startswith("log."):
                        continue  # log lines: --follow reads them from …/logs
                    if self._apply(event):
                        await self._refresh()
                    self._render()
                    if self.status in TERMINAL:
                        self._done.set()
                        return
                if last_id is not None:  # the stream ended, the run did not (a restart?)
                    await self._refresh()
                    if self.status in TERMINAL:
                        self._done.set()
                        return
            except Unreachable as exc:
                problem = exc
            except httpx.TransportError as exc:
                problem = Unreachable(self.api.url, exc)
            if problem is not None:
                failures += 1
                if failures >= RECONNECT_TRIES:
                    raise problem
            await asyncio.sleep(RECONNECT_DELAY_S if problem else 0.1)

    async def _refresh(self) -> None:
        self._replace(await _get_run(self.api, self.run_id))

    def _replace(self, run: dict[str, Any]) -> None:
        self.state = run
        self.names.update(step_names(run))

    def _apply(self, event: dict[str, Any]) -> bool:
        """Update the copy; True when the event needs the whole run read again."""
        kind = str(event.get("type") or "")
        payload = event.get("payload") or {}
        if kind == "run.snapshot":
            self._replace(payload if isinstance(payload, dict) else {})
            self._print_started()
            return False
        if not self.state:
            return True
        if kind in RUN_EVENTS:
            self.state["status"] = payload.get("status") or RUN_EVENTS[kind]
            if payload.get("error"):
                self.state["error"] = payload["error"]
            return False
        job = self._find(self.state.get("jobs", []), event.get("jobId"))
        if kind in JOB_EVENTS and job is not None:
            self._changed(job, JOB_EVENTS[kind], job.get("jobName"))
            return False
        step = None
        if job is not None:
            step = self._find(job.get("steps", []), event.get("stepId"))
        if kind in STEP_EVENTS and job is not None and step is not None:
            self._changed(step, STEP_EVENTS[kind], self.names.get(step["id"]))
            if kind == "step.waitingApproval":
                job["status"] = "waiting"
            return False
        if (
            kind == "step.updated"
            and step is not None
            and payload.get("action")
            in (
                "approve",
                "reject",
            )
        ):
            status = "success" if payload["action"] == "approve" else "failed"
            self._changed(step, status, self.names.get(step["id"]))
            return False
        return True  # retries, interrupted jobs, gate restarts: read the run again

    def _print_started(self) -> None:
        """Line mode: what already moved when the stream connected (a fast run may be over
        by then), so that every job and step that ran gets its line."""
        if not self.show or self.live is not None:
            return
        for job in self.state.get("jobs", []):
            if job.get("status") not in NOT_STARTED:
                self._line(job.get("jobName"), job["status"])
            for step in job.get("steps", []):
                if step.get("status") not in NOT_STARTED:
                    self._line(self.names.get(step["id"]), step["status"])

    def _line(self, label: Any, status: str) -> None:
        self.console.print(Text.assemble(f"  {label}: ", _status(status)))

    @staticmethod
    def _find(rows: list[dict[str, Any]], row_id: Any) -> dict[str, Any] | None:
        return next((row for row in rows if row.get("id") == row_id), None)

    def _changed(self, row: dict[str, Any], status: str, label: Any) -> None:
        before = row.get("status")
        row["status"] = status
        if self.show and self.live is None and status != before:
            self._line(label, status)

    def _render(self) -> None:
        if self.live is not None and self.state:
            self.live.update(run_tree(self.state, live=True), refresh=True)

    # logs

    async def _logs(self) -> None:
        after = 0
        while not self._done.is_set():
            after = await fetch_logs(self.api, self.run_id, self.log_params, after, self.on_line)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), LOG_POLL_S)
        # The run has ended, but a job's last lines can land a moment after its result
        # (the engine writes log lines in batches): read until a pause brings no more.
        after = await fetch_logs(self.api, self.run_id, self.log_params, after, self.on_line)
        while True:
            await asyncio.sleep(LOG_POLL_S)
            last = await fetch_logs(self.api, self.run_id, self.log_params, after, self.on_line)
            if last == after:
                return
            after = last

    def _print_line(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        if self.show:
            self.console.print(log_text(line, self.names))


# --- rendering -------------------------------------------------------------------------------


# --- crons -----------------------------------------------------------------------------------

CRON_ACTIONS = ("list", "trigger", "pause", "resume", "delete")


async def _crons(ctx: CliContext, api: Api) -> ExitCode:
    what, cron_id = ctx.args.cron_action, ctx.args.cron_id
    if what == "list":
        if cron_id:
            raise ApiError("USAGE", "crons list takes no ID")
        return await _list_crons(ctx, api)
    if not cron_id:
        raise ApiError("USAGE", f"crons {what} needs the schedule's ID (see: workflow crons)")
    path = f"/api/v1/crons/{_q(cron_id, safe=':@')}"
    if what == "delete":
        data = await api.call("DELETE", path)
    else:
        data = await api.call("POST", f"{path}/{what}")
    said = {
        "trigger": f"triggered {cron_id}: run {data.get('runId')}",
        "pause": f"paused {cron_id}",
        "resume": f"resumed {cron_id}",
        "delete": f"deleted {cron_id}",
    }[what]
    ctx.output.result({"ok": True, **data}, lambda console: console.print(said, markup=False))
    return ExitCode.OK


async def _list_crons(ctx: CliContext, api: Api) -> ExitCode:
    data = await api.call("GET", "/api/v1/crons")
    crons = data.get("crons", [])

    def human(console: Console) -> None:
        from rich.table import Table

        table = Table(box=None)
        table.add_column("id", no_wrap=True, min_width=_widest(crons, "id"))
        for column in ("schedule", "timezone", "state", "catch-up", "next run", "last run"):
            table.add_column(column)
        for cron in crons:
            state = "enabled" if cron.get("enabled") else "paused"
            table.add_row(
                cron.get("id", ""),
                cron.get("schedule") or "",
                cron.get("timezone") or "",
                _status(state, enabled="green", paused="yellow"),
                cron.get("catchUp") or "none",
                _when(cron.get("nextRun")),
                _when(cron.get("lastRun")),
            )
        _print_table(console, table)
        if not crons:
            console.print("no cron schedules (on.schedule in a workflow, or POST /api/v1/crons)")

    ctx.output.result({"ok": True, **data}, human)
    return ExitCode.OK


def _status(status: str, **styles: str) -> Text:
    return Text(status, style=styles.get(status) or STATUS_STYLE.get(status, ""))


def _print_table(console: Console, table: Any) -> None:
    """On a terminal, fit the window; elsewhere (a pipe, a file) never cut a cell."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(file=console.file, width=10_000, highlight=False, color_system=None).print(table)


def _widest(rows: list[dict[str, Any]], key: str) -> int:
    return max([len(str(row.get(key) or "")) for row in rows] + [2])


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    ms = float(value)
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _when(value: Any) -> str:
    if not value:
        return ""
    try:
        return datetime.fromisoformat(str(value)).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value)


def _took(row: dict[str, Any]) -> str:
    try:
        start = datetime.fromisoformat(row["startedAt"])
        end = datetime.fromisoformat(row["finishedAt"])
    except (KeyError, TypeError, ValueError):
        return ""
    return _ms((end - start).total_seconds() * 1000)


def _job_name(run_id: str, job_id: Any) -> str:
    text = str(job_id or "")
    return text[len(run_id) + 1 :] if text.startswith(run_id + ":") else text


def step_names(run: dict[str, Any]) -> dict[str, str]:
    """Step row id → `job/step` for the log prefixes."""
    return {
        step["id"]: f"{job.get('jobName')}/{step.get('stepId')}"
        for job in run.get("jobs", [])
        for step in job.get("steps", [])
    }


def log_text(line: dict[str, Any], names: dict[str, str]) -> Text:
    where = names.get(line.get("stepId") or "") or str(line.get("jobId") or "").rsplit(":", 1)[-1]
    style = "red" if line.get("stream") == "stderr" or line.get("level") == "error" else ""
    return Text.assemble((f"{where} | ", "dim"), (str(line.get("message", "")), style))


def run_tree(run: dict[str, Any], live: bool = False) -> RenderableType:
    head = Text.assemble(
        (f"run {run.get('id')}", "bold"),
        f"  {run.get('workflowId')}",
        (f" v{run['version']}" if run.get("version") else "", "dim"),
        "  ",
        _status(str(run.get("status"))),
    )
    if run.get("durationMs") is not None:
        head.append(f"  {_ms(run['durationMs'])}")
    tree = Tree(head)
    trigger = run.get("trigger") or {}
    if not live:
        by = f" by {trigger['actor']}" if trigger.get("actor") else ""
        tree.add(
            Text(
                f"trigger: {trigger.get('type', '?')}{by}, created {_when(run.get('createdAt'))}",
                "dim",
            )
        )
        if run.get("inputs"):
            tree.add(Text(f"inputs: {json.dumps(run['inputs'], default=str)}", "dim"))
    error = run.get("error")
    if isinstance(error, dict) and error.get("message"):
        tree.add(Text(f"error: {error['message']}", "red"))
    for job in run.get("jobs", []):
        label = Text.assemble(
            (str(job.get("jobName")), "bold"), "  ", _status(str(job.get("status")))
        )
        if job.get("status") in TERMINAL and _took(job):
            label.append(f"  {_took(job)}", "dim")
        if job.get("skipReason"):
            label.append(f"  ({job['skipReason']})", "dim")
        branch = tree.add(_spinning(label) if live and job.get("status") == "running" else label)
        for step in job.get("steps", []):
            branch.add(_step_label(step, live))
    return tree


def _step_label(step: dict[str, Any], live: bool) -> RenderableType:
    label = Text(str(step.get("stepId")))
    if step.get("name") and step.get("name") != step.get("stepId"):
        label.append(f" ({step['name']})", "dim")
    if step.get("section") and step.get("section") != "main":
        label.append(f" [{step['section']}]", "dim")
    label.append("  ")
    label.append_text(_status(str(step.get("status"))))
    if step.get("status") in TERMINAL and _took(step):
        label.append(f"  {_took(step)}", "dim")
    error = step.get("error")
    if isinstance(error, dict) and error.get("message"):
        label.append(f"  {error['message']}", "red")
    return _spinning(label) if live and step.get("status") == "running" else label


def _spinning(label: Text) -> RenderableType:
    from rich.spinner import Spinner

    return Spinner("dots", text=label, style="cyan")
