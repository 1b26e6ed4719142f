"""The real app in-process: envelope, ids, auth allowlist, limits, metrics, OpenAPI."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from kblabs.http.middleware import AccessLogMiddleware
from kblabs.observability.looplag import LoopLagSampler
from kblabs.observability.metrics import Metrics
from kblabs.observability.operations import OperationStats

pytestmark = pytest.mark.anyio

CANONICAL_FAMILIES = {
    "http_requests",  # exposed as http_requests_total
    "http_errors",
    "http_request_duration_ms",
    "process_rss_bytes",
    "process_cpu_percent",
    "process_event_loop_lag_ms",
    "service_health_status",
    "service_restarts_total",
}


async def test_health_is_public_and_cheap(app_client):
    response = await app_client.client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_ready_reports_every_component(app_client):
    response = await app_client.client.get("/ready")
    body = response.json()
    assert response.status_code == 200
    assert body["schema"] == "kb.ready/1" and body["ready"] is True
    assert list(body["components"]) == [
        "data-dir",
        "store",
        "log-store",
        "adapters",
        "state",
        "auth",
        "plugins",
        "plugin-runner",
        "webhooks",
        "workflows",
        "gateway",
        "loop-lag-sampler",
    ]
    assert all(c["status"] == "started" for c in body["components"].values())


async def test_ready_is_503_while_draining(app_client):
    app_client.app.state.runtime.lifecycle.begin_draining()
    response = await app_client.client.get("/ready")
    assert response.status_code == 503
    assert response.json()["reason"] == "draining"


async def test_every_response_carries_request_and_trace_ids(app_client):
    client = app_client.client
    for path in ("/health", "/nope", "/api/v1/health"):
        response = await client.get(path)
        assert response.headers["x-request-id"]
    echoed = await client.get("/health", headers={"X-Request-Id": "abc-123", "X-Trace-Id": "t1"})
    assert echoed.headers["x-request-id"] == "abc-123"
    assert echoed.headers["x-trace-id"] == "t1"
    hostile = await client.get("/health", headers={"X-Request-Id": "x" * 500})
    assert hostile.headers["x-request-id"] != "x" * 500
    assert len(hostile.headers["x-request-id"]) <= 128


async def test_security_headers_on_every_response(app_client):
    for path in ("/health", "/api/v1/health"):
        response = await app_client.client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


async def test_routes_outside_the_allowlist_need_the_admin_token(app_client):
    client = app_client.client
    for path in ("/api/v1/health", "/metrics", "/observability/describe", "/nope"):
        response = await client.get(path)
        assert response.status_code == 401, path
        body = response.json()
        assert body["ok"] is False and body["error"]["code"] == "UNAUTHORIZED"
        assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = await client.get("/api/v1/health", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = await client.get("/api/v1/health", headers=app_client.auth)
    assert right.status_code == 200


async def test_unknown_route_is_an_enveloped_404(app_client):
    response = await app_client.client.get("/api/v1/nothing", headers=app_client.auth)
    assert response.status_code == 404
    body = response.json()
    assert body["ok"] is False and body["error"]["code"] == "NOT_FOUND"
    assert body["meta"]["requestId"] == response.headers["x-request-id"]


async def test_internal_error_body_has_no_stack_trace(app_client):
    response = await app_client.client.get("/api/v1/debug/error", headers=app_client.auth)
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == {
        "code": "INTERNAL_ERROR",
        "message": "internal error; see the server log",
    }
    text = response.text
    assert "Traceback" not in text and "RuntimeError" not in text and ".py" not in text


async def test_validation_error_names_the_field(app_client):
    response = await app_client.client.get("/api/v1/debug/sleep?ms=abc", headers=app_client.auth)
    assert response.status_code == 400
    assert response.json()["error"]["details"] == [
        {"field": "ms", "message": "must be an integer 0..60000"}
    ]


async def test_body_over_the_limit_is_413(app_client):
    limit = app_client.settings.server.max_body_bytes
    response = await app_client.client.post(
        "/api/v1/health", content=b"x" * (limit + 1), headers=app_client.auth
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

    async def chunks():  # no Content-Length: counted while streaming
        for _ in range(limit // 65536 + 2):
            yield b"y" * 65536

    streamed = await app_client.client.put(
        "/api/v1/state/kv/big", content=chunks(), headers=app_client.auth
    )
    assert streamed.status_code == 413


async def test_metrics_parse_and_hold_every_canonical_family(app_client):
    client = app_client.client
    await client.get("/health")
    await client.get("/api/v1/debug/sleep?ms=1", headers=app_client.auth)
    await client.get("/nothing", headers=app_client.auth)
    response = await client.get("/metrics", headers=app_client.auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert set(families) >= CANONICAL_FAMILIES
    routes = {s.labels["route"] for s in families["http_requests"].samples}
    assert {"/health", "/api/v1/debug/sleep", "unmatched"} <= routes
    assert not any("?" in route for route in routes)
    assert families["service_health_status"].samples[0].value == 2


async def test_observability_contract(app_client):
    client = app_client.client
    describe = (await client.get("/observability/describe", headers=app_client.auth)).json()
    assert describe["schema"] == "kb.observability/1"
    assert describe["contractVersion"] == "1.0"
    assert "http_request_duration_ms" in describe["metricFamilies"]
    assert "http_requests_total" in describe["metricFamilies"]
    health = (await client.get("/observability/health", headers=app_client.auth)).json()
    assert health["status"] == "healthy"
    assert {c["id"]: c["status"] for c in health["checks"]}["database"] == "ok"
    assert health["snapshot"]["rssBytes"] > 0
    assert health["topOperations"]


async def test_openapi_lists_routes_and_marks_public_ones(app_client):
    spec = (await app_client.client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert "security" not in spec["paths"]["/health"]["get"]
    assert spec["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}]
    docs = await app_client.client.get("/docs")
    assert docs.status_code == 200 and "/api/v1/health" in docs.text


async def test_route_labels_are_templates_with_mount_prefixes():
    """Our access middleware on a small app with path parameters and a mount."""

    async def item(request):
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("ok")

    import httpx

    metrics = Metrics(LoopLagSampler())
    app = Starlette(
        routes=[
            Route("/items/{itemId}", item),
            Mount("/api/v1/things", routes=[Route("/{thingId}/parts/{part}", item)]),
        ]
    )
    app.add_middleware(AccessLogMiddleware, metrics=metrics, operations=OperationStats())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/items/0123456789abcdef")
        await client.get("/api/v1/things/plugin%3A%40kb-labs/parts/7")
    text = metrics.render().decode()
    assert 'route="/items/{itemId}"' in text
    assert 'route="/api/v1/things/{thingId}/parts/{part}"' in text
    assert "0123456789abcdef" not in text and "kb-labs" not in text
