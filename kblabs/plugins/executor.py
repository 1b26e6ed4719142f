"""Running a plugin handler in this process, with a deadline.

Async handlers run on the event loop; plain functions run in a worker thread so they
never block it. A handler is a callable `(ctx, input)` or an object with
`execute(ctx, input)`.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kblabs.errors import KbError
from kblabs.plugins.permissions import Guard


@dataclass
class HandlerContext:
    host: str  # cli | rest | workflow | webhook | job | cron
    plugin_id: str
    plugin_version: str
    handler_id: str
    request_id: str
    trace_id: str
    tenant_id: str
    cwd: Path
    outdir: Path
    guard: Guard
    config: dict[str, Any] = field(default_factory=dict)
    host_context: dict[str, Any] = field(default_factory=dict)


async def run_in_process(handler: Any, ctx: HandlerContext, input: Any, timeout_s: float) -> Any:
    if inspect.isclass(handler):  # a handler class: one instance per call
        handler = handler()
    target = handler
    if not inspect.isroutine(handler) and callable(getattr(handler, "execute", None)):
        target = handler.execute
    if inspect.iscoroutinefunction(target):
        call = target(ctx, input)
    else:
        call = asyncio.to_thread(target, ctx, input)
    try:
        result = await asyncio.wait_for(call, timeout_s)
    except TimeoutError:
        raise KbError(
            "EXECUTION_TIMEOUT",
            f"{ctx.handler_id} did not finish within {int(timeout_s * 1000)} ms",
            504,
        ) from None
    if inspect.isawaitable(result):  # a sync callable that returned a coroutine
        result = await asyncio.wait_for(result, timeout_s)
    return result
