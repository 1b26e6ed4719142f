"""The ``shell`` capability: run a command on the developer's machine (opt-in).

Off unless the agent was started with ``--allow-shell``. A command runs in its own
session; on timeout (and once it exits) its whole process group is killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping
from typing import Any

from kblabs.agent.capabilities.base import (
    BaseCapability,
    CapabilityError,
    Handler,
    Workspace,
    run_process,
    want_int,
    want_str,
)

MAX_TIMEOUT_MS = 10 * 60 * 1000
MAX_OUTPUT_BYTES = 1024 * 1024
DISABLED_MESSAGE = "shell capability is disabled; start the agent with --allow-shell"


class ShellCapability(BaseCapability):
    name = "shell"

    def __init__(
        self, workspace: Workspace, *, enabled: bool = False, timeout_ms: int = 30000
    ) -> None:
        self.workspace = workspace
        self.enabled = enabled
        self.timeout_ms = timeout_ms

    def methods(self) -> Mapping[str, Handler]:
        return {"exec": self.exec}

    async def call(self, method: str, args: list[Any]) -> Any:
        if not self.enabled:
            raise CapabilityError("UNSUPPORTED", DISABLED_MESSAGE)
        return await super().call(method, args)

    async def exec(self, command: Any, options: Any = None) -> dict[str, Any]:
        argv = _argv(command)
        opts = options if options is not None else {}
        if not isinstance(opts, dict):
            raise CapabilityError("INVALID_ARGS", "'options' must be an object")
        timeout_ms = want_int(
            opts.get("timeoutMs", self.timeout_ms), "timeoutMs", 1, MAX_TIMEOUT_MS
        )
        cwd_arg = opts.get("cwd")
        if cwd_arg is None:
            cwd = self.workspace.roots[0]
        else:
            cwd = await asyncio.to_thread(self.workspace.resolve, want_str(cwd_arg, "cwd"))
            if not await asyncio.to_thread(cwd.is_dir):
                raise CapabilityError("INVALID_ARGS", f"cwd is not a directory: {cwd_arg}")
        env = dict(os.environ)
        extra = opts.get("env")
        if extra is not None:
            if not isinstance(extra, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
            ):
                raise CapabilityError("INVALID_ARGS", "'env' must map names to string values")
            env.update(extra)
        try:
            result = await run_process(
                argv, cwd=cwd, env=env, timeout_s=timeout_ms / 1000, max_output=MAX_OUTPUT_BYTES
            )
        except FileNotFoundError as exc:
            raise CapabilityError("NOT_FOUND", f"command not found: {argv[0]}") from exc
        except PermissionError as exc:
            raise CapabilityError("ACCESS_DENIED", f"cannot execute: {argv[0]}") from exc
        code = result.returncode
        return {
            "stdout": result.stdout.decode("utf-8", "replace"),
            "stderr": result.stderr.decode("utf-8", "replace"),
            "exitCode": code if code is None or code >= 0 else None,
            "signal": _signal_name(-code) if code is not None and code < 0 else None,
            "timedOut": result.timed_out,
            "truncated": result.stdout_truncated or result.stderr_truncated,
        }


def _argv(command: Any) -> list[str]:
    if isinstance(command, str):
        if not command.strip():
            raise CapabilityError("INVALID_ARGS", "'command' must not be empty")
        return ["/bin/sh", "-c", command]
    if (
        isinstance(command, list)
        and command
        and all(isinstance(part, str) for part in command)
        and command[0]
    ):
        return list(command)
    raise CapabilityError(
        "INVALID_ARGS", "'command' must be a string or a non-empty list of strings"
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"
