"""Running one plugin handler call: in this process, or in a subprocess worker.

Both executors take the same `ExecutionRequest` and the same `Services` (the parent
side of ctx, kblabs.plugins.operations), and both raise KbError on failure:

- in-process: the handler runs on this event loop (sync code in a thread) under an
  asyncio deadline. Fast; trusted code only (it shares the server's memory).
- subprocess: `python -m kblabs.plugins.worker`, one single-use process per call, in
  its own process group, with RLIMIT_AS / RLIMIT_CPU from the plugin's quotas. Its ctx
  calls come back over the pipe and are checked here. On timeout or cancel the whole
  group is killed. A small pool keeps workers started ahead of need, so the call does
  not wait for Python to boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from kblabs.errors import KbError
from kblabs.plugins import operations
from kblabs.plugins.context import HandlerContext, Identity, decode, encode, invoke_handler
from kblabs.plugins.handlers import import_handler
from kblabs.plugins.operations import Services

PIPE_LIMIT = 64 * 1024 * 1024  # longest JSON line either side may send
# What a worker inherits from the server's environment; the variables a plugin may read
# are added per call (ctx.runtime.env), so the platform's secrets never reach it.
WORKER_BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
STDERR_TAIL_LINES = 20


@dataclass
class ExecutionRequest:
    identity: Identity
    handler_ref: str
    plugin_root: str
    input: Any
    timeout_ms: int
    memory_mb: int | None = None
    cpu_ms: int | None = None
    env: dict[str, str] = field(default_factory=dict)  # the variables the plugin may read

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity.to_json(),
            "handler": self.handler_ref,
            "root": self.plugin_root,
            "input": encode(self.input),
            "memoryMb": self.memory_mb,
            "cpuMs": self.cpu_ms,
            "env": self.env,
        }


def _timeout_error(request: ExecutionRequest) -> KbError:
    return KbError(
        "EXECUTION_TIMEOUT",
        f"{request.handler_ref} did not finish within {request.timeout_ms} ms",
        504,
    )


# --- in process ------------------------------------------------------------------------


class DirectTransport:
    """ctx → operations, with no process boundary in between."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        return await operations.dispatch(self.services, op, args)

    def notify(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "log":
            operations.log(self.services, payload["level"], payload["message"], payload["fields"])


async def run_in_process(request: ExecutionRequest, services: Services) -> Any:
    handler = import_handler(request.handler_ref, Path(request.plugin_root))
    ctx = HandlerContext(request.identity, DirectTransport(services), dict(os.environ))
    try:
        return await asyncio.wait_for(
            invoke_handler(handler, ctx, request.input), request.timeout_ms / 1000
        )
    except TimeoutError:
        raise _timeout_error(request) from None
    except KbError:
        raise
    except Exception as exc:  # the plugin's bug: one line to the caller, the trace to the log
        logger.opt(exception=exc).error("{} failed", request.handler_ref)
        raise KbError(
            "HANDLER_ERROR",
            f"{request.handler_ref} failed: {type(exc).__name__}: {exc}"[:1000],
            500,
        ) from exc


# --- subprocess ------------------------------------------------------------------------


class Worker:
    """One started `kblabs.plugins.worker` process, used for exactly one call."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.killed = False

    @classmethod
    async def spawn(cls) -> Worker:
        env = {k: os.environ[k] for k in WORKER_BASE_ENV if k in os.environ}
        env.update(PYTHONUNBUFFERED="1", MALLOC_ARENA_MAX="2")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # the worker's cwd must not shadow modules
            "-m",
            "kblabs.plugins.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: one kill takes everything
            limit=PIPE_LIMIT,
        )
        return cls(process)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message, default=str).encode() + b"\n")

    async def kill(self) -> None:
        """SIGKILL the worker's whole process group (what it started dies too)."""
        if self.alive:
            self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()


class WorkerPool:
    """Keeps `size` workers booted ahead of need; each one serves a single call."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: list[Worker] = []
        self._filling: asyncio.Task[None] | None = None
        self._closed = False

    async def acquire(self) -> Worker:
        while self.idle:
            worker = self.idle.pop()
            if worker.alive:
                self._refill()
                return worker
        self._refill()
        return await Worker.spawn()

    def _refill(self) -> None:
        if self.size and not self._closed and (self._filling is None or self._filling.done()):
            self._filling = asyncio.create_task(self._fill(), name="plugin-worker-pool")

    async def _fill(self) -> None:
        try:
            while len(self.idle) < self.size and not self._closed:
                self.idle.append(await Worker.spawn())
        except Exception as exc:  # the call path spawns on demand anyway
            logger.warning("could not start a plugin worker ahead of need: {}", exc)

    async def start(self) -> None:
        self._refill()

    async def close(self) -> None:
        self._closed = True
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filling
        idle, self.idle = self.idle, []
        for worker in idle:
            await worker.kill()


class SubprocessExecutor:
    def __init__(self, warm_workers: int = 2) -> None:
        self.pool = WorkerPool(warm_workers)

    async def start(self) -> None:
        await self.pool.start()

    async def close(self) -> None:
        await self.pool.close()

    async def run(self, request: ExecutionRequest, services: Services) -> Any:
        worker = await self.pool.acquire()
        stderr = asyncio.create_task(_forward_stderr(worker, services.plugin_id))
        try:
            worker.send({"type": "execute", "request": request.to_json()})
            result = await asyncio.wait_for(_converse(worker, services), request.timeout_ms / 1000)
            if result is CRASHED:
                await worker.process.wait()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stderr), 1)  # the last words
                raise _crash_error(worker, request)
            return result
        except TimeoutError:
            raise _timeout_error(request) from None
        finally:  # done, failed, timed out or cancelled: nothing of the call survives it
            await worker.kill()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(stderr, 1)


async def _forward_stderr(worker: Worker, plugin_id: str) -> None:
    """The worker's stderr (and its print()s) into the server log, last lines kept."""
    assert worker.process.stderr is not None
    while line := await worker.process.stderr.readline():
        text = line.decode(errors="replace").rstrip()
        worker.stderr_tail.append(text)
        logger.bind(plugin=plugin_id).debug("worker: {}", text)


CRASHED = object()


async def _converse(worker: Worker, services: Services) -> Any:
    """Serve the worker's ctx calls until it sends its result; CRASHED if it dies first."""
    assert worker.process.stdout is not None
    calls: set[asyncio.Task[None]] = set()
    try:
        while line := await worker.process.stdout.readline():
            message = json.loads(line)
            kind = message.get("type")
            if kind == "call":
                task = asyncio.create_task(_answer(worker, services, message))
                calls.add(task)
                task.add_done_callback(calls.discard)
            elif kind == "log":
                operations.log(
                    services, message["level"], message["message"], message.get("fields") or {}
                )
            elif kind == "result":
                if message.get("ok"):
                    return decode(message.get("data"))
                raise _error_from(message.get("error") or {})
    finally:
        for task in calls:
            task.cancel()
    return CRASHED


async def _answer(worker: Worker, services: Services, message: dict[str, Any]) -> None:
    reply: dict[str, Any] = {"type": "reply", "id": message["id"]}
    try:
        result = await operations.dispatch(services, message["op"], decode(message["args"]))
        reply.update(ok=True, result=encode(result))
    except KbError as exc:
        reply.update(ok=False, error={**exc.to_dict(), "status": exc.status})
    except Exception as exc:
        logger.opt(exception=exc).error("ctx operation {} failed", message.get("op"))
        reply.update(
            ok=False,
            error={"code": "OPERATION_FAILED", "message": f"{type(exc).__name__}", "status": 500},
        )
    if worker.alive:
        worker.send(reply)


def _error_from(error: dict[str, Any]) -> KbError:
    return KbError(
        str(error.get("code") or "HANDLER_ERROR"),
        str(error.get("message") or "the handler failed"),
        int(error.get("status") or 500),
        details=error.get("details"),
    )


def _crash_error(worker: Worker, request: ExecutionRequest) -> KbError:
    code = worker.process.returncode
    tail = list(worker.stderr_tail)[-5:]
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and request.cpu_ms):
        return KbError(
            "QUOTA_EXCEEDED",
            f"{request.handler_ref} used more than its CPU quota ({request.cpu_ms} ms)",
            500,
            details={"exitCode": code, "stderr": tail},
        )
    if request.memory_mb and any("MemoryError" in line for line in tail):
        return KbError(
            "QUOTA_EXCEEDED",
            f"{request.handler_ref} ran out of its memory quota ({request.memory_mb} MB)",
            500,
            details={"exitCode": code, "stderr": tail},
        )
    return KbError(
        "WORKER_CRASHED",
        f"the worker running {request.handler_ref} exited with code {code} before answering",
        500,
        details={"exitCode": code, "stderr": tail},
    )
