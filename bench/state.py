#!/usr/bin/env python
"""State broker bench: in-process ops/s (memory, Redis) and HTTP req/s against /health.

Measured in one run:

1. In process, through `kblabs.state.service.StateBroker` (validation, metrics and
   all): `set` then `get` ops/s, first as sequential awaits, then with N concurrent
   tasks sharing the same count, over a fixed set of distinct keys with small JSON
   values; for the memory backend and for the Redis backend. Redis uses a unique prefix
   (`kb:bench:<random>:`) and is cleaned up at the end with `clear()` plus an UNLINK of
   the prefix's index/access/meta keys and of anything else left under the prefix;
   never FLUSHDB. When Redis is not reachable its rows are printed as SKIP.
2. Over HTTP: a real `python -m kblabs serve --port P` (fresh temp project root,
   KB_RATE_LIMITS_ENABLED=false, KB_LOG_LEVEL=warning), driven by W concurrent
   workers, each with its own keep-alive httpx.AsyncClient, for a fixed duration per
   phase: `GET /health` (the baseline), `PUT /api/v1/state/kv/bench:<n>` and
   `GET /api/v1/state/kv/bench:<n>`, alternated over a few rounds; then the same with a
   second server on the Redis backend (a kb.config.json with a unique prefix), unless
   Redis is unreachable or `--no-http-redis`. Reported: req/s, latency p50/p99, errors,
   the CPU share of the server process and of this client process, and the server's
   CPU time per request. The client shares the machine: when it is saturated (client
   CPU near 100%) it caps every req/s figure, /health included, and pulls the req/s
   ratios towards 1; server CPU per request does not depend on the client.

The figures that matter are the ratios printed next to the raw figures (state-GET/health
and state-PUT/health per server, in req/s and in server CPU per request; Redis/memory in
process), since absolute rates depend on the machine and its load. The exit code is 1
only when a server fails to start (its output is shown), 0 otherwise, even when some
requests failed (they are reported).

Usage: python bench/state.py [--mem-ops 20000] [--redis-ops 5000] [--duration 3] [--json]

Only the standard library, httpx and kblabs (plus its redis dependency); Linux (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
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
    read_output,
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

VALUE_TTL_MS = 600_000

# Variables that would reach into the kblabs config (kblabs/config/loader.py and
# discovery.py) or make the server talk to systemd; the children run without them.


def small_value(n: int) -> dict[str, Any]:
    return {"n": n, "name": f"item-{n}", "tags": ["bench", "state"], "ok": True}


# --- in process ------------------------------------------------------------------------


@dataclass
class OpResult:
    label: str
    ops: int
    seconds: float
    concurrency: int
    misses: int = 0
    errors: int = 0
    first_error: str | None = None

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "seconds": round(self.seconds, 4),
            "ops_per_s": round(self.ops_per_s, 1),
            "us_per_op": round(1e6 / self.ops_per_s, 2) if self.ops_per_s else None,
            "concurrency": self.concurrency,
            "misses": self.misses,
            "errors": self.errors,
            **({"first_error": self.first_error} if self.first_error else {}),
        }


async def run_ops(
    label: str,
    op: Callable[[int], Awaitable[Any]],
    count: int,
    concurrency: int,
    check: Callable[[Any], bool] | None = None,
) -> OpResult:
    """`count` calls of op(i), i = 0..count-1: awaited one after another when
    `concurrency` is 1, else spread over that many tasks pulling from one iterator."""
    result = OpResult(label, count, 0.0, concurrency)

    async def one(i: int) -> None:
        try:
            value = await op(i)
        except Exception as exc:
            result.errors += 1
            result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
            return
        if check is not None and not check(value):
            result.misses += 1

    started = time.perf_counter()
    if concurrency <= 1:
        for i in range(count):
            await one(i)
    else:
        shared = iter(range(count))

        async def worker() -> None:
            for i in shared:
                await one(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def broker_settings(project_root: Path, config: dict[str, Any] | None) -> Any:
    from kblabs.config import load_settings

    if config is not None:
        (project_root / "kb.config.json").write_text(json.dumps(config))
    return load_settings(environ={"KB_PROJECT_ROOT": str(project_root)}, cwd=project_root)


def redis_config(url: str, prefix: str) -> dict[str, Any]:
    return {
        "platform": {
            "adapters": {"state": "redis"},
            "adapterOptions": {"state": {"url": url, "prefix": prefix}},
        }
    }


async def purge_redis_prefix(url: str, prefix: str, timeout_s: float) -> int:
    """UNLINK every key under `prefix` (SCAN, never FLUSHDB); returns how many."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    removed = 0
    try:
        async with asyncio.timeout(timeout_s):
            escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
            batch: list[bytes] = []
            async for key in client.scan_iter(match=f"{escaped}*", count=500):
                batch.append(key)
                if len(batch) >= 500:
                    removed += await client.unlink(*batch)
                    batch = []
            if batch:
                removed += await client.unlink(*batch)
    finally:
        await client.aclose()
    return removed


async def bench_backend(
    kind: str,
    count: int,
    keys: int,
    concurrency: int,
    deadline_s: float,
    redis_url: str,
) -> dict[str, Any]:
    """Sequential and concurrent put/get through one StateBroker; a SKIP entry when
    the Redis backend is unreachable."""
    from prometheus_client import CollectorRegistry

    from kblabs.state.backend import MISSING
    from kblabs.state.service import StateBroker

    prefix = f"kb:bench:{secrets.token_hex(4)}:" if kind == "redis" else None
    entry: dict[str, Any] = {"backend": kind, "ops": count, "keys": keys}
    if prefix:
        entry["prefix"] = prefix
    with tempfile.TemporaryDirectory(prefix=f"kblabs-state-bench-{kind}-") as tmp:
        config = redis_config(redis_url, prefix) if prefix else None
        settings = broker_settings(Path(tmp), config)
        broker = StateBroker(settings, CollectorRegistry())
        started = False
        try:
            async with asyncio.timeout(deadline_s):
                await broker.start()
            started = True
            if broker.degraded:
                entry["skipped"] = broker.degraded
                return entry
            names = [f"bench:{i}" for i in range(keys)]
            values = [small_value(i) for i in range(keys)]

            async def put(i: int) -> Any:
                return await broker.set(names[i % keys], values[i % keys], VALUE_TTL_MS)

            async def get(i: int) -> Any:
                return await broker.get(names[i % keys])

            def hit(value: Any) -> bool:
                return value is not MISSING

            results = {}
            async with asyncio.timeout(deadline_s):
                # Populate every key first, so the measured gets are hits.
                await run_ops("warm-up", put, keys, 1)
                results["put"] = await run_ops("put", put, count, 1)
                results["get"] = await run_ops("get", get, count, 1, hit)
                results["put_concurrent"] = await run_ops("put", put, count, concurrency)
                results["get_concurrent"] = await run_ops("get", get, count, concurrency, hit)
            entry["results"] = {name: r.as_dict() for name, r in results.items()}
        except TimeoutError:
            entry["error"] = f"did not finish within the {deadline_s:g} s deadline"
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            cleanup_redis = prefix and started and "skipped" not in entry
            if cleanup_redis:
                cleanup: dict[str, Any] = {}
                try:
                    async with asyncio.timeout(deadline_s):
                        cleanup["cleared"] = await broker.clear()
                except Exception as exc:
                    cleanup["clear_error"] = f"{type(exc).__name__}: {exc}"
                entry["cleanup"] = cleanup
            with contextlib.suppress(Exception):
                async with asyncio.timeout(deadline_s):
                    await broker.stop()
            if cleanup_redis:
                # index/access/meta hashes, plus anything clear() did not reach
                try:
                    entry["cleanup"]["unlinked_after_clear"] = await purge_redis_prefix(
                        redis_url, prefix, deadline_s
                    )
                except Exception as exc:
                    entry["cleanup"]["purge_error"] = f"{type(exc).__name__}: {exc}"
    return entry


# --- over HTTP -------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    proc: subprocess.Popen
    port: int
    log: Path
    token: str
    ready_s: float

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_server(
    label: str, project_root: Path, log_dir: Path, deadline_s: float
) -> tuple[subprocess.Popen, Path, int]:
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

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        if len(lat) >= 2:
            cuts = statistics.quantiles(lat, n=100, method="inclusive")
            p50, p99 = cuts[49], cuts[98]
        else:
            p50 = p99 = lat[0] if lat else None
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


RequestMaker = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


async def drive(
    clients: list[httpx.AsyncClient],
    phase: Phase,
    request: RequestMaker,
    expected: int,
    *,
    duration_s: float | None,
    count: int | None,
    pid: int,
    deadline_s: float,
) -> None:
    """One task per client issues requests until `duration_s` passed (or `count` were
    sent); request i goes to request(client, i). Accumulates into `phase`."""
    shared = iter(range(count)) if count is not None else None
    next_i = [0]
    stop_at = time.perf_counter() + (duration_s or 0.0)

    def take() -> int | None:
        if shared is not None:
            return next(shared, None)
        if time.perf_counter() >= stop_at:
            return None
        next_i[0] += 1
        return next_i[0] - 1

    async def worker(client: httpx.AsyncClient) -> None:
        while (i := take()) is not None:
            sent = time.perf_counter()
            try:
                response = await request(client, i)
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
            if response.status_code != expected:
                phase.errors += 1
                phase.first_error = phase.first_error or f"HTTP {status}: {response.text[:300]}"

    cpu_server = cpu_seconds(pid)
    cpu_client = time.process_time()
    started = time.perf_counter()
    async with asyncio.timeout((duration_s or 0.0) + deadline_s):
        await asyncio.gather(*(worker(client) for client in clients))
    phase.seconds += time.perf_counter() - started
    phase.server_cpu_s += cpu_seconds(pid) - cpu_server
    phase.client_cpu_s += time.process_time() - cpu_client


async def bench_http_server(
    label: str,
    config: dict[str, Any] | None,
    args: argparse.Namespace,
    log_dir: Path,
) -> dict[str, Any]:
    """Start one server, measure /health, PUT and GET in alternating rounds, stop it."""
    entry: dict[str, Any] = {"label": label}
    with tempfile.TemporaryDirectory(prefix="kblabs-state-bench-http-") as tmp:
        root = Path(tmp)
        if config is not None:
            (root / "kb.config.json").write_text(json.dumps(config))
        proc, log, port = await start_server(label, root, log_dir, args.deadline)
        try:
            token, ready_s = await wait_ready(
                proc, port, log, root / ".kb" / "admin.token", args.deadline, label
            )
            entry["ready_s"] = round(ready_s, 3)
            keys = args.keys
            value_bodies = [{"value": small_value(i), "ttl": VALUE_TTL_MS} for i in range(keys)]

            async def health(client: httpx.AsyncClient, i: int) -> httpx.Response:
                return await client.get("/health")

            async def put(client: httpx.AsyncClient, i: int) -> httpx.Response:
                return await client.put(
                    f"/api/v1/state/kv/bench:{i % keys}", json=value_bodies[i % keys]
                )

            async def get(client: httpx.AsyncClient, i: int) -> httpx.Response:
                return await client.get(f"/api/v1/state/kv/bench:{i % keys}")

            phases = {"health": Phase("health"), "put": Phase("put"), "get": Phase("get")}
            plan: list[tuple[Phase, RequestMaker]] = [
                (phases["health"], health),
                (phases["put"], put),
                (phases["get"], get),
            ]
            # One client (one keep-alive connection) per worker: httpcore's pool walks
            # all of its connections on every request, so one shared 16-connection
            # pool costs the client about twice the CPU per request.
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
                common = {"pid": proc.pid, "deadline_s": args.deadline}
                # Warm-up (not recorded): open the connections, write every key once so
                # the measured GETs are hits, and touch each route.
                warm = Phase("warm-up")
                await drive(clients, warm, put, 200, duration_s=None, count=keys, **common)
                for _, request in plan:
                    await drive(
                        clients,
                        warm,
                        request,
                        200,
                        duration_s=args.warmup,
                        count=None,
                        **common,
                    )
                if warm.errors:
                    entry["warmup_errors"] = warm.errors
                    entry["warmup_first_error"] = warm.first_error
                for _ in range(args.rounds):
                    for phase, request in plan:
                        if proc.poll() is not None:
                            raise RuntimeError(f"server exited with code {proc.returncode}")
                        await drive(
                            clients,
                            phase,
                            request,
                            200,
                            duration_s=args.duration,
                            count=None,
                            **common,
                        )
            entry["phases"] = {name: phase.as_dict() for name, phase in phases.items()}
            base = phases["health"].rps
            base_cpu = phases["health"].server_cpu_per_request
            entry["ratios"] = {
                "get_vs_health": round(phases["get"].rps / base, 3) if base else None,
                "put_vs_health": round(phases["put"].rps / base, 3) if base else None,
                # server CPU per request, state route / health (> 1: costlier)
                "get_cpu_vs_health": round(phases["get"].server_cpu_per_request / base_cpu, 3)
                if base_cpu
                else None,
                "put_cpu_vs_health": round(phases["put"].server_cpu_per_request / base_cpu, 3)
                if base_cpu
                else None,
            }
        except ServerFailed:
            raise
        except TimeoutError:
            entry["error"] = f"a phase did not finish within its deadline ({args.deadline:g} s)"
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            code = stop_server(proc, args.deadline)
            entry["exit_code"] = code
            if code != 0 and "error" not in entry:
                entry["exit_output"] = read_output(log)
    return entry


# --- the run ---------------------------------------------------------------------------


async def redis_reachable(url: str, timeout_s: float) -> str | None:
    """None when Redis answers PING, else why not."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        async with asyncio.timeout(timeout_s + 1):
            await client.ping()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "redis_url": args.redis_url,
        "settings": {
            "mem_ops": args.mem_ops,
            "redis_ops": args.redis_ops,
            "keys": args.keys,
            "concurrency": args.concurrency,
            "http_workers": args.workers,
            "http_duration_s": args.duration,
            "http_rounds": args.rounds,
        },
    }
    redis_down = await redis_reachable(args.redis_url, 2.0)
    result["redis_unreachable"] = redis_down

    say(f"in process: memory backend, {args.mem_ops} ops")
    inproc = [
        await bench_backend(
            "memory", args.mem_ops, args.keys, args.concurrency, args.deadline, args.redis_url
        )
    ]
    if redis_down:
        inproc.append({"backend": "redis", "skipped": redis_down})
    else:
        say(f"in process: redis backend, {args.redis_ops} ops")
        inproc.append(
            await bench_backend(
                "redis", args.redis_ops, args.keys, args.concurrency, args.deadline, args.redis_url
            )
        )
    result["in_process"] = inproc

    with tempfile.TemporaryDirectory(prefix="kblabs-state-bench-logs-") as logs:
        log_dir = Path(logs)
        http = []
        say(f"http: memory-backend server, {args.rounds} round(s) of {args.duration:g} s/phase")
        http.append(await bench_http_server("memory", None, args, log_dir))
        if args.no_http_redis:
            http.append({"label": "redis", "skipped": "--no-http-redis"})
        elif redis_down:
            http.append({"label": "redis", "skipped": redis_down})
        else:
            prefix = f"kb:bench:{secrets.token_hex(4)}:"
            say(f"http: redis-backend server (prefix {prefix})")
            cleanup: dict[str, Any] = {}
            try:
                entry = await bench_http_server(
                    "redis", redis_config(args.redis_url, prefix), args, log_dir
                )
            finally:
                try:
                    cleanup["unlinked"] = await purge_redis_prefix(
                        args.redis_url, prefix, args.deadline
                    )
                except Exception as exc:
                    cleanup["purge_error"] = f"{type(exc).__name__}: {exc}"
            entry["prefix"] = prefix
            entry["cleanup"] = cleanup
            http.append(entry)
        result["http"] = http

    ratios: dict[str, Any] = {}
    mem, red = inproc[0].get("results"), inproc[1].get("results")
    if mem and red:
        for name in ("put", "get", "put_concurrent", "get_concurrent"):
            ratios[f"inproc_redis_vs_memory_{name}"] = round(
                red[name]["ops_per_s"] / mem[name]["ops_per_s"], 4
            )
    for entry in http:
        for name, value in (entry.get("ratios") or {}).items():
            ratios[f"http_{entry['label']}_{name}"] = value
    result["ratios"] = ratios
    return result


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_report(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        f"kblabs state bench: Python {result['python']}, {result['cpus']} CPU(s); "
        f"{s['keys']} keys, small JSON values"
    )
    print()
    print(f"in process (StateBroker): sequential awaits, and {s['concurrency']} concurrent tasks")
    print(f"  {'backend':<8}{'op':<16}{'ops':>8}{'ops/s':>12}{'us/op':>10}  notes")
    for entry in result["in_process"]:
        kind = entry["backend"]
        if "skipped" in entry:
            print(f"  SKIP {kind}: {entry['skipped']}")
            continue
        if "error" in entry and "results" not in entry:
            print(f"  ERROR {kind}: {entry['error']}")
            continue
        for name, r in entry["results"].items():
            notes = []
            if r["misses"]:
                notes.append(f"{r['misses']} misses")
            if r["errors"]:
                notes.append(f"{r['errors']} errors ({r.get('first_error')})")
            print(
                f"  {kind:<8}{name:<16}{r['ops']:>8}{fmt_rate(r['ops_per_s']):>12}"
                f"{r['us_per_op'] or 0:>10.1f}  {', '.join(notes)}"
            )
        if "error" in entry:
            print(f"  ERROR {kind}: {entry['error']}")
        if "cleanup" in entry:
            print(f"  {kind} cleanup ({entry['prefix']}): {entry['cleanup']}")
    print()
    print(
        f"over HTTP: {s['http_workers']} keep-alive workers, "
        f"{s['http_rounds']} x {s['http_duration_s']:g} s per phase (alternated)"
    )
    print(
        f"  {'server':<8}{'request':<26}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'srv CPU%':>10}{'srv us/req':>12}{'cli CPU%':>10}{'errors':>8}"
    )
    routes = {
        "health": "GET /health",
        "put": "PUT /api/v1/state/kv/…",
        "get": "GET /api/v1/state/kv/…",
    }
    for entry in result["http"]:
        label = entry["label"]
        if "skipped" in entry:
            print(f"  SKIP {label} server: {entry['skipped']}")
            continue
        for name, p in (entry.get("phases") or {}).items():
            print(
                f"  {label:<8}{routes[name]:<26}{fmt_rate(p['req_per_s']):>9}"
                f"{p['p50_ms'] or 0:>9.2f}{p['p99_ms'] or 0:>9.2f}"
                f"{p['server_cpu_pct'] or 0:>10.0f}{p['server_cpu_us_per_req'] or 0:>12.0f}"
                f"{p['client_cpu_pct'] or 0:>10.0f}"
                f"{p['errors']:>8}"
            )
            if p.get("first_error"):
                print(f"    first error: {p['first_error']}")
        if entry.get("warmup_errors"):
            print(f"    warm-up errors: {entry['warmup_errors']} ({entry['warmup_first_error']})")
        if "error" in entry:
            print(f"  ERROR {label} server: {entry['error']}")
        if entry.get("exit_code") != 0:
            print(f"  {label} server exit code on SIGTERM: {entry.get('exit_code')}")
            if entry.get("exit_output"):
                print(entry["exit_output"])
        if "cleanup" in entry:
            print(f"  {label} cleanup ({entry['prefix']}): {entry['cleanup']}")
    ratios = result["ratios"]
    print()
    print("ratios:")
    for entry in result["http"]:
        r = entry.get("ratios")
        if r:
            print(
                f"  {entry['label']} server: state-GET/health {r['get_vs_health']:.2f}x, "
                f"state-PUT/health {r['put_vs_health']:.2f}x req/s; server CPU per request "
                f"GET {r['get_cpu_vs_health'] or 0:.2f}x, PUT {r['put_cpu_vs_health'] or 0:.2f}x"
                " of /health"
            )
    if "inproc_redis_vs_memory_get" in ratios:
        print(
            "  in process redis/memory: "
            f"put {ratios['inproc_redis_vs_memory_put']:.3f}x, "
            f"get {ratios['inproc_redis_vs_memory_get']:.3f}x, "
            f"put x{s['concurrency']} {ratios['inproc_redis_vs_memory_put_concurrent']:.3f}x, "
            f"get x{s['concurrency']} {ratios['inproc_redis_vs_memory_get_concurrent']:.3f}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mem-ops", type=int, default=20_000, help="memory ops (20000)")
    parser.add_argument("--redis-ops", type=int, default=5_000, help="redis ops (5000)")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys (1000)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="tasks, concurrent variant (50)"
    )
    parser.add_argument("--workers", type=int, default=16, help="HTTP workers (16)")
    parser.add_argument(
        "--duration", type=float, default=3.0, help="seconds per HTTP phase per round (3)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="HTTP rounds, alternated (2)")
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="seconds of warm-up per HTTP route (0.5)"
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        help="Redis for the redis runs (REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    parser.add_argument("--no-http-redis", action="store_true", help="skip the Redis-backed server")
    parser.add_argument(
        "--deadline", type=float, default=60.0, help="seconds any one wait may take (60)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    for name in ("mem_ops", "redis_ops", "keys", "concurrency", "workers", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    try:
        result = asyncio.run(run_bench(args))
    except ServerFailed as exc:
        if args.json:
            error = {"error": str(exc), "server": exc.label, "reason": exc.reason}
            print(json.dumps({**error, "output": exc.output}, indent=2))
        print(f"{exc.label} server failed to start: {exc.reason}", file=sys.stderr)
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
