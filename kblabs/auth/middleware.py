"""Authentication for every route: a short public allowlist, a bearer token for the rest.

Placeholder until the gateway issue: the only accepted credential is the bootstrap
admin token from the data dir, compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from kblabs.errors import KbError
from kblabs.http.envelope import error_response


def public_paths(*, production: bool, public_metrics: bool) -> frozenset[str]:
    paths = {"/health", "/ready", "/openapi.json"}
    if not production:
        paths.add("/docs")
    if public_metrics:
        paths.add("/metrics")
    return frozenset(paths)


def bearer_token(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class AuthMiddleware:
    def __init__(
        self, app: ASGIApp, public: frozenset[str], admin_token: Callable[[], str | None]
    ) -> None:
        self.app = app
        self.public = public
        self.admin_token = admin_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        if self._authenticated(scope):
            scope["kb.identity"] = {"sub": "admin", "role": "admin", "namespaceId": "default"}
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
            return
        error = KbError(
            "UNAUTHORIZED",
            "missing or invalid bearer token (Authorization: Bearer <token>)",
            401,
            headers={"WWW-Authenticate": 'Bearer realm="kblabs"'},
        )
        await error_response(scope, error)(scope, receive, send)

    def _authenticated(self, scope: Scope) -> bool:
        presented, expected = bearer_token(scope), self.admin_token()
        if not presented or not expected:
            return False
        return hmac.compare_digest(presented.encode(), expected.encode())
