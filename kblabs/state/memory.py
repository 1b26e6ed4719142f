"""In-process state backend: the default. Nothing is awaited inside an operation, so
each one is atomic on the event loop. Expiry is lazy, plus a sweep that counts
evictions (only the sweep counts, as in the original)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from kblabs.state.backend import MISSING
from kblabs.state.model import (
    CounterValue,
    LockGrant,
    RateLimitResult,
    Stats,
    matcher,
)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Entry:
    encoded: str  # JSON text: callers never share (and mutate) the stored object
    size: int
    expires_at_ms: int
    created_ms: int
    last_access_ms: int


@dataclass
class Window:
    value: int
    expires_at_ms: int | None


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._locks: dict[str, LockGrant] = {}
        self._fences: dict[str, int] = {}
        self._windows: dict[str, Window] = {}
        self._started_ms = now_ms()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.total_size = 0

    def snapshot(self) -> dict[str, int]:
        """Figures for the metrics gauges, read without awaiting (entries not yet swept
        are counted)."""
        return {
            "totalEntries": len(self._entries),
            "totalSize": self.total_size,
            "evictions": self.evictions,
        }

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    # --- key/value -------------------------------------------------------------------

    def _live(self, key: str, now: int) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at_ms <= now:
            self._remove(key)
            return None
        return entry

    def _remove(self, key: str) -> Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.total_size -= entry.size
        return entry

    async def get(self, key: str) -> Any:
        value, _ = await self.get_with_expiry(key)
        return value

    async def get_with_expiry(self, key: str) -> tuple[Any, int | None]:
        now = now_ms()
        entry = self._live(key, now)
        if entry is None:
            self.misses += 1
            return MISSING, None
        self.hits += 1
        entry.last_access_ms = now
        return json.loads(entry.encoded), entry.expires_at_ms

    async def set(self, key: str, encoded: str, ttl_ms: int) -> int:
        now = now_ms()
        previous = self._remove(key)
        size = len(encoded.encode())
        created = previous.created_ms if previous is not None else now
        self._entries[key] = Entry(encoded, size, now + ttl_ms, created, now)
        self.total_size += size
        return now + ttl_ms

    async def delete(self, key: str) -> bool:
        entry = self._remove(key)
        return entry is not None and entry.expires_at_ms > now_ms()

    async def clear(self, pattern: str | None) -> int:
        matches = matcher(pattern)
        now = now_ms()
        doomed = [key for key in self._entries if matches(key)]
        live = 0
        for key in doomed:
            entry = self._remove(key)
            live += int(entry is not None and entry.expires_at_ms > now)
        return live

    async def stats(self) -> dict[str, Any]:
        now = now_ms()
        stats = Stats()
        for key, entry in self._entries.items():
            if entry.expires_at_ms > now:
                stats.add(key, entry.size, entry.created_ms, entry.last_access_ms)
        return stats.to_dict(now - self._started_ms, self.hits, self.misses, self.evictions)

    async def sweep(self) -> int:
        now = now_ms()
        expired = [key for key, entry in self._entries.items() if entry.expires_at_ms <= now]
        for key in expired:
            self._remove(key)
        self.evictions += len(expired)
        for name in [n for n, grant in self._locks.items() if grant.expires_at_ms <= now]:
            del self._locks[name]
        for name in [n for n, w in self._windows.items() if _expired(w, now)]:
            del self._windows[name]
        return len(expired)

    # --- locks -----------------------------------------------------------------------

    async def lock_holder(self, name: str) -> LockGrant | None:
        grant = self._locks.get(name)
        if grant is not None and grant.expires_at_ms <= now_ms():
            del self._locks[name]
            return None
        return grant

    async def acquire_lock(self, name: str, owner: str, ttl_ms: int) -> LockGrant | None:
        if await self.lock_holder(name) is not None:
            return None
        token = self._fences.get(name, 0) + 1
        self._fences[name] = token
        grant = LockGrant(name, owner, token, now_ms() + ttl_ms)
        self._locks[name] = grant
        return grant

    async def renew_lock(self, name: str, owner: str, token: int, ttl_ms: int) -> int | None:
        grant = await self.lock_holder(name)
        if grant is None or grant.owner != owner or grant.token != token:
            return None
        renewed = LockGrant(name, owner, token, now_ms() + ttl_ms)
        self._locks[name] = renewed
        return renewed.expires_at_ms

    async def release_lock(self, name: str, owner: str, token: int) -> bool:
        grant = await self.lock_holder(name)
        if grant is None or grant.owner != owner or grant.token != token:
            return False
        del self._locks[name]
        return True

    # --- counters and rate limits ----------------------------------------------------

    def _window(self, name: str, window_ms: int | None, now: int) -> Window:
        window = self._windows.get(name)
        if window is None or _expired(window, now):
            window = Window(0, now + window_ms if window_ms else None)
            self._windows[name] = window
        return window

    async def incr(self, name: str, by: int, window_ms: int | None) -> CounterValue:
        window = self._window(f"counter:{name}", window_ms, now_ms())
        window.value += by
        return CounterValue(window.value, window.expires_at_ms)

    async def rate_limit(self, name: str, limit: int, window_ms: int, cost: int) -> RateLimitResult:
        now = now_ms()
        window = self._window(f"ratelimit:{name}", window_ms, now)
        reset_at = window.expires_at_ms or now + window_ms
        allowed = window.value + cost <= limit
        if allowed:
            window.value += cost
        return RateLimitResult(
            allowed=allowed,
            limit=limit,
            remaining=max(limit - window.value, 0),
            reset_at_ms=reset_at,
            retry_after_ms=0 if allowed else max(reset_at - now, 0),
        )


def _expired(window: Window, now: int) -> bool:
    return window.expires_at_ms is not None and window.expires_at_ms <= now
