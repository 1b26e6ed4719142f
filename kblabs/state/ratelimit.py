"""Per-namespace request limits on /api/v1/*, counted in the state broker.

Each namespace has a tier (config `rateLimits`): requests per minute and per day, fixed
windows. Every answer carries X-RateLimit-Limit/Remaining/Reset (the per-minute window);
over the limit the answer is 429 with Retry-After. If the state backend is down the
request is let through: a limiter outage must not become an API outage.
"""

from __future__ import annotations

import math
import time

from loguru import logger
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kblabs.auth.identity import namespace_of
from kblabs.config.settings import RateLimitSettings
from kblabs.errors import KbError
from kblabs.http.asgi import HttpMiddleware
from kblabs.http.envelope import error_response
from kblabs.state.api import iso
from kblabs.state.model import RateLimitResult
from kblabs.state.service import StateBroker

DAY_MS = 86_400_000
# The limiter's windows; the HTTP API refuses names starting with "__" (kblabs.state.api).
LIMITER_PREFIX = "__requests__:"
EXEMPT = frozenset({"/api/v1/health", "/api/v1/ready"})


class TenantRateLimitMiddleware(HttpMiddleware):
    def __init__(self, app: ASGIApp, broker: StateBroker, settings: RateLimitSettings) -> None:
        super().__init__(app)
        self.broker = broker
        self.settings = settings
        self._warned_at = 0.0

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if not path.startswith("/api/v1/") or path in EXEMPT:
            await self.app(scope, receive, send)
            return
        namespace = namespace_of(scope)
        try:
            verdict = await self._check(namespace)
        except Exception as exc:  # backend trouble: fail open, and say so now and then
            self._warn(exc)
            await self.app(scope, receive, send)
            return
        if verdict is None:
            await self.app(scope, receive, send)
            return
        if not verdict.allowed:
            await error_response(scope, _too_many(verdict))(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                _add_headers(MutableHeaders(scope=message), verdict)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _check(self, namespace: str) -> RateLimitResult | None:
        tier_name = self.settings.namespaces.get(namespace, self.settings.default_tier)
        tier = self.settings.tiers[tier_name]
        minute = day = None
        if tier.rpm is not None:
            minute = await self.broker.rate_limit(
                f"{LIMITER_PREFIX}{namespace}:minute", tier.rpm, self.settings.minute_ms
            )
            if not minute.allowed:
                return minute
        if tier.rpd is not None:
            day = await self.broker.rate_limit(f"{LIMITER_PREFIX}{namespace}:day", tier.rpd, DAY_MS)
            if not day.allowed:
                return day
        return minute or day

    def _warn(self, exc: Exception) -> None:
        if time.monotonic() - self._warned_at > 60:
            self._warned_at = time.monotonic()
            logger.warning("rate limits not enforced: {}", getattr(exc, "message", exc))


def _add_headers(headers: MutableHeaders, verdict: RateLimitResult) -> None:
    headers["X-RateLimit-Limit"] = str(verdict.limit)
    headers["X-RateLimit-Remaining"] = str(verdict.remaining)
    headers["X-RateLimit-Reset"] = str(math.ceil(verdict.reset_at_ms / 1000))


def _too_many(verdict: RateLimitResult) -> KbError:
    retry_after = max(1, math.ceil(verdict.retry_after_ms / 1000))
    details = {
        "retryAfter": retry_after,
        "limit": verdict.limit,
        "resetAt": iso(verdict.reset_at_ms),
    }
    holder = MutableHeaders({"Retry-After": str(retry_after)})
    _add_headers(holder, verdict)
    return KbError(
        "RATE_LIMIT_EXCEEDED",
        f"request limit of {verdict.limit} reached; retry in {retry_after} s",
        429,
        details=details,
        headers=dict(holder.items()),
        extra=details,
    )
