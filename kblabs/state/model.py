"""Plain result types of the state broker and how keys map to namespaces and tenants."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_TTL_MS = 300_000


@dataclass(frozen=True)
class LockGrant:
    name: str
    owner: str
    token: int  # fencing token: strictly increasing per lock name
    expires_at_ms: int


@dataclass(frozen=True)
class CounterValue:
    value: int
    reset_at_ms: int | None  # None: the counter has no window


@dataclass(frozen=True)
class RateLimitResult:
    allowed: bool
    limit: int
    remaining: int
    reset_at_ms: int
    retry_after_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "limit": self.limit,
            "remaining": self.remaining,
            "resetAt": self.reset_at_ms,
            "retryAfterMs": self.retry_after_ms,
        }


def to_dict(result: Any) -> dict[str, Any]:
    return asdict(result)


def encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def namespace_of(key: str) -> str:
    """First `:` segment, or the third for keys shaped `tenant:<id>:<ns>:…`."""
    parts = key.split(":")
    if parts[0] == "tenant" and len(parts) >= 3:
        return parts[2]
    return parts[0] if len(parts) > 1 else "default"


def tenant_of(key: str) -> str:
    parts = key.split(":")
    if parts[0] == "tenant" and len(parts) >= 2:
        return parts[1]
    return "default"


def matcher(pattern: str | None):
    """`None`/"" or "*": everything; `X*` with no other wildcard: prefix; else a glob."""
    if not pattern or pattern == "*":
        return lambda key: True
    body = pattern[:-1]
    if pattern.endswith("*") and not any(c in body for c in "*?["):
        return lambda key: key.startswith(body)
    return lambda key: fnmatch.fnmatchcase(key, pattern)


class Stats:
    """Builds the BrokerStats shape from (key, size, created_ms, last_access_ms) rows."""

    def __init__(self) -> None:
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.tenants: dict[str, dict[str, Any]] = {}
        self.total_entries = 0
        self.total_size = 0

    def add(self, key: str, size: int, created_ms: int, last_access_ms: int) -> None:
        self.total_entries += 1
        self.total_size += size
        ns = self.namespaces.setdefault(
            namespace_of(key), {"entries": 0, "size": 0, "oldestEntry": created_ms}
        )
        ns["entries"] += 1
        ns["size"] += size
        ns["oldestEntry"] = min(ns["oldestEntry"], created_ms)
        tenant = self.tenants.setdefault(
            tenant_of(key), {"entries": 0, "size": 0, "lastAccess": last_access_ms}
        )
        tenant["entries"] += 1
        tenant["size"] += size
        tenant["lastAccess"] = max(tenant["lastAccess"], last_access_ms)

    def to_dict(self, uptime_ms: int, hits: int, misses: int, evictions: int) -> dict[str, Any]:
        lookups = hits + misses
        return {
            "uptime": uptime_ms,
            "totalEntries": self.total_entries,
            "totalSize": self.total_size,
            "hitRate": round(hits / lookups, 4) if lookups else 0.0,
            "missRate": round(misses / lookups, 4) if lookups else 0.0,
            "hits": hits,
            "misses": misses,
            "evictions": evictions,
            "namespaces": self.namespaces,
            "byTenant": self.tenants,
        }
