"""Who is calling: the identity the authentication middleware puts in the ASGI scope."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Scope

ROLES = ("viewer", "operator", "admin", "machine")
# machine (host agents) may read like a viewer; its own routes check for it by name.
ROLE_RANK = {"viewer": 1, "machine": 1, "operator": 2, "admin": 3}
DEFAULT_NAMESPACE = "default"
SCOPE_KEY = "kb.identity"


@dataclass(frozen=True)
class Identity:
    subject: str  # client id, API key id, or "static:<n>"
    namespace_id: str
    role: str
    via: str  # "jwt" | "api-key" | "static" | "internal"
    host_id: str | None = None

    def at_least(self, role: str) -> bool:
        return ROLE_RANK.get(self.role, 0) >= ROLE_RANK[role]

    def to_dict(self) -> dict[str, str | None]:
        return {
            "sub": self.subject,
            "namespaceId": self.namespace_id,
            "role": self.role,
            "via": self.via,
            "hostId": self.host_id,
        }


def identity_of(scope: Scope) -> Identity | None:
    identity = scope.get(SCOPE_KEY)
    return identity if isinstance(identity, Identity) else None


def namespace_of(scope: Scope) -> str:
    identity = identity_of(scope)
    return identity.namespace_id if identity else DEFAULT_NAMESPACE
