"""What the bench scripts share: starting, watching and stopping a kblabs server.

Imported by bench/state.py, bench/hosts.py and bench/plugins.py (run as scripts, so this
folder is on sys.path). Linux only: process figures come from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

OUTPUT_TAIL_LINES = 60
POLL_INTERVAL_S = 0.02
# Variables that would change the server's config or make it talk to systemd.
SCRUBBED_EXACT = {
    "NODE_ENV",
    "LOG_LEVEL",
    "PORT",
    "REDIS_URL",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
}
SCRUBBED_PREFIXES = ("KB_",)


class ServerFailed(Exception):
    """A server did not become ready; carries its combined stdout/stderr."""

    def __init__(self, reason: str, output: str, label: str = "server") -> None:
        super().__init__(f"{label}: {reason}")
        self.label = label
        self.reason = reason
        self.output = output


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


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def read_output(path: Path) -> str:
    lines = read_lines(path)
    if len(lines) > OUTPUT_TAIL_LINES:
        skipped = len(lines) - OUTPUT_TAIL_LINES
        lines = [f"[... {skipped} earlier lines]", *lines[-OUTPUT_TAIL_LINES:]]
    return "\n".join(lines)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (threads included)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # after the command: state is fields[0], so utime (14) and stime (15) are 11 and 12
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    """VmRSS of a process in MiB; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


async def wait_ready(
    proc: subprocess.Popen,
    port: int,
    log: Path,
    token_file: Path,
    deadline_s: float,
    label: str = "server",
) -> tuple[str, float]:
    """(admin token, seconds until /ready first answered 200)."""
    started = time.perf_counter()
    url = f"http://127.0.0.1:{port}/ready"
    async with httpx.AsyncClient(trust_env=False) as client:
        while True:
            code = proc.poll()
            if code is not None:
                raise ServerFailed(f"exited with code {code} before ready", read_output(log), label)
            remaining = started + deadline_s - time.perf_counter()
            if remaining <= 0:
                raise ServerFailed(f"not ready within {deadline_s:g} s", read_output(log), label)
            try:
                response = await client.get(url, timeout=remaining)
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass  # refused, reset or timed out: not ready yet
            await asyncio.sleep(POLL_INTERVAL_S)
    ready_s = time.perf_counter() - started
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise ServerFailed(
            f"no admin token at {token_file}: {exc}", read_output(log), label
        ) from exc
    if not token:
        raise ServerFailed(f"empty admin token at {token_file}", read_output(log), label)
    return token, ready_s


def stop_server(proc: subprocess.Popen, deadline_s: float) -> int | None:
    """SIGTERM, wait; SIGKILL the process group if it is still there. The exit code,
    or None when it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        return None


# The two lines a fresh project's first start always logs: not worth a reader's worry.
FIRST_START_NOTICES = ("generated a JWT signing secret", "first start: admin token written")


def print_log_tail(tail: list[str]) -> None:
    """The server's last log lines after a bench, the usual first-start notices counted
    rather than shown."""
    notices = [line for line in tail if any(known in line for known in FIRST_START_NOTICES)]
    if notices:
        print(f"  ({len(notices)} of them the usual first-start notices: JWT secret, admin token)")
    for line in tail:
        if line not in notices:
            print(f"  | {line}")
