"""Host descriptors (persisted) and their live status (in memory).

Descriptors live in `gateway_hosts` with their last status and lastSeen, so a restart
keeps every host (all `offline` until their agents reconnect). Live connections are
keyed by (namespace, host, connection id): a reconnect adds a new key, and the old
socket's close removes only its own entry, never the newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from kblabs.auth.credentials import aware, utc_now
from kblabs.gateway.protocol import CAPABILITIES, RECONNECT_GRACE_S
from kblabs.store import Store
from kblabs.store.tables import gateway_hosts

LAST_SEEN_WRITE_INTERVAL_S = 10.0  # heartbeats update memory; the table at most this often


@dataclass
class LiveHost:
    connections: dict[str, Any] = field(default_factory=dict)  # connection id → session
    degraded: bool = False
    last_seen: datetime | None = None
    last_written: float = 0.0
    offline_timer: asyncio.TimerHandle | None = None
    reconnecting: bool = False


def iso(moment: datetime | None) -> str | None:
    moment = aware(moment)
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HostRegistry:
    def __init__(self, store: Store, reconnect_grace_s: float = RECONNECT_GRACE_S) -> None:
        self.store = store  # its engine exists once the store has started
        self.reconnect_grace_s = reconnect_grace_s
        self.live: dict[tuple[str, str], LiveHost] = {}

    @property
    def engine(self) -> AsyncEngine:
        return self.store.engine

    # --- descriptors -----------------------------------------------------------------

    async def upsert(
        self,
        namespace: str,
        host_id: str,
        *,
        name: str,
        capabilities: list[str],
        host_type: str = "local",
        workspaces: list[Any] | None = None,
    ) -> None:
        now = utc_now()
        values = {
            "name": name[:128],
            "capabilities": _known(capabilities),
            "host_type": host_type,
            "updated_at": now,
        }
        if workspaces is not None:
            values["workspaces"] = workspaces
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(gateway_hosts)
                .where(
                    gateway_hosts.c.namespace_id == namespace, gateway_hosts.c.host_id == host_id
                )
                .values(**values)
            )
            if result.rowcount == 0:
                await conn.execute(
                    insert(gateway_hosts).values(
                        namespace_id=namespace,
                        host_id=host_id,
                        last_status="offline",
                        created_at=now,
                        **{"workspaces": [], **values},
                    )
                )

    async def row(self, namespace: str, host_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            query = select(gateway_hosts).where(
                gateway_hosts.c.namespace_id == namespace, gateway_hosts.c.host_id == host_id
            )
            row = (await conn.execute(query)).mappings().first()
        return dict(row) if row else None

    async def rows(self, namespace: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            query = (
                select(gateway_hosts)
                .where(gateway_hosts.c.namespace_id == namespace)
                .order_by(gateway_hosts.c.created_at)
            )
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def remove(self, namespace: str, host_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(gateway_hosts).where(
                    gateway_hosts.c.namespace_id == namespace, gateway_hosts.c.host_id == host_id
                )
            )
        live = self.live.pop((namespace, host_id), None)
        if live is not None and live.offline_timer is not None:
            live.offline_timer.cancel()
        return result.rowcount == 1

    async def reset_statuses(self) -> None:
        """At start no socket exists: every host is offline until it reconnects."""
        async with self.engine.begin() as conn:
            await conn.execute(update(gateway_hosts).values(last_status="offline"))

    async def _write_status(
        self, namespace: str, host_id: str, status: str, last_seen: datetime | None = None
    ) -> None:
        values: dict[str, Any] = {"last_status": status}
        if last_seen is not None:
            values["last_seen"] = last_seen
        async with self.engine.begin() as conn:
            await conn.execute(
                update(gateway_hosts)
                .where(
                    gateway_hosts.c.namespace_id == namespace, gateway_hosts.c.host_id == host_id
                )
                .values(**values)
            )

    # --- live connections ------------------------------------------------------------

    def status(self, namespace: str, host_id: str, stored: str = "offline") -> str:
        live = self.live.get((namespace, host_id))
        if live is None:
            return stored
        if live.connections:
            return "degraded" if live.degraded else "online"
        return "reconnecting" if live.reconnecting else stored

    def sessions(self, namespace: str, host_id: str) -> list[Any]:
        live = self.live.get((namespace, host_id))
        return list(live.connections.values()) if live else []

    def connected_hosts(self, namespace: str) -> list[str]:
        return [
            host for (ns, host), live in self.live.items() if ns == namespace and live.connections
        ]

    async def connected(
        self, namespace: str, host_id: str, connection_id: str, session: Any
    ) -> None:
        live = self.live.setdefault((namespace, host_id), LiveHost())
        if live.offline_timer is not None:
            live.offline_timer.cancel()
            live.offline_timer = None
        live.connections[connection_id] = session
        live.degraded = False
        live.reconnecting = False
        live.last_seen = utc_now()
        await self._write_status(namespace, host_id, "online", live.last_seen)

    async def heard_from(self, namespace: str, host_id: str) -> None:
        """A heartbeat: lastSeen moves and a `degraded` host is online again."""
        live = self.live.get((namespace, host_id))
        if live is None:
            return
        now = asyncio.get_running_loop().time()
        live.last_seen = utc_now()
        was_degraded, live.degraded = live.degraded, False
        if was_degraded or now - live.last_written > LAST_SEEN_WRITE_INTERVAL_S:
            live.last_written = now
            await self._write_status(namespace, host_id, "online", live.last_seen)

    async def disconnected(self, namespace: str, host_id: str, connection_id: str) -> None:
        live = self.live.get((namespace, host_id))
        if live is None or live.connections.pop(connection_id, None) is None:
            return
        if live.connections:
            return  # a newer connection of the same host is still there
        live.reconnecting = True
        await self._write_status(namespace, host_id, "reconnecting", utc_now())
        loop = asyncio.get_running_loop()
        live.offline_timer = loop.call_later(
            self.reconnect_grace_s,
            lambda: asyncio.ensure_future(self._go_offline(namespace, host_id)),
        )

    async def _go_offline(self, namespace: str, host_id: str) -> None:
        live = self.live.get((namespace, host_id))
        if live is None or live.connections:
            return
        live.reconnecting = False
        live.offline_timer = None
        with contextlib.suppress(Exception):  # the store may be closing at shutdown
            await self._write_status(namespace, host_id, "offline")

    def mark_silent(self, degraded_after_s: float) -> None:
        """Watchdog: hosts not heard from for too long become `degraded`."""
        cutoff = utc_now().timestamp() - degraded_after_s
        for live in self.live.values():
            seen = live.last_seen.timestamp() if live.last_seen else 0
            if live.connections and seen < cutoff:
                live.degraded = True

    def describe(self, row: dict[str, Any]) -> dict[str, Any]:
        key = (row["namespace_id"], row["host_id"])
        live = self.live.get(key)
        last_seen = live.last_seen if live and live.last_seen else row["last_seen"]
        return {
            "hostId": row["host_id"],
            "name": row["name"],
            "namespaceId": row["namespace_id"],
            "capabilities": row["capabilities"],
            "status": self.status(*key, stored=row["last_status"]),
            "lastSeen": iso(last_seen),
            "connections": sorted(live.connections) if live else [],
            "hostType": row["host_type"],
            "workspaces": row["workspaces"],
            "createdAt": iso(row["created_at"]),
            "updatedAt": iso(row["updated_at"]),
        }


def _known(capabilities: list[str]) -> list[str]:
    return [c for c in dict.fromkeys(capabilities) if c in CAPABILITIES]
