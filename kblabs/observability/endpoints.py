"""/health, /ready, /metrics and the kb.observability/1 contract endpoints."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import kblabs
from kblabs.lifecycle import utc_now_iso
from kblabs.observability.metrics import CONTENT_TYPE, rss_bytes
from kblabs.runtime import Runtime

CAPABILITIES = ["httpMetrics", "eventLoopMetrics", "operationMetrics", "logCorrelation"]
PROBE_CACHE_S = 5.0


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def health(request: Request) -> JSONResponse:
    """Liveness: answers while the event loop runs; does no I/O."""
    runtime = _runtime(request)
    return JSONResponse(
        {
            "status": "ok",
            "ts": utc_now_iso(),
            "uptimeSec": round(runtime.lifecycle.uptime_s, 3),
            "version": kblabs.__version__,
        }
    )


async def ready(request: Request) -> JSONResponse:
    """Readiness (kb.ready/1): 503 until every component started and while draining."""
    status, body = _runtime(request).lifecycle.readiness()
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(_runtime(request).metrics.render(), media_type=CONTENT_TYPE)


async def describe(request: Request) -> JSONResponse:
    """kb.observability/1 description of this service."""
    runtime = _runtime(request)
    families = runtime.metrics.family_names()
    return JSONResponse(
        {
            "schema": "kb.observability/1",
            "contractVersion": "1.0",
            "serviceId": runtime.settings.observability.service_id,
            "instanceId": runtime.instance_id,
            "serviceType": "monolith",
            "version": kblabs.__version__,
            "environment": runtime.settings.env,
            "startedAt": runtime.lifecycle.started_at,
            "dependencies": [
                {"serviceId": "database", "required": True, "description": "SQL store"}
            ],
            "metricsEndpoint": "/metrics",
            "healthEndpoint": "/observability/health",
            "logsSource": "stderr",
            "capabilities": CAPABILITIES,
            "metricFamilies": families,
        }
    )


class _ProbeCache:
    """Database probe result, reused for a few seconds so scrapers cannot hammer it."""

    def __init__(self) -> None:
        self.at = 0.0
        self.result: tuple[bool, float, str] = (False, 0.0, "not probed")


async def observability_health(request: Request) -> JSONResponse:
    """kb.observability/1 health: checks, process snapshot and top operations."""
    runtime = _runtime(request)
    cache: _ProbeCache = request.app.state.probe_cache
    if time.monotonic() - cache.at > PROBE_CACHE_S:
        cache.result = await runtime.store.check()
        cache.at = time.monotonic()
    db_ok, db_latency, db_message = cache.result
    lifecycle_health = runtime.lifecycle.health()
    status = lifecycle_health if db_ok else "unhealthy"
    return JSONResponse(
        {
            "schema": "kb.observability/1",
            "observedAt": utc_now_iso(),
            "status": status,
            "uptimeSec": round(runtime.lifecycle.uptime_s, 3),
            "checks": [
                {
                    "id": "database",
                    "status": "ok" if db_ok else "error",
                    "message": db_message,
                    "latencyMs": round(db_latency, 3),
                },
                {
                    "id": "lifecycle",
                    "status": "ok" if lifecycle_health == "healthy" else "warn",
                    "message": runtime.lifecycle.phase,
                    "latencyMs": 0,
                },
            ],
            "snapshot": {
                "cpuPercent": round(request.app.state.health_cpu(), 3),
                "rssBytes": rss_bytes(),
                "heapUsedBytes": None,  # no Python equivalent of V8's heap figure
                "eventLoopLagMs": round(runtime.loop_lag.mean_ms(), 3),
                "activeOperations": int(runtime.metrics.active_operations._value.get()),
            },
            "topOperations": runtime.operations.top(),
            "state": "active" if runtime.lifecycle.phase == "ready" else "insufficient_data",
            "meta": {
                "requestsTotal": runtime.operations.requests_total,
                "errorsTotal": runtime.operations.errors_total,
            },
        }
    )
