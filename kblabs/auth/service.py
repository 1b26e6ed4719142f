"""Identity: registering clients, issuing and rotating tokens, resolving bearers.

Access tokens are HS256 JWTs (15 min) with sub, namespaceId, role, type, iat, exp, jti.
Refresh tokens are opaque, single-use and stored hashed; replaying a used one revokes
its whole family. API keys (the bootstrap admin token, host machine tokens) and static
tokens from config are long-lived bearers. Everything persists in the store, so a
restart logs nobody out.
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import time
import uuid
from datetime import timedelta
from typing import Any

from loguru import logger

from kblabs.auth import credentials as cred
from kblabs.auth.identity import DEFAULT_NAMESPACE, ROLES, Identity
from kblabs.auth.signing import ACCESS_TTL_S, Signer, load_keys
from kblabs.auth.store import AuthStore, is_live
from kblabs.config import Settings
from kblabs.datadir import ADMIN_TOKEN_FILE, write_secret_file
from kblabs.errors import KbError
from kblabs.state.service import StateBroker
from kblabs.store import Store

CACHE_TTL_S = 5.0  # how long a revocation may take to reach a running server


def unauthorized(message: str) -> KbError:
    return KbError("UNAUTHORIZED", message, 401, headers={"WWW-Authenticate": "Bearer"})


class AuthService:
    name = "auth"

    def __init__(self, settings: Settings, store: Store, state: StateBroker) -> None:
        self.settings = settings
        self.store_component = store
        self.state = state
        self.public_url = ""
        self._signer: Signer | None = None
        self._db: AuthStore | None = None
        self._cache: dict[str, tuple[float, Any]] = {}

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        keys = load_keys(self.settings.data_dir, os.environ, self.settings.is_production)
        self._signer = Signer(keys)
        self._db = AuthStore(self.store_component.engine)
        await self._ensure_admin_token()

    async def stop(self) -> None:
        self._cache.clear()

    @property
    def signer(self) -> Signer:
        assert self._signer is not None, "auth is not started"
        return self._signer

    @property
    def db(self) -> AuthStore:
        assert self._db is not None, "auth is not started"
        return self._db

    async def _ensure_admin_token(self) -> None:
        """First start: an admin API key, written to the data dir (0600) and stored hashed.
        Later starts re-register the file's token if the database lost it (not if revoked)."""
        path = self.settings.data_dir / ADMIN_TOKEN_FILE
        created = write_secret_file(path, cred.new_api_key())
        token = path.read_text().strip()
        if await self.db.api_key(cred.digest(token)) is None:
            await self.db.add_api_key(
                token_hash=cred.digest(token),
                key_id=cred.new_key_id(),
                label="bootstrap admin",
                role="admin",
                namespace_id=DEFAULT_NAMESPACE,
                host_id=None,
                expires_at=None,
            )
        if created:
            logger.warning(
                "first start: admin token written to {} (mode 0600). Use it as "
                'curl -H "Authorization: Bearer $(cat {})" {}/api/v1/health, or get a '
                "15-minute token with `python -m kblabs auth token`",
                path,
                path,
                self.public_url or "http://127.0.0.1:4000",
            )

    # --- resolving bearers -----------------------------------------------------------

    async def resolve(self, token: str) -> Identity | None:
        if token.count(".") == 2:
            return await self._resolve_jwt(token)
        static = self._resolve_static(token)
        if static is not None:
            return static
        return await self._cached(f"key:{cred.digest(token)}", lambda: self._resolve_key(token))

    async def _resolve_jwt(self, token: str) -> Identity | None:
        claims = self.signer.verify(token)
        if claims is None:
            return None
        subject = str(claims["sub"])
        active = await self._cached(f"client:{subject}", lambda: self._client_active(subject))
        if not active:
            return None
        return Identity(
            subject,
            str(claims.get("namespaceId", DEFAULT_NAMESPACE)),
            str(claims.get("role", "viewer")),
            "jwt",
            claims.get("hostId"),
        )

    async def _client_active(self, client_id: str) -> bool:
        row = await self.db.client(client_id)
        return row is not None and row["revoked_at"] is None

    def _resolve_static(self, token: str) -> Identity | None:
        for i, static in enumerate(self.settings.auth.static_tokens):
            if hmac.compare_digest(static.token.encode(), token.encode()):
                return Identity(
                    f"static:{i}", static.namespace_id, static.role, "static", static.host_id
                )
        return None

    async def _resolve_key(self, token: str) -> Identity | None:
        row = await self.db.api_key(cred.digest(token))
        if row is None or not is_live(row):
            return None
        return Identity(row["key_id"], row["namespace_id"], row["role"], "api-key", row["host_id"])

    async def _cached(self, key: str, load: Any) -> Any:
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        value = await load()
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now + CACHE_TTL_S, value)
        return value

    def forget(self) -> None:
        """Drop cached lookups so a revocation made in this process applies at once."""
        self._cache.clear()

    # --- clients and tokens ----------------------------------------------------------

    async def register(
        self,
        *,
        name: str,
        capabilities: list[str],
        caller: Identity | None,
        enrollment_token: str | None,
        namespace_id: str | None,
        role: str | None,
    ) -> dict[str, Any]:
        """A new client. Admins choose namespace and role; an enrollment token carries its
        own (a generated namespace when it names none)."""
        namespace, chosen_role = await self.admit(caller, enrollment_token, namespace_id, role)
        if chosen_role not in ROLES:
            raise KbError(
                "VALIDATION_ERROR",
                f"role must be one of {', '.join(ROLES)}",
                400,
                details=[{"field": "role", "message": "unknown role"}],
            )
        return await self.create_client(name, namespace, chosen_role, capabilities)

    async def admit(
        self,
        caller: Identity | None,
        enrollment_token: str | None,
        namespace_id: str | None,
        role: str | None,
    ) -> tuple[str, str]:
        """(namespace, role) for a registration: an admin's choice, or what a one-time
        enrollment token carries (consumed here)."""
        if caller is not None and caller.at_least("admin"):
            return namespace_id or DEFAULT_NAMESPACE, role or "machine"
        if enrollment_token:
            enrollment = await self.db.consume_enrollment(cred.digest(enrollment_token))
            if enrollment is None:
                raise unauthorized("enrollment token is unknown, used or expired")
            return enrollment["namespace_id"] or cred.new_namespace_id(), enrollment["role"]
        raise KbError(
            "FORBIDDEN",
            "registering needs an admin token or an enrollment token (X-Enrollment-Token)",
            403,
        )

    async def client_capabilities(self, client_id: str) -> list[str]:
        row = await self.db.client(client_id)
        return list(row["capabilities"]) if row else []

    async def create_client(
        self, name: str, namespace: str, role: str, capabilities: list[str]
    ) -> dict[str, Any]:
        client_id, secret, host_id = (
            cred.new_client_id(),
            cred.new_client_secret(),
            cred.new_host_id(),
        )
        await self.db.add_client(
            client_id=client_id,
            name=name,
            namespace_id=namespace,
            role=role,
            host_id=host_id,
            secret_hash=cred.digest(secret),
            capabilities=capabilities,
        )
        logger.info(
            "registered client {} ({}, role {}, namespace {})", client_id, name, role, namespace
        )
        return {
            "clientId": client_id,
            "clientSecret": secret,
            "hostId": host_id,
            "namespaceId": namespace,
            "role": role,
        }

    async def token(self, client_id: str, client_secret: str, address: str) -> dict[str, Any]:
        await self._refuse_if_locked(client_id, address)
        row = await self.db.client(client_id)
        if row is None or row["revoked_at"] is not None or not _secret_matches(row, client_secret):
            await self._count_failure(client_id, address)
            raise unauthorized("invalid client credentials")
        return await self._issue_pair(row, family_id=uuid.uuid4().hex)

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        token_hash = cred.digest(refresh_token)
        row = await self.db.refresh_row(token_hash)
        if row is None or row["revoked_at"] is not None:
            raise unauthorized("invalid or expired refresh token")
        if row["consumed_at"] is not None or not await self.db.consume_refresh(token_hash):
            await self.db.revoke_family(row["family_id"])
            logger.warning(
                "refresh token replayed for client {}: its session family is revoked",
                row["client_id"],
            )
            raise unauthorized("refresh token was already used; this session is revoked")
        if not is_live(row):
            raise unauthorized("invalid or expired refresh token")
        client = await self.db.client(row["client_id"])
        if client is None or client["revoked_at"] is not None:
            raise unauthorized("client is revoked")
        return await self._issue_pair(client, family_id=row["family_id"])

    async def _issue_pair(self, client: dict[str, Any], family_id: str) -> dict[str, Any]:
        refresh = cred.new_refresh_token()
        ttl = timedelta(days=self.settings.auth.refresh_token_ttl_days)
        await self.db.add_refresh(
            cred.digest(refresh), family_id, client["client_id"], cred.utc_now() + ttl
        )
        access = self.signer.issue(
            {
                "sub": client["client_id"],
                "namespaceId": client["namespace_id"],
                "role": client["role"],
                "hostId": client["host_id"],
            }
        )
        return {
            "accessToken": access,
            "refreshToken": refresh,
            "expiresIn": ACCESS_TTL_S,
            "tokenType": "Bearer",
        }

    async def revoke_refresh(self, refresh_token: str) -> bool:
        row = await self.db.refresh_row(cred.digest(refresh_token))
        if row is None:
            return False
        await self.db.revoke_family(row["family_id"])
        return True

    async def revoke_client(self, client_id: str) -> bool:
        revoked = await self.db.revoke_client(client_id)
        self.forget()
        return revoked

    async def revoke_api_key(self, key_id: str) -> bool:
        revoked = await self.db.revoke_api_key(key_id)
        self.forget()
        return revoked

    async def rotate_client_secret(self, client_id: str) -> str | None:
        secret = cred.new_client_secret()
        grace = timedelta(seconds=self.settings.auth.secret_rotation_grace_s)
        if not await self.db.rotate_secret(client_id, cred.digest(secret), grace):
            return None
        return secret

    async def create_api_key(
        self, label: str, role: str, namespace: str, host_id: str | None = None
    ) -> dict[str, Any]:
        token, key_id = cred.new_api_key(), cred.new_key_id()
        await self.db.add_api_key(
            token_hash=cred.digest(token),
            key_id=key_id,
            label=label,
            role=role,
            namespace_id=namespace,
            host_id=host_id,
            expires_at=None,
        )
        return {"keyId": key_id, "token": token, "role": role, "namespaceId": namespace}

    async def create_enrollment(
        self, role: str, namespace: str | None, ttl_s: int, note: str
    ) -> dict[str, Any]:
        token, enrollment_id = cred.new_enrollment_token(), cred.new_key_id("enr_")
        expires = cred.utc_now() + timedelta(seconds=ttl_s)
        await self.db.add_enrollment(
            token_hash=cred.digest(token),
            enrollment_id=enrollment_id,
            namespace_id=namespace,
            role=role,
            note=note,
            expires_at=expires,
        )
        return {
            "enrollmentId": enrollment_id,
            "token": token,
            "role": role,
            "namespaceId": namespace,
            "expiresAt": expires.isoformat(),
        }

    # --- brute-force limits ----------------------------------------------------------

    def _failure_keys(self, client_id: str, address: str) -> list[tuple[str, int]]:
        auth = self.settings.auth
        return [
            (f"__auth__:failures:client:{client_id}", auth.max_failures_per_client),
            (f"__auth__:failures:address:{address}", auth.max_failures_per_address),
        ]

    async def _refuse_if_locked(self, client_id: str, address: str) -> None:
        window = self.settings.auth.failure_window_ms
        for key, limit in self._failure_keys(client_id, address):
            counter = await self.state.incr(key, 0, window)
            if counter.value >= limit:
                wait_ms = (counter.reset_at_ms or 0) - int(time.time() * 1000)
                retry = max(1, math.ceil(wait_ms / 1000))
                raise KbError(
                    "TOO_MANY_ATTEMPTS",
                    f"too many failed attempts; retry in {retry} s",
                    429,
                    headers={"Retry-After": str(retry)},
                    extra={"retryAfter": retry},
                )

    async def _count_failure(self, client_id: str, address: str) -> None:
        window = self.settings.auth.failure_window_ms
        for key, _ in self._failure_keys(client_id, address):
            await self.state.incr(key, 1, window)


def _secret_matches(row: dict[str, Any], secret: str) -> bool:
    presented = cred.digest(secret)
    if cred.same_digest(presented, row["secret_hash"]):
        return True
    grace_until = cred.aware(row.get("previous_secret_expires_at"))
    return (
        grace_until is not None
        and grace_until > cred.utc_now()
        and cred.same_digest(presented, row.get("previous_secret_hash"))
    )


def random_secret() -> str:
    return secrets.token_urlsafe(48)
