"""Redis state backend, for several instances sharing state.

Every operation is one Lua script or one command, so it is atomic across instances.
All keys live under one prefix (default `kb:state:`); `clear` walks them with SCAN and
removes them with UNLINK, never FLUSHDB. Values are JSON strings with a PX expiry; a
hash index (`<prefix>index`: key → "size|created|expires") feeds `stats` and lets the
sweep count evictions the way the memory backend does.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kblabs.state.backend import MISSING
from kblabs.state.model import CounterValue, LockGrant, RateLimitResult, Stats, matcher

SCAN_BATCH = 500

_GET = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('HINCRBY', KEYS[3], 'misses', 1)
  return nil
end
redis.call('HINCRBY', KEYS[3], 'hits', 1)
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
return {v, redis.call('PTTL', KEYS[1])}
"""

_SET = """
local created = ARGV[4]
if redis.call('EXISTS', KEYS[1]) == 1 then
  local old = redis.call('HGET', KEYS[2], ARGV[1])
  if old then created = string.match(old, '^[^|]*|([^|]*)|') or created end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5] .. '|' .. created .. '|' .. ARGV[6])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return 1
"""

_DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return n
"""

# ARGV: now, then the candidate keys; KEYS: index, access, meta, then one value key each.
_SWEEP = """
local evicted = 0
for i = 2, #ARGV do
  local entry = redis.call('HGET', KEYS[1], ARGV[i])
  if entry then
    local expires = tonumber(string.match(entry, '|([^|]*)$'))
    if expires and expires <= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[i + 2]) == 0 then
      redis.call('HDEL', KEYS[1], ARGV[i])
      redis.call('HDEL', KEYS[2], ARGV[i])
      evicted = evicted + 1
    end
  end
end
if evicted > 0 then redis.call('HINCRBY', KEYS[3], 'evictions', evicted) end
return evicted
"""

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[1], 'PX', ARGV[2])
return token
"""

_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return nil end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('PTTL', KEYS[1])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

_INCR = """
local existed = redis.call('EXISTS', KEYS[1])
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
local window = tonumber(ARGV[2])
if window > 0 and existed == 0 then
  redis.call('PEXPIRE', KEYS[1], window)
end
return {v, redis.call('PTTL', KEYS[1])}
"""

_RATE_LIMIT = """
local limit, cost, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = redis.call('PTTL', KEYS[1])
local current = 0
if ttl > 0 then current = tonumber(redis.call('GET', KEYS[1]) or '0') else ttl = window end
if current + cost <= limit then
  current = redis.call('INCRBY', KEYS[1], cost)
  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], window) end
  return {1, limit - current, ttl}
end
return {0, math.max(limit - current, 0), ttl}
"""


def now_ms() -> int:
    return int(time.time() * 1000)


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, prefix: str = "kb:state:", max_connections: int = 50) -> None:
        self.url = url
        self.prefix = prefix
        self.max_connections = max_connections
        self._client: Any = None
        self._started_ms = now_ms()

    # key names
    def _kv(self, key: str) -> str:
        return f"{self.prefix}kv:{key}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}index"

    @property
    def _access(self) -> str:
        return f"{self.prefix}access"

    @property
    def _meta(self) -> str:
        return f"{self.prefix}meta"

    def snapshot(self) -> None:
        """Redis figures need a round trip: the gauges use the last `stats` instead."""
        return None

    async def connect(self) -> None:
        import redis.asyncio as redis

        # A blocking pool: a burst of callers waits for a free connection (up to 5 s)
        # instead of failing with "Too many connections".
        pool = redis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=5,
            decode_responses=True,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=15,
        )
        self._client = redis.Redis(connection_pool=pool)
        register = self._client.register_script
        self._scripts = {
            name: register(source)
            for name, source in (
                ("get", _GET),
                ("set", _SET),
                ("delete", _DELETE),
                ("sweep", _SWEEP),
                ("acquire", _ACQUIRE),
                ("renew", _RENEW),
                ("release", _RELEASE),
                ("incr", _INCR),
                ("rate_limit", _RATE_LIMIT),
            )
        }

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ping(self) -> None:
        await self._client.ping()

    # --- key/value -------------------------------------------------------------------

    async def get(self, key: str) -> Any:
        value, _ = await self.get_with_expiry(key)
        return value

    async def get_with_expiry(self, key: str) -> tuple[Any, int | None]:
        result = await self._scripts["get"](
            keys=[self._kv(key), self._index, self._meta, self._access], args=[key, now_ms()]
        )
        if result is None:
            return MISSING, None
        raw, ttl = result
        return json.loads(raw), now_ms() + max(int(ttl), 0)

    async def set(self, key: str, encoded: str, ttl_ms: int) -> int:
        now = now_ms()
        expires = now + ttl_ms
        await self._scripts["set"](
            keys=[self._kv(key), self._index, self._access],
            args=[key, encoded, ttl_ms, now, len(encoded.encode()), expires],
        )
        return expires

    async def delete(self, key: str) -> bool:
        removed = await self._scripts["delete"](
            keys=[self._kv(key), self._index, self._access], args=[key]
        )
        return bool(removed)

    async def clear(self, pattern: str | None) -> int:
        matches = matcher(pattern)
        kv_prefix = self._kv("")
        removed = 0
        async for batch in self._scan_batches(f"{_escape(kv_prefix)}*"):
            keys = [k[len(kv_prefix) :] for k in batch if matches(k[len(kv_prefix) :])]
            if keys:
                removed += await self._client.unlink(*[self._kv(k) for k in keys])
                await self._client.hdel(self._index, *keys)
                await self._client.hdel(self._access, *keys)
        # index entries whose values already expired (not yet swept) go too
        stale = [k for k in await self._client.hkeys(self._index) if matches(k)]
        if stale:
            await self._client.hdel(self._index, *stale)
            await self._client.hdel(self._access, *stale)
        return removed

    async def _scan_batches(self, match: str):
        cursor = 0
        while True:
            cursor, keys = await self._client.scan(cursor=cursor, match=match, count=SCAN_BATCH)
            if keys:
                yield keys
            if cursor == 0:
                return

    async def stats(self) -> dict[str, Any]:
        now = now_ms()
        index = await self._client.hgetall(self._index)
        access = await self._client.hgetall(self._access)
        meta = await self._client.hgetall(self._meta)
        stats = Stats()
        for key, entry in index.items():
            size, created, expires = (int(part) for part in entry.split("|"))
            if expires > now:
                stats.add(key, size, created, int(access.get(key, created)))
        return stats.to_dict(
            now - self._started_ms,
            int(meta.get("hits", 0)),
            int(meta.get("misses", 0)),
            int(meta.get("evictions", 0)),
        )

    async def sweep(self) -> int:
        now = now_ms()
        index = await self._client.hgetall(self._index)
        due = [k for k, entry in index.items() if int(entry.rsplit("|", 1)[1]) <= now]
        evicted = 0
        for start in range(0, len(due), SCAN_BATCH):
            chunk = due[start : start + SCAN_BATCH]
            evicted += await self._scripts["sweep"](
                keys=[self._index, self._access, self._meta, *[self._kv(k) for k in chunk]],
                args=[now, *chunk],
            )
        return evicted

    # --- locks -----------------------------------------------------------------------

    def _lock_keys(self, name: str) -> list[str]:
        return [f"{self.prefix}lock:{name}", f"{self.prefix}fence:{name}"]

    async def lock_holder(self, name: str) -> LockGrant | None:
        key = self._lock_keys(name)[0]
        async with self._client.pipeline(transaction=True) as pipe:
            value, ttl = await pipe.get(key).pttl(key).execute()
        if value is None or ttl < 0:
            return None
        token, _, owner = value.partition("|")
        return LockGrant(name, owner, int(token), now_ms() + ttl)

    async def acquire_lock(self, name: str, owner: str, ttl_ms: int) -> LockGrant | None:
        token = await self._scripts["acquire"](keys=self._lock_keys(name), args=[owner, ttl_ms])
        if token is None:
            return None
        return LockGrant(name, owner, int(token), now_ms() + ttl_ms)

    async def renew_lock(self, name: str, owner: str, token: int, ttl_ms: int) -> int | None:
        ttl = await self._scripts["renew"](
            keys=self._lock_keys(name)[:1], args=[f"{token}|{owner}", ttl_ms]
        )
        return None if ttl is None else now_ms() + int(ttl)

    async def release_lock(self, name: str, owner: str, token: int) -> bool:
        released = await self._scripts["release"](
            keys=self._lock_keys(name)[:1], args=[f"{token}|{owner}"]
        )
        return bool(released)

    # --- counters and rate limits ----------------------------------------------------

    async def incr(self, name: str, by: int, window_ms: int | None) -> CounterValue:
        value, ttl = await self._scripts["incr"](
            keys=[f"{self.prefix}counter:{name}"], args=[by, window_ms or 0]
        )
        return CounterValue(int(value), now_ms() + int(ttl) if int(ttl) >= 0 else None)

    async def rate_limit(self, name: str, limit: int, window_ms: int, cost: int) -> RateLimitResult:
        allowed, remaining, ttl = await self._scripts["rate_limit"](
            keys=[f"{self.prefix}ratelimit:{name}"], args=[limit, cost, window_ms]
        )
        now = now_ms()
        return RateLimitResult(
            allowed=bool(allowed),
            limit=limit,
            remaining=int(remaining),
            reset_at_ms=now + int(ttl),
            retry_after_ms=0 if allowed else int(ttl),
        )


def _escape(text: str) -> str:
    """Escape Redis glob metacharacters so `text` matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
