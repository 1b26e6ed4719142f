"""The state broker: one service object over the chosen backend (memory or Redis).

Other modules and plugins call it directly (`runtime.state`); HTTP reaches it through
kblabs.state.api. It validates arguments, measures every operation, runs the periodic
sweep, and turns a backend outage into `STATE_BACKEND_UNAVAILABLE` (503) plus a
`degraded` component in /ready, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kblabs.config import Settings
from kblabs.errors import KbError, StartupError
from kblabs.http.validation import field_error
from kblabs.state.backend import MISSING, StateBackend
from kblabs.state.memory import MemoryBackend
from kblabs.state.model import (
    DEFAULT_TTL_MS,
    CounterValue,
    LockGrant,
    RateLimitResult,
    encode,
)

T = TypeVar("T")

MAX_TTL_MS = 30 * 24 * 3600 * 1000
DEFAULT_LOCK_TTL_MS = 30_000
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
PROBE_INTERVAL_S = 2.0
LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000)


def state_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    """(backend name, adapterOptions.state) from the `platform` section."""
    kind = settings.platform.adapters.get("state") or "memory"
    options = settings.platform.adapter_options.get("state") or {}
    return str(kind), dict(options)


def make_backend(kind: str, options: dict[str, Any]) -> StateBackend:
    if kind == "memory":
        return MemoryBackend()
    if kind == "redis":
        try:
            import redis  # noqa: F401 - an optional extra
        except ImportError:
            raise StartupError(
                "state", 'the redis state backend needs the extra: pip install "kblabs[redis]"'
            ) from None
        from kblabs.state.redis_backend import RedisBackend

        url = options.get("url") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        return RedisBackend(
            str(url),
            prefix=str(options.get("prefix", "kb:state:")),
            max_connections=int(options.get("maxConnections", 50)),
        )
    raise ValueError(f'platform.adapters.state must be "memory" or "redis", not {kind!r}')


def _unavailable_errors(kind: str) -> tuple[type[BaseException], ...]:
    if kind != "redis":
        return ()
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError)


class BrokerMetrics:
    def __init__(self, registry: CollectorRegistry, backend: StateBackend) -> None:
        self.snapshot: dict[str, Any] = {"totalEntries": 0, "totalSize": 0, "evictions": 0}
        for name, field, doc in (
            ("state_broker_entries_total", "totalEntries", "Live state entries"),
            ("state_broker_size_bytes", "totalSize", "Bytes held by state values"),
            ("state_broker_evictions_total", "evictions", "Entries removed by the sweep"),
        ):
            Gauge(name, doc, registry=registry).set_function(self._reader(backend, field))
        self.operations = Counter(
            "state_broker_operations", "State operations", ["op", "status"], registry=registry
        )
        self.latency = Histogram(
            "state_broker_operation_duration_ms",
            "State operation latency in milliseconds",
            ["op"],
            buckets=LATENCY_BUCKETS_MS,
            registry=registry,
        )

    def _reader(self, backend: StateBackend, field: str) -> Callable[[], float]:
        def read() -> float:
            return float((backend.snapshot() or self.snapshot).get(field, 0))

        return read


class StateBroker:
    name = "state"

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.kind, options = state_options(settings)
        self.backend = make_backend(self.kind, options)
        self.max_value_bytes = int(options.get("maxValueBytes", DEFAULT_MAX_VALUE_BYTES))
        self.sweep_interval_s = float(options.get("sweepIntervalMs", 30_000)) / 1000
        self._unavailable = _unavailable_errors(self.kind)
        self.metrics = BrokerMetrics(registry, self.backend)
        self.degraded: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.backend.connect()
        try:
            await self.backend.ping()
        except self._unavailable as exc:
            self._mark_degraded(exc)
        self._tasks = [
            asyncio.create_task(self._sweep_loop(), name="state-sweep"),
            asyncio.create_task(self._probe_loop(), name="state-probe"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.backend.close()

    def health(self) -> tuple[str, str]:
        """("ok" | "degraded", message) for /ready."""
        if self.degraded:
            return "degraded", self.degraded
        return "ok", f"{self.kind} backend"

    def _mark_degraded(self, exc: BaseException) -> None:
        message = f"{self.kind} state backend unavailable: {exc}"
        if self.degraded is None:
            logger.warning("{}", message)
        self.degraded = message

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if self.degraded is None:
                continue
            try:
                await self.backend.ping()
            except Exception as exc:  # keep probing whatever the failure
                self.degraded = f"{self.kind} state backend unavailable: {exc}"
                continue
            logger.info("{} state backend is reachable again", self.kind)
            self.degraded = None

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.sweep()
            except KbError:
                pass  # an outage: already reported as degraded
            except Exception as exc:  # a bad sweep must not end the loop
                logger.opt(exception=exc).warning("state sweep failed: {}", exc)

    # --- measured calls --------------------------------------------------------------

    async def _call(self, op: str, action: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        status = "ok"
        try:
            return await action()
        except self._unavailable as exc:
            status = "unavailable"
            self._mark_degraded(exc)
            raise KbError(
                "STATE_BACKEND_UNAVAILABLE",
                f"the {self.kind} state backend is unavailable: {exc}",
                503,
                headers={"Retry-After": "5"},
            ) from exc
        except Exception:
            status = "error"
            raise
        finally:
            self.metrics.operations.labels(op, status).inc()
            self.metrics.latency.labels(op).observe((time.perf_counter() - started) * 1000)

    # --- key/value -------------------------------------------------------------------

    async def get(self, key: str) -> Any:
        """The value, or MISSING when the key is absent or expired."""
        _check_key(key)
        return await self._call("get", lambda: self.backend.get(key))

    async def get_with_expiry(self, key: str) -> tuple[Any, int | None]:
        _check_key(key)
        return await self._call("get", lambda: self.backend.get_with_expiry(key))

    async def set(self, key: str, value: Any, ttl_ms: int | None = None) -> int:
        """Store `value` (JSON-serialisable) for `ttl_ms` (default 300 000); returns the
        expiry time in epoch ms."""
        _check_key(key)
        ttl = DEFAULT_TTL_MS if ttl_ms is None else _check_ttl(ttl_ms, "ttl")
        encoded = _encode_value(value, self.max_value_bytes)
        return await self._call("set", lambda: self.backend.set(key, encoded, ttl))

    async def delete(self, key: str) -> bool:
        _check_key(key)
        return await self._call("delete", lambda: self.backend.delete(key))

    async def clear(self, pattern: str | None = None) -> int:
        """Remove keys matching `prefix*` or a glob (None: everything); returns how many."""
        return await self._call("clear", lambda: self.backend.clear(pattern or None))

    async def stats(self) -> dict[str, Any]:
        stats = await self._call("stats", self.backend.stats)
        self.metrics.snapshot = stats
        return {"backend": self.kind, **stats}

    async def sweep(self) -> int:
        evicted = await self._call("sweep", self.backend.sweep)
        await self.stats()
        return evicted

    # --- locks -----------------------------------------------------------------------

    async def acquire_lock(
        self, name: str, owner: str, ttl_ms: int = DEFAULT_LOCK_TTL_MS
    ) -> LockGrant | None:
        """A grant with a fencing token (strictly increasing per name), or None if held."""
        _check_name(name, "name")
        _check_name(owner, "owner")
        ttl = _check_ttl(ttl_ms, "ttl")
        return await self._call("lock.acquire", lambda: self.backend.acquire_lock(name, owner, ttl))

    async def renew_lock(
        self, name: str, owner: str, token: int, ttl_ms: int = DEFAULT_LOCK_TTL_MS
    ) -> int | None:
        """New expiry (epoch ms), or None when `owner`+`token` no longer hold the lock."""
        ttl = _check_ttl(ttl_ms, "ttl")
        return await self._call(
            "lock.renew", lambda: self.backend.renew_lock(name, owner, token, ttl)
        )

    async def release_lock(self, name: str, owner: str, token: int) -> bool:
        return await self._call(
            "lock.release", lambda: self.backend.release_lock(name, owner, token)
        )

    async def lock_holder(self, name: str) -> LockGrant | None:
        return await self._call("lock.holder", lambda: self.backend.lock_holder(name))

    # --- counters and rate limits ----------------------------------------------------

    async def incr(self, name: str, by: int = 1, window_ms: int | None = None) -> CounterValue:
        _check_name(name, "name")
        window = None if window_ms is None else _check_ttl(window_ms, "window")
        return await self._call("incr", lambda: self.backend.incr(name, by, window))

    async def rate_limit(
        self, name: str, limit: int, window_ms: int, cost: int = 1
    ) -> RateLimitResult:
        """Fixed-window limit: `cost` units against `limit` per `window_ms`, atomically."""
        _check_name(name, "name")
        if limit < 1 or cost < 1:
            raise _invalid("limit" if limit < 1 else "cost", "must be a positive integer")
        window = _check_ttl(window_ms, "window")
        return await self._call(
            "rate_limit", lambda: self.backend.rate_limit(name, limit, window, cost)
        )


def _invalid(field: str, message: str) -> KbError:
    return field_error(field, message)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise _invalid("key", "must be a non-empty string")
    if len(key) > 1024:
        raise _invalid("key", "must be at most 1024 characters")


def _check_name(name: str, field: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 512:
        raise _invalid(field, "must be a non-empty string of at most 512 characters")


def _check_ttl(ttl_ms: int, field: str) -> int:
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or not 1 <= ttl_ms <= MAX_TTL_MS:
        raise _invalid(field, f"must be an integer number of milliseconds, 1..{MAX_TTL_MS}")
    return ttl_ms


def _encode_value(value: Any, max_bytes: int) -> str:
    """The value as JSON text (encoded once, stored as text by every backend)."""
    try:
        encoded = encode(value)
    except (TypeError, ValueError) as exc:
        raise _invalid("value", f"must be JSON-serialisable ({exc})") from exc
    size = len(encoded.encode())
    if size > max_bytes:
        raise KbError(
            "VALUE_TOO_LARGE",
            f"value is {size} bytes; the limit is {max_bytes} (adapterOptions.state.maxValueBytes)",
            413,
        )
    return encoded


__all__ = ["MISSING", "StateBroker"]
