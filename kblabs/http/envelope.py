"""The `/api/v1` body envelope: {ok, data|error, meta{requestId, durationMs}}."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import Scope

from kblabs.errors import KbError
from kblabs.observability import context

STARTED_KEY = "kb.started"


def meta(scope: Scope) -> dict[str, Any]:
    started = scope.get(STARTED_KEY)
    duration = (time.perf_counter() - started) * 1000 if started else 0.0
    return {"requestId": context.request_id.get(), "durationMs": round(duration, 3)}


def ok(request: HTTPConnection, data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"ok": True, "data": data, "meta": meta(request.scope)}, status)


def error_response(scope: Scope, error: KbError) -> JSONResponse:
    headers = dict(error.headers)
    return JSONResponse(
        {"ok": False, "error": error.to_dict(), **error.extra, "meta": meta(scope)},
        status_code=error.status,
        headers=headers,
    )
