"""One authentication middleware for every route (ARCHITECTURE §7).

- public paths pass without credentials;
- "optional" paths (registration, revocation) pass too, with the caller's identity when
  one was presented: their handlers decide (admin token, enrollment token, refresh token);
- /internal/* needs X-Internal-Secret (constant-time compare; 403 while it is unset);
- signature paths (webhooks) authenticate by HMAC in their own handlers;
- everything else needs a bearer token: 401, or WebSocket close 1008 before any work.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from kblabs.auth.identity import SCOPE_KEY, Identity
from kblabs.auth.service import AuthService
from kblabs.errors import KbError
from kblabs.http.envelope import error_response

OPTIONAL_AUTH = frozenset({"/auth/register", "/auth/revoke", "/hosts/register"})
SIGNATURE_PREFIXES = ("/api/v1/webhooks/", "/api/v1/hooks/")
INTERNAL_PREFIX = "/internal/"


def public_paths(*, production: bool, public_metrics: bool) -> frozenset[str]:
    paths = {"/health", "/ready", "/openapi.json", "/auth/token", "/auth/refresh"}
    if not production:
        paths.add("/docs")
    if public_metrics:
        paths.add("/metrics")
    return frozenset(paths)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def bearer_token(scope: Scope) -> str | None:
    """Authorization: Bearer …; for WebSockets and event streams also ?access_token=."""
    header = _header(scope, b"authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    streaming = scope["type"] == "websocket" or "text/event-stream" in (
        _header(scope, b"accept") or ""
    )
    if streaming:
        from urllib.parse import parse_qs

        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("access_token")
        if values and values[0]:
            return values[0]
    return None


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        public: frozenset[str],
        auth: Callable[[], AuthService],
        internal_secret: Callable[[], str | None] = lambda: os.environ.get(
            "GATEWAY_INTERNAL_SECRET"
        ),
        signature_prefixes: Iterable[str] = SIGNATURE_PREFIXES,
    ) -> None:
        self.app = app
        self.public = public
        self.auth = auth
        self.internal_secret = internal_secret
        self.signature_prefixes = tuple(signature_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in self.public or path.startswith(self.signature_prefixes):
            await self.app(scope, receive, send)
            return
        if path.startswith(INTERNAL_PREFIX):
            await self._internal(scope, receive, send)
            return
        token = bearer_token(scope)
        identity = await self.auth().resolve(token) if token else None
        if identity is not None:
            scope[SCOPE_KEY] = identity
            await self.app(scope, receive, send)
        elif path in OPTIONAL_AUTH and token is None:
            await self.app(scope, receive, send)
        else:
            message = "invalid or expired token" if token else "missing bearer token"
            await self._refuse(scope, receive, send, message)

    async def _internal(self, scope: Scope, receive: Receive, send: Send) -> None:
        expected = self.internal_secret()
        presented = _header(scope, b"x-internal-secret") or ""
        if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
            error = KbError(
                "FORBIDDEN",
                "internal route: X-Internal-Secret missing or wrong "
                "(or GATEWAY_INTERNAL_SECRET unset)",
                403,
            )
            await _reject(scope, receive, send, error, 1008)
            return
        scope[SCOPE_KEY] = Identity("internal", "default", "admin", "internal")
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, message: str) -> None:
        error = KbError(
            "UNAUTHORIZED",
            f"{message} (Authorization: Bearer <token>)",
            401,
            headers={"WWW-Authenticate": 'Bearer realm="kblabs"'},
        )
        await _reject(scope, receive, send, error, 1008)


async def _reject(scope: Scope, receive: Receive, send: Send, error: KbError, ws_code: int) -> None:
    if scope["type"] == "websocket":
        # Accept, then close with a policy-violation code the client can read; no message
        # of the client's is processed.
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": ws_code, "reason": error.message[:120]})
        return
    await error_response(scope, error)(scope, receive, send)
