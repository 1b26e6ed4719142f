"""/auth/register, /auth/token, /auth/refresh, /auth/revoke (bare bodies, like the original)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kblabs.auth.identity import identity_of
from kblabs.auth.service import AuthService, unauthorized
from kblabs.errors import KbError
from kblabs.http.validation import json_body

NAMESPACE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    capabilities: list[str] = Field(default_factory=list, max_length=32)
    namespace_id: str | None = Field(default=None, alias="namespaceId", pattern=NAMESPACE_PATTERN)
    role: Literal["viewer", "operator", "admin", "machine"] | None = None


class TokenBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    client_id: str = Field(alias="clientId", min_length=1, max_length=128)
    client_secret: str = Field(alias="clientSecret", min_length=1, max_length=256)


class RefreshBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    refresh_token: str = Field(alias="refreshToken", min_length=1, max_length=256)


class RevokeBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    token: str | None = Field(default=None, max_length=256)  # a refresh token
    client_id: str | None = Field(default=None, alias="clientId")
    key_id: str | None = Field(default=None, alias="keyId")


def remote_address(request: Request) -> str:
    """The caller's address: the TCP peer, or, behind a trusted proxy, the nearest
    untrusted hop of X-Forwarded-For."""
    peer = request.client.host if request.client else "unknown"
    trusted = set(request.app.state.runtime.settings.server.trusted_proxies)
    if peer not in trusted:
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return peer


def _auth(request: Request) -> AuthService:
    return request.app.state.runtime.auth


async def register(request: Request) -> JSONResponse:
    """Register a client: an admin bearer, or a one-time enrollment token in the
    X-Enrollment-Token header. Returns the client secret, once."""
    caller = identity_of(request.scope)
    enrollment = request.headers.get("x-enrollment-token")
    if caller is None and not enrollment:  # refuse before reading anything
        raise unauthorized(
            "registering a client needs an admin token or an enrollment token "
            "(X-Enrollment-Token header)"
        )
    body = await json_body(request, RegisterBody)
    created = await _auth(request).register(
        name=body.name,
        capabilities=body.capabilities,
        caller=caller,
        enrollment_token=enrollment,
        namespace_id=body.namespace_id,
        role=body.role,
    )
    return JSONResponse(created, status_code=201, headers={"Cache-Control": "no-store"})


async def token(request: Request) -> JSONResponse:
    """Client credentials → {accessToken, refreshToken, expiresIn, tokenType}."""
    body = await json_body(request, TokenBody)
    address = remote_address(request)
    pair = await _auth(request).token(body.client_id, body.client_secret, address)
    return JSONResponse(pair, headers={"Cache-Control": "no-store"})


async def refresh(request: Request) -> JSONResponse:
    """Trade a refresh token (single use) for a new pair."""
    body = await json_body(request, RefreshBody)
    pair = await _auth(request).refresh(body.refresh_token)
    return JSONResponse(pair, headers={"Cache-Control": "no-store"})


async def revoke(request: Request) -> JSONResponse:
    """Revoke a refresh token's session (anyone holding it), or a client or API key
    (admin)."""
    body = await json_body(request, RevokeBody)
    service = _auth(request)
    if body.token:
        return JSONResponse({"revoked": await service.revoke_refresh(body.token)})
    caller = identity_of(request.scope)
    if caller is None:
        raise unauthorized("revoking a client or key needs an admin token")
    if not caller.at_least("admin"):
        raise KbError("FORBIDDEN", "revoking a client or key needs the admin role", 403)
    if body.client_id:
        return JSONResponse({"revoked": await service.revoke_client(body.client_id)})
    if body.key_id:
        return JSONResponse({"revoked": await service.revoke_api_key(body.key_id)})
    raise KbError("VALIDATION_ERROR", "give one of token, clientId or keyId", 400)


routes = [
    Route("/auth/register", register, methods=["POST"]),
    Route("/auth/token", token, methods=["POST"]),
    Route("/auth/refresh", refresh, methods=["POST"]),
    Route("/auth/revoke", revoke, methods=["POST"]),
]
