"""`requires("operator")`: the one way an endpoint states the role it needs.

The required role is also recorded on the endpoint (`required_role`) so the route-table
test can prove every route refuses callers below it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from kblabs.auth.identity import ROLE_RANK, identity_of
from kblabs.errors import KbError

Endpoint = Callable[[Request], Awaitable[Response]]


def check_role(request: Request, role: str) -> None:
    identity = identity_of(request.scope)
    if identity is None:
        raise KbError("UNAUTHORIZED", "authentication required", 401)
    if not identity.at_least(role):
        raise KbError(
            "FORBIDDEN",
            f"this action needs the {role} role; your token has {identity.role}",
            403,
            details={"required": role, "actual": identity.role},
        )


def requires(role: str) -> Callable[[Endpoint], Endpoint]:
    if role not in ROLE_RANK:
        raise ValueError(f"unknown role {role!r}")

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            check_role(request, role)
            return await endpoint(request)

        guarded.required_role = role  # type: ignore[attr-defined]
        return guarded

    return decorate
