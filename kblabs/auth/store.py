"""SQL for identity: clients, refresh-token families, API keys, enrollment tokens.

Every statement is a short transaction; nothing awaits other I/O while one is open.
Writes that must happen once (consuming a refresh or enrollment token) are conditional
UPDATEs whose row count says who won, so two racing requests cannot both succeed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from kblabs.auth.credentials import aware, utc_now
from kblabs.store.tables import (
    auth_api_keys,
    auth_clients,
    auth_enrollments,
    auth_refresh_tokens,
)


class AuthStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # --- clients -----------------------------------------------------------------------

    async def add_client(self, **row: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(auth_clients).values(**row, created_at=utc_now()))

    async def client(self, client_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(auth_clients).where(auth_clients.c.client_id == client_id)
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    async def clients(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(auth_clients).order_by(auth_clients.c.created_at))
            return [dict(r) for r in rows.mappings()]

    async def revoke_client(self, client_id: str) -> bool:
        now = utc_now()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(auth_clients)
                .where(auth_clients.c.client_id == client_id, auth_clients.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await conn.execute(
                update(auth_refresh_tokens)
                .where(
                    auth_refresh_tokens.c.client_id == client_id,
                    auth_refresh_tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
        return result.rowcount == 1

    async def rotate_secret(self, client_id: str, new_hash: str, grace: timedelta) -> bool:
        async with self.engine.begin() as conn:
            current = (
                await conn.execute(
                    select(auth_clients.c.secret_hash).where(
                        auth_clients.c.client_id == client_id, auth_clients.c.revoked_at.is_(None)
                    )
                )
            ).scalar()
            if current is None:
                return False
            await conn.execute(
                update(auth_clients)
                .where(auth_clients.c.client_id == client_id)
                .values(
                    secret_hash=new_hash,
                    previous_secret_hash=current,
                    previous_secret_expires_at=utc_now() + grace,
                )
            )
        return True

    # --- refresh tokens ----------------------------------------------------------------

    async def add_refresh(
        self, token_hash: str, family_id: str, client_id: str, expires_at: datetime
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(auth_refresh_tokens).values(
                    token_hash=token_hash,
                    family_id=family_id,
                    client_id=client_id,
                    issued_at=utc_now(),
                    expires_at=expires_at,
                )
            )

    async def refresh_row(self, token_hash: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(auth_refresh_tokens).where(
                            auth_refresh_tokens.c.token_hash == token_hash
                        )
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    async def consume_refresh(self, token_hash: str) -> bool:
        """True for the one caller that consumed it; False if it was already used."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(auth_refresh_tokens)
                .where(
                    auth_refresh_tokens.c.token_hash == token_hash,
                    auth_refresh_tokens.c.consumed_at.is_(None),
                    auth_refresh_tokens.c.revoked_at.is_(None),
                )
                .values(consumed_at=utc_now())
            )
        return result.rowcount == 1

    async def revoke_family(self, family_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(auth_refresh_tokens)
                .where(
                    auth_refresh_tokens.c.family_id == family_id,
                    auth_refresh_tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=utc_now())
            )

    # --- API keys ----------------------------------------------------------------------

    async def add_api_key(self, **row: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(auth_api_keys).values(**row, created_at=utc_now()))

    async def api_key(self, token_hash: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(auth_api_keys).where(auth_api_keys.c.token_hash == token_hash)
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    async def api_keys(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(auth_api_keys).order_by(auth_api_keys.c.created_at))
            return [{k: v for k, v in r.items() if k != "token_hash"} for r in rows.mappings()]

    async def revoke_api_key(self, key_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(auth_api_keys)
                .where(auth_api_keys.c.key_id == key_id, auth_api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            )
        return result.rowcount == 1

    async def revoke_host_clients(self, host_id: str) -> None:
        """Clients registered for a host (their host id is unique)."""
        client = await self._client_for_host(host_id)
        if client is not None:
            await self.revoke_client(client)

    async def _client_for_host(self, host_id: str) -> str | None:
        async with self.engine.connect() as conn:
            query = select(auth_clients.c.client_id).where(auth_clients.c.host_id == host_id)
            return (await conn.execute(query)).scalar()

    async def revoke_host_keys(self, namespace_id: str, host_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(auth_api_keys)
                .where(
                    auth_api_keys.c.namespace_id == namespace_id,
                    auth_api_keys.c.host_id == host_id,
                    auth_api_keys.c.revoked_at.is_(None),
                )
                .values(revoked_at=utc_now())
            )

    # --- enrollment tokens -------------------------------------------------------------

    async def add_enrollment(self, **row: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(auth_enrollments).values(**row, created_at=utc_now()))

    async def consume_enrollment(self, token_hash: str) -> dict[str, Any] | None:
        """The enrollment, marked used, if it was unused and unexpired; else None."""
        now = utc_now()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(auth_enrollments)
                .where(
                    auth_enrollments.c.token_hash == token_hash,
                    auth_enrollments.c.used_at.is_(None),
                    auth_enrollments.c.expires_at > now,
                )
                .values(used_at=now)
            )
            if result.rowcount != 1:
                return None
            row = (
                (
                    await conn.execute(
                        select(auth_enrollments).where(auth_enrollments.c.token_hash == token_hash)
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    async def enrollments(self) -> list[dict[str, Any]]:
        now = utc_now()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(auth_enrollments)
                .where(
                    or_(
                        auth_enrollments.c.used_at.is_not(None),
                        and_(auth_enrollments.c.expires_at > now),
                    )
                )
                .order_by(auth_enrollments.c.created_at)
            )
            return [{k: v for k, v in r.items() if k != "token_hash"} for r in rows.mappings()]


def is_live(row: dict[str, Any], now: datetime | None = None) -> bool:
    """Not revoked and not expired (rows without an expiry never expire)."""
    now = now or utc_now()
    expires = aware(row.get("expires_at"))
    return row.get("revoked_at") is None and (expires is None or expires > now)
