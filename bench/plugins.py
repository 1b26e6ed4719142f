#!/usr/bin/env python
"""Plugin route bench: plugin REST routes, in process and in a subprocess worker,
against /api/v1/health.

Measured in one run, against one real `python -m kblabs serve --port P` (fresh temp
project root, KB_RATE_LIMITS_ENABLED=false, KB_LOG_LEVEL=warning):

1. Setup, before the server starts: `examples/plugins/kb-hello` is copied to
   `<project>/plugins/kb-hello` and linked with `python -m kblabs plugin link
   plugins/kb-hello` (cwd and KB_PROJECT_ROOT = the temp project); a second copy goes
   to `<project>/plugins/kb-hello-sub` with the id `@kb-labs/hello-sub` in its
   kb.plugin.json (the Python package stays `kb_hello`) and is linked the same way; and
   `<project>/kb.config.json` is written as `{"platform": {"execution": {"plugins":
   {"@kb-labs/hello-sub": "subprocess"}, "warmWorkers": N}}}`, so the server mounts
   both at start and runs every handler of the second one in a single-use
   `kblabs.plugins.worker` process (N of them booted ahead of need).
2. Load: W concurrent workers, each with its own keep-alive httpx.AsyncClient carrying
   the admin bearer (`<project>/.kb/admin.token`), for a fixed duration per phase,
   alternated over a few rounds:
   - `GET /api/v1/plugins/@kb-labs/hello/greet?name=x`: an async handler run in
     process (`kb_hello.handlers:greet`);
   - `POST /api/v1/plugins/@kb-labs/hello/sum` with `{"a": 1, "b": 2}`: an async
     handler whose input and output are validated against the manifest's JSON schemas;
   - `GET /api/v1/plugins/@kb-labs/hello-sub/greet?name=x`: the same handler, run in
     a subprocess worker (one fresh process per call, so process start bounds it);
     after this phase the bench pauses 1 s so the warm pool refills outside the next
     phase;
   - `GET /api/v1/health`: the baseline, behind the same bearer check.
   Every answer is checked (status 200 and the expected body: the `data` of the
   `{"ok": true, ...}` envelope, with the plugin id the handler saw, or `"status":
   "ok"` for health); anything else counts as an error. Reported: req/s, latency
   p50/p99, errors, the CPU share of the server process and of this client process,
   the server's CPU time per request, and the CPU time of the server's reaped child
   processes per request (the subprocess workers; a worker's CPU is counted when the
   server reaps it, so a phase may carry the boot of up to N workers spawned before it).
3. Sequential: one client, one request at a time, S requests each of the in-process
   greet and the subprocess greet, interleaved (in-process, subprocess, in-process, ...),
   right after the load rounds. The subprocess call overhead is the p50 (p99) latency
   of the subprocess greet minus the p50 (p99) of the in-process greet: the per-call
   cost, without queueing behind other requests. Back to back, a call may find the
   warm pool empty (its refill boots one worker at a time) and then waits for a worker
   of its own to start, which is part of what a client sees.

The figures that matter are the ratios to /api/v1/health (req/s, p50, p99, server CPU
per request), since absolute rates depend on the machine and its load; the issue's goal
(in-process plugin route >= 0.7x the req/s of /api/v1/health) is printed as an
informational PASS/FAIL line. The client shares the machine: when it is saturated
(client CPU near 100%) it caps every req/s figure, /health included, and pulls the
req/s ratios towards 1; server CPU per request does not depend on the client. The exit
code is 1 only when the server fails to start (its output is shown), 0 otherwise, even
when a setup step or some requests failed (they are reported).

Usage: python bench/plugins.py [--workers 16] [--duration 5] [--rounds 2]
       [--warm-workers 4] [--sequential 200] [--json]

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
    print_log_tail,
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
# the second copy, run in subprocess workers (kb.config.json platform.execution.plugins)
SUB_PLUGIN_DIR = "plugins/kb-hello-sub"
SUB_PLUGIN_ID = "@kb-labs/hello-sub"
SUB_GREET_PATH = f"/api/v1/plugins/{SUB_PLUGIN_ID}/greet"
HEALTH_PATH = "/api/v1/health"
SUM_BODY = {"a": 1, "b": 2}
EXPECTED_GREET = {"greeting": "hello x", "plugin": PLUGIN_ID, "tenant": "default"}
EXPECTED_SUB_GREET = {"greeting": "hello x", "plugin": SUB_PLUGIN_ID, "tenant": "default"}
EXPECTED_SUM = {"sum": 3}
SUBPROCESS_SETTLE_S = 1.0  # pause after each subprocess phase: the warm pool refills


# --- the server ------------------------------------------------------------------------


def link_plugin(
    project_root: Path, deadline_s: float, folder: str, plugin_id: str
) -> dict[str, Any]:
    """Copy the example plugin into the project as `folder`, give it the id `plugin_id`
    (kb.plugin.json) and `plugin link` it (the server is not running yet, so it mounts
    the routes at start). What happened, as a dict."""
    target = project_root / folder
    step: dict[str, Any] = {"source": str(EXAMPLE_PLUGIN), "path": folder, "id": plugin_id}
    try:
        shutil.copytree(
            EXAMPLE_PLUGIN, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        manifest_file = target / "kb.plugin.json"
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("id") != plugin_id:
            manifest["id"] = plugin_id
            manifest_file.write_text(json.dumps(manifest, indent=2) + "\n")
    except (OSError, ValueError) as exc:
        step["error"] = f"copy failed: {type(exc).__name__}: {exc}"
        return step
    env = base_environ()
    env["KB_PROJECT_ROOT"] = str(project_root)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kblabs", "plugin", "link", folder],
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


def write_config(project_root: Path, warm_workers: int) -> dict[str, Any]:
    """`<project>/kb.config.json`: the second plugin in subprocess workers, N warm."""
    config = {
        "platform": {
            "execution": {
                "plugins": {SUB_PLUGIN_ID: "subprocess"},
                "warmWorkers": warm_workers,
            }
        }
    }
    (project_root / "kb.config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def children_cpu_seconds(pid: int) -> float:
    """cutime + cstime of a process, in seconds: the CPU of the children it has reaped
    (here the subprocess workers, each waited for when its call ends)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # after the command: state is fields[0], so cutime (16) and cstime (17) are 13 and 14
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


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
    children_cpu_s: float = 0.0  # reaped child processes of the server (the workers)
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
            # CPU of the server's reaped children (subprocess workers) per request
            "worker_cpu_us_per_req": round(1e6 * self.children_cpu_s / self.requests, 1)
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
    cpu_children = children_cpu_seconds(pid)
    cpu_client = time.process_time()
    started = time.perf_counter()
    async with asyncio.timeout(duration_s + deadline_s):
        await asyncio.gather(*(worker(client) for client in clients))
    phase.seconds += time.perf_counter() - started
    phase.server_cpu_s += cpu_seconds(pid) - cpu_server
    phase.children_cpu_s += children_cpu_seconds(pid) - cpu_children
    phase.client_cpu_s += time.process_time() - cpu_client


async def sequential(
    client: httpx.AsyncClient,
    pairs: list[tuple[Phase, RequestMaker, Checker]],
    count: int,
    *,
    pid: int,
    deadline_s: float,
) -> None:
    """One request at a time on one connection: `count` rounds, each going through
    `pairs` in order (so the routes are interleaved). Accumulates into the phases."""

    async def one(phase: Phase, request: RequestMaker, check: Checker) -> None:
        cpu_server = cpu_seconds(pid)
        cpu_children = children_cpu_seconds(pid)
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(deadline_s):
                response = await request(client)
        except (httpx.HTTPError, TimeoutError) as exc:
            phase.errors += 1
            phase.statuses["exception"] = phase.statuses.get("exception", 0) + 1
            phase.first_error = phase.first_error or f"{type(exc).__name__}: {exc}"
            return
        elapsed = time.perf_counter() - sent
        phase.seconds += elapsed
        phase.server_cpu_s += cpu_seconds(pid) - cpu_server
        phase.children_cpu_s += children_cpu_seconds(pid) - cpu_children
        status = str(response.status_code)
        phase.statuses[status] = phase.statuses.get(status, 0) + 1
        phase.requests += 1
        phase.latencies_ms.append(elapsed * 1000)
        problem = check(response)
        if problem is not None:
            phase.errors += 1
            phase.first_error = phase.first_error or problem

    cpu_client = time.process_time()
    for _ in range(count):
        for phase, request, check in pairs:
            await one(phase, request, check)
    spent = time.process_time() - cpu_client
    total = sum(phase.seconds for phase, _, _ in pairs)
    for phase, _, _ in pairs:  # the client's CPU, shared out by time spent
        phase.client_cpu_s += spent * phase.seconds / total if total else 0.0


def ratio(value: float | None, base: float | None, digits: int = 3) -> float | None:
    return round(value / base, digits) if value is not None and base else None


def difference(value: float | None, base: float | None) -> float | None:
    return round(value - base, 3) if value is not None and base is not None else None


async def measure(
    args: argparse.Namespace, result: dict[str, Any], pid: int, port: int, token: str
) -> None:
    async def greet(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(GREET_PATH, params={"name": "x"})

    async def add(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(SUM_PATH, json=SUM_BODY)

    async def sub_greet(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(SUB_GREET_PATH, params={"name": "x"})

    async def health(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(HEALTH_PATH)

    phases = {
        "greet": Phase("greet"),
        "sum": Phase("sum"),
        "sub_greet": Phase("sub_greet"),
        "health": Phase("health"),
    }
    check_greet = check_envelope(EXPECTED_GREET)
    check_sub_greet = check_envelope(EXPECTED_SUB_GREET)
    plan: list[tuple[Phase, RequestMaker, Checker]] = [
        (phases["greet"], greet, check_greet),
        (phases["sum"], add, check_envelope(EXPECTED_SUM)),
        (phases["sub_greet"], sub_greet, check_sub_greet),
        (phases["health"], health, check_health),
    ]

    def make_client(connections: int = 1) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=httpx.Timeout(10.0),
            trust_env=False,
        )

    async def settle(phase: Phase) -> None:
        if phase is phases["sub_greet"]:
            await asyncio.sleep(SUBPROCESS_SETTLE_S)

    # One client (one keep-alive connection) per worker: httpcore's pool walks all of
    # its connections on every request, so one shared 16-connection pool costs the
    # client about twice the CPU per request.
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(make_client()) for _ in range(args.workers)]
        common = {"pid": pid, "deadline_s": args.deadline}
        # Warm-up (not recorded): open the connections and touch each route (the first
        # plugin call imports the handler module).
        warm = Phase("warm-up")
        for phase, request, check in plan:
            await drive(clients, warm, request, check, duration_s=args.warmup, **common)
            await settle(phase)
        if warm.errors:
            result["warmup_errors"] = warm.errors
            result["warmup_first_error"] = warm.first_error
        for _ in range(args.rounds):
            for phase, request, check in plan:
                await drive(clients, phase, request, check, duration_s=args.duration, **common)
                await settle(phase)
        result["phases"] = {name: phase.as_dict() for name, phase in phases.items()}
        # Sequential: one client, one request at a time, the two greets interleaved.
        seq = {"greet": Phase("seq_greet"), "sub_greet": Phase("seq_sub_greet")}
        client = clients[0]
        await sequential(
            client,
            [(seq["greet"], greet, check_greet), (seq["sub_greet"], sub_greet, check_sub_greet)],
            args.sequential,
            **common,
        )
    result["sequential"] = {name: phase.as_dict() for name, phase in seq.items()}
    base = result["phases"]["health"]
    ratios: dict[str, Any] = {}
    for name in ("greet", "sum", "sub_greet"):
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
    sub = result["phases"]["sub_greet"]
    ratios["sub_greet"]["req_per_s_vs_in_process_greet"] = ratio(
        sub["req_per_s"], result["phases"]["greet"]["req_per_s"]
    )
    # the server process and its workers together, per request, vs health
    if sub["server_cpu_us_per_req"] is not None and sub["worker_cpu_us_per_req"] is not None:
        ratios["sub_greet"]["server_and_worker_cpu_per_request_vs_health"] = ratio(
            sub["server_cpu_us_per_req"] + sub["worker_cpu_us_per_req"],
            base["server_cpu_us_per_req"],
        )
    result["ratios"] = ratios
    s_in, s_sub = result["sequential"]["greet"], result["sequential"]["sub_greet"]
    result["subprocess_overhead"] = {
        "method": (
            f"sequential: one client, {args.sequential} requests each of the in-process "
            "and the subprocess greet, interleaved; subprocess minus in-process"
        ),
        "p50_ms": difference(s_sub["p50_ms"], s_in["p50_ms"]),
        "p99_ms": difference(s_sub["p99_ms"], s_in["p99_ms"]),
    }
    # evidence that the calls did run in worker processes: their CPU, reaped by the server
    result["subprocess"]["workers_seen"] = bool(phases["sub_greet"].children_cpu_s > 0)
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
            "plugin_id": SUB_PLUGIN_ID,
            "path": SUB_PLUGIN_DIR,
            "warm_workers": args.warm_workers,
        },
    }
    result["settings"]["warm_workers"] = args.warm_workers
    result["settings"]["sequential_requests"] = args.sequential
    with (
        tempfile.TemporaryDirectory(prefix="kblabs-plugins-bench-") as tmp,
        tempfile.TemporaryDirectory(prefix="kblabs-plugins-bench-logs-") as logs,
    ):
        root = Path(tmp)
        say(f"linking {PLUGIN_ID} and {SUB_PLUGIN_ID} from {EXAMPLE_PLUGIN}")
        result["link"] = await asyncio.to_thread(
            link_plugin, root, args.deadline, PLUGIN_DIR, PLUGIN_ID
        )
        result["link_sub"] = await asyncio.to_thread(
            link_plugin, root, args.deadline, SUB_PLUGIN_DIR, SUB_PLUGIN_ID
        )
        result["subprocess"]["config"] = write_config(root, args.warm_workers)
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
    for key, folder in (("link", PLUGIN_DIR), ("link_sub", SUB_PLUGIN_DIR)):
        link = result.get(key, {})
        if link.get("error"):
            print(f"ERROR linking {folder}: {link['error']}")
            if link.get("output"):
                print(f"  | {link['output']}")
        else:
            print(
                f"linked {folder} as {link.get('id')} in {fmt(link.get('seconds'), '.2f')} s "
                "(before the start)"
            )
    sub_info = result.get("subprocess", {})
    print(
        f"kb.config.json: {SUB_PLUGIN_ID} in subprocess workers, "
        f"warmWorkers {sub_info.get('warm_workers')}"
    )
    server = result.get("server", {})
    print(f"server ready in {fmt(server.get('ready_s'), '.3f')} s")
    print()
    print(
        f"over HTTP: {s['workers']} keep-alive workers, "
        f"{s['rounds']} x {s['duration_s']:g} s per phase (alternated)"
    )
    header = (
        f"  {'request':<36}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'srv CPU%':>10}{'srv us/req':>12}{'wrk us/req':>12}{'cli CPU%':>10}{'errors':>8}"
    )
    routes = {
        "greet": "GET  …/hello/greet (in process)",
        "sum": "POST …/hello/sum (schemas)",
        "sub_greet": "GET  …/hello-sub/greet (subprocess)",
        "health": "GET  /api/v1/health",
    }

    def row(label: str, p: dict[str, Any]) -> None:
        print(
            f"  {label:<36}{fmt(p['req_per_s'], ',.0f'):>9}"
            f"{fmt(p['p50_ms'], '.2f'):>9}{fmt(p['p99_ms'], '.2f'):>9}"
            f"{fmt(p['server_cpu_pct'], '.0f'):>10}{fmt(p['server_cpu_us_per_req'], '.0f'):>12}"
            f"{fmt(p['worker_cpu_us_per_req'], '.0f'):>12}"
            f"{fmt(p['client_cpu_pct'], '.0f'):>10}{p['errors']:>8}"
        )
        if p.get("first_error"):
            print(f"    first error: {p['first_error']}")

    print(header)
    for name, p in (result.get("phases") or {}).items():
        row(routes[name], p)
    if result.get("warmup_errors"):
        print(f"  warm-up errors: {result['warmup_errors']} ({result['warmup_first_error']})")
    print("  (wrk us/req: CPU of the worker processes the server reaped, per request)")
    if "workers_seen" in sub_info and not sub_info["workers_seen"]:
        print(
            "  WARNING: no worker process CPU during the subprocess phase: "
            f"{SUB_PLUGIN_ID} may not have run in subprocess workers"
        )
    seq = result.get("sequential")
    if seq:
        print()
        print(
            f"sequential: one client, one request at a time, {s['sequential_requests']} each, "
            "interleaved (req/s = 1 / mean latency)"
        )
        print(header)
        row("GET  …/hello/greet (in process)", seq["greet"])
        row("GET  …/hello-sub/greet (subprocess)", seq["sub_greet"])
    if result.get("error"):
        print(f"ERROR: {result['error']}")
    ratios = result.get("ratios")
    if ratios:
        print()
        print("ratios to /api/v1/health:")
        for name, label in (
            ("greet", "greet"),
            ("sum", "sum (schemas)"),
            ("sub_greet", "subprocess greet"),
        ):
            r = ratios[name]
            print(
                f"  {label:<17} req/s {fmt(r['req_per_s_vs_health'], '.3f')}x, "
                f"p50 {fmt(r['p50_vs_health'], '.2f')}x, p99 {fmt(r['p99_vs_health'], '.2f')}x, "
                f"server CPU per request {fmt(r['server_cpu_per_request_vs_health'], '.2f')}x"
            )
        r = ratios["sub_greet"]
        print(
            f"  {'':<17} (subprocess greet: "
            f"{fmt(r['req_per_s_vs_in_process_greet'], '.3f')}x the in-process greet req/s; "
            "server + worker CPU per request "
            f"{fmt(r.get('server_and_worker_cpu_per_request_vs_health'), '.1f')}x health)"
        )
        overhead = result["subprocess_overhead"]
        print(
            f"subprocess call overhead p50 {fmt(overhead['p50_ms'], '.2f')} ms, "
            f"p99 {fmt(overhead['p99_ms'], '.2f')} ms (sequential)"
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
    print_log_tail(shutdown.get("server_log_tail", []))


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
        "--warm-workers",
        type=int,
        default=4,
        help="platform.execution.warmWorkers for the subprocess plugin (4; 0..32)",
    )
    parser.add_argument(
        "--sequential",
        type=int,
        default=200,
        help="sequential requests each, in-process and subprocess greet (200)",
    )
    parser.add_argument(
        "--deadline", type=float, default=60.0, help="seconds any one wait may take (60)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    for name in ("workers", "rounds", "sequential"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0 <= args.warm_workers <= 32:
        parser.error("--warm-workers must be between 0 and 32")
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
