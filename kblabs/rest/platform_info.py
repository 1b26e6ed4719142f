"""/api/v1/routes and /api/v1/platform/config: what this server serves and how it is set up.

- `GET /api/v1/routes` (kb.routes/1): every `/api/…` route of the app's table (hidden
  ones too, through Mounts) plus every plugin route mounted in the live registry; no
  HEAD, no catch-all dispatcher, sorted by url then method. Path converters are dropped
  (`{key:path}` → `{key}`), as in /openapi.json.
- `GET /api/v1/platform/config` (kb.platform.config/1): the `platform` section's adapters,
  adapter options and execution (`mode` defaults to `in-process`), with secrets redacted
  by the same helper as `kb config show` (kblabs.config.secrets.redact); `redacted`
  lists the dotted paths.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kblabs.auth.roles import requires
from kblabs.config.secrets import redact
from kblabs.config.settings import PlatformSettings
from kblabs.http.envelope import ok
from kblabs.http.openapi import walk_routes
from kblabs.lifecycle import utc_now_iso

API_PREFIX = "/api/"
CATCH_ALL = "/api/{path:path}"

_CONVERTER = re.compile(r"{([^}:]+):[^}]+}")


def _url(template: str) -> str:
    return _CONVERTER.sub(r"{\1}", template)


def route_table(request: Request) -> list[dict[str, str]]:
    """[{method, url}] of the fixed /api routes and the live plugin routes."""
    seen: set[tuple[str, str]] = set()
    for template, route in walk_routes(list(request.app.routes)):
        if not isinstance(route, Route) or template == CATCH_ALL:
            continue
        if not template.startswith(API_PREFIX):
            continue
        for method in (route.methods or set()) - {"HEAD"}:
            seen.add((_url(template), method))
    for mounted in request.app.state.runtime.plugins.routes:
        if mounted.route.method != "HEAD":
            seen.add((_url(mounted.template), mounted.route.method))
    return [{"method": method, "url": url} for url, method in sorted(seen)]


@requires("viewer")
async def list_routes(request: Request) -> JSONResponse:
    """Every /api route, fixed and plugin-declared (kb.routes/1)."""
    table = route_table(request)
    return ok(
        request,
        {"schema": "kb.routes/1", "ts": utc_now_iso(), "count": len(table), "routes": table},
    )


@requires("viewer")
async def platform_config(request: Request) -> JSONResponse:
    """The platform section (adapters, options, execution) with secrets redacted."""
    platform: PlatformSettings = request.app.state.runtime.settings.platform
    document: dict[str, Any] = {
        "adapters": dict(platform.adapters),
        "adapterOptions": dict(platform.adapter_options),
        "execution": platform.execution.model_dump(by_alias=True),  # mode: in-process
    }
    redacted: list[str] = []
    shown = redact(document, found=redacted)
    return ok(
        request,
        {"schema": "kb.platform.config/1", "ts": utc_now_iso(), **shown, "redacted": redacted},
    )


routes = [
    Route("/api/v1/routes", list_routes, methods=["GET"]),
    Route("/api/v1/platform/config", platform_config, methods=["GET"]),
]
