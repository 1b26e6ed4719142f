"""The request pipeline, outermost first (wired in kblabs.app):

1. RequestContextMiddleware — X-Request-Id / X-Trace-Id accepted (bounded) or generated,
   bound into every log line, echoed on the response.
2. AccessLogMiddleware — one log line per request, HTTP metrics, operation stats.
3. SecurityHeadersMiddleware — nosniff, frame deny, referrer policy, CSP, HSTS on https.
4. (CORSMiddleware — only when cors.allowOrigins lists origins.)
5. UnreadBodyDrainMiddleware — an answer given before the body arrived still keeps the
   keep-alive connection.
6. BodySizeLimitMiddleware — 413 above server.maxBodyBytes, declared or streamed.
7. authentication (kblabs.auth.middleware)
8. ErrorEnvelopeMiddleware (kblabs.http.errors) — every error becomes an envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from loguru import logger
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kblabs.errors import KbError
from kblabs.http.asgi import HttpMiddleware
from kblabs.http.envelope import STARTED_KEY, error_response
from kblabs.observability import context
from kblabs.observability.metrics import Metrics
from kblabs.observability.operations import OperationStats

ROUTE_KEY = "kb.route"  # a module may set an explicit route template here


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestContextMiddleware:
    """HTTP and WebSocket: both get ids."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope[STARTED_KEY] = time.perf_counter()
        rid = context.accept_id(_header(scope, b"x-request-id")) or context.new_id()
        tid = context.accept_id(_header(scope, b"x-trace-id")) or rid
        rid_token, tid_token = context.request_id.set(rid), context.trace_id.set(tid)

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Request-Id"] = rid
                headers["X-Trace-Id"] = tid
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            context.request_id.reset(rid_token)
            context.trace_id.reset(tid_token)


def route_template(scope: Scope) -> str:
    """The matched route's template, with any mount prefix; never the raw path."""
    explicit = scope.get(ROUTE_KEY)
    if explicit:
        return explicit
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    prefix = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
    return prefix + path


class AccessLogMiddleware(HttpMiddleware):
    def __init__(self, app: ASGIApp, metrics: Metrics, operations: OperationStats) -> None:
        super().__init__(app)
        self.metrics = metrics
        self.operations = operations

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500
        started = time.perf_counter()

        async def capture_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.active_operations.inc()
        try:
            await self.app(scope, receive, capture_status)
        finally:
            self.metrics.active_operations.dec()
            duration_ms = (time.perf_counter() - started) * 1000
            method, route = scope["method"], route_template(scope)
            self.metrics.observe_request(method, route, status, duration_ms)
            self.operations.record_request(f"http {method} {route}", duration_ms, status)
            logger.bind(
                module="access",
                method=method,
                route=route,
                status=status,
                durationMs=round(duration_ms, 3),
            ).info("{} {} {} {:.1f}ms", method, scope["path"], status, duration_ms)


class SecurityHeadersMiddleware(HttpMiddleware):
    API_CSP = "default-src 'none'; frame-ancestors 'none'"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
                headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
                headers.setdefault("Content-Security-Policy", self.API_CSP)
                if scope.get("scheme") == "https":
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UnreadBodyDrainMiddleware(HttpMiddleware):
    """Reads what is left of a small request body before the response starts.

    Hypercorn closes a keep-alive connection when a response ends before the request body
    was fully received. A 401/403/404 decided from the headers alone can go out before the
    body's bytes arrive; the client then finds its connection closed under it (reset, or
    "server disconnected without sending a response") instead of reading the answer. Bodies
    above DRAIN_LIMIT_BYTES (a 413, say) are not read: closing is the right answer for them.
    """

    DRAIN_LIMIT_BYTES = 1 << 20
    DRAIN_TIMEOUT_S = 5.0

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _header(scope, b"content-length")
        chunked = _header(scope, b"transfer-encoding") is not None
        if not chunked and (declared is None or not declared.isdigit() or declared == "0"):
            await self.app(scope, receive, send)  # no body to wait for
            return
        if declared is not None and declared.isdigit() and int(declared) > self.DRAIN_LIMIT_BYTES:
            await self.app(scope, receive, send)
            return
        body_done = False

        async def tracking_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def draining_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drain(tracking_receive), self.DRAIN_TIMEOUT_S)
            await send(message)

        await self.app(scope, tracking_receive, draining_send)

    async def _drain(self, receive: Receive) -> None:
        read = 0
        while read <= self.DRAIN_LIMIT_BYTES:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            read += len(message.get("body", b""))


class BodySizeLimitMiddleware(HttpMiddleware):
    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int] | int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    def _too_large(self, limit: int) -> KbError:
        return KbError(
            "PAYLOAD_TOO_LARGE",
            f"request body is larger than the limit of {limit} bytes (server.maxBodyBytes)",
            413,
        )

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes() if callable(self.max_bytes) else self.max_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(scope, self._too_large(limit))(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large(limit)
            return message

        await self.app(scope, counting_receive, send)
