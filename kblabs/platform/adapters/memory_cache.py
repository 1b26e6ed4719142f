"""cache → "memory": a bounded LRU dictionary in this process, with TTLs.

Values are stored as their JSON text, so `get` hands out a fresh copy every time (a
caller mutating what it got, or what it stored, changes nothing in the cache) and a
value that would not survive Redis (a set, an object) is refused at `set`, not later.
Everything is lost on restart: it is a cache.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from pydantic import Field

from kblabs.platform.options import AdapterOptions


class MemoryCacheOptions(AdapterOptions):
    max_entries: int = Field(default=10_000, ge=1)
    # TTL of a `set` without one; None: kept until evicted or deleted.
    default_ttl_ms: int | None = Field(default=None, ge=1)


class MemoryCache:
    def __init__(
        self,
        options: MemoryCacheOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        options = options or MemoryCacheOptions()
        self.max_entries = options.max_entries
        self.default_ttl_ms = options.default_ttl_ms
        self._clock = clock  # seconds; injectable so tests need no sleeping
        # key → (JSON text, expiry on the clock or None); most recently used last
        self._entries: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    async def get(self, key: str) -> Any | None:
        entry = self._entries.get(key)
        if entry is None or self._expired(entry):
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return json.loads(entry[0])

    async def set(self, key: str, value: Any, ttl_ms: int | None = None) -> None:
        ttl = self.default_ttl_ms if ttl_ms is None else ttl_ms
        if ttl is not None and ttl <= 0:
            raise ValueError(f"cache ttl must be a positive number of ms, not {ttl}")
        try:
            text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cache values must be JSON-serialisable: {exc}") from None
        expires = None if ttl is None else self._clock() + ttl / 1000
        self._entries[key] = (text, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)  # the least recently used
            self.evictions += 1

    async def delete(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        return entry is not None and not self._expired(entry)

    async def clear(self, pattern: str | None = None) -> int:
        self._drop_expired()
        if pattern is None:
            removed = len(self._entries)
            self._entries.clear()
            return removed
        matching = [key for key in self._entries if fnmatchcase(key, pattern)]
        for key in matching:
            del self._entries[key]
        return len(matching)

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }

    def _expired(self, entry: tuple[str, float | None]) -> bool:
        return entry[1] is not None and entry[1] <= self._clock()

    def _drop_expired(self) -> None:
        for key in [k for k, entry in self._entries.items() if self._expired(entry)]:
            del self._entries[key]
