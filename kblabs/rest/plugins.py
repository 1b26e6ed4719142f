"""/api/v1/plugins… (registry introspection and switches) and the plugin route dispatcher.

Actions on a plugin live outside the plugin-id space (ARCHITECTURE §3):
POST /api/v1/plugins/enable|disable|refresh with {"pluginId": …}. Plugin routes are
served by one catch-all dispatcher over the live registry, so they appear and disappear
without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kblabs.auth.identity import namespace_of
from kblabs.auth.roles import check_role, requires
from kblabs.errors import KbError
from kblabs.http.envelope import ok
from kblabs.http.middleware import ROUTE_KEY
from kblabs.http.validation import json_body
from kblabs.observability import context
from kblabs.plugins import schemas
from kblabs.plugins.registry import PluginRegistry
from kblabs.plugins.routes import MountedRoute, find
from kblabs.plugins.runner import Call


class PluginIdBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    plugin_id: str = Field(alias="pluginId", min_length=1)


def _registry(request: Request) -> PluginRegistry:
    return request.app.state.runtime.plugins


@requires("viewer")
async def list_plugins(request: Request) -> JSONResponse:
    """Loaded plugins with their routes and what they provide."""
    registry = _registry(request)
    plugins = [registry.describe(p) for p in registry.plugins]
    return ok(request, {"plugins": plugins, "total": len(plugins), "rev": registry.revision})


@requires("viewer")
async def registry_snapshot(request: Request) -> JSONResponse:
    """The registry snapshot (kb.registry/1): plugins, diagnostics, revision."""
    return ok(request, _registry(request).snapshot())


@requires("viewer")
async def plugins_health(request: Request) -> JSONResponse:
    """Which plugins loaded and which failed, with diagnostic codes."""
    registry = _registry(request)
    status, message = registry.health()
    failed = [d.to_dict() for d in registry.diagnostics if d.severity == "error"]
    return ok(
        request,
        {
            "status": "healthy" if status == "ok" else "degraded",
            "message": message,
            "loaded": len(registry.plugins),
            "failed": failed,
            "diagnostics": [d.to_dict() for d in registry.diagnostics],
        },
    )


@requires("operator")
async def refresh(request: Request) -> JSONResponse:
    """Reload every plugin from the marketplace lock now."""
    return ok(request, await _registry(request).refresh())


async def _switch(request: Request, enabled: bool) -> JSONResponse:
    """Through the marketplace (the lock's only writer), with the lifecycle hooks."""
    body = await json_body(request, PluginIdBody)
    runtime = request.app.state.runtime
    registry = _registry(request)
    loaded = next((p for p in registry.plugins if p.id == body.plugin_id), None)
    if not enabled and loaded is not None:
        await runtime.runner.lifecycle(loaded, "on_disable")
    try:
        await runtime.marketplace.set_enabled(body.plugin_id, enabled)
    except KbError as exc:
        if exc.code == "PACKAGE_NOT_FOUND":
            raise KbError("PLUGIN_NOT_FOUND", exc.message, 404) from None
        raise
    now_loaded = next((p for p in registry.plugins if p.id == body.plugin_id), None)
    if enabled and loaded is None and now_loaded is not None:
        await runtime.runner.lifecycle(now_loaded, "on_enable")
    return ok(request, {"id": body.plugin_id, "enabled": enabled, "rev": registry.revision})


@requires("admin")
async def enable(request: Request) -> JSONResponse:
    """Enable a plugin: {"pluginId": …}; takes effect at once."""
    return await _switch(request, True)


@requires("admin")
async def disable(request: Request) -> JSONResponse:
    """Disable a plugin: {"pluginId": …}; its routes disappear at once."""
    return await _switch(request, False)


async def dispatch(request: Request) -> Response:
    """Every plugin-declared route, found in the live registry."""
    registry = _registry(request)
    mounted, params, other_method = find(registry.routes, request.method, request.url.path)
    if mounted is None:
        if other_method:
            raise KbError("METHOD_NOT_ALLOWED", f"{request.method} is not allowed here", 405)
        raise KbError("NOT_FOUND", f"no route for {request.method} {request.url.path}", 404)
    request.scope[ROUTE_KEY] = mounted.template
    check_role(request, "viewer" if request.method == "GET" else "operator")
    started = time.perf_counter()
    await request.body()  # read (and cached) first: the disconnect watch must not eat it
    work = asyncio.create_task(_call(request, mounted, params))
    gone = asyncio.create_task(_client_gone(request))
    await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if not work.done():  # the client left: stop the handler (async handlers only)
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        logger.info("{} cancelled: the client disconnected", mounted.route.handler)
        raise ClientDisconnect()
    result = work.result()
    response = ok(request, result)
    response.headers["X-Execution-Time-Ms"] = str(round((time.perf_counter() - started) * 1000))
    return response


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (after the body, only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _call(request: Request, mounted: MountedRoute, params: dict[str, Any]) -> Any:
    plugin, route = mounted.plugin, mounted.route
    payload = {"query": dict(request.query_params), "body": await _body(request), "params": params}
    invalid = schemas.problems(route.input, payload, plugin.root)
    if invalid:
        first = invalid[0]
        raise KbError(
            "VALIDATION_ERROR",
            f"{first['field'] or 'input'}: {first['message']}",
            400,
            details=invalid,
        )
    call = Call(
        host="rest",
        handler_ref=route.handler,
        input=payload,
        permissions=route.permissions,
        timeout_ms=route.timeout_ms
        or (plugin.manifest.rest.defaults.get("timeoutMs") if plugin.manifest.rest else None),
        host_context={
            "method": request.method,
            "path": request.url.path,
            "headers": {k: v for k, v in request.headers.items() if k != "authorization"},
            "query": dict(request.query_params),
            "params": params,
        },
        request_id=context.request_id.get() or "",
        trace_id=context.trace_id.get() or "",
        tenant_id=namespace_of(request.scope),
    )
    try:
        result = await request.app.state.runtime.runner.run(plugin, call)
    except KbError as exc:
        declared = {e.code: e.http for e in route.errors}  # the route's errors[] win
        if exc.code in declared:
            exc.status = declared[exc.code]
        raise
    _check_output(request, mounted, result)
    return result


def _check_output(request: Request, mounted: MountedRoute, result: Any) -> None:
    """Outputs are checked in development (500 OUTPUT_INVALID) and only logged elsewhere:
    a plugin's contract bug should not break production callers."""
    invalid = schemas.problems(mounted.route.output, result, mounted.plugin.root)
    if not invalid:
        return
    if request.app.state.runtime.settings.is_production:
        logger.warning(
            "{} returned output that does not fit its schema: {}",
            mounted.route.handler,
            invalid[:3],
        )
        return
    raise KbError(
        "OUTPUT_INVALID",
        f"{mounted.route.handler} returned output that does not fit its declared schema "
        "(checked in development only)",
        500,
        details=invalid,
    )


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise KbError("VALIDATION_ERROR", f"request body is not valid JSON: {exc}", 400) from None


def openapi_paths(registry: PluginRegistry) -> dict[str, dict[str, Any]]:
    """OpenAPI operations of every mounted plugin route, with their schemas."""
    paths: dict[str, dict[str, Any]] = {}
    for mounted in registry.routes:
        route = mounted.route
        operation: dict[str, Any] = {
            "summary": route.description or route.handler,
            "tags": [mounted.plugin.id],
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK"},
                **{str(e.http): {"description": e.description or e.code} for e in route.errors},
            },
        }
        params = [name for name in mounted.converters]
        if params:
            operation["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in params
            ]
        input_schema = schemas.schema_document(route.input) if route.input else None
        if input_schema is not None:
            operation["x-kb-input"] = input_schema  # covers {query, body, params}
            body = (input_schema.get("properties") or {}).get("body")
            if body is not None:
                operation["requestBody"] = {"content": {"application/json": {"schema": body}}}
        output_schema = schemas.schema_document(route.output) if route.output else None
        if output_schema is not None:
            operation["responses"]["200"]["content"] = {
                "application/json": {"schema": output_schema}
            }
        paths.setdefault(mounted.template, {})[route.method.lower()] = operation
    return paths


ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

routes = [
    Route("/api/v1/plugins", list_plugins, methods=["GET"]),
    Route("/api/v1/plugins/registry", registry_snapshot, methods=["GET"]),
    Route("/api/v1/plugins/health", plugins_health, methods=["GET"]),
    Route("/api/v1/plugins/refresh", refresh, methods=["POST"]),
    Route("/api/v1/plugins/enable", enable, methods=["POST"]),
    Route("/api/v1/plugins/disable", disable, methods=["POST"]),
]
# Last in the app's table: everything under /api that no fixed route took.
catch_all = Route("/api/{path:path}", dispatch, methods=ALL_METHODS, include_in_schema=False)
