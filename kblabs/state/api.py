"""HTTP API of the state broker, mounted at /api/v1/state (envelope bodies).

Keys and names are URL-encoded path segments and may contain `:@#/`. Callers outside
the `default` namespace see their own keyspace: their keys are stored as
`tenant:<namespace>:<key>`, which is also what the stats' `byTenant` reports.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kblabs.auth.identity import identity_of, namespace_of
from kblabs.auth.roles import requires
from kblabs.errors import KbError
from kblabs.http.envelope import ok
from kblabs.http.validation import field_error, json_body, validate
from kblabs.state.backend import MISSING
from kblabs.state.service import DEFAULT_LOCK_TTL_MS, StateBroker


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PutBody(Body):
    value: Any = Field(...)  # required; null is a value
    ttl: StrictInt | None = None


class LockBody(Body):
    owner: str = Field(min_length=1, max_length=512)
    ttl: StrictInt = DEFAULT_LOCK_TTL_MS


class HeldLockBody(Body):
    owner: str = Field(min_length=1, max_length=512)
    token: StrictInt
    ttl: StrictInt = DEFAULT_LOCK_TTL_MS


class IncrBody(Body):
    by: StrictInt = 1
    window: StrictInt | None = None


class RateLimitBody(Body):
    limit: StrictInt
    window: StrictInt
    cost: StrictInt = 1


def iso(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _broker(request: Request) -> StateBroker:
    return request.app.state.runtime.state


def namespace(request: Request) -> str:
    return namespace_of(request.scope)


def scoped(request: Request, key: str) -> str:
    """The stored key: a tenant's own keyspace outside "default". Keys of other tenants
    (`tenant:…`) and reserved names (`__…`) are only reachable by admins."""
    identity = identity_of(request.scope)
    admin = identity is not None and identity.at_least("admin")
    if not admin and key.startswith(("tenant:", "__")):
        raise KbError("FORBIDDEN", f"{key!r} is reserved (tenant: and __ names need admin)", 403)
    ns = namespace(request)
    return key if ns == "default" else f"tenant:{ns}:{key}"


async def get_value(request: Request) -> JSONResponse:
    """Read a key: its value and expiry. 404 when missing or expired."""
    key = request.path_params["key"]
    value, expires = await _broker(request).get_with_expiry(scoped(request, key))
    if value is MISSING:
        raise KbError("KEY_NOT_FOUND", f"no value for key {key!r} (missing or expired)", 404)
    return ok(request, {"key": key, "value": value, "expiresAt": iso(expires)})


@requires("operator")
async def put_value(request: Request) -> JSONResponse:
    """Write a key: body {value, ttl?} with ttl in ms (default 300000)."""
    key = request.path_params["key"]
    body = await json_body(request, PutBody)
    expires = await _broker(request).set(scoped(request, key), body.value, body.ttl)
    return ok(request, {"key": key, "expiresAt": iso(expires)})


@requires("operator")
async def delete_value(request: Request) -> JSONResponse:
    """Delete a key (idempotent): `deleted` says whether it existed."""
    key = request.path_params["key"]
    deleted = await _broker(request).delete(scoped(request, key))
    return ok(request, {"key": key, "deleted": deleted})


@requires("admin")
async def clear(request: Request) -> JSONResponse:
    """Delete keys matching ?pattern= (`prefix*` or a glob; none: all of the caller's)."""
    pattern = request.query_params.get("pattern") or None
    ns = namespace(request)
    effective = pattern if ns == "default" else f"tenant:{ns}:{pattern or '*'}"
    cleared = await _broker(request).clear(effective)
    return ok(request, {"cleared": cleared, "pattern": pattern})


@requires("admin")
async def stats(request: Request) -> JSONResponse:
    """BrokerStats: entries, size, hit and miss rates, evictions, by namespace and tenant."""
    return ok(request, await _broker(request).stats())


@requires("operator")
async def acquire_lock(request: Request) -> JSONResponse:
    """Acquire a lock: body {owner, ttl?}; 409 LOCK_HELD while someone holds it."""
    name = request.path_params["name"]
    body = await json_body(request, LockBody)
    broker = _broker(request)
    grant = await broker.acquire_lock(scoped(request, name), body.owner, body.ttl)
    if grant is None:
        holder = await broker.lock_holder(scoped(request, name))
        details = {"holder": holder.owner, "expiresAt": iso(holder.expires_at_ms)} if holder else {}
        raise KbError("LOCK_HELD", f"lock {name!r} is held by someone else", 409, details=details)
    return ok(
        request,
        {
            "name": name,
            "owner": grant.owner,
            "token": grant.token,
            "expiresAt": iso(grant.expires_at_ms),
        },
    )


@requires("operator")
async def renew_lock(request: Request) -> JSONResponse:
    """Extend a held lock: body {owner, token, ttl?}; 409 LOCK_NOT_HELD if it was lost."""
    name = request.path_params["name"]
    body = await json_body(request, HeldLockBody)
    expires = await _broker(request).renew_lock(
        scoped(request, name), body.owner, body.token, body.ttl
    )
    if expires is None:
        raise _not_held(name)
    return ok(request, {"name": name, "token": body.token, "expiresAt": iso(expires)})


@requires("operator")
async def release_lock(request: Request) -> JSONResponse:
    """Release a lock: {owner, token} as JSON body or query parameters."""
    name = request.path_params["name"]
    query = request.query_params
    if "owner" in query:
        owner, token = query["owner"], _int_param(query.get("token"), "token")
        body = validate(HeldLockBody, {"owner": owner, "token": token})
    else:
        body = await json_body(request, HeldLockBody)
    if not await _broker(request).release_lock(scoped(request, name), body.owner, body.token):
        raise _not_held(name)
    return ok(request, {"name": name, "released": True})


def _int_param(raw: str | None, field: str) -> int:
    if raw is None or not raw.lstrip("-").isdigit():
        raise field_error(field, "must be an integer")
    return int(raw)


def _not_held(name: str) -> KbError:
    return KbError("LOCK_NOT_HELD", f"lock {name!r} is not held with this owner and token", 409)


@requires("operator")
async def incr(request: Request) -> JSONResponse:
    """Add `by` (default 1) to a counter; with `window` (ms) it resets after that long."""
    name = request.path_params["name"]
    body = await json_body(request, IncrBody, optional=True)
    counter = await _broker(request).incr(scoped(request, name), body.by, body.window)
    return ok(request, {"name": name, "value": counter.value, "resetAt": iso(counter.reset_at_ms)})


@requires("operator")
async def rate_limit(request: Request) -> JSONResponse:
    """Spend `cost` against `limit` per `window` ms: {allowed, remaining, resetAt, …}."""
    name = request.path_params["name"]
    body = await json_body(request, RateLimitBody)
    result = await _broker(request).rate_limit(
        scoped(request, name), body.limit, body.window, body.cost
    )
    return ok(request, {**result.to_dict(), "resetAt": iso(result.reset_at_ms)})


routes = [
    Route("/kv/{key:path}", get_value, methods=["GET"]),
    Route("/kv/{key:path}", put_value, methods=["PUT"]),
    Route("/kv/{key:path}", delete_value, methods=["DELETE"]),
    Route("/clear", clear, methods=["POST"]),
    Route("/stats", stats, methods=["GET"]),
    Route("/locks/{name:path}/renew", renew_lock, methods=["POST"]),
    Route("/locks/{name:path}", acquire_lock, methods=["POST"]),
    Route("/locks/{name:path}", release_lock, methods=["DELETE"]),
    Route("/counters/{name:path}/incr", incr, methods=["POST"]),
    Route("/ratelimit/{name:path}", rate_limit, methods=["POST"]),
]
