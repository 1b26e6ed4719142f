"""`builtin:shell`: a command in its own process group, output streamed line by line.

Outputs: `{stdout, stderr, exitCode, ok}` plus the keys of every `::kb-output::{json}`
line (a later line wins; lines that are not a JSON object are ignored); without such a
line, a stdout that is one JSON object is merged instead. A non-zero exit fails the step
(the job decides about `continueOnError`). Timeout and cancel kill the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kblabs.workflow import orphans

OUTPUT_MARKER = "::kb-output::"
MAX_CAPTURE = 1024 * 1024  # per stream, kept for the step's outputs
BLOCKED_ROOT_RM = re.compile(r"rm\s+-[a-z]*r[a-z]*f?[a-z]*\s+/(\*|\s|$|;|&)|rm\s+-rf\s+/$")
BLOCKED = (
    "mkfs",
    "dd if=",
    ":(){:|:&};:",
    "chmod -R 777 /",
    "chown -R",
    "> /dev/sda",
    "mv /* ",
    "fdisk",
)
KILL_GRACE_S = 0.5

LineSink = Callable[[str, str, int], None]  # (stream, line, line number)


class ShellBlocked(Exception):
    pass


@dataclass
class ShellResult:
    exit_code: int
    stdout: str
    stderr: str
    marked: dict[str, Any] = field(default_factory=dict)
    timed_out: bool = False

    def outputs(self) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        if self.marked:
            outputs.update(self.marked)
        else:
            with contextlib.suppress(ValueError):
                whole = json.loads(self.stdout)
                if isinstance(whole, dict):
                    outputs.update(whole)
        outputs.update(
            stdout=self.stdout, stderr=self.stderr, exitCode=self.exit_code, ok=self.exit_code == 0
        )
        return outputs


# The worker's own secrets never reach a step: these are left out of its environment
# (a step gets secrets it declares, through `secrets:` and `env:`).
PRIVATE_ENV = ("KB_SECRET_", "KB_WEBHOOK_SECRET_", "GATEWAY_", "KB_DATABASE_URL", "KB_TOKEN")


def check_command(command: str) -> None:
    lowered = command.lower()
    if BLOCKED_ROOT_RM.search(lowered):
        raise ShellBlocked('Dangerous command blocked: "rm -rf /"')
    for pattern in BLOCKED:
        if pattern.lower() in lowered:
            raise ShellBlocked(f'Dangerous command blocked: "{pattern}"')


def env_text(value: Any) -> str:
    """An env value as a process sees it: null → "", booleans true/false, objects JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def shell_env(step_env: dict[str, Any]) -> dict[str, str]:
    """The worker's environment without its private variables, then the step's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_ENV)}
    return {**base, **{k: env_text(v) for k, v in step_env.items()}}


async def run_shell(
    command: str,
    *,
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    on_line: LineSink,
    ledger: Path | None = None,
) -> ShellResult:
    """Run `command` with `/bin/sh -c`; `ledger` (the data dir) records its process
    group so a reaper can kill it if this worker dies (kblabs.workflow.orphans)."""
    check_command(command)
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # one group: a kill takes everything it started
        # no preexec_fn: it forces fork() and stalls the event loop per step; a dead
        # worker's steps are killed through the ledger instead (kblabs.workflow.orphans)
    )
    if ledger is not None:
        orphans.record(ledger, process.pid)
    result = ShellResult(exit_code=-1, stdout="", stderr="")
    captured: dict[str, list[str]] = {"stdout": [], "stderr": []}

    async def pump(stream: asyncio.StreamReader, name: str) -> None:
        number, size = 0, 0
        while raw := await stream.readline():
            number += 1
            line = raw.decode(errors="replace").rstrip("\n")
            if name == "stdout" and line.startswith(OUTPUT_MARKER):
                with contextlib.suppress(ValueError):
                    marked = json.loads(line[len(OUTPUT_MARKER) :])
                    if isinstance(marked, dict):
                        result.marked.update(marked)
                continue
            on_line(name, line, number)
            if size < MAX_CAPTURE:
                captured[name].append(line)
                size += len(line) + 1

    assert process.stdout is not None and process.stderr is not None
    pumps = asyncio.gather(pump(process.stdout, "stdout"), pump(process.stderr, "stderr"))
    try:
        await asyncio.wait_for(asyncio.shield(pumps), timeout_s)
        result.exit_code = await process.wait()
    except TimeoutError:
        result.timed_out = True
        await _kill(process)
        result.exit_code = process.returncode if process.returncode is not None else -9
    except asyncio.CancelledError:
        await _kill(process)
        raise
    finally:
        if ledger is not None:
            orphans.forget(ledger, process.pid)
        if not pumps.done():
            pumps.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumps
    result.stdout = "\n".join(captured["stdout"])
    result.stderr = "\n".join(captured["stderr"])
    return result


async def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the group, then SIGKILL what is left after a short grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE_S)
            if sig == signal.SIGTERM:
                # the leader is gone; make sure nothing else in its group lives on
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            return
        except TimeoutError:
            continue
