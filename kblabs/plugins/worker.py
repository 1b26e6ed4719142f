"""`python -m kblabs.plugins.worker`: runs one plugin handler call for the server.

Protocol: JSON lines. The parent writes `{"type": "execute", "request": …}` on stdin;
the worker answers on its stdout with `call` messages for ctx operations (the parent
replies `{"type": "reply", "id", "ok", "result" | "error"}`), `log` messages, and at
last one `{"type": "result", "ok", "data" | "error"}`. Then it exits.

Before the handler is imported the worker applies its quotas: RLIMIT_AS (address space
as it is now plus `memoryMb`) and RLIMIT_CPU (CPU used so far plus `cpuMs`). Anything
the handler prints goes to stderr, which the parent logs, so it cannot corrupt the
protocol. This module and what it imports stay light: startup time is per call.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import resource
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any

from kblabs.errors import KbError
from kblabs.plugins.context import HandlerContext, Identity, decode, encode, invoke_handler
from kblabs.plugins.handlers import import_handler

PIPE_LIMIT = 64 * 1024 * 1024
MIB = 1024 * 1024


class PipeTransport:
    """ctx operations as JSON lines to the parent; replies matched by id."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._write_lock = threading.Lock()  # sync handlers log from their thread
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, default=str)
        with self._write_lock:
            self._out.write(line + "\n")
            self._out.flush()

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self.send({"type": "call", "id": call_id, "op": op, "args": encode(args)})
        return await future

    def notify(self, kind: str, payload: dict[str, Any]) -> None:
        self.send({"type": kind, **payload})

    def deliver(self, reply: dict[str, Any]) -> None:
        future = self._pending.pop(reply.get("id", -1), None)
        if future is None or future.done():
            return
        if reply.get("ok"):
            future.set_result(decode(reply.get("result")))
        else:
            error = reply.get("error") or {}
            future.set_exception(
                KbError(
                    str(error.get("code") or "OPERATION_FAILED"),
                    str(error.get("message") or "the operation failed"),
                    int(error.get("status") or 500),
                    details=error.get("details"),
                )
            )


def apply_quotas(memory_mb: int | None, cpu_ms: int | None) -> None:
    if memory_mb:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
        limit = pages * os.sysconf("SC_PAGE_SIZE") + memory_mb * MIB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_ms:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        seconds = math.ceil(usage.ru_utime + usage.ru_stime + cpu_ms / 1000)
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))


async def _read_replies(reader: asyncio.StreamReader, transport: PipeTransport) -> None:
    while line := await reader.readline():
        transport.deliver(json.loads(line))
    os._exit(3)  # the parent went away: nobody is waiting for the result


async def _execute(request: dict[str, Any], transport: PipeTransport) -> Any:
    identity = Identity.from_json(request["identity"])
    os.chdir(identity.cwd)
    os.environ.update(request.get("env") or {})
    apply_quotas(request.get("memoryMb"), request.get("cpuMs"))
    handler = import_handler(request["handler"], Path(request["root"]))
    ctx = HandlerContext(identity, transport, dict(os.environ))
    return await invoke_handler(handler, ctx, decode(request.get("input")))


def _failure(exc: BaseException, request: dict[str, Any]) -> dict[str, Any]:
    if isinstance(exc, KbError):
        return {**exc.to_dict(), "status": exc.status}
    if isinstance(exc, MemoryError):
        return {
            "code": "QUOTA_EXCEEDED",
            "message": f"{request['handler']} ran out of its memory quota "
            f"({request.get('memoryMb')} MB)",
            "status": 500,
        }
    traceback.print_exception(exc, file=sys.stderr)  # into the server log
    return {
        "code": "HANDLER_ERROR",
        "message": f"{request['handler']} failed: {type(exc).__name__}: {exc}"[:1000],
        "status": 500,
    }


async def serve(out: IO[str]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=PIPE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    first = await reader.readline()
    if not first:
        return  # a pooled worker the server no longer needs
    request = json.loads(first)["request"]
    transport = PipeTransport(out)
    replies = asyncio.create_task(_read_replies(reader, transport))
    try:
        data = await _execute(request, transport)
        message = {"type": "result", "ok": True, "data": encode(data)}
    except BaseException as exc:  # whatever it is, it becomes the call's error
        message = {"type": "result", "ok": False, "error": _failure(exc, request)}
    replies.cancel()
    transport.send(message)


def main() -> None:
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")  # the protocol channel
    os.dup2(2, 1)  # print() in a handler lands on stderr, not in the protocol
    sys.stdout = sys.stderr
    try:
        asyncio.run(serve(out))
    finally:
        out.flush()
        os._exit(0)  # do not wait for threads a handler left behind


if __name__ == "__main__":
    main()
