#!/usr/bin/env python
"""Plugin route bench: in-process plugin REST routes against /api/v1/health.

Measured in one run, against one real `python -m kblabs serve --port P` (fresh temp
project root, KB_RATE_LIMITS_ENABLED=false, KB_LOG_LEVEL=warning):

1. Setup, before the server starts: `examples/plugins/kb-hello` is copied to
   `<project>/plugins/kb-hello` and linked with `python -m kblabs plugin link
   plugins/kb-hello` (cwd and KB_PROJECT_ROOT = the temp project), so the server
   mounts its routes at start.
2. Load: W concurrent workers, each with its own keep-alive httpx.AsyncClient carrying
   the admin bearer (`<project>/.kb/admin.token`), for a fixed duration per phase,
   alternated over a few rounds:
   - `GET /api/v1/plugins/@kb-labs/hello/greet?name=x`: an async handler run in
     process (`kb_hello.handlers:greet`);
   - `POST /api/v1/plugins/@kb-labs/hello/sum` with `{"a": 1, "b": 2}`: an async
     handler whose input and output are validated against the manifest's JSON schemas;
   - `GET /api/v1/health`: the baseline, behind the same bearer check.
   Every answer is checked (status 200 and the expected body: the `data` of the
   `{"ok": true, ...}` envelope, or `"status": "ok"` for health); anything else counts
   as an error. Reported: req/s, latency p50/p99, errors, the CPU share of the server
   process and of this client process, and the server's CPU time per request.
3. Subprocess execution of plugin handlers is not built yet, so its figures (route
   req/s, call overhead p50/p99) are reported as not measured.

The figures that matter are the ratios to /api/v1/health (req/s, p50, p99, server CPU
per request), since absolute rates depend on the machine and its load; the issue's goal
(in-process plugin route >= 0.7x the req/s of /api/v1/health) is printed as an
informational PASS/FAIL line. The client shares the machine: when it is saturated
(client CPU near 100%) it caps every req/s figure, /health included, and pulls the
req/s ratios towards 1; server CPU per request does not depend on the client. The exit
code is 1 only when the server fails to start (its output is shown), 0 otherwise, even
when the link step or some requests failed (they are reported).

Usage: python bench/plugins.py [--workers 16] [--duration 5] [--rounds 2] [--json]

Only the standard library, httpx and kblabs (for its CLI and server); Linux (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _server import (
    ServerFailed,
    base_environ,
    cpu_seconds,
    free_port,
    read_lines,
    stop_server,
    wait_ready,
)

try:
    import sniffio  # noqa: F401
except ImportError:
    # httpcore 1.0.x imports sniffio inside current_async_library() on every request;
    # anyio >= 4.11 no longer installs it, and a failed import is never cached, so each
    # request paid a full sys.path search (~25% of this client's CPU). Marking it absent
    # makes that import fail at once; httpcore then assumes asyncio, as it would anyway.
    # (encode/httpcore discussion #1102, PR #1103.)
    sys.modules["sniffio"] = None  # type: ignore[assignment]

GOAL_RATIO = 0.7  # in-process plugin route req/s vs /api/v1/health (the issue's goal)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN = REPO_ROOT / "examples" / "plugins" / "kb-hello"
PLUGIN_DIR = "plugins/kb-hello"  # relative to the temp project root
PLUGIN_ID = "@kb-labs/hello"
PLUGIN_BASE = f"/api/v1/plugins/{PLUGIN_ID}"
GREET_PATH = f"{PLUGIN_BASE}/greet"
SUM_PATH = f"{PLUGIN_BASE}/sum"
HEALTH_PATH = "/api/v1/health"
SUM_BODY = {"a": 1, "b": 2}
EXPECTED_GREET = {"greeting": "hello x", "plugin": PLUGIN_ID, "tenant": "default"}
EXPECTED_SUM = {"sum": 3}

FIRST_START_NOTICES = ("generated a JWT signing secret", "first start: admin token written")
# Variables that would reach into the kblabs config (kblabs/config/loader.py and
# discovery.py) or make the server talk to systemd; the children run without them.
SUBPROCESS_NOT_MEASURED = (
    "subprocess execution: not measured (route req/s, call overhead p50/p99): "
    "the subprocess executor is not built yet"
)


# --- the server ------------------------------------------------------------------------


def link_plugin(project_root: Path, deadline_s: float) -> dict[str, Any]:
    """Copy the example plugin into the project and `plugin link` it (the server is not
    running yet, so it mounts the routes at start). What happened, as a dict."""
    target = project_root / PLUGIN_DIR
    step: dict[str, Any] = {"source": str(EXAMPLE_PLUGIN), "path": PLUGIN_DIR}
    try:
        shutil.copytree(
            EXAMPLE_PLUGIN, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    except OSError as exc:
        step["error"] = f"copy failed: {type(exc).__name__}: {exc}"
        return step
    env = base_environ()
    env["KB_PROJECT_ROOT"] = str(project_root)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kblabs", "plugin", "link", PLUGIN_DIR],
            env=env,
            cwd=project_root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=deadline_s,
        )
    except subprocess.TimeoutExpired:
        step["error"] = f"`plugin link` did not finish within {deadline_s:g} s"
        return step
    step["seconds"] = round(time.perf_counter() - started, 3)
    step["exit_code"] = done.returncode
    output = (done.stdout + done.stderr).strip()
    step["output"] = output
    if done.returncode != 0:
        step["error"] = f"`plugin link` exited with code {done.returncode}"
    return step


def start_server(project_root: Path, log_dir: Path) -> tuple[subprocess.Popen, Path, int]:
    """Spawn `python -m kblabs serve` on a free port; the caller waits for ready."""
    port = free_port()
    env = base_environ()
    env["KB_PROJECT_ROOT"] = str(project_root)
    env["KB_RATE_LIMITS_ENABLED"] = "false"
    env["KB_LOG_LEVEL"] = "warning"
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


# --- load ------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_cpu_per_request(self) -> float:
        return self.server_cpu_s / self.requests if self.requests else 0.0

    def percentiles(self) -> tuple[float | None, float | None]:
        lat = sorted(self.latencies_ms)
        if len(lat) >= 2:
            cuts = statistics.quantiles(lat, n=100, method="inclusive")
            return cuts[49], cuts[98]
        return (lat[0], lat[0]) if lat else (None, None)

    def as_dict(self) -> dict[str, Any]:
        p50, p99 = self.percentiles()
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "req_per_s": round(self.rps, 1),
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
            "server_cpu_pct": round(100 * self.server_cpu_s / self.seconds, 1)
            if self.seconds
            else None,
            "client_cpu_pct": round(100 * self.client_cpu_s / self.seconds, 1)
            if self.seconds
            else None,
            "server_cpu_us_per_req": round(1e6 * self.server_cpu_per_request, 1)
            if self.requests
            else None,
            "statuses": self.statuses,
            **({"first_error": self.first_error} if self.first_error else {}),
        }


RequestMaker = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
# None when the answer is right, else what is wrong with it
Checker = Callable[[httpx.Response], str | None]


def check_envelope(expected: dict[str, Any]) -> Checker:
    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:300]}"
        try:
            body = response.json()
        except ValueError:
            return f"not JSON: {response.text[:300]}"
        if not isinstance(body, dict) or body.get("ok") is not True:
            return f"not an ok envelope: {response.text[:300]}"
        if body.get("data") != expected:
            return f"unexpected data {body.get('data')!r}, wanted {expected!r}"
        return None

    return check


def check_health(response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:300]}"
    if not isinstance(body, dict) or body.get("status") != "ok":
        return f"unexpected health body: {response.text[:300]}"
    return None


async def drive(
    clients: list[httpx.AsyncClient],
    phase: Phase,
    request: RequestMaker,
    check: Checker,
    *,
    duration_s: float,
    pid: int,
    deadline_s: float,
) -> None:
    """One task per client issues requests until `duration_s` passed; every answer goes
    through `check`. Accumulates into `phase`."""
    stop_at = time.perf_counter() + duration_s

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            try:
                response = await request(client)
            except httpx.HTTPError as exc:
                phase.errors += 1
                phase.statuses["exception"] = phase.statuses.get("exception", 0) + 1
                phase.first_error = phase.first_error or f"{type(exc).__name__}: {exc}"
                continue
            elapsed_ms = (time.perf_counter() - sent) * 1000
            status = str(response.status_code)
            phase.statuses[status] = phase.statuses.get(status, 0) + 1
            phase.requests += 1
            phase.latencies_ms.append(elapsed_ms)
            problem = check(response)
            if problem is not None:
                phase.errors += 1
                phase.first_error = phase.first_error or problem

    cpu_server = cpu_seconds(pid)
    cpu_client = time.process_time()
    started = time.perf_counter()
    async with asyncio.timeout(duration_s + deadline_s):
        await asyncio.gather(*(worker(client) for client in clients))
    phase.seconds += time.perf_counter() - started
    phase.server_cpu_s += cpu_seconds(pid) - cpu_server
    phase.client_cpu_s += time.process_time() - cpu_client


def ratio(value: float | None, base: float | None, digits: int = 3) -> float | None:
    return round(value / base, digits) if value is not None and base else None


async def measure(
    args: argparse.Namespace, result: dict[str, Any], pid: int, port: int, token: str
) -> None:
    async def greet(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(GREET_PATH, params={"name": "x"})

    async def add(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(SUM_PATH, json=SUM_BODY)

    async def health(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(HEALTH_PATH)

    phases = {"greet": Phase("greet"), "sum": Phase("sum"), "health": Phase("health")}
    plan: list[tuple[Phase, RequestMaker, Checker]] = [
        (phases["greet"], greet, check_envelope(EXPECTED_GREET)),
        (phases["sum"], add, check_envelope(EXPECTED_SUM)),
        (phases["health"], health, check_health),
    ]
    # One client (one keep-alive connection) per worker: httpcore's pool walks all of
    # its connections on every request, so one shared 16-connection pool costs the
    # client about twice the CPU per request.
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}",
                    headers={"Authorization": f"Bearer {token}"},
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    timeout=httpx.Timeout(10.0),
                    trust_env=False,
                )
            )
            for _ in range(args.workers)
        ]
        common = {"pid": pid, "deadline_s": args.deadline}
        # Warm-up (not recorded): open the connections and touch each route (the first
        # plugin call imports the handler module).
        warm = Phase("warm-up")
        for _, request, check in plan:
            await drive(clients, warm, request, check, duration_s=args.warmup, **common)
        if warm.errors:
            result["warmup_errors"] = warm.errors
            result["warmup_first_error"] = warm.first_error
        for _ in range(args.rounds):
            for phase, request, check in plan:
                await drive(clients, phase, request, check, duration_s=args.duration, **common)
    result["phases"] = {name: phase.as_dict() for name, phase in phases.items()}
    base = result["phases"]["health"]
    ratios: dict[str, Any] = {}
    for name in ("greet", "sum"):
        p = result["phases"][name]
        ratios[name] = {
            "req_per_s_vs_health": ratio(p["req_per_s"], base["req_per_s"]),
            "p50_vs_health": ratio(p["p50_ms"], base["p50_ms"]),
            "p99_vs_health": ratio(p["p99_ms"], base["p99_ms"]),
            # server CPU per request, plugin route / health (> 1: costlier)
            "server_cpu_per_request_vs_health": ratio(
                p["server_cpu_us_per_req"], base["server_cpu_us_per_req"]
            ),
        }
    result["ratios"] = ratios
    greet_ratio = ratios["greet"]["req_per_s_vs_health"]
    result["goal"] = {
        "description": (
            f"in-process plugin route (GET greet) >= {GOAL_RATIO}x /api/v1/health req/s"
        ),
        "ratio": greet_ratio,
        "pass": greet_ratio is not None and greet_ratio >= GOAL_RATIO,
    }


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "settings": {
            "workers": args.workers,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
        },
        "subprocess": {
            "measured": False,
            "reason": "the subprocess executor is not built yet",
            "figures": ["route req/s", "call overhead p50/p99"],
        },
    }
    with (
        tempfile.TemporaryDirectory(prefix="kblabs-plugins-bench-") as tmp,
        tempfile.TemporaryDirectory(prefix="kblabs-plugins-bench-logs-") as logs,
    ):
        root = Path(tmp)
        say(f"linking {PLUGIN_ID} from {EXAMPLE_PLUGIN}")
        result["link"] = await asyncio.to_thread(link_plugin, root, args.deadline)
        say("starting the server")
        proc, log, port = start_server(root, Path(logs))
        try:
            token, ready_s = await wait_ready(
                proc, port, log, root / ".kb" / "admin.token", args.deadline
            )
            result["server"] = {"pid": proc.pid, "port": port, "ready_s": round(ready_s, 3)}
            say(
                f"load: {args.workers} workers, {args.rounds} round(s) of "
                f"{args.duration:g} s per phase"
            )
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
    return result


# --- the report ------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        f"kblabs plugin route bench: Python {result['python']}, {result['cpus']} CPU(s); "
        f"{PLUGIN_ID} from examples/plugins/kb-hello"
    )
    link = result.get("link", {})
    if link.get("error"):
        print(f"ERROR linking the plugin: {link['error']}")
        if link.get("output"):
            print(f"  | {link['output']}")
    else:
        print(f"linked {PLUGIN_DIR} in {fmt(link.get('seconds'), '.2f')} s (before the start)")
    server = result.get("server", {})
    print(f"server ready in {fmt(server.get('ready_s'), '.3f')} s")
    print()
    print(
        f"over HTTP, in-process handlers: {s['workers']} keep-alive workers, "
        f"{s['rounds']} x {s['duration_s']:g} s per phase (alternated)"
    )
    print(
        f"  {'request':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'srv CPU%':>10}{'srv us/req':>12}{'cli CPU%':>10}{'errors':>8}"
    )
    routes = {
        "greet": "GET  …/hello/greet?name=x",
        "sum": "POST …/hello/sum (schemas)",
        "health": "GET  /api/v1/health",
    }
    for name, p in (result.get("phases") or {}).items():
        print(
            f"  {routes[name]:<34}{fmt(p['req_per_s'], ',.0f'):>9}"
            f"{fmt(p['p50_ms'], '.2f'):>9}{fmt(p['p99_ms'], '.2f'):>9}"
            f"{fmt(p['server_cpu_pct'], '.0f'):>10}{fmt(p['server_cpu_us_per_req'], '.0f'):>12}"
            f"{fmt(p['client_cpu_pct'], '.0f'):>10}{p['errors']:>8}"
        )
        if p.get("first_error"):
            print(f"    first error: {p['first_error']}")
    if result.get("warmup_errors"):
        print(f"  warm-up errors: {result['warmup_errors']} ({result['warmup_first_error']})")
    print(f"  {SUBPROCESS_NOT_MEASURED}")
    if result.get("error"):
        print(f"ERROR: {result['error']}")
    ratios = result.get("ratios")
    if ratios:
        print()
        print("ratios to /api/v1/health:")
        for name, label in (("greet", "greet"), ("sum", "sum (schemas)")):
            r = ratios[name]
            print(
                f"  {label:<14} req/s {fmt(r['req_per_s_vs_health'], '.2f')}x, "
                f"p50 {fmt(r['p50_vs_health'], '.2f')}x, p99 {fmt(r['p99_vs_health'], '.2f')}x, "
                f"server CPU per request {fmt(r['server_cpu_per_request_vs_health'], '.2f')}x"
            )
        goal = result["goal"]
        print(
            f"goal (informational): {goal['description']}: "
            f"{fmt(goal['ratio'], '.2f')}x {'PASS' if goal['pass'] else 'FAIL'}"
        )
    shutdown = result.get("shutdown", {})
    print(
        f"shutdown: server exit code on SIGTERM {shutdown.get('exit_code')} "
        f"after {fmt(shutdown.get('stop_s'), '.3f')} s; "
        f"{shutdown.get('server_log_lines', 0)} server log line(s)"
    )
    tail = shutdown.get("server_log_tail", [])
    notices = [line for line in tail if any(known in line for known in FIRST_START_NOTICES)]
    if notices:
        print(f"  ({len(notices)} of them the usual first-start notices: JWT secret, admin token)")
    for line in tail:
        if line not in notices:
            print(f"  | {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=16, help="HTTP workers (16)")
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per phase per round (5)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds, phases alternated (2)")
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="seconds of warm-up per route (0.5)"
    )
    parser.add_argument(
        "--deadline", type=float, default=60.0, help="seconds any one wait may take (60)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    for name in ("workers", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if args.warmup < 0:
        parser.error("--warmup cannot be negative")
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
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
