#!/usr/bin/env python
"""Startup bench: kblabs cold start → ready, and idle RSS, against a bare Hypercorn app.

Measured in the same run, alternating:

- kblabs (cold): `python -m kblabs serve --port P` with KB_PROJECT_ROOT set to a fresh
  temp dir (no config file, fresh SQLite database, first-start migrations);
- baseline: a bare Hypercorn "hello" ASGI app, `python -m hypercorn hello:app --bind
  127.0.0.1:P --workers 0` (`--workers 0` serves in the one spawned process, like kblabs;
  Hypercorn's default of one worker would start a second interpreter and measure that);
- once, kblabs (warm): a second start on a data dir that is already migrated.

Start→ready is the wall time from spawning the process until `GET /ready` first answers
200 (polled every ~10 ms; connection refused means not yet). Idle RSS is VmRSS of the
server process ~2 s after ready, in MiB. Each server is then stopped with SIGTERM and
its exit code recorded.

The figures that matter are the ratios against the baseline; the absolute targets
(ready within 2 s, idle RSS under 120 MiB) are printed as PASS/FAIL for information and
never change the exit code. The exit code is 1 only when a server failed to start (its
output is shown), 0 otherwise.

Usage: python bench/startup.py [--runs 5] [--json]

Only the standard library and httpx; Linux only (/proc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

POLL_INTERVAL_S = 0.010
READY_TARGET_S = 2.0
RSS_TARGET_MIB = 120.0
OUTPUT_TAIL_LINES = 60

HELLO_APP = '''\
"""A bare ASGI app: 200 "hello" on any path; handles the lifespan protocol."""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
            }
        )
        await send({"type": "http.response.body", "body": b"hello"})
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close"})
'''

# Variables that would reach into the kblabs config (kblabs/config/loader.py and
# discovery.py) or make the server talk to systemd; the children run without them.
SCRUBBED_EXACT = {"NODE_ENV", "LOG_LEVEL", "PORT", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"}
SCRUBBED_PREFIXES = ("KB_",)


class ServerFailed(Exception):
    """A server did not become ready; carries its combined stdout/stderr."""

    def __init__(self, label: str, reason: str, output: str) -> None:
        super().__init__(f"{label}: {reason}")
        self.label = label
        self.reason = reason
        self.output = output


@dataclass
class Sample:
    ready_s: float
    rss_mib: float
    exit_code: int | None  # None: did not exit within the deadline after SIGTERM (killed)
    stop_s: float | None
    children: int  # child processes of the server at RSS time (their RSS is not counted)
    output_tail: str = ""  # kept only when the exit was not clean


@dataclass
class Series:
    label: str
    samples: list[Sample] = field(default_factory=list)

    def figure(self, name: str) -> dict[str, float | list[float]]:
        values = [getattr(s, name) for s in self.samples]
        return {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "samples": values,
        }

    def as_dict(self) -> dict:
        return {
            "ready_s": self.figure("ready_s"),
            "rss_mib": self.figure("rss_mib"),
            "exit_codes": [s.exit_code for s in self.samples],
            "stop_s": [s.stop_s for s in self.samples],
            "child_processes": [s.children for s in self.samples],
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_environ() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key not in SCRUBBED_EXACT and not key.startswith(SCRUBBED_PREFIXES)
    }


def read_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # the value is in kB
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def count_children(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            total += len((task / "children").read_text().split())
    return total


def read_output(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()
    if len(lines) > OUTPUT_TAIL_LINES:
        skipped = len(lines) - OUTPUT_TAIL_LINES
        lines = [f"[... {skipped} earlier lines]", *lines[-OUTPUT_TAIL_LINES:]]
    return "\n".join(lines)


def wait_ready(
    proc: subprocess.Popen, url: str, started: float, deadline_s: float, label: str, log: Path
) -> float:
    """Seconds from `started` until `url` first answers 200."""
    with httpx.Client(trust_env=False) as client:
        while True:
            code = proc.poll()
            if code is not None:
                raise ServerFailed(label, f"exited with code {code} before ready", read_output(log))
            remaining = started + deadline_s - time.perf_counter()
            if remaining <= 0:
                raise ServerFailed(label, f"not ready within {deadline_s:g} s", read_output(log))
            try:
                # A connection queued in the listen backlog during startup waits here
                # until the server serves it; the timeout keeps it under the deadline.
                response = client.get(url, timeout=remaining)
                if response.status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass  # refused, reset or timed out: not ready yet
            time.sleep(POLL_INTERVAL_S)


def measure(
    label: str,
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    port: int,
    settle_s: float,
    deadline_s: float,
    log_dir: Path,
) -> Sample:
    log = Path(tempfile.mkstemp(prefix="server-", suffix=".log", dir=log_dir)[1])
    proc: subprocess.Popen | None = None
    try:
        with log.open("wb") as out:
            started = time.perf_counter()
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so cleanup gets everything
            )
        url = f"http://127.0.0.1:{port}/ready"
        ready_s = wait_ready(proc, url, started, deadline_s, label, log)
        time.sleep(settle_s)
        code = proc.poll()
        if code is not None:
            raise ServerFailed(label, f"exited with code {code} while idle", read_output(log))
        rss_mib = read_rss_mib(proc.pid)
        children = count_children(proc.pid)

        stopping = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code: int | None = proc.wait(timeout=deadline_s)
            stop_s: float | None = time.perf_counter() - stopping
        except subprocess.TimeoutExpired:
            exit_code, stop_s = None, None
        tail = "" if exit_code == 0 else read_output(log)
        return Sample(ready_s, rss_mib, exit_code, stop_s, children, tail)
    finally:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def kblabs_run(project_root: Path, args: argparse.Namespace, log_dir: Path) -> Sample:
    port = free_port()
    env = base_environ()
    env["KB_PROJECT_ROOT"] = str(project_root)
    env["KB_LOG_LEVEL"] = "warning"
    return measure(
        "kblabs",
        [sys.executable, "-m", "kblabs", "serve", "--port", str(port)],
        env=env,
        cwd=project_root,
        port=port,
        settle_s=args.settle,
        deadline_s=args.deadline,
        log_dir=log_dir,
    )


def baseline_run(app_dir: Path, args: argparse.Namespace, log_dir: Path) -> Sample:
    port = free_port()
    env = base_environ()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(app_dir), env.get("PYTHONPATH")]))
    return measure(
        "baseline (hypercorn hello)",
        [
            sys.executable,
            "-m",
            "hypercorn",
            "hello:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "0",
        ],
        env=env,
        cwd=app_dir,
        port=port,
        settle_s=args.settle,
        deadline_s=args.deadline,
        log_dir=log_dir,
    )


def progress(quiet: bool, label: str, sample: Sample) -> None:
    if quiet:
        return
    print(
        f"  {label:<24} ready {sample.ready_s:6.3f} s  RSS {sample.rss_mib:6.1f} MiB  "
        f"exit {sample.exit_code}",
        file=sys.stderr,
        flush=True,
    )


def run_bench(args: argparse.Namespace) -> dict:
    cold = Series("kblabs (cold)")
    warm = Series("kblabs (warm data dir)")
    base = Series("baseline")
    with tempfile.TemporaryDirectory(prefix="kblabs-bench-") as tmp:
        tmp_path = Path(tmp)
        app_dir = tmp_path / "hello-app"
        app_dir.mkdir()
        (app_dir / "hello.py").write_text(HELLO_APP)
        log_dir = tmp_path / "logs"
        log_dir.mkdir()

        first_root: Path | None = None
        for run in range(1, args.runs + 1):
            root = tmp_path / f"kblabs-{run}"
            root.mkdir()
            first_root = first_root or root
            if not args.json:
                print(f"run {run}/{args.runs}", file=sys.stderr, flush=True)
            cold.samples.append(kblabs_run(root, args, log_dir))
            progress(args.json, cold.label, cold.samples[-1])
            base.samples.append(baseline_run(app_dir, args, log_dir))
            progress(args.json, base.label, base.samples[-1])

        assert first_root is not None
        warm.samples.append(kblabs_run(first_root, args, log_dir))
        progress(args.json, warm.label, warm.samples[-1])

    result = {
        "runs": args.runs,
        "settle_s": args.settle,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "kblabs_cold": cold.as_dict(),
        "kblabs_warm": warm.as_dict(),
        "baseline": base.as_dict(),
    }
    cold_ready = result["kblabs_cold"]["ready_s"]["median"]
    cold_rss = result["kblabs_cold"]["rss_mib"]["median"]
    warm_ready = result["kblabs_warm"]["ready_s"]["median"]
    warm_rss = result["kblabs_warm"]["rss_mib"]["median"]
    base_ready = result["baseline"]["ready_s"]["median"]
    base_rss = result["baseline"]["rss_mib"]["median"]
    result["ratios"] = {
        "cold_ready": cold_ready / base_ready,
        "cold_rss": cold_rss / base_rss,
        "warm_ready": warm_ready / base_ready,
        "warm_rss": warm_rss / base_rss,
    }
    kblabs_samples = cold.samples + warm.samples
    result["targets"] = {
        "ready_within_2s": {
            "pass": cold_ready <= READY_TARGET_S,
            "judged_on": "kblabs cold median",
            "value": cold_ready,
            "worst": result["kblabs_cold"]["ready_s"]["max"],
            "limit": READY_TARGET_S,
        },
        "idle_rss_under_120mib": {
            "pass": cold_rss < RSS_TARGET_MIB,
            "judged_on": "kblabs cold median",
            "value": cold_rss,
            "worst": result["kblabs_cold"]["rss_mib"]["max"],
            "limit": RSS_TARGET_MIB,
        },
        "sigterm_exit_0": {
            "pass": all(s.exit_code == 0 for s in kblabs_samples),
            "judged_on": "every kblabs run",
            "value": [s.exit_code for s in kblabs_samples],
        },
    }
    unclean = [
        {"label": label, "exit_code": s.exit_code, "output": s.output_tail}
        for label, series in (("kblabs", cold), ("kblabs", warm), ("baseline", base))
        for s in series.samples
        if s.exit_code != 0
    ]
    if unclean:
        result["unclean_exits"] = unclean
    return result


def fmt_range(figure: dict, digits: int) -> str:
    if len(figure["samples"]) == 1:
        return f"{figure['median']:.{digits}f}"
    return f"{figure['median']:.{digits}f} [{figure['min']:.{digits}f}-{figure['max']:.{digits}f}]"


def print_report(result: dict) -> None:
    print(
        f"kblabs startup bench: {result['runs']} run(s) each, 1 warm, "
        f"Python {result['python']}, idle = {result['settle_s']:g} s after ready"
    )
    print()
    header = f"{'':<24}{'start->ready s':<26}{'idle RSS MiB':<24}exit codes"
    print(header)
    print(f"{'':<24}{'median [min-max]':<26}median [min-max]")
    rows = (
        ("kblabs (cold)", result["kblabs_cold"]),
        ("kblabs (warm data dir)", result["kblabs_warm"]),
        ("baseline (hypercorn)", result["baseline"]),
    )
    for label, data in rows:
        codes = ",".join("-" if c is None else str(c) for c in data["exit_codes"])
        print(
            f"{label:<24}{fmt_range(data['ready_s'], 3):<26}{fmt_range(data['rss_mib'], 1):<24}"
            f"{codes}"
        )
    ratios = result["ratios"]
    print()
    print(
        f"kblabs/baseline (medians): cold ready {ratios['cold_ready']:.2f}x, "
        f"RSS {ratios['cold_rss']:.2f}x; warm ready {ratios['warm_ready']:.2f}x, "
        f"RSS {ratios['warm_rss']:.2f}x"
    )
    if any(n for _, data in rows for n in data["child_processes"]):
        print("note: a server had child processes; their RSS is not included")
    targets = result["targets"]
    ready, rss, term = (
        targets["ready_within_2s"],
        targets["idle_rss_under_120mib"],
        targets["sigterm_exit_0"],
    )
    print()
    print("targets (informational, do not affect the exit code):")
    print(
        f"  {'PASS' if ready['pass'] else 'FAIL'}  ready within {ready['limit']:g} s: "
        f"cold median {ready['value']:.3f} s (worst {ready['worst']:.3f} s)"
    )
    print(
        f"  {'PASS' if rss['pass'] else 'FAIL'}  idle RSS under {rss['limit']:g} MiB: "
        f"cold median {rss['value']:.1f} MiB (worst {rss['worst']:.1f} MiB)"
    )
    print(
        f"  {'PASS' if term['pass'] else 'FAIL'}  kblabs exits 0 on SIGTERM: "
        f"exit codes {term['value']}"
    )
    for unclean in result.get("unclean_exits", []):
        print()
        print(f"{unclean['label']} exit code {unclean['exit_code']} on SIGTERM; its output:")
        print(unclean["output"] or "(no output)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each server (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds idle after ready before RSS (2)"
    )
    parser.add_argument(
        "--deadline", type=float, default=30.0, help="seconds any one wait may take (30)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        result = run_bench(args)
    except ServerFailed as exc:
        if args.json:
            error = {"error": str(exc), "server": exc.label, "reason": exc.reason}
            print(json.dumps({**error, "output": exc.output}, indent=2))
        print(f"{exc.label} failed to start: {exc.reason}", file=sys.stderr)
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
