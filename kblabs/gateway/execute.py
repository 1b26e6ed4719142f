"""/api/v1/execute (ndjson stream), its cancel route, and /clients/connect observers.

An execution runs a plugin handler on a connected host with the `execution` capability
of the caller's namespace. Its events go to the ndjson response and to every observer
subscribed on /clients/connect; the stream always ends with one `execution:done`.
Cancelling (route, observer, client disconnect or timeout) tells the host `cancel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from kblabs.auth.identity import Identity, identity_of, namespace_of
from kblabs.auth.roles import requires
from kblabs.errors import KbError
from kblabs.http.validation import json_body
from kblabs.observability import context

CancelReason = Literal["user", "timeout", "disconnect", "system"]


class ExecuteBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    plugin_id: str = Field(alias="pluginId", min_length=1, max_length=256)
    handler_ref: str = Field(alias="handlerRef", min_length=1, max_length=512)
    export_name: str | None = Field(default=None, alias="exportName", max_length=256)
    input: Any = None
    timeout_ms: int = Field(default=120_000, alias="timeoutMs", ge=1, le=3_600_000)


class CancelBody(BaseModel):
    reason: Literal["user", "timeout"] = "user"


@dataclass
class Execution:
    execution_id: str
    request_id: str
    namespace: str
    host_id: str
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    listeners: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)

    def emit(self, kind: str, **fields: Any) -> None:
        event = {
            "type": kind,
            "executionId": self.execution_id,
            "requestId": self.request_id,
            **fields,
        }
        for queue in list(self.listeners):
            queue.put_nowait(event)

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


class Executions:
    """Executions in flight (memory only: they end with the process)."""

    def __init__(self) -> None:
        self.running: dict[str, Execution] = {}
        self.observers: set[WebSocket] = set()

    async def drain(self) -> None:
        """Cancel what runs and close observer sockets when the server starts draining."""
        for execution in list(self.running.values()):
            self.cancel(execution, "system")
        for websocket in list(self.observers):
            with contextlib.suppress(Exception):
                await websocket.close(code=1012, reason="server restarting")

    def find(self, execution_id: str, namespace: str) -> Execution:
        execution = self.running.get(execution_id)
        if execution is None:
            raise KbError("EXECUTION_NOT_FOUND", "execution not found or already completed", 404)
        if execution.namespace != namespace:
            raise KbError("FORBIDDEN", "execution belongs to another namespace", 403)
        return execution

    def cancel(self, execution: Execution, reason: str) -> bool:
        if execution.cancel_reason is not None or execution.task is None:
            return False
        execution.cancel_reason = reason
        execution.task.cancel()
        return True


async def _run(request: Request, execution: Execution, body: ExecuteBody) -> None:
    runtime = request.app.state.runtime
    args = [
        {
            "pluginId": body.plugin_id,
            "handlerRef": body.handler_ref,
            "exportName": body.export_name,
            "input": body.input,
            "executionId": execution.execution_id,
            "requestId": execution.request_id,
            "timeoutMs": body.timeout_ms,
        }
    ]
    try:
        result = await runtime.hub.call(
            execution.namespace, execution.host_id, "execution", "execute", args, body.timeout_ms
        )
        execution.emit(
            "execution:done",
            exitCode=0,
            durationMs=execution.elapsed_ms(),
            metadata={"result": result},
        )
    except asyncio.CancelledError:
        execution.emit(
            "execution:cancelled",
            reason=execution.cancel_reason or "system",
            durationMs=execution.elapsed_ms(),
        )
        execution.emit("execution:done", exitCode=130, durationMs=execution.elapsed_ms())
    except KbError as exc:
        if exc.code == "CALL_TIMEOUT":
            execution.emit(
                "execution:cancelled", reason="timeout", durationMs=execution.elapsed_ms()
            )
            execution.emit("execution:done", exitCode=130, durationMs=execution.elapsed_ms())
            return
        retryable = (
            bool((exc.details or {}).get("retryable")) if isinstance(exc.details, dict) else False
        )
        execution.emit("execution:error", code=exc.code, message=exc.message, retryable=retryable)
        execution.emit("execution:done", exitCode=1, durationMs=execution.elapsed_ms())
    finally:
        runtime.executions.running.pop(execution.execution_id, None)
        for queue in list(execution.listeners):
            queue.put_nowait(None)  # end of stream


@requires("operator")
async def execute(request: Request) -> StreamingResponse:
    """Run a plugin handler on a host of the caller's namespace; ndjson events."""
    body = await json_body(request, ExecuteBody)
    namespace = namespace_of(request.scope)
    runtime = request.app.state.runtime
    try:
        host_id = runtime.hub.pick_host(namespace, "execution")
    except KbError as exc:
        raise KbError(
            "NO_EXECUTION_HOST",
            "no execution host connected",
            503,
            details={
                "namespaceId": namespace,
                "hint": "run `python -m kblabs agent run` on a machine "
                "registered with the execution capability",
            },
        ) from exc
    execution = Execution(str(uuid.uuid4()), context.request_id.get() or "", namespace, host_id)
    stream: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    execution.listeners.add(stream)
    runtime.executions.running[execution.execution_id] = execution
    execution.task = asyncio.create_task(_run(request, execution, body))

    async def lines() -> AsyncIterator[bytes]:
        try:
            while (event := await stream.get()) is not None:
                yield (json.dumps(event) + "\n").encode()
        finally:
            if execution.execution_id in runtime.executions.running:  # the client left
                runtime.executions.cancel(execution, "disconnect")

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Cache-Control": "no-cache", "X-Execution-Id": execution.execution_id},
    )


@requires("operator")
async def cancel_execution(request: Request) -> JSONResponse:
    """Cancel an execution of the caller's namespace: body {reason?: user|timeout}."""
    body = await json_body(request, CancelBody, optional=True)
    executions = request.app.state.runtime.executions
    execution = executions.find(request.path_params["executionId"], namespace_of(request.scope))
    if not executions.cancel(execution, body.reason):
        return JSONResponse(
            {"executionId": execution.execution_id, "status": "already_cancelled"}, status_code=409
        )
    return JSONResponse(
        {"executionId": execution.execution_id, "status": "cancelled", "reason": body.reason}
    )


async def observe(websocket: WebSocket) -> None:
    """Observers: client:hello, then subscribe/unsubscribe/cancel by execution id."""
    identity = identity_of(websocket.scope)
    await websocket.accept()
    if identity is None:
        await websocket.close(code=1008, reason="unauthorized")
        return
    try:
        hello = json.loads(await asyncio.wait_for(websocket.receive_text(), 5))
    except (TimeoutError, ValueError, WebSocketDisconnect):
        hello = None
    if not isinstance(hello, dict) or hello.get("type") != "client:hello":
        with contextlib.suppress(Exception):
            await websocket.close(code=1008, reason="client:hello expected")
        return
    await websocket.send_json(
        {"type": "client:connected", "protocolVersion": "1.0", "connectionId": str(uuid.uuid4())}
    )
    outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    forward = asyncio.create_task(_forward(websocket, outbox))
    executions = websocket.app.state.runtime.executions
    executions.observers.add(websocket)
    subscribed: set[str] = set()
    try:
        while True:
            raw = await websocket.receive()
            if raw["type"] == "websocket.disconnect":
                break
            try:
                message = json.loads(raw.get("text") or raw.get("bytes") or b"")
            except ValueError:
                message = None
            reply = _observer_command(executions, identity, message, outbox, subscribed)
            if reply is not None:
                await outbox.put(reply)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        executions.observers.discard(websocket)
        for execution_id in subscribed:
            execution = executions.running.get(execution_id)
            if execution is not None:
                execution.listeners.discard(outbox)
        forward.cancel()


def _observer_command(
    executions: Executions,
    identity: Identity,
    message: Any,
    outbox: asyncio.Queue,
    subscribed: set[str],
) -> dict[str, Any] | None:
    kind = message.get("type") if isinstance(message, dict) else None
    execution_id = str(message.get("executionId", "")) if isinstance(message, dict) else ""
    if kind not in ("client:subscribe", "client:unsubscribe", "client:cancel"):
        return {
            "type": "client:error",
            "code": "INVALID_MESSAGE",
            "message": "expected client:subscribe, client:unsubscribe or client:cancel",
        }
    try:
        execution = executions.find(execution_id, identity.namespace_id)
    except KbError as exc:
        return {
            "type": "client:error",
            "code": exc.code,
            "message": exc.message,
            "executionId": execution_id,
        }
    if kind == "client:subscribe":
        execution.listeners.add(outbox)
        subscribed.add(execution_id)
    elif kind == "client:unsubscribe":
        execution.listeners.discard(outbox)
        subscribed.discard(execution_id)
    elif not identity.at_least("operator"):
        return {
            "type": "client:error",
            "code": "FORBIDDEN",
            "message": "cancelling needs the operator role",
            "executionId": execution_id,
        }
    elif not executions.cancel(
        execution, "timeout" if message.get("reason") == "timeout" else "user"
    ):
        return {
            "type": "client:error",
            "code": "CANCEL_FAILED",
            "message": "already cancelled",
            "executionId": execution_id,
        }
    return None


async def _forward(websocket: WebSocket, outbox: asyncio.Queue) -> None:
    while True:
        event = await outbox.get()
        if event is not None:
            with contextlib.suppress(Exception):
                await websocket.send_json(event)


routes = [
    Route("/api/v1/execute", execute, methods=["POST"]),
    Route("/api/v1/execute/{executionId}/cancel", cancel_execution, methods=["POST"]),
    WebSocketRoute("/clients/connect", observe),
]
