"""/openapi.json built from the live route table, and a dependency-free /docs page.

Each route's docstring gives its summary (first line) and description. Modules that know
their schemas (plugin routes) attach them as `route.openapi` (an OpenAPI operation dict).
"""

from __future__ import annotations

import html
import inspect
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

import kblabs

_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


def walk_routes(routes: list[BaseRoute], prefix: str = ""):
    """(full path template, route) for every Route and WebSocketRoute, through Mounts."""
    for route in routes:
        if isinstance(route, Mount):
            yield from walk_routes(list(route.routes), prefix + route.path)
        elif isinstance(route, (Route, WebSocketRoute)):
            yield prefix + route.path, route


def _operation(route: Route, path: str, public: frozenset[str]) -> dict[str, Any]:
    doc = inspect.getdoc(route.endpoint) or ""
    summary, _, description = doc.partition("\n")
    operation: dict[str, Any] = {
        "summary": summary.strip() or route.name,
        "responses": {"200": {"description": "OK"}},
    }
    if description.strip():
        operation["description"] = description.strip()
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(path)
    ]
    if params:
        operation["parameters"] = params
    if path not in public:
        operation["security"] = [{"bearer": []}]
        operation["responses"]["401"] = {"description": "missing or invalid credentials"}
    operation.update(getattr(route, "openapi", {}) or {})
    return operation


def build_spec(
    routes: list[BaseRoute],
    public: frozenset[str],
    extra: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The spec of `routes`, plus `extra` operations ({path: {method: operation}}) from
    modules that route dynamically (plugin routes)."""
    paths: dict[str, dict[str, Any]] = {}
    for path, operations in (extra or {}).items():
        paths.setdefault(path, {}).update(operations)
    for path, route in walk_routes(routes):
        if not isinstance(route, Route) or getattr(route, "include_in_schema", True) is False:
            continue
        clean = _PARAM.sub(r"{\1}", path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(clean, {})[method.lower()] = _operation(route, clean, public)
    return {
        "openapi": "3.1.0",
        "info": {"title": "KB Labs", "version": kblabs.__version__},
        "paths": dict(sorted(paths.items())),
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _extra(request: Request) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for source in getattr(request.app.state, "openapi_sources", []):
        for path, operations in source().items():
            merged.setdefault(path, {}).update(operations)
    return merged


async def openapi_json(request: Request) -> JSONResponse:
    """The OpenAPI 3.1 description of every mounted route."""
    spec = build_spec(request.app.routes, request.app.state.public_paths, _extra(request))
    return JSONResponse(spec)


async def docs(request: Request) -> HTMLResponse:
    """A readable list of every route (development only)."""
    spec = build_spec(request.app.routes, request.app.state.public_paths, _extra(request))
    rows = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            lock = "" if "security" not in op else " 🔒"
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}"
                f"</code>{lock}</td><td>{html.escape(op['summary'])}</td></tr>"
            )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>KB Labs API</title>"
        "<style>body{font-family:sans-serif;margin:2rem}td{padding:.2rem .8rem}"
        "tr:nth-child(even){background:#f4f4f4}</style></head><body>"
        f"<h1>KB Labs API {html.escape(kblabs.__version__)}</h1>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. 🔒 = needs a bearer "
        "token.</p><table>" + "".join(rows) + "</table></body></html>"
    )
    return HTMLResponse(
        page,
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )
