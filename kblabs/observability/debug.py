"""Diagnostic routes (server.debugRoutes): a slow request and a failing one.

Operators use them to check drain behaviour and error reporting end to end; they sit
behind authentication like every other /api/v1 route.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kblabs.auth.roles import requires
from kblabs.http.envelope import ok
from kblabs.http.validation import field_error

MAX_SLEEP_MS = 60_000


@requires("admin")
async def sleep(request: Request) -> JSONResponse:
    """Answer after `ms` milliseconds (at most 60 000)."""
    raw = request.query_params.get("ms", "1000")
    if not raw.isdigit() or int(raw) > MAX_SLEEP_MS:
        raise field_error("ms", f"must be an integer 0..{MAX_SLEEP_MS}")
    await asyncio.sleep(int(raw) / 1000)
    return ok(request, {"sleptMs": int(raw)})


@requires("admin")
async def error(request: Request) -> JSONResponse:
    """Raise an unexpected exception, to see how internal errors are reported."""
    raise RuntimeError("provoked internal error (debug route)")


routes = [
    Route("/api/v1/debug/sleep", sleep, methods=["GET"]),
    Route("/api/v1/debug/error", error, methods=["GET"]),
]
