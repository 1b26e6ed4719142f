"""Turning every failure into an envelope: KbError as is, anything else as a bare 500.

Stack traces go to the log with the request id, never into a response body.
"""

from __future__ import annotations

from loguru import logger
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from kblabs.errors import KbError
from kblabs.http.asgi import HttpMiddleware
from kblabs.http.envelope import error_response

_HTTP_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    503: "NOT_READY",
}


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 and any HTTPException a handler raises."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
    message = exc.detail if isinstance(exc.detail, str) else code
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    error = KbError(code, message, exc.status_code, headers=dict(exc.headers or {}))
    return error_response(request.scope, error)


class ErrorEnvelopeMiddleware(HttpMiddleware):
    """Innermost of our middleware: catches what handlers raise."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            return
        except KbError as known:
            if not response_started:
                await error_response(scope, known)(scope, receive, send)
        except Exception as exc:
            _log_internal(scope, exc)
            if not response_started:
                internal = KbError("INTERNAL_ERROR", "internal error; see the server log", 500)
                await error_response(scope, internal)(scope, receive, send)


def _log_internal(scope: Scope, exc: Exception) -> None:
    logger.opt(exception=exc).error(
        "unhandled {} on {} {}", type(exc).__name__, scope.get("method"), scope.get("path")
    )
