"""/hosts… (bare bodies, like the original), /hosts/connect, and /internal/*."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from kblabs.auth.credentials import new_host_id
from kblabs.auth.identity import identity_of, namespace_of
from kblabs.auth.roles import requires
from kblabs.auth.routes import NAMESPACE_PATTERN
from kblabs.auth.service import unauthorized
from kblabs.errors import KbError
from kblabs.gateway.hub import HostHub
from kblabs.gateway.protocol import CAPABILITIES
from kblabs.http.validation import json_body

Capability = Literal["filesystem", "git", "search", "shell", "execution", "editor-context"]
assert set(Capability.__args__) == set(CAPABILITIES)  # type: ignore[attr-defined]


class HostRegisterBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    name: str = Field(min_length=1, max_length=128)
    namespace_id: str | None = Field(default=None, alias="namespaceId", pattern=NAMESPACE_PATTERN)
    capabilities: list[Capability] = Field(default_factory=list)
    workspace_paths: list[str] = Field(default_factory=list, alias="workspacePaths")
    host_type: Literal["local", "cloud"] = Field(default="local", alias="hostType")


class DispatchBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    namespace_id: str = Field(alias="namespaceId", pattern=NAMESPACE_PATTERN)
    host_id: str | None = Field(default=None, alias="hostId")
    adapter: str = Field(min_length=1)
    method: str = Field(min_length=1)
    args: list = Field(default_factory=list)
    timeout_ms: int | None = Field(default=None, alias="timeoutMs", ge=1, le=600_000)


class ResolveTarget(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    host_id: str | None = Field(default=None, alias="hostId")
    host_selection: Literal["pinned", "any-matching"] = Field(
        default="any-matching", alias="hostSelection"
    )


class ResolveBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    namespace_id: str = Field(default="default", alias="namespaceId", pattern=NAMESPACE_PATTERN)
    target: ResolveTarget = Field(default_factory=ResolveTarget)


def _hub(request: Request | WebSocket) -> HostHub:
    return request.app.state.runtime.hub


async def register_host(request: Request) -> JSONResponse:
    """Register a host: an admin bearer or an X-Enrollment-Token. Returns its machine
    token, once."""
    caller = identity_of(request.scope)
    enrollment = request.headers.get("x-enrollment-token")
    if caller is None and not enrollment:
        raise unauthorized(
            "registering a host needs an admin token or an enrollment token "
            "(X-Enrollment-Token header)"
        )
    body = await json_body(request, HostRegisterBody)
    auth = request.app.state.runtime.auth
    namespace, _ = await auth.admit(caller, enrollment, body.namespace_id, "machine")
    host_id = new_host_id()
    hub = _hub(request)
    await hub.registry.upsert(
        namespace,
        host_id,
        name=body.name,
        capabilities=list(body.capabilities),
        host_type=body.host_type,
        workspaces=[{"path": p} for p in body.workspace_paths],
    )
    key = await auth.create_api_key(f"host {body.name}", "machine", namespace, host_id)
    return JSONResponse(
        {
            "hostId": host_id,
            "machineToken": key["token"],
            "namespaceId": namespace,
            "status": "offline",
        },
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


@requires("viewer")
async def list_hosts(request: Request) -> JSONResponse:
    """Hosts of the caller's namespace with their live status."""
    registry = _hub(request).registry
    rows = await registry.rows(namespace_of(request.scope))
    return JSONResponse({"hosts": [registry.describe(row) for row in rows]})


@requires("viewer")
async def get_host(request: Request) -> JSONResponse:
    """One host of the caller's namespace."""
    registry = _hub(request).registry
    row = await registry.row(namespace_of(request.scope), request.path_params["hostId"])
    if row is None:
        raise KbError("HOST_NOT_FOUND", "host not found", 404)
    return JSONResponse(registry.describe(row))


@requires("admin")
async def delete_host(request: Request) -> Response:
    """Forget a host: its descriptor, its machine tokens and its live connections."""
    namespace, host_id = namespace_of(request.scope), request.path_params["hostId"]
    hub = _hub(request)
    sessions = hub.registry.sessions(namespace, host_id)
    if not await hub.registry.remove(namespace, host_id):
        raise KbError("HOST_NOT_FOUND", "host not found", 404)
    await request.app.state.runtime.auth.db.revoke_host_keys(namespace, host_id)
    await request.app.state.runtime.auth.db.revoke_host_clients(host_id)
    request.app.state.runtime.auth.forget()
    for session in sessions:
        await session.websocket.close(code=1008, reason="host deleted")
    return Response(status_code=204)


async def dispatch(request: Request) -> JSONResponse:
    """Internal: run `adapter.method(*args)` on a host (X-Internal-Secret)."""
    body = await json_body(request, DispatchBody)
    hub = _hub(request)
    host_id = hub.pick_host(body.namespace_id, body.adapter, body.host_id)
    result = await hub.call(
        body.namespace_id, host_id, body.adapter, body.method, body.args, body.timeout_ms
    )
    return JSONResponse({"result": result, "hostId": host_id})


async def resolve_host(request: Request) -> JSONResponse:
    """Internal: which host would run an execution for this namespace."""
    body = await json_body(request, ResolveBody, optional=True)
    hub = _hub(request)
    target = body.target
    if target.host_selection == "pinned" and target.host_id:
        status = hub.registry.status(body.namespace_id, target.host_id)
        if status in ("online", "degraded", "reconnecting"):
            return JSONResponse(
                {"hostId": target.host_id, "strategy": "pinned", "namespaceId": body.namespace_id}
            )
    try:
        host_id = hub.pick_host(body.namespace_id, "execution")
    except KbError:
        raise KbError("HOST_NOT_FOUND", "no matching host found", 404) from None
    return JSONResponse(
        {"hostId": host_id, "strategy": "any-matching", "namespaceId": body.namespace_id}
    )


async def connect(websocket: WebSocket) -> None:
    await _hub(websocket).endpoint(websocket)


routes: list[BaseRoute] = [
    Route("/hosts/register", register_host, methods=["POST"]),
    Route("/hosts", list_hosts, methods=["GET"]),
    WebSocketRoute("/hosts/connect", connect),
    Route("/hosts/{hostId}", get_host, methods=["GET"]),
    Route("/hosts/{hostId}", delete_host, methods=["DELETE"]),
    Route("/internal/dispatch", dispatch, methods=["POST"]),
    Route("/internal/resolve-host", resolve_host, methods=["POST"]),
]
