#!/usr/bin/env python
"""Host-agent tunnel bench: N agents over WebSocket, /internal/dispatch against /health.

Measured in one run, against a real `python -m kblabs serve --port P` (fresh temp
project root, KB_RATE_LIMITS_ENABLED=false, KB_LOG_LEVEL=warning, a random
GATEWAY_INTERNAL_SECRET):

1. Registration: N hosts (`POST /hosts/register`, admin bearer, capability
   `filesystem`), one after another; the time it took.
2. Connection: N agents in this process (asyncio, one `websockets` connection each to
   `/hosts/connect` with the host's machine token), all at once; each speaks protocol
   1.0 (`hello` → `connected`). Reported: the time until all N are connected, each
   handshake's p50/max, the server's RSS (VmRSS) before and after, and `GET /hosts`
   polled until it lists N hosts `online`. Each agent answers every `call` with one
   `chunk` echoing the call's args and a `result`; a heartbeat goes to every agent in
   turn every few seconds (the server acks it).
3. Load: W concurrent workers, each with its own keep-alive httpx.AsyncClient, for a
   fixed duration per phase: `POST /internal/dispatch` (X-Internal-Secret;
   `filesystem.readFile("x")`, hosts in round robin) and then `GET /health` as the
   baseline. Every dispatch answer is checked (`result` is the echoed args, `hostId` is
   the host asked for). Reported: calls/s (req/s), latency p50/p99, errors, the CPU
   share of the server process and of this client process, the server's CPU time per
   request; afterwards `GET /hosts` again, the calls each agent saw, heartbeats acked,
   and any socket the server closed or dropped.
4. Shutdown: the agents close their sockets, then the server gets SIGTERM; its exit
   code and any lines it logged (warning level and up) are reported.

The client (HTTP workers and all N agents, one Python process) shares the machine with
the server, so absolute rates say little about the server alone; the figures that
matter are the ratios dispatch/health (calls/s, p50, p99, server CPU per request). The
exit code is 1 only when the server fails to start (its output is shown), 0 otherwise,
even when some calls failed (they are reported).

Usage: python bench/hosts.py [--agents 100] [--workers 16] [--duration 5] [--json]

Only the standard library, httpx, websockets; Linux (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if importlib.util.find_spec("sniffio") is None:
    # httpcore 1.0.x imports sniffio on every async request; when it is absent a failed
    # import is never cached, so each request paid a full sys.path search. Marking it
    # absent makes the import fail at once (httpcore then assumes asyncio). kblabs now
    # depends on sniffio, so this only matters in an environment without it.
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

import httpx
from _server import (
    ServerFailed,
    base_environ,
    cpu_seconds,
    free_port,
    print_log_tail,
    read_lines,
    rss_mib,
    stop_server,
    wait_ready,
)
from _stats import percentiles
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

HOSTS_POLL_INTERVAL_S = 0.1
PROTOCOL_VERSION = "1.0"
DISPATCH_ARGS = ["x"]
# Warnings every fresh project root logs once (kblabs.auth); not shown in the text report.
# Variables that would reach into the kblabs config (kblabs/config/loader.py and
# discovery.py) or make the server talk to systemd; the server runs without them.


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --- the server --------------------------------------------------------------------------


def start_server(project_root: Path, log: Path, secret: str) -> tuple[subprocess.Popen, int]:
    """Spawn `python -m kblabs serve` on a free port; the caller waits for ready."""
    port = free_port()
    env = base_environ()
    env["KB_PROJECT_ROOT"] = str(project_root)
    env["KB_RATE_LIMITS_ENABLED"] = "false"
    env["KB_LOG_LEVEL"] = "warning"
    env["GATEWAY_INTERNAL_SECRET"] = secret
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
    return proc, port


# --- the agents ----------------------------------------------------------------------------


@dataclass
class Agent:
    """One host's agent: its socket, and what it saw."""

    index: int
    host_id: str
    token: str
    ws: ClientConnection | None = None
    session_id: str | None = None
    handshake_s: float | None = None
    error: str | None = None
    calls: int = 0
    acks: int = 0
    heartbeats_sent: int = 0
    other: Counter[str] = field(default_factory=Counter)
    closing: bool = False
    lost: str | None = None  # how the socket ended when we did not close it
    reader: asyncio.Task[None] | None = None


async def connect_agent(agent: Agent, url: str, deadline_s: float, deflate: bool) -> None:
    """Open the socket and do the hello → connected handshake; failures land in
    agent.error. `deflate` offers permessage-deflate, as the kblabs agent does."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(deadline_s):
            ws = await connect(
                url,
                additional_headers={"Authorization": f"Bearer {agent.token}"},
                open_timeout=deadline_s,
                close_timeout=5,
                compression="deflate" if deflate else None,
                proxy=None,
            )
            agent.ws = ws
            await ws.send(
                dumps(
                    {"type": "hello", "protocolVersion": PROTOCOL_VERSION, "agentVersion": "bench"}
                )
            )
            reply = json.loads(await ws.recv())
        if reply.get("type") != "connected":
            agent.error = f"expected connected, got {str(reply)[:200]}"
            return
        agent.session_id = reply.get("sessionId")
        agent.handshake_s = time.perf_counter() - started
    except TimeoutError:
        agent.error = f"not connected within {deadline_s:g} s"
    except Exception as exc:
        agent.error = f"{type(exc).__name__}: {exc}"


async def serve_agent(agent: Agent) -> None:
    """Answer every call with one chunk echoing its args, then a result."""
    ws = agent.ws
    assert ws is not None
    try:
        async for raw in ws:
            try:
                message = json.loads(raw)
                kind = message.get("type")
            except (ValueError, AttributeError):
                agent.other["invalid"] += 1
                continue
            if kind == "call":
                agent.calls += 1
                request_id = message.get("requestId")
                await ws.send(
                    dumps(
                        {
                            "type": "chunk",
                            "requestId": request_id,
                            "index": 0,
                            "data": message.get("args", []),
                        }
                    )
                )
                await ws.send(dumps({"type": "result", "requestId": request_id}))
            elif kind == "ack":
                agent.acks += 1
            else:
                agent.other[str(kind)] += 1
    except ConnectionClosed:
        pass
    except Exception as exc:
        agent.error = agent.error or f"reader: {type(exc).__name__}: {exc}"
    if not agent.closing:
        agent.lost = f"code {ws.close_code} {ws.close_reason or ''}".strip()


async def heartbeats(agents: list[Agent], interval_s: float) -> None:
    """One heartbeat per agent every `interval_s`, spread evenly over the interval."""
    step = interval_s / max(len(agents), 1)
    while True:
        for agent in agents:
            await asyncio.sleep(step)
            if agent.ws is None or agent.closing or agent.lost:
                continue
            with contextlib.suppress(ConnectionClosed):
                await agent.ws.send('{"type":"heartbeat"}')
                agent.heartbeats_sent += 1


async def close_agents(agents: list[Agent], deadline_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    for agent in agents:
        agent.closing = True
    entry: dict[str, Any] = {}
    sockets = [agent.ws for agent in agents if agent.ws is not None]
    try:
        async with asyncio.timeout(deadline_s):
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    except TimeoutError:
        entry["error"] = f"agents not closed within {deadline_s:g} s"
    readers = [agent.reader for agent in agents if agent.reader is not None]
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    entry["seconds"] = round(time.perf_counter() - started, 3)
    return entry


# --- HTTP load -----------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    requests: int = 0
    errors: int = 0
    wrong_results: int = 0
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_cpu_per_request(self) -> float:
        return self.server_cpu_s / self.requests if self.requests else 0.0

    def fail(self, message: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or message

    def as_dict(self) -> dict[str, Any]:
        p50, p99 = percentiles(self.latencies_ms)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "wrong_results": self.wrong_results,
            "seconds": round(self.seconds, 3),
            "req_per_s": round(self.rps, 1),
            "p50_ms": rounded(p50),
            "p99_ms": rounded(p99),
            "server_cpu_pct": round(100 * self.server_cpu_s / self.seconds, 1)
            if self.seconds
            else None,
            "client_cpu_pct": round(100 * self.client_cpu_s / self.seconds, 1)
            if self.seconds
            else None,
            "server_cpu_us_per_req": round(1e6 * self.server_cpu_per_request, 1)
            if self.requests
            else None,
            "statuses": dict(self.statuses),
            **({"first_error": self.first_error} if self.first_error else {}),
        }


RequestMaker = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]
Checker = Callable[[httpx.Response, int], "str | None"]


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
    """One task per client issues requests until `duration_s` passed; request i goes to
    request(client, i) and its answer to check(response, i) (None: correct)."""
    next_i = 0
    stop_at = time.perf_counter() + duration_s

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_i
        while time.perf_counter() < stop_at:
            i, next_i = next_i, next_i + 1
            sent = time.perf_counter()
            try:
                response = await request(client, i)
            except httpx.HTTPError as exc:
                phase.statuses["exception"] += 1
                phase.fail(f"{type(exc).__name__}: {exc}")
                continue
            elapsed_ms = (time.perf_counter() - sent) * 1000
            phase.statuses[str(response.status_code)] += 1
            phase.requests += 1
            phase.latencies_ms.append(elapsed_ms)
            if response.status_code != 200:
                phase.fail(f"HTTP {response.status_code}: {response.text[:300]}")
                continue
            problem = check(response, i)
            if problem is not None:
                phase.wrong_results += 1
                phase.fail(problem)

    cpu_server = cpu_seconds(pid)
    cpu_client = time.process_time()
    started = time.perf_counter()
    async with asyncio.timeout(duration_s + deadline_s):
        await asyncio.gather(*(worker(client) for client in clients))
    phase.seconds += time.perf_counter() - started
    phase.server_cpu_s += cpu_seconds(pid) - cpu_server
    phase.client_cpu_s += time.process_time() - cpu_client


# --- the run -------------------------------------------------------------------------------


async def hosts_status(client: httpx.AsyncClient, admin: str) -> Counter[str]:
    response = await client.get("/hosts", headers={"Authorization": f"Bearer {admin}"})
    response.raise_for_status()
    return Counter(host.get("status", "?") for host in response.json()["hosts"])


async def wait_online(
    client: httpx.AsyncClient, admin: str, count: int, deadline_s: float
) -> dict[str, Any]:
    """Poll GET /hosts until `count` hosts are online, or the deadline."""
    started = time.perf_counter()
    statuses: Counter[str] = Counter()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(deadline_s):
            while True:
                statuses = await hosts_status(client, admin)
                if statuses["online"] >= count:
                    break
                await asyncio.sleep(HOSTS_POLL_INTERVAL_S)
    return {
        "listed": sum(statuses.values()),
        "statuses": dict(statuses),
        "all_online": statuses["online"] >= count,
        "seconds": round(time.perf_counter() - started, 3),
    }


async def register_hosts(
    client: httpx.AsyncClient, admin: str, count: int, deadline_s: float
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """[(hostId, machineToken)] for `count` hosts registered one after another."""
    hosts: list[tuple[str, str]] = []
    entry: dict[str, Any] = {"requested": count, "errors": 0}
    started = time.perf_counter()
    async with asyncio.timeout(deadline_s):
        for i in range(count):
            response = await client.post(
                "/hosts/register",
                json={"name": f"bench-{i}", "capabilities": ["filesystem"]},
                headers={"Authorization": f"Bearer {admin}"},
            )
            if response.status_code != 201:
                entry["errors"] += 1
                entry.setdefault("first_error", f"HTTP {response.status_code}: {response.text}")
                continue
            body = response.json()
            hosts.append((body["hostId"], body["machineToken"]))
    seconds = time.perf_counter() - started
    entry["registered"] = len(hosts)
    entry["seconds"] = round(seconds, 3)
    entry["ms_each"] = round(1000 * seconds / count, 2)
    return hosts, entry


async def measure(
    args: argparse.Namespace,
    result: dict[str, Any],
    proc: subprocess.Popen,
    port: int,
    admin: str,
    secret: str,
    agents: list[Agent],
    say: Callable[[str], None],
) -> None:
    """Everything between ready and shutdown; fills `result` as it goes."""
    pid = proc.pid
    base_url = f"http://127.0.0.1:{port}"
    rss: dict[str, float | None] = {"ready": rss_mib(pid)}
    result["rss_mib"] = rss
    async with httpx.AsyncClient(
        base_url=base_url, trust_env=False, timeout=httpx.Timeout(args.deadline)
    ) as admin_client:
        say(f"registering {args.agents} hosts")
        cpu_server = cpu_seconds(pid)
        hosts, result["register"] = await register_hosts(
            admin_client, admin, args.agents, args.deadline
        )
        result["register"]["server_cpu_s"] = round(cpu_seconds(pid) - cpu_server, 3)
        for i, (host_id, token) in enumerate(hosts):
            agents.append(Agent(i, host_id, token))
        rss["before_agents"] = rss_mib(pid)

        say(f"connecting {len(agents)} agents")
        url = f"ws://127.0.0.1:{port}/hosts/connect"
        started = time.perf_counter()
        cpu_server = cpu_seconds(pid)
        await asyncio.gather(
            *(connect_agent(agent, url, args.deadline, not args.no_deflate) for agent in agents)
        )
        connect_s = time.perf_counter() - started
        connect_cpu_s = cpu_seconds(pid) - cpu_server
        connected = [agent for agent in agents if agent.handshake_s is not None]
        for agent in connected:
            agent.reader = asyncio.create_task(serve_agent(agent))
        rss["after_agents"] = rss_mib(pid)
        handshakes = [1000 * agent.handshake_s for agent in connected if agent.handshake_s]
        p50, _ = percentiles(handshakes)
        failures = [agent.error for agent in agents if agent.error]
        extensions = {
            (agent.ws.response.headers.get("Sec-WebSocket-Extensions") or "none")
            for agent in connected
            if agent.ws is not None and agent.ws.response is not None
        }
        result["connect"] = {
            "connected": len(connected),
            "requested": len(agents),
            "seconds_all": round(connect_s, 3),
            "server_cpu_s": round(connect_cpu_s, 3),
            "handshake_p50_ms": rounded(p50, 1),
            "handshake_max_ms": rounded(max(handshakes), 1) if handshakes else None,
            "failed": len(failures),
            "extensions": sorted(extensions),
            **({"first_error": failures[0]} if failures else {}),
        }
        before, after = rss["before_agents"], rss["after_agents"]
        if before is not None and after is not None and connected:
            result["rss_kib_per_agent"] = round(1024 * (after - before) / len(connected), 1)
        if not connected:
            raise RuntimeError("no agent connected")

        result["hosts_before"] = await wait_online(
            admin_client, admin, len(connected), args.deadline
        )

        beating = None
        if args.heartbeat > 0:
            beating = asyncio.create_task(heartbeats(connected, args.heartbeat))
        try:
            await load(args, result, pid, base_url, secret, connected, say)
        finally:
            if beating is not None:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
        rss["after_load"] = rss_mib(pid)
        result["hosts_after"] = await wait_online(admin_client, admin, len(connected), 2.0)


def summarize_agents(agents: list[Agent]) -> dict[str, Any]:
    """What the agents saw: calls, heartbeats, unexpected messages, lost sockets."""
    connected = [agent for agent in agents if agent.handshake_s is not None]
    lost = [agent for agent in agents if agent.lost]
    other: Counter[str] = Counter()
    for agent in agents:
        other.update(agent.other)
    calls = [agent.calls for agent in connected] or [0]
    return {
        "calls_answered": sum(calls),
        "calls_per_agent_min": min(calls),
        "calls_per_agent_max": max(calls),
        "heartbeats_sent": sum(agent.heartbeats_sent for agent in agents),
        "acks": sum(agent.acks for agent in agents),
        "other_messages": dict(other),
        "disconnected_by_server": len(lost),
        **({"first_disconnect": lost[0].lost} if lost else {}),
        "reader_errors": [agent.error for agent in connected if agent.error][:5],
    }


async def load(
    args: argparse.Namespace,
    result: dict[str, Any],
    pid: int,
    base_url: str,
    secret: str,
    agents: list[Agent],
    say: Callable[[str], None],
) -> None:
    """Warm-up, then the dispatch phase and the /health phase."""
    count = len(agents)
    bodies = [
        dumps(
            {
                "namespaceId": "default",
                "hostId": agent.host_id,
                "adapter": "filesystem",
                "method": "readFile",
                "args": DISPATCH_ARGS,
            }
        ).encode()
        for agent in agents
    ]
    sent = [0] * count  # dispatch requests sent per host, warm-up included
    json_header = {"Content-Type": "application/json"}

    async def dispatch(client: httpx.AsyncClient, i: int) -> httpx.Response:
        sent[i % count] += 1
        return await client.post(
            "/internal/dispatch", content=bodies[i % count], headers=json_header
        )

    def check_dispatch(response: httpx.Response, i: int) -> str | None:
        try:
            body = response.json()
        except ValueError:
            return f"not JSON: {response.text[:200]}"
        expected = agents[i % count].host_id
        if body.get("result") != DISPATCH_ARGS or body.get("hostId") != expected:
            return f"wrong result for {expected}: {str(body)[:200]}"
        return None

    async def health(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.get("/health")

    def check_health(response: httpx.Response, i: int) -> str | None:
        return None

    phases = {"dispatch": Phase("dispatch"), "health": Phase("health")}
    plan: list[tuple[Phase, RequestMaker, Checker]] = [
        (phases["dispatch"], dispatch, check_dispatch),
        (phases["health"], health, check_health),
    ]
    common = {"pid": pid, "deadline_s": args.deadline}
    # One client (one keep-alive connection) per worker: httpcore's pool walks all of
    # its connections on every request, so one shared pool costs the client more CPU.
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=base_url,
                    headers={"X-Internal-Secret": secret},
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    timeout=httpx.Timeout(10.0),
                    trust_env=False,
                )
            )
            for _ in range(args.workers)
        ]
        if args.warmup > 0:
            say(f"warm-up: {args.warmup:g} s per route")
            warm = Phase("warm-up")
            for _, request, check in plan:
                await drive(clients, warm, request, check, duration_s=args.warmup, **common)
            if warm.errors:
                result["warmup_errors"] = warm.errors
                result["warmup_first_error"] = warm.first_error
        for phase, request, check in plan:
            say(f"{phase.name}: {args.duration:g} s, {args.workers} workers")
            await drive(clients, phase, request, check, duration_s=args.duration, **common)
    result["phases"] = {name: phase.as_dict() for name, phase in phases.items()}
    received = sum(agent.calls for agent in agents)
    result["dispatch_sent_vs_received"] = {
        "sent": sum(sent),
        "received_by_agents": received,
        "hosts_with_a_difference": sum(
            1 for agent, n in zip(agents, sent, strict=True) if agent.calls != n
        ),
    }
    d, h = result["phases"]["dispatch"], result["phases"]["health"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    result["ratios"] = {
        "calls_per_s_vs_health": ratio(d["req_per_s"], h["req_per_s"]),
        "p50_vs_health": ratio(d["p50_ms"], h["p50_ms"]),
        "p99_vs_health": ratio(d["p99_ms"], h["p99_ms"]),
        "server_cpu_per_request_vs_health": ratio(
            d["server_cpu_us_per_req"], h["server_cpu_us_per_req"]
        ),
    }


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    cpus = os.cpu_count()
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": cpus,
        "note": (
            f"the client (HTTP workers and all agents, one process) and the server share "
            f"this {cpus}-CPU machine, so absolute figures are not the server's capacity; "
            "compare the ratios"
        ),
        "settings": {
            "agents": args.agents,
            "http_workers": args.workers,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "heartbeat_s": args.heartbeat,
            "deflate_offered": not args.no_deflate,
            "deadline_s": args.deadline,
        },
    }
    secret = secrets.token_urlsafe(30)  # 40 characters
    agents: list[Agent] = []
    with tempfile.TemporaryDirectory(prefix="kblabs-hosts-bench-") as tmp:
        root = Path(tmp) / "project"
        root.mkdir()
        log = Path(tmp) / "server.log"
        say("starting the server")
        proc, port = start_server(root, log, secret)
        try:
            admin, ready_s = await wait_ready(
                proc, port, log, root / ".kb" / "admin.token", args.deadline
            )
            result["server"] = {"pid": proc.pid, "port": port, "ready_s": round(ready_s, 3)}
            try:
                await measure(args, result, proc, port, admin, secret, agents, say)
            except TimeoutError:
                result["error"] = f"a step did not finish within its deadline ({args.deadline:g} s)"
            except Exception as exc:
                result["error"] = f"{type(exc).__name__}: {exc}"
            if proc.poll() is not None:
                result["error"] = result.get("error") or "the server exited during the run"
            if agents:
                result["agents"] = summarize_agents(agents)
        finally:
            say("closing the agents and stopping the server")
            shutdown: dict[str, Any] = {}
            if agents:
                shutdown["agents_close"] = await close_agents(agents, args.deadline)
            started = time.perf_counter()
            shutdown["exit_code"] = stop_server(proc, args.deadline)
            shutdown["stop_s"] = round(time.perf_counter() - started, 3)
            lines = read_lines(log)
            shutdown["server_log_lines"] = len(lines)
            if lines:
                shutdown["server_log_tail"] = lines[-20:]
            result["shutdown"] = shutdown
    return result


# --- the report ----------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        f"kblabs hosts bench: Python {result['python']}, {result['cpus']} CPU(s); "
        f"{s['agents']} agents, {s['http_workers']} keep-alive HTTP workers, "
        f"{s['duration_s']:g} s per phase"
    )
    print(f"note: {result['note']}")
    print()
    server = result.get("server", {})
    if server:
        print(f"server: ready in {server['ready_s']:.3f} s (pid {server['pid']})")
    reg = result.get("register")
    if reg:
        line = (
            f"register: {reg['registered']}/{reg['requested']} hosts in {reg['seconds']:.3f} s "
            f"({reg['ms_each']:.1f} ms each, sequential; server CPU {reg['server_cpu_s']:.2f} s), "
            f"{reg['errors']} errors"
        )
        print(line + (f" ({reg['first_error']})" if reg.get("first_error") else ""))
    con = result.get("connect")
    if con:
        print(
            f"connect: {con['connected']}/{con['requested']} agents connected in "
            f"{con['seconds_all']:.3f} s, all at once (server CPU {con['server_cpu_s']:.2f} s; "
            f"handshake p50 "
            f"{fmt(con['handshake_p50_ms'], '.1f')} ms, max {fmt(con['handshake_max_ms'], '.1f')}"
            f" ms); {con['failed']} failed; extensions: {', '.join(con['extensions']) or 'none'}"
        )
        if con.get("first_error"):
            print(f"  first failure: {con['first_error']}")
    rss = result.get("rss_mib", {})
    if rss:
        per_agent = result.get("rss_kib_per_agent")
        print(
            f"server RSS: {fmt(rss.get('ready'), '.1f')} MiB ready, "
            f"{fmt(rss.get('before_agents'), '.1f')} MiB after registering, "
            f"{fmt(rss.get('after_agents'), '.1f')} MiB after connecting the agents"
            + (f" (+{per_agent:.0f} KiB per agent)" if per_agent is not None else "")
            + f", {fmt(rss.get('after_load'), '.1f')} MiB after the load"
        )
    for key, label in (("hosts_before", "before the load"), ("hosts_after", "after the load")):
        hosts = result.get(key)
        if hosts:
            statuses = ", ".join(f"{n} {status}" for status, n in sorted(hosts["statuses"].items()))
            print(
                f"GET /hosts {label}: {hosts['listed']} listed ({statuses or 'none'})"
                + ("" if hosts["all_online"] else "  NOT ALL ONLINE")
            )
    phases = result.get("phases")
    if phases:
        print()
        print(
            f"  {'request':<26}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'srv CPU%':>10}{'srv us/req':>12}{'cli CPU%':>10}{'errors':>8}"
        )
        routes = {"dispatch": "POST /internal/dispatch", "health": "GET /health"}
        for name, p in phases.items():
            print(
                f"  {routes[name]:<26}{p['requests']:>9}{fmt(p['req_per_s']):>9}"
                f"{fmt(p['p50_ms'], '.2f'):>9}{fmt(p['p99_ms'], '.2f'):>9}"
                f"{fmt(p['server_cpu_pct']):>10}{fmt(p['server_cpu_us_per_req']):>12}"
                f"{fmt(p['client_cpu_pct']):>10}{p['errors']:>8}"
            )
            if p.get("first_error"):
                print(f"    first error: {p['first_error']}")
        d = phases["dispatch"]
        print(
            f"  dispatch results checked: {d['requests'] - d['wrong_results']} correct, "
            f"{d['wrong_results']} wrong; statuses {d['statuses']}"
        )
        svr = result["dispatch_sent_vs_received"]
        print(
            f"  dispatch requests sent {svr['sent']} (warm-up included), calls received by "
            f"agents {svr['received_by_agents']}, hosts where they differ "
            f"{svr['hosts_with_a_difference']}"
        )
    if result.get("warmup_errors"):
        print(f"  warm-up errors: {result['warmup_errors']} ({result['warmup_first_error']})")
    agents = result.get("agents")
    if agents:
        print(
            f"agents: {agents['calls_answered']} calls answered "
            f"({agents['calls_per_agent_min']}-{agents['calls_per_agent_max']} per agent), "
            f"{agents['heartbeats_sent']} heartbeats sent, {agents['acks']} acks, "
            f"other messages {agents['other_messages'] or 'none'}, "
            f"{agents['disconnected_by_server']} disconnected by the server"
            + (f" (first: {agents['first_disconnect']})" if agents.get("first_disconnect") else "")
        )
        for error in agents["reader_errors"]:
            print(f"  agent error: {error}")
    ratios = result.get("ratios")
    if ratios:
        print()
        print(
            f"ratios dispatch/health: calls/s {fmt(ratios['calls_per_s_vs_health'], '.3f')}x, "
            f"p50 {fmt(ratios['p50_vs_health'], '.2f')}x, "
            f"p99 {fmt(ratios['p99_vs_health'], '.2f')}x, "
            f"server CPU per request {fmt(ratios['server_cpu_per_request_vs_health'], '.2f')}x"
        )
    if result.get("error"):
        print(f"ERROR: {result['error']}")
    shutdown = result.get("shutdown", {})
    close = shutdown.get("agents_close", {})
    print(
        f"shutdown: agents closed in {fmt(close.get('seconds'), '.3f')} s"
        + (f" ({close['error']})" if close.get("error") else "")
        + f"; server exit code on SIGTERM {shutdown.get('exit_code')} "
        f"after {fmt(shutdown.get('stop_s'), '.3f')} s; "
        f"{shutdown.get('server_log_lines', 0)} server log line(s)"
    )
    print_log_tail(shutdown.get("server_log_tail", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100, help="hosts and agents (100)")
    parser.add_argument("--workers", type=int, default=16, help="HTTP workers (16)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase (5)")
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="seconds of warm-up per route (0.5)"
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=5.0,
        help="seconds between heartbeats of one agent; 0 sends none (5)",
    )
    parser.add_argument(
        "--no-deflate",
        action="store_true",
        help="agents do not offer permessage-deflate (the kblabs agent does)",
    )
    parser.add_argument(
        "--deadline", type=float, default=60.0, help="seconds any one wait may take (60)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    for name in ("agents", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if args.warmup < 0 or args.heartbeat < 0:
        parser.error("--warmup and --heartbeat cannot be negative")
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
