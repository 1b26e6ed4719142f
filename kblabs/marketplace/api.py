"""/api/v1/marketplace/… (reference marketplace §A.3), with the envelope; writes need
the admin role.

Scopes: `platform` (the default) is this server's project; `project` names another
KB Labs project by its absolute `projectRoot` (its own `.kb/marketplace.lock`);
`all` (reads only) lists both. Adapters install only at platform scope.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kblabs.auth.roles import requires
from kblabs.errors import KbError
from kblabs.http.envelope import ok
from kblabs.http.validation import json_body
from kblabs.marketplace.service import Marketplace


class Scoped(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    scope: str | None = None
    project_root: Any = Field(default=None, alias="projectRoot")


class InstallBody(Scoped):
    specs: list[str] = Field(default_factory=list)
    dev: bool = False


class IdsBody(Scoped):
    package_ids: list[str] = Field(default_factory=list, alias="packageIds")


class IdBody(Scoped):
    package_id: str = Field(alias="packageId", min_length=1)


class LinkBody(Scoped):
    path: str = Field(min_length=1)


class SyncBody(Scoped):
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    auto_enable: bool = Field(default=False, alias="autoEnable")


def _scope_error(code: str, message: str) -> KbError:
    return KbError(code, message, 400)


def marketplace_for(request: Request, scope: str | None, project_root: Any) -> Marketplace:
    """The marketplace of the scope asked for, with the reference's scope errors."""
    own: Marketplace = request.app.state.runtime.marketplace
    if scope in (None, "", "platform"):
        return own
    if scope != "project":
        raise _scope_error(
            "SCOPE_INVALID", f"scope must be platform, project or all, not {scope!r}"
        )
    if project_root is None:
        raise _scope_error("SCOPE_PROJECT_ROOT_REQUIRED", "project scope needs projectRoot")
    if not isinstance(project_root, str):
        raise _scope_error("SCOPE_PROJECT_ROOT_TYPE", "projectRoot must be a string")
    path = Path(project_root)
    if not path.is_absolute():
        raise _scope_error("SCOPE_PROJECT_ROOT_NOT_ABSOLUTE", "projectRoot must be absolute")
    if ".." in path.parts:
        raise _scope_error("SCOPE_PROJECT_ROOT_TRAVERSAL", "projectRoot must not contain ..")
    if not path.is_dir():
        raise _scope_error("SCOPE_PROJECT_ROOT_NOT_FOUND", f"{path} does not exist")
    if not any((path / ".kb" / name).is_file() for name in ("kb.config.json", "kb.config.jsonc")):
        raise _scope_error(
            "SCOPE_PROJECT_ROOT_NO_KB_DIR",
            f"{path} has no .kb/kb.config.json: not a KB Labs project",
        )
    if path.resolve() == own.root:
        raise _scope_error(
            "SCOPE_PROJECT_EQUALS_PLATFORM",
            "projectRoot is this server's own project: use platform",
        )
    return Marketplace.for_project(path.resolve())


@requires("viewer")
async def packages(request: Request) -> JSONResponse:
    """Installed and linked packages: `?kind=plugin|adapter&scope=platform|project|all`."""
    query = request.query_params
    kind = query.get("kind")
    if query.get("scope") == "all":
        rows = request.app.state.runtime.marketplace.packages(kind)
        if query.get("projectRoot"):
            project = marketplace_for(request, "project", query.get("projectRoot"))
            theirs = [{**row, "scope": "project"} for row in project.packages(kind)]
            mine = {row["id"] for row in theirs}
            rows = theirs + [row for row in rows if row["id"] not in mine]  # project wins
    else:
        rows = marketplace_for(request, query.get("scope"), query.get("projectRoot")).packages(kind)
    return ok(request, {"entries": rows, "total": len(rows)})


@requires("admin")
async def install(request: Request) -> JSONResponse:
    """`{specs: ["kb-hello==1.2", "/path/to/x.whl"]}` → 201 with what was installed."""
    body = await json_body(request, InstallBody)
    market = marketplace_for(request, body.scope, body.project_root)
    return ok(request, await market.install(body.specs), 201)


@requires("admin")
async def uninstall(request: Request) -> Response:
    body = await json_body(request, IdsBody)
    await marketplace_for(request, body.scope, body.project_root).uninstall(body.package_ids)
    return Response(status_code=204)


@requires("admin")
async def update(request: Request) -> JSONResponse:
    """Reinstall the newest version of some (`packageIds`) or all installed packages."""
    body = await json_body(request, IdsBody, optional=True)
    market = marketplace_for(request, body.scope, body.project_root)
    return ok(request, await market.update(body.package_ids or None))


async def _switch(request: Request, enabled: bool) -> JSONResponse:
    body = await json_body(request, IdBody)
    market = marketplace_for(request, body.scope, body.project_root)
    return ok(request, await market.set_enabled(body.package_id, enabled))


@requires("admin")
async def enable(request: Request) -> JSONResponse:
    return await _switch(request, True)


@requires("admin")
async def disable(request: Request) -> JSONResponse:
    return await _switch(request, False)


@requires("admin")
async def link(request: Request) -> JSONResponse:
    """`{path}`: a plugin folder inside the project (relative to its root)."""
    body = await json_body(request, LinkBody)
    return ok(
        request, await marketplace_for(request, body.scope, body.project_root).link(body.path)
    )


@requires("admin")
async def unlink(request: Request) -> Response:
    body = await json_body(request, IdBody)
    await marketplace_for(request, body.scope, body.project_root).unlink(body.package_id)
    return Response(status_code=204)


@requires("admin")
async def sync(request: Request) -> JSONResponse:
    """`{include: [globs], exclude?, autoEnable?}`: link every plugin folder found."""
    body = await json_body(request, SyncBody)
    market = marketplace_for(request, body.scope, body.project_root)
    return ok(request, await market.sync(body.include, body.exclude, body.auto_enable))


@requires("viewer")
async def diagnostics(request: Request) -> JSONResponse:
    query = request.query_params
    market = marketplace_for(request, query.get("scope"), query.get("projectRoot"))
    return ok(request, market.doctor())


@requires("admin")
async def clear_cache(request: Request) -> JSONResponse:
    body = await json_body(request, Scoped, optional=True)
    return ok(request, marketplace_for(request, body.scope, body.project_root).clear_cache())


BASE = "/api/v1/marketplace"
routes = [
    Route(f"{BASE}/packages", packages, methods=["GET"]),
    Route(f"{BASE}/packages/install", install, methods=["POST"]),
    Route(f"{BASE}/packages/uninstall", uninstall, methods=["POST"]),
    Route(f"{BASE}/packages/update", update, methods=["POST"]),
    Route(f"{BASE}/packages/enable", enable, methods=["POST"]),
    Route(f"{BASE}/packages/disable", disable, methods=["POST"]),
    Route(f"{BASE}/packages/link", link, methods=["POST"]),
    Route(f"{BASE}/packages/unlink", unlink, methods=["POST"]),
    Route(f"{BASE}/workspace/sync", sync, methods=["POST"]),
    Route(f"{BASE}/diagnostics", diagnostics, methods=["GET"]),
    Route(f"{BASE}/cache/clear", clear_cache, methods=["POST"]),
]
