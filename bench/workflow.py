#!/usr/bin/env python
"""Workflow engine bench: runs/s and enqueue→first-step-start latency of a 3-step
`builtin:noop` and a 3-step `run: "true"` workflow, against the raw SQLite commit rate.

Measured in one run:

1. Baseline, before the server starts and again after it stopped: the raw SQLite commit
   rate of this machine, with the stdlib sqlite3 module on a file in the same temp folder
   as the server's database and the pragmas kblabs.store.engine sets (journal_mode WAL,
   synchronous NORMAL, busy_timeout, foreign_keys): one single-row INSERT per
   `BEGIN IMMEDIATE` … `COMMIT` (the store's write transactions take the lock up front
   too), in a loop for a fixed time. Reported: commits/s and the CPU share of that loop,
   each time; the mean of the two is the baseline (two differing much means the
   machine's load changed during the run).
2. A real `python -m kblabs serve --port P` (fresh temp project root,
   KB_RATE_LIMITS_ENABLED=false, KB_LOG_LEVEL=warning, KB_WORKFLOW_MAX_PARALLEL_JOBS when
   `--max-parallel-jobs` is given, else the server's default) with two workflows written
   to `<project>/.kb/workflows/` before the start, one job each: `bench-noop3` (three
   `uses: builtin:noop` steps) and `bench-shell3` (three `run: "true"` steps, each a
   `/bin/sh` process). A few warm-up runs of each go first (not recorded).
3. Throughput, per workflow: C keep-alive httpx clients (admin bearer) enqueue N runs
   (`POST /api/v1/workflows/{id}/runs`) as fast as they are answered, while the
   server's workers already run them; then `GET /api/v1/runs?status=queued,running
   &workflowId=…&limit=1` is polled until its total is 0, and every run of the phase is
   read back (`GET /api/v1/runs?workflowId=…`, paged) to check that it ended `success`.
   runs/s = N / (last run's finishedAt - first run's createdAt), both server
   timestamps; the client's wall time (first POST sent → all terminal seen, which
   includes the poll interval) gives a second figure. Also reported: enqueue req/s and
   POST p50/p99, the queue wait under load (run startedAt - createdAt, when a worker
   claimed its job) p50/p99, and the CPU time per run of the server process and of its
   reaped children (the shell steps' processes; their CPU is counted when the server
   reaps them).
4. Start latency, per workflow, right after its throughput phase: M runs one after
   another, each `POST`ed and then `GET /api/v1/runs/{id}` polled until the run is
   terminal (so each run has the engine to itself); latency = the first step's
   startedAt - the run's createdAt, both server timestamps (ISO with offset), so it is
   enqueue→first-step-start without the client's polling interval in it (the polls do
   share the server's CPU). Also: claim latency (run startedAt - createdAt) and the
   whole run (finishedAt - createdAt), p50/p99.

The figures depend on the machine, so the baseline is measured in the same run and
"commits per run" = SQLite commits/s ÷ runs/s is printed next to runs/s: how many raw
single-row commits this machine makes in the time the engine takes per run. The issue's
goals (>= 100 noop runs/s, noop start latency p50 < 50 ms) are informational PASS/FAIL
lines. The exit code is 1 only when the server fails to start (its output is shown), 0
otherwise, even when some runs failed (they are reported).

Usage: python bench/workflow.py [--runs 500] [--latency-runs 100] [--clients 4]
       [--max-parallel-jobs N] [--baseline-seconds 2] [--json]

Only the standard library, httpx and kblabs (for its server); Linux (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from _server import (
    ServerFailed,
    base_environ,
    cpu_seconds,
    free_port,
    print_log_tail,
    read_lines,
    stop_server,
    wait_ready,
)
from _stats import spread

try:
    import sniffio  # noqa: F401
except ImportError:
    # httpcore 1.0.x imports sniffio on every request; a failed import is never cached
    # (see bench/plugins.py). Marking it absent makes the import fail at once.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

GOAL_RUNS_PER_S = 100.0  # noop runs/s (the issue's goal)
GOAL_P50_MS = 50.0  # noop enqueue→first-step-start p50 (the issue's goal)

NOOP_ID = "bench-noop3"
SHELL_ID = "bench-shell3"
WORKFLOW_FILES = {
    NOOP_ID: """\
name: bench noop3
version: 1.0.0
on:
  manual: true
jobs:
  main:
    steps:
      - id: one
        uses: builtin:noop
      - id: two
        uses: builtin:noop
      - id: three
        uses: builtin:noop
""",
    SHELL_ID: """\
name: bench shell3
version: 1.0.0
on:
  manual: true
jobs:
  main:
    steps:
      - id: one
        run: "true"
      - id: two
        run: "true"
      - id: three
        run: "true"
""",
}
LABELS = {NOOP_ID: "3 x builtin:noop", SHELL_ID: '3 x run: "true"'}
TERMINAL = frozenset({"success", "failed", "cancelled", "skipped", "dlq"})
ACTIVE = "queued,running"
PAGE = 500  # the API's largest page
DRAIN_POLL_S = 0.05  # throughput: how often the queued+running total is read
WARMUP_RUNS = 10


# --- the baseline: raw SQLite commits ----------------------------------------------------


def sqlite_commit_rate(path: Path, seconds: float, busy_timeout_ms: int = 5000) -> dict[str, Any]:
    """Single-row INSERT + COMMIT in a loop for `seconds`, with the store's pragmas."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
        conn.execute(
            "CREATE TABLE bench (id INTEGER PRIMARY KEY, at REAL NOT NULL, payload TEXT NOT NULL)"
        )
        payload = "x" * 64
        commits = 0
        cpu = time.process_time()
        started = time.perf_counter()
        stop_at = started + seconds
        while True:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO bench (at, payload) VALUES (?, ?)", (time.time(), payload))
            conn.execute("COMMIT")
            commits += 1
            if time.perf_counter() >= stop_at:
                break
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        conn.close()
    return {
        "path": str(path),
        "journal_mode": mode,
        "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(synchronous),
        "sqlite_version": sqlite3.sqlite_version,
        "commits": commits,
        "seconds": round(elapsed, 3),
        "commits_per_s": round(commits / elapsed, 1),
        "us_per_commit": round(1e6 * elapsed / commits, 2),
        "cpu_pct": round(100 * cpu / elapsed, 1),
    }


# --- the server ----------------------------------------------------------------------------


def write_workflows(project_root: Path) -> list[str]:
    folder = project_root / ".kb" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    for workflow_id, text in WORKFLOW_FILES.items():
        (folder / f"{workflow_id}.yml").write_text(text)
    return [str(folder / f"{workflow_id}.yml") for workflow_id in WORKFLOW_FILES]


def default_max_parallel_jobs() -> int | None:
    """The server's default `workflow.maxParallelJobs` (the temp project sets none)."""
    try:
        from kblabs.config.settings import WorkflowSettings

        return WorkflowSettings().max_parallel_jobs
    except Exception:
        return None


def start_server(
    project_root: Path, log_dir: Path, max_parallel_jobs: int | None
) -> tuple[subprocess.Popen, Path, int]:
    """Spawn `python -m kblabs serve` on a free port; the caller waits for ready."""
    port = free_port()
    env = base_environ()
    env["KB_PROJECT_ROOT"] = str(project_root)
    env["KB_RATE_LIMITS_ENABLED"] = "false"
    env["KB_LOG_LEVEL"] = "warning"
    if max_parallel_jobs is not None:
        env["KB_WORKFLOW_MAX_PARALLEL_JOBS"] = str(max_parallel_jobs)
    log = Path(tempfile.mkstemp(prefix="server-", suffix=".log", dir=log_dir)[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kblabs", "serve", "--port", str(port)],
            env=env,
            cwd=project_root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so cleanup gets everything
        )
    return proc, log, port


def children_cpu_seconds(pid: int) -> float:
    """cutime + cstime: the CPU of the children a process has reaped (shell steps)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


# --- helpers -------------------------------------------------------------------------------


def when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def ms_between(start: str | None, end: str | None) -> float | None:
    a, b = when(start), when(end)
    return (b - a).total_seconds() * 1000 if a is not None and b is not None else None


def ratio(value: float | None, base: float | None, digits: int = 1) -> float | None:
    return round(value / base, digits) if value is not None and base else None


def data_of(response: httpx.Response, status: int = 200) -> Any:
    """The `data` of an ok envelope; ValueError with the reason otherwise."""
    if response.status_code != status:
        raise ValueError(f"HTTP {response.status_code}: {response.text[:300]}")
    body = response.json()
    if not isinstance(body, dict) or body.get("ok") is not True:
        raise ValueError(f"not an ok envelope: {response.text[:300]}")
    return body["data"]


def first_step(run: dict[str, Any]) -> dict[str, Any] | None:
    for job in run.get("jobs") or []:
        for step in job.get("steps") or []:
            if step.get("section") == "main" and step.get("index") == 0:
                return step
    return None


async def enqueue(client: httpx.AsyncClient, workflow_id: str) -> str:
    response = await client.post(f"/api/v1/workflows/{workflow_id}/runs", json={})
    return data_of(response, 201)["runId"]


async def list_runs(client: httpx.AsyncClient, workflow_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        response = await client.get(
            "/api/v1/runs", params={"workflowId": workflow_id, "limit": PAGE, "offset": len(found)}
        )
        page = data_of(response)["runs"]
        found += page
        if len(page) < PAGE:
            return found


# --- throughput ----------------------------------------------------------------------------


async def throughput(
    clients: list[httpx.AsyncClient],
    watcher: httpx.AsyncClient,
    workflow_id: str,
    count: int,
    *,
    pid: int,
    deadline_s: float,
) -> dict[str, Any]:
    """Enqueue `count` runs with every client at once, wait until none is queued or
    running, read them back."""
    run_ids: list[str] = []
    post_ms: list[float] = []
    errors: list[str] = []
    issued = 0

    async def enqueuer(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < count:
            issued += 1
            sent = time.perf_counter()
            try:
                run_ids.append(await enqueue(client, workflow_id))
            except (httpx.HTTPError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            post_ms.append((time.perf_counter() - sent) * 1000)

    result: dict[str, Any] = {"workflow": workflow_id, "requested": count}
    cpu_server, cpu_children = cpu_seconds(pid), children_cpu_seconds(pid)
    cpu_client = time.process_time()
    started = time.perf_counter()
    async with asyncio.timeout(deadline_s + count):  # a stuck POST must not hang us
        await asyncio.gather(*(enqueuer(client) for client in clients))
    enqueued = time.perf_counter()
    # drain: wait until the queued + running total reaches 0 (or stops moving)
    last_total, last_change, drained = None, time.perf_counter(), False
    while True:
        try:
            response = await watcher.get(
                "/api/v1/runs", params={"status": ACTIVE, "workflowId": workflow_id, "limit": 1}
            )
            total = data_of(response)["total"]
        except (httpx.HTTPError, ValueError) as exc:
            errors.append(f"drain poll: {type(exc).__name__}: {exc}")
            total = last_total
        if total == 0:
            drained = True
            break
        if total != last_total:
            last_total, last_change = total, time.perf_counter()
        elif time.perf_counter() - last_change > deadline_s:
            break
        await asyncio.sleep(DRAIN_POLL_S)
    done = time.perf_counter()
    server_cpu = cpu_seconds(pid) - cpu_server
    children_cpu = children_cpu_seconds(pid) - cpu_children
    client_cpu = time.process_time() - cpu_client
    wall = done - started
    mine = set(run_ids)
    try:
        rows = [run for run in await list_runs(watcher, workflow_id) if run["id"] in mine]
    except (httpx.HTTPError, ValueError) as exc:
        errors.append(f"read-back: {type(exc).__name__}: {exc}")
        rows = []
    statuses: dict[str, int] = {}
    for run in rows:
        statuses[run["status"]] = statuses.get(run["status"], 0) + 1
    failed = [run for run in rows if run["status"] != "success"]
    created = [when(run["createdAt"]) for run in rows]
    finished = [when(run["finishedAt"]) for run in rows if run["finishedAt"]]
    span_s = (
        (max(finished) - min(c for c in created if c)).total_seconds()
        if created and finished and len(finished) == len(rows)
        else None
    )
    waits = [
        ms for run in rows if (ms := ms_between(run["createdAt"], run["startedAt"])) is not None
    ]
    lifetimes = [
        ms for run in rows if (ms := ms_between(run["createdAt"], run["finishedAt"])) is not None
    ]
    n = len(run_ids)
    result.update(
        {
            "enqueued": n,
            "errors": len(errors),  # failed POSTs, drain polls or read-back
            "first_error": errors[0] if errors else None,
            "drained": drained,
            "read_back": len(rows),
            "statuses": statuses,
            "not_success": len(failed) + (n - len(rows)),
            "first_failure": (
                {"id": failed[0]["id"], "status": failed[0]["status"], "error": failed[0]["error"]}
                if failed
                else None
            ),
            "server_span_s": None if span_s is None else round(span_s, 3),
            "runs_per_s": round(n / span_s, 1) if span_s else None,
            "client_wall_s": round(wall, 3),
            "runs_per_s_client_wall": round(n / wall, 1) if drained and wall else None,
            "enqueue_s": round(enqueued - started, 3),
            "enqueue_per_s": round(n / (enqueued - started), 1) if n else None,
            "post": spread(post_ms),
            "queue_wait": spread(waits),  # run startedAt - createdAt, under load
            "run_lifetime": spread(lifetimes),  # finishedAt - createdAt, under load
            "server_cpu_pct": round(100 * server_cpu / wall, 1),
            "server_cpu_ms_per_run": round(1000 * server_cpu / n, 3) if n else None,
            "children_cpu_ms_per_run": round(1000 * children_cpu / n, 3) if n else None,
            "client_cpu_pct": round(100 * client_cpu / wall, 1),
        }
    )
    return result


# --- start latency -------------------------------------------------------------------------


async def latency(
    client: httpx.AsyncClient,
    workflow_id: str,
    count: int,
    *,
    poll_s: float,
    pid: int,
    deadline_s: float,
) -> dict[str, Any]:
    """`count` runs one after another; each read until terminal, then measured from its
    own timestamps."""
    start_ms: list[float] = []
    claim_ms: list[float] = []
    total_ms: list[float] = []
    client_ms: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    first_failure: dict[str, Any] | None = None
    cpu_server, cpu_children = cpu_seconds(pid), children_cpu_seconds(pid)
    started = time.perf_counter()
    for _ in range(count):
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(deadline_s):
                run_id = await enqueue(client, workflow_id)
                while True:
                    run = data_of(await client.get(f"/api/v1/runs/{run_id}"))["run"]
                    if run["status"] in TERMINAL:
                        break
                    await asyncio.sleep(poll_s)
        except (httpx.HTTPError, ValueError, TimeoutError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        client_ms.append((time.perf_counter() - sent) * 1000)
        statuses[run["status"]] = statuses.get(run["status"], 0) + 1
        if run["status"] != "success" and first_failure is None:
            first_failure = {"id": run_id, "status": run["status"], "error": run["error"]}
        step = first_step(run)
        if step is not None and (ms := ms_between(run["createdAt"], step["startedAt"])) is not None:
            start_ms.append(ms)
        if (ms := ms_between(run["createdAt"], run["startedAt"])) is not None:
            claim_ms.append(ms)
        if (ms := ms_between(run["createdAt"], run["finishedAt"])) is not None:
            total_ms.append(ms)
    wall = time.perf_counter() - started
    done = sum(statuses.values())
    return {
        "workflow": workflow_id,
        "runs": count,
        "statuses": statuses,
        "not_success": count - statuses.get("success", 0),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "first_failure": first_failure,
        "start_latency": spread(start_ms),  # first step startedAt - run createdAt
        "claim_latency": spread(claim_ms),  # run startedAt - createdAt
        "run_duration": spread(total_ms),  # run finishedAt - createdAt
        "client_round_trip": spread(client_ms),  # POST sent → terminal seen (with polls)
        "server_cpu_ms_per_run": round(1000 * (cpu_seconds(pid) - cpu_server) / done, 3)
        if done
        else None,
        "children_cpu_ms_per_run": round(
            1000 * (children_cpu_seconds(pid) - cpu_children) / done, 3
        )
        if done
        else None,
        "seconds": round(wall, 3),
    }


# --- the run -------------------------------------------------------------------------------


async def measure(
    args: argparse.Namespace, result: dict[str, Any], pid: int, port: int, token: str
) -> None:
    def make_client() -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=httpx.Timeout(30.0),
            trust_env=False,
        )

    common = {"pid": pid, "deadline_s": args.deadline}
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(make_client()) for _ in range(args.clients)]
        watcher = await stack.enter_async_context(make_client())
        try:
            workflows = data_of(await watcher.get("/api/v1/workflows"))["workflows"]
            result["catalog"] = {
                w.get("id"): w.get("status") for w in workflows if w.get("id") in WORKFLOW_FILES
            }
        except (httpx.HTTPError, ValueError) as exc:
            result["catalog_error"] = f"{type(exc).__name__}: {exc}"
        # warm-up (not recorded): connections, the first run of each kind, the first shell
        for workflow_id in WORKFLOW_FILES:
            warm = await throughput(clients, watcher, workflow_id, WARMUP_RUNS, **common)
            if warm["not_success"] or warm["errors"]:
                result.setdefault("warmup_problems", {})[workflow_id] = {
                    "statuses": warm["statuses"],
                    "first_error": warm["first_error"],
                    "first_failure": warm["first_failure"],
                }
        result["throughput"], result["latency"] = {}, {}
        for workflow_id in WORKFLOW_FILES:
            if not args.json:
                print(f"{workflow_id}: {args.runs} runs, {args.clients} clients", file=sys.stderr)
            result["throughput"][workflow_id] = await throughput(
                clients, watcher, workflow_id, args.runs, **common
            )
            if not args.json:
                print(f"{workflow_id}: {args.latency_runs} sequential runs", file=sys.stderr)
            result["latency"][workflow_id] = await latency(
                watcher, workflow_id, args.latency_runs, poll_s=args.poll_ms / 1000, **common
            )
        with contextlib.suppress(httpx.HTTPError, ValueError):
            result["stats"] = data_of(await watcher.get("/api/v1/stats"))
    noop_rate = result["throughput"][NOOP_ID]["runs_per_s"]
    noop_p50 = result["latency"][NOOP_ID]["start_latency"]["p50_ms"]
    result["goals"] = [
        {
            "description": f"noop runs/s >= {GOAL_RUNS_PER_S:g}",
            "value": noop_rate,
            "pass": noop_rate is not None and noop_rate >= GOAL_RUNS_PER_S,
        },
        {
            "description": f"noop enqueue→first-step-start p50 < {GOAL_P50_MS:g} ms",
            "value": noop_p50,
            "pass": noop_p50 is not None and noop_p50 < GOAL_P50_MS,
        },
    ]


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    jobs = args.max_parallel_jobs
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "settings": {
            "runs": args.runs,
            "latency_runs": args.latency_runs,
            "clients": args.clients,
            "warmup_runs": WARMUP_RUNS,
            "poll_ms": args.poll_ms,
            "baseline_seconds": args.baseline_seconds,
            "max_parallel_jobs": jobs if jobs is not None else default_max_parallel_jobs(),
            "max_parallel_jobs_source": "--max-parallel-jobs" if jobs is not None else "default",
        },
    }
    with (
        tempfile.TemporaryDirectory(prefix="kblabs-workflow-bench-") as tmp,
        tempfile.TemporaryDirectory(prefix="kblabs-workflow-bench-logs-") as logs,
    ):
        root = Path(tmp)
        (root / ".kb").mkdir()
        say(f"baseline: raw SQLite commits for {args.baseline_seconds:g} s")
        result["baseline"] = {
            "before": await asyncio.to_thread(
                sqlite_commit_rate, root / ".kb" / "baseline-before.db", args.baseline_seconds
            )
        }
        result["workflow_files"] = write_workflows(root)
        say("starting the server")
        proc, log, port = start_server(root, Path(logs), jobs)
        try:
            token, ready_s = await wait_ready(
                proc, port, log, root / ".kb" / "admin.token", args.deadline
            )
            result["server"] = {"pid": proc.pid, "port": port, "ready_s": round(ready_s, 3)}
            try:
                await measure(args, result, proc.pid, port, token)
            except TimeoutError:
                result["error"] = (
                    f"a phase did not finish within its deadline ({args.deadline:g} s)"
                )
            except Exception as exc:
                result["error"] = f"{type(exc).__name__}: {exc}"
            if proc.poll() is not None:
                result["error"] = result.get("error") or "the server exited during the run"
        finally:
            shutdown: dict[str, Any] = {}
            started = time.perf_counter()
            shutdown["exit_code"] = stop_server(proc, args.deadline)
            shutdown["stop_s"] = round(time.perf_counter() - started, 3)
            lines = read_lines(log)
            shutdown["server_log_lines"] = len(lines)
            if lines:
                shutdown["server_log_tail"] = lines[-20:]
            result["shutdown"] = shutdown
        say(f"baseline again: raw SQLite commits for {args.baseline_seconds:g} s")
        result["baseline"]["after"] = await asyncio.to_thread(
            sqlite_commit_rate, root / ".kb" / "baseline-after.db", args.baseline_seconds
        )
    rates = [b["commits_per_s"] for b in result["baseline"].values()]
    base = result["baseline"]["commits_per_s"] = round(statistics.mean(rates), 1)
    result["commits_per_run"] = {
        w: ratio(base, t["runs_per_s"]) for w, t in (result.get("throughput") or {}).items()
    }
    return result


# --- the report ----------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        f"kblabs workflow bench: Python {result['python']}, {result['cpus']} CPU(s); "
        f"workflow.maxParallelJobs {s['max_parallel_jobs']} ({s['max_parallel_jobs_source']})"
    )
    b = result["baseline"]
    first = b["before"]
    print(
        f"baseline: raw SQLite (stdlib sqlite3 {first['sqlite_version']}, WAL, synchronous "
        f"{first['synchronous']}), single-row INSERT + COMMIT for {first['seconds']:.1f} s, "
        f"before the server and after it stopped: {b['commits_per_s']:,.0f} commits/s"
    )
    for when_, label in (("before", "before"), ("after", "after ")):
        if when_ in b:
            m = b[when_]
            print(
                f"  {label}: {m['commits_per_s']:,.0f} commits/s ({m['us_per_commit']:.1f} us "
                f"each, CPU {m['cpu_pct']:.0f}%)"
            )
    server = result.get("server", {})
    print(f"server ready in {fmt(server.get('ready_s'), '.3f')} s")
    if result.get("catalog_error"):
        print(f"  catalog: {result['catalog_error']}")
    elif result.get("catalog") is not None:
        print(f"  catalog: {', '.join(f'{k} {v}' for k, v in result['catalog'].items())}")
    for workflow_id, problem in (result.get("warmup_problems") or {}).items():
        print(f"  warm-up problems in {workflow_id}: {problem}")
    throughput = result.get("throughput") or {}
    if throughput:
        print()
        print(
            f"throughput: {s['runs']} runs per workflow enqueued by {s['clients']} keep-alive "
            "clients while the workers run them; runs/s over the server's timestamps "
            "(first createdAt → last finishedAt)"
        )
        print(
            f"  {'workflow':<22}{'runs/s':>8}{'wall r/s':>10}{'enq/s':>8}{'POST p50':>10}"
            f"{'wait p50':>10}{'wait p99':>10}{'srv ms/run':>12}{'sh ms/run':>11}"
            f"{'srv CPU%':>10}{'cli CPU%':>10}{'failed':>8}"
        )
        for workflow_id, t in throughput.items():
            print(
                f"  {LABELS[workflow_id]:<22}{fmt(t['runs_per_s'], ',.1f'):>8}"
                f"{fmt(t['runs_per_s_client_wall'], ',.1f'):>10}"
                f"{fmt(t['enqueue_per_s'], ',.0f'):>8}{fmt(t['post']['p50_ms'], '.1f'):>10}"
                f"{fmt(t['queue_wait']['p50_ms'], ',.0f'):>10}"
                f"{fmt(t['queue_wait']['p99_ms'], ',.0f'):>10}"
                f"{fmt(t['server_cpu_ms_per_run'], '.2f'):>12}"
                f"{fmt(t['children_cpu_ms_per_run'], '.2f'):>11}"
                f"{fmt(t['server_cpu_pct'], '.0f'):>10}{fmt(t['client_cpu_pct'], '.0f'):>10}"
                f"{t['not_success']:>8}"
            )
            if not t["drained"]:
                print("    NOT DRAINED: runs still queued or running after the deadline")
            if t["errors"]:
                print(f"    {t['errors']} error(s); first: {t['first_error']}")
            if t["first_failure"]:
                print(f"    statuses {t['statuses']}; first failure: {t['first_failure']}")
        print(
            "  (wall r/s: runs / client wall time incl. the 50 ms drain poll; wait: run "
            "startedAt - createdAt under load, ms; srv/sh ms/run: CPU of the server process "
            "and of its reaped children, the shell steps)"
        )
    latency = result.get("latency") or {}
    if latency:
        print()
        print(
            f"start latency: {s['latency_runs']} runs per workflow, one at a time (each read "
            "until terminal); server timestamps, ms"
        )
        print(
            f"  {'workflow':<22}{'start p50':>10}{'start p99':>10}{'claim p50':>10}"
            f"{'run p50':>9}{'run p99':>9}{'client p50':>11}{'srv ms/run':>12}{'failed':>8}"
        )
        for workflow_id, lat in latency.items():
            print(
                f"  {LABELS[workflow_id]:<22}{fmt(lat['start_latency']['p50_ms'], '.2f'):>10}"
                f"{fmt(lat['start_latency']['p99_ms'], '.2f'):>10}"
                f"{fmt(lat['claim_latency']['p50_ms'], '.2f'):>10}"
                f"{fmt(lat['run_duration']['p50_ms'], '.1f'):>9}"
                f"{fmt(lat['run_duration']['p99_ms'], '.1f'):>9}"
                f"{fmt(lat['client_round_trip']['p50_ms'], '.1f'):>11}"
                f"{fmt(lat['server_cpu_ms_per_run'], '.2f'):>12}{lat['not_success']:>8}"
            )
            if lat["errors"]:
                print(f"    {lat['errors']} error(s); first: {lat['first_error']}")
            if lat["first_failure"]:
                print(f"    statuses {lat['statuses']}; first failure: {lat['first_failure']}")
        print(
            "  (start: first step startedAt - run createdAt; claim: run startedAt - createdAt; "
            f"run: finishedAt - createdAt; client: POST sent → terminal seen, polled every "
            f"{s['poll_ms']:g} ms)"
        )
    if result.get("error"):
        print(f"ERROR: {result['error']}")
    per_run = result.get("commits_per_run")
    if per_run:
        print()
        print(
            f"against the baseline ({b['commits_per_s']:,.0f} raw SQLite commits/s): "
            + "; ".join(
                f"{LABELS[w]} {fmt(throughput[w]['runs_per_s'], ',.1f')} runs/s = "
                f"{fmt(value, ',.0f')} commits per run"
                for w, value in per_run.items()
            )
        )
        for goal in result["goals"]:
            value = goal["value"]
            print(
                f"goal (informational): {goal['description']}: {fmt(value, ',.2f')} "
                f"{'PASS' if goal['pass'] else 'FAIL'}"
            )
    shutdown = result.get("shutdown", {})
    print(
        f"shutdown: server exit code on SIGTERM {shutdown.get('exit_code')} "
        f"after {fmt(shutdown.get('stop_s'), '.3f')} s; "
        f"{shutdown.get('server_log_lines', 0)} server log line(s)"
    )
    print_log_tail(shutdown.get("server_log_tail", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500, help="runs per throughput phase (500)")
    parser.add_argument(
        "--latency-runs", type=int, default=100, help="sequential runs per latency phase (100)"
    )
    parser.add_argument("--clients", type=int, default=4, help="enqueueing HTTP clients (4)")
    parser.add_argument(
        "--max-parallel-jobs",
        type=int,
        default=None,
        help="KB_WORKFLOW_MAX_PARALLEL_JOBS for the server (default: the server's own, 4)",
    )
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=20.0,
        help="latency phase: pause between reads of the run (20 ms)",
    )
    parser.add_argument(
        "--baseline-seconds", type=float, default=2.0, help="SQLite commit loop length (2)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=60.0,
        help="seconds any one wait may take, or a drain may go without progress (60)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    for name in ("runs", "latency_runs", "clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_parallel_jobs is not None and not 1 <= args.max_parallel_jobs <= 64:
        parser.error("--max-parallel-jobs must be between 1 and 64")
    if args.poll_ms <= 0:
        parser.error("--poll-ms must be positive")
    if args.baseline_seconds <= 0:
        parser.error("--baseline-seconds must be positive")
    try:
        result = asyncio.run(run_bench(args))
    except ServerFailed as exc:
        if args.json:
            print(json.dumps({"error": exc.reason, "output": exc.output}, indent=2))
        print(f"server failed to start: {exc.reason}", file=sys.stderr)
        print("its output:", file=sys.stderr)
        print(exc.output or "(no output)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
