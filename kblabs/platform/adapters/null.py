"""The "null" adapter of each built-in token: accepts every call and keeps nothing.

Choose it to switch a service off while code that calls it keeps working (a `null`
storage discards writes and reads None; a `null` analytics records nothing). Leaving a
token out, or setting it to JSON `null`, is different: then there is no adapter at all
and `registry.get()`/`use_*()` return None.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kblabs.platform.interfaces import (
    Actor,
    EventFilters,
    EventHandler,
    EventPage,
    EventSource,
    EventStats,
    Unsubscribe,
)


class NullCache:
    async def get(self, key: str) -> Any | None:
        return None

    async def set(self, key: str, value: Any, ttl_ms: int | None = None) -> None:
        return None

    async def delete(self, key: str) -> bool:
        return False

    async def clear(self, pattern: str | None = None) -> int:
        return 0


class NullStorage:
    async def read(self, path: str) -> bytes | None:
        return None

    async def write(self, path: str, data: bytes) -> None:
        return None

    async def delete(self, path: str) -> bool:
        return False

    async def list(self, prefix: str = "") -> list[str]:
        return []

    async def exists(self, path: str) -> bool:
        return False


class NullEventBus:
    async def publish(self, topic: str, event: Any) -> None:
        return None

    def subscribe(self, topic: str, handler: EventHandler) -> Unsubscribe:
        return lambda: None


class NullLogger:
    def debug(self, message: str, **fields: Any) -> None:
        return None

    def info(self, message: str, **fields: Any) -> None:
        return None

    def warn(self, message: str, **fields: Any) -> None:
        return None

    def error(self, message: str, exc: BaseException | None = None, **fields: Any) -> None:
        return None

    def child(self, **fields: Any) -> NullLogger:
        return self


class NullAnalytics:
    async def track(
        self,
        type: str,
        payload: dict[str, Any] | None = None,
        *,
        namespace_id: str = "default",
        run_id: str | None = None,
        actor: Actor | None = None,
        ctx: dict[str, Any] | None = None,
        source: EventSource | None = None,
        ts: datetime | None = None,
    ) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def get_events(self, filters: EventFilters | None = None) -> EventPage:
        return {"events": [], "total": 0, "hasMore": False}

    async def get_stats(self, filters: EventFilters | None = None) -> EventStats:
        return {"totalEvents": 0, "byType": {}, "bySource": {}, "byActor": {}}
