"""The host-agent tunnel: WebSocket sessions on /hosts/connect and calls through them.

Other modules call a host's capability in-process with `HostHub.call(...)`; HTTP reaches
it through /internal/dispatch (and, later, /api/v1/execute).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from starlette.websockets import WebSocket, WebSocketDisconnect

from kblabs.auth.identity import Identity, identity_of
from kblabs.config.settings import GatewaySettings
from kblabs.errors import KbError
from kblabs.gateway import protocol as p
from kblabs.gateway.registry import HostRegistry
from kblabs.state.backend import MISSING
from kblabs.state.service import StateBroker

WATCHDOG_INTERVAL_S = 10.0
# How a host's error code maps to the HTTP status a caller sees.
HOST_ERROR_STATUS = {
    "ACCESS_DENIED": 403,
    "NOT_FOUND": 404,
    "INVALID_ARGS": 400,
    "TOO_LARGE": 413,
    "UNSUPPORTED": 501,
    "UNKNOWN_ADAPTER": 501,
    "UNKNOWN_METHOD": 501,
    "TIMEOUT": 504,
    # plugin handlers run by the host's `execution` capability
    "PERMISSION_DENIED": 403,
    "PLUGIN_NOT_FOUND": 404,
    "HANDLER_NOT_FOUND": 404,
    "VALIDATION_ERROR": 400,
    "EXECUTION_TIMEOUT": 504,
    "STATE_UNAVAILABLE": 503,
}


@dataclass
class PendingCall:
    future: asyncio.Future[Any]
    chunks: list[tuple[int, Any]] = field(default_factory=list)


async def receive_frame(websocket: WebSocket) -> str | bytes:
    """The next text or binary frame (binary frames are parsed like text)."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message.get("text") or message.get("bytes") or b""


class HostSession:
    """One live, handshaken WebSocket of one host."""

    def __init__(
        self,
        websocket: WebSocket,
        namespace: str,
        host_id: str,
        connection_id: str,
        capabilities: list[str],
    ) -> None:
        self.websocket = websocket
        self.namespace = namespace
        self.host_id = host_id
        self.connection_id = connection_id
        self.capabilities = capabilities
        self.pending: dict[str, PendingCall] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()

    async def send(self, message: p.Message) -> None:
        async with self._send_lock:
            await self.websocket.send_text(p.dump(message))

    async def call(self, adapter: str, method: str, args: list[Any], timeout_ms: int) -> Any:
        request_id = str(uuid.uuid4())
        pending = PendingCall(asyncio.get_running_loop().create_future())
        self.pending[request_id] = pending
        try:
            await self.send(
                p.Call(
                    request_id=request_id,
                    adapter=adapter,
                    method=method,
                    args=args,
                    timeout_ms=timeout_ms,
                    trace=p.Trace(trace_id=request_id, span_id=request_id[:8]),
                )
            )
            return await asyncio.wait_for(asyncio.shield(pending.future), timeout_ms / 1000)
        except TimeoutError:
            await self._cancel(request_id, "timeout")
            raise KbError(
                "CALL_TIMEOUT",
                f"{self.host_id} did not answer {adapter}.{method} within {timeout_ms} ms",
                504,
            ) from None
        except asyncio.CancelledError:
            await self._cancel(request_id, "cancelled")
            raise
        finally:
            self.pending.pop(request_id, None)

    async def _cancel(self, request_id: str, reason: str) -> None:
        with contextlib.suppress(Exception):  # the socket may already be gone
            await self.send(p.Cancel(request_id=request_id, reason=reason))

    def settle(self, message: p.Chunk | p.Result | p.Error) -> None:
        pending = self.pending.get(message.request_id)
        if pending is None or pending.future.done():
            return  # unknown or already abandoned: dropped, as the protocol says
        if isinstance(message, p.Chunk):
            pending.chunks.append((message.index, message.data))
        elif isinstance(message, p.Result):
            data = [d for _, d in pending.chunks]
            pending.future.set_result(None if not data else data[0] if len(data) == 1 else data)
        else:
            error = message.error
            pending.future.set_exception(
                KbError(
                    error.code,
                    error.message,
                    HOST_ERROR_STATUS.get(error.code, 502),
                    details={"retryable": error.retryable, "hostId": self.host_id},
                )
            )

    def fail_all(self) -> None:
        for pending in self.pending.values():
            if not pending.future.done():
                pending.future.set_exception(
                    KbError(
                        "HOST_DISCONNECTED",
                        f"host {self.host_id} disconnected during the call",
                        503,
                        details={"retryable": True, "hostId": self.host_id},
                    )
                )


class HostHub:
    name = "gateway"

    def __init__(
        self, registry: HostRegistry, state: StateBroker, timings: GatewaySettings | None = None
    ) -> None:
        self.registry = registry
        self.state = state
        self.timings = timings or GatewaySettings()
        # client id → capabilities declared at /auth/register (set by the app)
        self.client_capabilities: Callable[[str], Awaitable[list[str]]] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.draining = False

    async def start(self) -> None:
        await self.registry.reset_statuses()
        self._watchdog = asyncio.create_task(self._watch(), name="hosts-watchdog")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await self.drain()

    async def drain(self) -> None:
        """Close every tunnel (1012: the service restarts, agents reconnect elsewhere or
        later). Run when draining starts, so open WebSockets do not hold the graceful
        shutdown for its whole timeout. New tunnels are refused from now on."""
        self.draining = True
        for live in list(self.registry.live.values()):
            for session in list(live.connections.values()):
                session.fail_all()
                with contextlib.suppress(Exception):
                    await session.websocket.close(code=1012, reason="server restarting")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(WATCHDOG_INTERVAL_S, self.timings.degraded_after_ms / 4000))
            self.registry.mark_silent(self.timings.degraded_after_ms / 1000)

    # --- calls -------------------------------------------------------------------------

    def pick_host(self, namespace: str, adapter: str, host_id: str | None = None) -> str:
        if host_id:
            if not self.registry.sessions(namespace, host_id):
                raise KbError("HOST_NOT_CONNECTED", f"host {host_id} is not connected", 503)
            return host_id
        for candidate in self.registry.connected_hosts(namespace):
            sessions = self.registry.sessions(namespace, candidate)
            if adapter not in p.EXPLICIT_ONLY and adapter in sessions[-1].capabilities:
                return candidate
        raise KbError(
            "NO_HOST",
            f"no connected host in namespace {namespace!r} offers {adapter!r}",
            503,
            details={"namespaceId": namespace},
        )

    async def call(
        self,
        namespace: str,
        host_id: str,
        adapter: str,
        method: str,
        args: list[Any] | None = None,
        timeout_ms: int | None = None,
    ) -> Any:
        """Run `adapter.method(*args)` on a connected host; raises KbError on failure."""
        sessions = self.registry.sessions(namespace, host_id)
        if not sessions:
            raise KbError("HOST_NOT_CONNECTED", f"host {host_id} is not connected", 503)
        timeout = timeout_ms or self.timings.call_timeout_ms
        return await sessions[-1].call(adapter, method, list(args or []), timeout)

    # --- the WebSocket endpoint ----------------------------------------------------------

    async def endpoint(self, websocket: WebSocket) -> None:
        """Host-agent protocol 1.0 (WebSocket, machine tokens only)."""
        identity = identity_of(websocket.scope)
        await websocket.accept()
        if self.draining:
            await websocket.close(code=1012, reason="server restarting")
            return
        if identity is None or identity.role != "machine" or not identity.host_id:
            await websocket.close(code=1008, reason="a machine token is required")
            return
        hello = await self._handshake(websocket)
        if hello is None:
            return
        namespace, host_id = identity.namespace_id, identity.host_id
        capabilities = await self._capabilities(identity, hello)
        session = HostSession(websocket, namespace, host_id, str(uuid.uuid4()), capabilities)
        await self.registry.connected(namespace, host_id, session.connection_id, session)
        logger.info("host {} connected ({}, agent {})", host_id, namespace, hello.agent_version)
        try:
            await session.send(p.Connected(host_id=host_id, session_id=session.connection_id))
            await self._serve(session)
        finally:
            session.fail_all()
            await self.registry.disconnected(namespace, host_id, session.connection_id)
            logger.info("host {} disconnected", host_id)

    async def _handshake(self, websocket: WebSocket) -> p.Hello | None:
        try:
            raw = await asyncio.wait_for(
                receive_frame(websocket), self.timings.hello_timeout_ms / 1000
            )
            hello = p.parse(raw)
        except TimeoutError:
            await websocket.close(code=1008, reason="hello timeout")
            return None
        except (p.InvalidMessage, KeyError, WebSocketDisconnect):
            hello = None
        if not isinstance(hello, p.Hello):
            with contextlib.suppress(Exception):
                await websocket.close(code=1008, reason="invalid hello message")
            return None
        if hello.protocol_version not in p.SUPPORTED_VERSIONS:
            await websocket.send_text(p.dump(p.Negotiate()))
            await websocket.close(code=1008, reason="unsupported protocol version")
            return None
        return hello

    async def _capabilities(self, identity: Identity, hello: p.Hello) -> list[str]:
        """What this host may be asked to do. Declared capabilities win over the hello:
        a client's (from /auth/register) for JWT agents, the descriptor's (from
        /hosts/register) for machine tokens; only a host that declared none uses its
        hello's list, every time it connects."""
        namespace, host_id = identity.namespace_id, identity.host_id or ""
        row = await self.registry.row(namespace, host_id)
        declared: list[str] = []
        if identity.via == "jwt" and self.client_capabilities is not None:
            declared = await self.client_capabilities(identity.subject)
        elif row is not None:
            declared = list(row["capabilities"])
        chosen = [c for c in (declared or hello.capabilities) if c in p.CAPABILITIES]
        await self.registry.upsert(
            namespace,
            host_id,
            name=hello.name or (row["name"] if row else host_id),
            capabilities=chosen,
            host_type=hello.host_type,
            workspaces=hello.workspaces or None,
        )
        return chosen

    async def _serve(self, session: HostSession) -> None:
        while True:
            try:
                raw = await receive_frame(session.websocket)
            except (WebSocketDisconnect, RuntimeError):
                return
            try:
                message = p.parse(raw)
            except p.InvalidMessage as exc:
                logger.warning("host {}: {}", session.host_id, exc)
                continue
            await self._handle(session, message)

    async def _handle(self, session: HostSession, message: p.Message | None) -> None:
        if isinstance(message, p.Heartbeat):
            await self.registry.heard_from(session.namespace, session.host_id)
            await session.send(p.Ack())
        elif isinstance(message, (p.Chunk, p.Result, p.Error)):
            session.settle(message)
        elif isinstance(message, p.AdapterCall):
            task = asyncio.create_task(self._reverse_call(session, message))
            session.tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(session.tasks.discard)

    async def _reverse_call(self, session: HostSession, call: p.AdapterCall) -> None:
        """A platform call from the host, in the host's own namespace."""
        try:
            result = await self._platform_call(session.namespace, call)
            reply: p.Message = p.AdapterResponse(request_id=call.request_id, result=result)
        except KbError as exc:
            reply = p.AdapterError(
                request_id=call.request_id,
                error=p.ErrorBody(code=exc.code, message=exc.message, retryable=exc.status >= 500),
            )
        with contextlib.suppress(Exception):
            await session.send(reply)

    async def _platform_call(self, namespace: str, call: p.AdapterCall) -> Any:
        if call.adapter not in p.REVERSE_ADAPTERS:
            raise KbError("ADAPTER_CALL_REJECTED", f"adapter {call.adapter!r} is not allowed", 403)
        if call.adapter != "state":
            raise KbError(
                "ADAPTER_UNAVAILABLE", f"the {call.adapter} adapter is not configured", 503
            )
        if call.method not in ("get", "set", "delete") or not call.args:
            raise KbError(
                "ADAPTER_CALL_REJECTED",
                "state supports get(key), set(key, value, ttlMs?), delete(key)",
                400,
            )
        name = str(call.args[0])
        if name.startswith(("tenant:", "__")):
            raise KbError("ADAPTER_CALL_REJECTED", f"{name!r} is a reserved key", 403)
        key = f"tenant:{namespace}:{name}" if namespace != "default" else name
        if call.method == "get":
            value = await self.state.get(key)
            return None if value is MISSING else value
        if call.method == "set":
            ttl = call.args[2] if len(call.args) > 2 else None
            await self.state.set(key, call.args[1] if len(call.args) > 1 else None, ttl)
            return True
        return await self.state.delete(key)
