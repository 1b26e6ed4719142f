"""The interface both state backends implement (memory and Redis).

Every operation is atomic with respect to the others: the memory backend never awaits
inside one, the Redis backend runs each as one Lua script or one command.
"""

from __future__ import annotations

from typing import Any, Protocol

from kblabs.state.model import CounterValue, LockGrant, RateLimitResult


class Missing:
    """The result of `get` for a key that is absent or expired."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = Missing()


class StateBackend(Protocol):
    name: str

    def snapshot(self) -> dict[str, int] | None: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def get(self, key: str) -> Any: ...  # MISSING when absent

    async def get_with_expiry(self, key: str) -> tuple[Any, int | None]: ...

    async def set(self, key: str, encoded: str, ttl_ms: int) -> int: ...  # expiry, epoch ms

    async def delete(self, key: str) -> bool: ...

    async def clear(self, pattern: str | None) -> int: ...

    async def stats(self) -> dict[str, Any]: ...

    async def sweep(self) -> int: ...  # evictions made by this sweep

    async def acquire_lock(self, name: str, owner: str, ttl_ms: int) -> LockGrant | None: ...

    async def renew_lock(self, name: str, owner: str, token: int, ttl_ms: int) -> int | None: ...

    async def release_lock(self, name: str, owner: str, token: int) -> bool: ...

    async def lock_holder(self, name: str) -> LockGrant | None: ...

    async def incr(self, name: str, by: int, window_ms: int | None) -> CounterValue: ...

    async def rate_limit(
        self, name: str, limit: int, window_ms: int, cost: int
    ) -> RateLimitResult: ...
