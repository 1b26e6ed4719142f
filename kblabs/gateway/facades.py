"""/platform/v1/{adapter}/{method}, /llm/v1/chat/completions, /telemetry/v1/ingest.

The adapter layer arrives with the plugin runtime; until then only `cache` is served
(backed by the state broker, in the caller's namespace) and every other adapter answers
503 ADAPTER_UNAVAILABLE — after the allowlist checks, so callers learn about typos and
forbidden methods now.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kblabs.auth.identity import namespace_of
from kblabs.auth.roles import check_role, requires
from kblabs.errors import KbError
from kblabs.http.validation import json_body
from kblabs.state.backend import MISSING

ALLOWED_METHODS: dict[str, frozenset[str]] = {
    "llm": frozenset({"complete", "stream", "chatWithTools"}),
    "cache": frozenset({"get", "set", "delete", "clear"}),
    "vectorStore": frozenset({"search", "upsert", "delete", "count"}),
    "analytics": frozenset(
        {"track", "identify", "flush", "getEvents", "getStats", "getDailyStats"}
    ),
    "embeddings": frozenset({"embed"}),
    "storage": frozenset({"read", "write", "delete", "list", "exists"}),
    "eventBus": frozenset({"publish", "subscribe"}),
    "sqlDatabase": frozenset({"query", "execute"}),
    "documentDatabase": frozenset({"find", "findOne", "insert", "update", "delete"}),
}
ADMIN_ONLY = frozenset({"sqlDatabase", "documentDatabase"})


class PlatformBody(BaseModel):
    args: list[Any] = Field(default_factory=list, max_length=64)


class TelemetryEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1, max_length=128)
    type: str = Field(min_length=1, max_length=256)
    timestamp: datetime | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)


class TelemetryBody(BaseModel):
    events: list[TelemetryEvent] = Field(min_length=1, max_length=500)


def _platform_error(code: str, message: str, status: int, started: float) -> JSONResponse:
    return JSONResponse(
        {
            "ok": False,
            "error": {"code": code, "message": message},
            "durationMs": round((time.perf_counter() - started) * 1000, 3),
        },
        status_code=status,
    )


@requires("operator")
async def platform_call(request: Request) -> JSONResponse:
    """Call a platform adapter method: body {args: [...]} → {ok, result, durationMs}."""
    started = time.perf_counter()
    adapter, method = request.path_params["adapter"], request.path_params["method"]
    if adapter not in ALLOWED_METHODS:
        return _platform_error("ADAPTER_NOT_FOUND", f"no adapter {adapter!r}", 404, started)
    if method not in ALLOWED_METHODS[adapter]:
        allowed = ", ".join(sorted(ALLOWED_METHODS[adapter]))
        return _platform_error(
            "METHOD_NOT_ALLOWED", f"{adapter}.{method} is not allowed ({allowed})", 403, started
        )
    if adapter in ADMIN_ONLY:
        check_role(request, "admin")
    body = await json_body(request, PlatformBody, optional=True)
    if adapter != "cache":
        return _platform_error(
            "ADAPTER_UNAVAILABLE", f"the {adapter} adapter is not configured", 503, started
        )
    try:
        result = await _cache(request, method, body.args)
    except KbError as exc:
        return _platform_error(exc.code, exc.message, exc.status, started)
    return JSONResponse(
        {
            "ok": True,
            "result": result,
            "durationMs": round((time.perf_counter() - started) * 1000, 3),
        }
    )


async def _cache(request: Request, method: str, args: list[Any]) -> Any:
    state = request.app.state.runtime.state
    prefix = f"cache:{namespace_of(request.scope)}:"
    if method == "clear":
        return await state.clear(prefix + "*")
    if not args or not isinstance(args[0], str):
        raise KbError("VALIDATION_ERROR", f"cache.{method} needs a string key as args[0]", 400)
    key = prefix + args[0]
    if method == "get":
        value = await state.get(key)
        return None if value is MISSING else value
    if method == "set":
        ttl = args[2] if len(args) > 2 and isinstance(args[2], int) else None
        await state.set(key, args[1] if len(args) > 1 else None, ttl)
        return True
    return await state.delete(key)


@requires("operator")
async def chat_completions(request: Request) -> JSONResponse:
    """OpenAI-compatible chat completions (model = tier small|medium|large)."""
    return JSONResponse(
        {
            "error": {
                "message": "no LLM adapter is configured; set platform.adapters.llm in "
                "kb.config.json and OPENAI_API_KEY (see docs/config.md)",
                "type": "server_error",
                "code": "llm_not_configured",
            }
        },
        status_code=503,
    )


@requires("viewer")
async def telemetry_ingest(request: Request) -> JSONResponse:
    """Ingest 1..500 telemetry events into analytics."""
    await json_body(request, TelemetryBody)
    raise KbError("ANALYTICS_UNAVAILABLE", "the analytics adapter is not configured", 503)


routes = [
    Route("/platform/v1/{adapter}/{method}", platform_call, methods=["POST"]),
    Route("/llm/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/telemetry/v1/ingest", telemetry_ingest, methods=["POST"]),
]
