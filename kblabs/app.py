"""Composition: the URL map, the middleware order and the lifespan, in one place.

URL map (ARCHITECTURE §3); modules that do not exist yet are simply not mounted:

    /health, /ready                    liveness, readiness (kb.ready/1)        public
    /auth/token, /auth/refresh         client credentials → token pair         public
    /auth/register, /auth/revoke       admin, enrollment or refresh token      see handler
    /hosts/register                    admin or enrollment token               see handler
    /hosts, /hosts/{hostId}            host registry (caller's namespace)      bearer
    WS /hosts/connect                  host-agent protocol 1.0                 machine token
    /internal/dispatch|resolve-host    calls into connected hosts              X-Internal-Secret
    /platform/v1/{adapter}/{method}    adapter facade (allowlist)              bearer (operator)
    /llm/v1/chat/completions           OpenAI-compatible (503 until an LLM)    bearer (operator)
    /telemetry/v1/ingest               telemetry events into analytics         bearer
    /api/v1/execute[/{id}/cancel]      run a handler on a host, ndjson events  bearer (operator)
    WS /clients/connect                execution observers                     bearer
    /metrics                           Prometheus text       bearer, or public if configured
    /observability/describe|health     kb.observability/1                      bearer
    /openapi.json, /docs               API description (/docs not in production) public
    /api/v1/health, /api/v1/ready      aliases of /health and /ready           bearer
    /api/v1/state/…                    state broker: kv, locks, counters, limits bearer
    /api/v1/plugins[/registry|health]  loaded plugins and diagnostics            bearer
    /api/v1/plugins/refresh|enable|disable  switches ({"pluginId"})         operator/admin
    /api/v1/routes                     every /api route incl. plugins (kb.routes/1) bearer
    /api/v1/platform/config            platform section, secrets redacted      bearer
    /api/v1/studio/registry            plugins' Studio pages (kb.studio/2)     bearer
    /plugins/{pluginId}/widgets/{path} widget bundles (<root>/dist/widgets/)   bearer
    /api/v1/webhooks/{source}          signed deliveries → plugin handlers     HMAC signature
    /api/v1/workflows[/{id}[/runs]]    workflow catalog, start runs            bearer (operator)
    /api/v1/runs[/{id}[/…]]            runs: cancel, rerun, logs, events (SSE),  bearer
                                       approvals
    /api/v1/stats                      workflow engine counts                  bearer
    /api/v1/crons[/{id}[/…]]           cron schedules: trigger, pause, resume  bearer (operator)
    /api/v1/jobs[/{id}[/cancel]]       one-step broker jobs                    bearer (operator)
    /api/v1/hooks/{workflowId}         signed webhook starts a workflow        HMAC signature
    /api/v1/marketplace/…              install, update, enable, link, sync,    bearer (admin
                                       doctor (kb.marketplace/2 lock)          for writes)
    /api/v1/analytics/events|stats     analytics events, counts, buffer/dlq    bearer
    /api/v1/adapters/{a}/usage|daily-stats  adapter usage from analytics       bearer
    /api/v1/logs[/stats|stream|{id}[/related]]  persisted logs, SSE tail       bearer (admin:
                                                                               all records)
    /api/… (anything else)             plugin-declared routes (catch-all, last) bearer
    /api/v1/debug/*                    diagnostics, only with server.debugRoutes bearer

Middleware, outermost first: see kblabs.http.middleware.
Components start in this order and stop in the reverse (each is named in /ready):
    data-dir → store → log-store → adapters → state → auth → plugins → plugin-runner → webhooks →
    workflows → gateway → loop-lag-sampler
Later modules slot in as ARCHITECTURE §2 orders them: store → adapters → state broker →
plugin registry → workflow workers and scheduler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount, Route

from kblabs.auth import routes as auth_routes
from kblabs.auth.middleware import AuthMiddleware, public_paths
from kblabs.auth.service import AuthService
from kblabs.config import Settings
from kblabs.datadir import ensure_data_dir
from kblabs.gateway import execute, facades
from kblabs.gateway import routes as gateway_routes
from kblabs.gateway.execute import Executions
from kblabs.gateway.hub import HostHub
from kblabs.gateway.registry import HostRegistry
from kblabs.http.errors import ErrorEnvelopeMiddleware, http_exception_handler
from kblabs.http.middleware import (
    AccessLogMiddleware,
    BodySizeLimitMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
    UnreadBodyDrainMiddleware,
)
from kblabs.http.openapi import docs, openapi_json
from kblabs.lifecycle import Lifecycle
from kblabs.marketplace import api as marketplace_api
from kblabs.marketplace.lockfile import LockFile
from kblabs.marketplace.service import Marketplace
from kblabs.observability import analytics_api, debug, endpoints, logs_api
from kblabs.observability.log_store import LogStore
from kblabs.observability.looplag import LoopLagSampler
from kblabs.observability.metrics import CpuPercent, Metrics
from kblabs.platform import AdapterRegistry, PlatformContextMiddleware
from kblabs.plugins.registry import PluginRegistry
from kblabs.plugins.runner import PluginRunner
from kblabs.rest import platform_info
from kblabs.rest import plugins as plugin_api
from kblabs.rest import studio as studio_api
from kblabs.rest import webhooks as webhook_api
from kblabs.rest.webhooks import WebhookQueue
from kblabs.runtime import Runtime
from kblabs.state import api as state_api
from kblabs.state.ratelimit import TenantRateLimitMiddleware
from kblabs.state.service import StateBroker
from kblabs.store import Store
from kblabs.workflow import api as workflow_api
from kblabs.workflow import triggers_api
from kblabs.workflow.engine import WorkflowEngine


class DataDir:
    name = "data-dir"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def start(self) -> None:
        ensure_data_dir(self.path)

    async def stop(self) -> None:
        return None


def public_url(settings: Settings) -> str:
    host = settings.server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.server.port}"


def build_runtime(settings: Settings, *, migrate: bool = True) -> Runtime:
    loop_lag = LoopLagSampler()
    metrics = Metrics(loop_lag)
    store = Store(settings, migrate=migrate)
    log_store = LogStore(settings, store)
    adapters = AdapterRegistry(settings, store, metrics=metrics.registry)
    state = StateBroker(settings, metrics.registry)
    auth = AuthService(settings, store, state)
    auth.public_url = public_url(settings)
    timings = settings.gateway
    hub = HostHub(HostRegistry(store, timings.reconnect_grace_ms / 1000), state, timings)
    hub.client_capabilities = auth.client_capabilities
    plugins = PluginRegistry(LockFile.in_data_dir(settings.data_dir), settings.project_root)
    runner = PluginRunner(
        settings, lambda: plugins.plugins, adapters=adapters, state=state, hosts=hub
    )
    plugins.listeners.append(runner.on_registry_change)  # lifecycle onLoad / onUnload
    plugins.isolated = lambda plugin: runner.mode_for(plugin) == "subprocess"
    webhooks = WebhookQueue(store, plugins, runner)
    workflows = WorkflowEngine(
        settings, store, plugins=plugins, runner=runner, metrics=metrics.registry
    )
    marketplace = Marketplace(settings, plugins)
    lifecycle = Lifecycle(
        [
            DataDir(settings.data_dir),
            store,
            log_store,
            adapters,
            state,
            auth,
            plugins,
            runner,
            webhooks,
            workflows,
            hub,
            loop_lag,
        ]
    )
    metrics.health = lifecycle.health
    return Runtime(
        settings,
        store,
        adapters,
        state,
        auth,
        plugins,
        runner,
        webhooks,
        workflows,
        hub,
        Executions(),
        marketplace,
        loop_lag,
        lifecycle,
        metrics,
    )


def worker_components(settings: Settings, *, migrate: bool = True) -> list[Any]:
    """What `python -m kblabs worker` runs: the workflow engine and what its steps need
    (store, adapters, state, plugins), without HTTP, auth or the gateway."""
    store = Store(settings, migrate=migrate)
    adapters = AdapterRegistry(settings, store)
    state = StateBroker(settings, Metrics(LoopLagSampler()).registry)
    plugins = PluginRegistry(LockFile.in_data_dir(settings.data_dir), settings.project_root)
    runner = PluginRunner(settings, lambda: plugins.plugins, adapters=adapters, state=state)
    plugins.listeners.append(runner.on_registry_change)
    plugins.isolated = lambda plugin: runner.mode_for(plugin) == "subprocess"
    workflows = WorkflowEngine(settings, store, plugins=plugins, runner=runner, workers=True)
    log_store = LogStore(settings, store)
    return [
        DataDir(settings.data_dir),
        store,
        log_store,
        adapters,
        state,
        plugins,
        runner,
        workflows,
    ]


def routes(settings: Settings) -> list[BaseRoute]:
    table: list[BaseRoute] = [
        Route("/health", endpoints.health, methods=["GET"]),
        Route("/ready", endpoints.ready, methods=["GET"]),
        Route("/metrics", endpoints.metrics, methods=["GET"]),
        Route("/observability/describe", endpoints.describe, methods=["GET"]),
        Route("/observability/health", endpoints.observability_health, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),
        Route("/api/v1/health", endpoints.health, methods=["GET"]),
        Route("/api/v1/ready", endpoints.ready, methods=["GET"]),
        *auth_routes.routes,
        *gateway_routes.routes,
        *facades.routes,
        *execute.routes,
        Mount("/api/v1/state", routes=state_api.routes),
        *plugin_api.routes,
        *webhook_api.routes,
        *workflow_api.routes,
        *triggers_api.routes,
        *marketplace_api.routes,
        *analytics_api.routes,
        *logs_api.routes,
        *platform_info.routes,
        *studio_api.routes,
    ]
    if not settings.is_production:
        table.append(Route("/docs", docs, methods=["GET"], include_in_schema=False))
    if settings.server.debug_routes:
        table.extend(debug.routes)
    table.append(plugin_api.catch_all)  # last: plugin routes take what nothing else did
    return table


def middleware(settings: Settings, runtime: Runtime, public: frozenset[str]) -> list[Middleware]:
    stack = [
        Middleware(RequestContextMiddleware),
        Middleware(PlatformContextMiddleware, registry=runtime.adapters),
        Middleware(AccessLogMiddleware, metrics=runtime.metrics, operations=runtime.operations),
        Middleware(SecurityHeadersMiddleware),
    ]
    if settings.cors.allow_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors.allow_origins,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=["X-Request-Id", "X-Trace-Id"],
            )
        )
    stack += [
        Middleware(UnreadBodyDrainMiddleware),
        Middleware(BodySizeLimitMiddleware, max_bytes=settings.server.max_body_bytes),
        Middleware(AuthMiddleware, public=public, auth=lambda: runtime.auth),
    ]
    if settings.rate_limits.enabled:
        stack.append(
            Middleware(
                TenantRateLimitMiddleware, broker=runtime.state, settings=settings.rate_limits
            )
        )
    stack += [
        Middleware(ErrorEnvelopeMiddleware),
    ]
    return stack


def create_app(settings: Settings, *, migrate: bool = True) -> Starlette:
    runtime = build_runtime(settings, migrate=migrate)
    public = public_paths(
        production=settings.is_production,
        public_metrics=settings.observability.public_metrics,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.lifecycle.start()
        runtime.metrics.restarts.set(runtime.store.restarts)
        for callback in app.state.on_ready:
            callback()
        try:
            yield
        finally:
            await runtime.lifecycle.stop()

    app = Starlette(
        routes=routes(settings),
        middleware=middleware(settings, runtime, public),
        exception_handlers={HTTPException: http_exception_handler},
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.public_paths = public
    app.state.probe_cache = endpoints._ProbeCache()
    app.state.health_cpu = CpuPercent()  # its own window: /metrics scrapes keep theirs
    app.state.on_ready = []  # callables run once every component has started
    app.state.openapi_sources = [lambda: plugin_api.openapi_paths(runtime.plugins)]
    # coroutines run when draining starts: close WebSockets so they do not hold the drain
    app.state.on_drain = [runtime.executions.drain, runtime.hub.drain, runtime.workflows.drain]
    log_store = next(c for c in runtime.lifecycle.components if isinstance(c, LogStore))
    app.state.log_store = log_store  # read by kblabs.observability.logs_api
    app.state.on_drain.append(log_store.drain)
    return app
