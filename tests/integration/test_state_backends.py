"""One behavioural suite for both state backends (memory always, Redis when present)."""

from __future__ import annotations

import asyncio
import time

import pytest

from kblabs.errors import KbError
from kblabs.state.backend import MISSING
from kblabs.state.model import encode

pytestmark = pytest.mark.anyio

SPECIAL_KEYS = ["plugin:@kb-labs/release#1", "a b/c?d=e&f", "tenant:acme:mind:query:ü✓", "%2F"]


async def eventually(check, timeout: float = 5.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)


async def test_set_get_overwrite_delete(broker):
    assert await broker.get("k") is MISSING
    await broker.set("k", {"a": [1, 2, None]})
    assert await broker.get("k") == {"a": [1, 2, None]}
    await broker.set("k", "second")
    assert await broker.get("k") == "second"
    assert await broker.delete("k") is True
    assert await broker.delete("k") is False
    assert await broker.get("k") is MISSING


async def test_null_and_falsy_values_are_values(broker):
    for value in (None, 0, "", [], False):
        await broker.set("falsy", value)
        assert await broker.get("falsy") == value


async def test_keys_with_special_characters(broker):
    for i, key in enumerate(SPECIAL_KEYS):
        await broker.set(key, i)
    for i, key in enumerate(SPECIAL_KEYS):
        assert await broker.get(key) == i


async def test_ttl_expiry(broker):
    expires = await broker.set("short", "v", ttl_ms=80)
    assert expires > time.time() * 1000
    await broker.set("long", "v", ttl_ms=60_000)

    async def gone():
        return await broker.get("short") is MISSING

    assert await eventually(gone)
    assert await broker.get("long") == "v"


async def test_default_ttl_is_five_minutes(broker):
    expires = await broker.set("d", 1)
    assert 299_000 <= expires - time.time() * 1000 <= 300_500


async def test_clear_by_prefix_and_by_glob(broker):
    for key in ("user:1", "user:2", "users", "session:a:1", "session:b:22", "other"):
        await broker.set(key, 1)
    assert await broker.clear("user:*") == 2
    assert await broker.get("users") == 1
    assert await broker.clear("session:?:1") == 1
    assert await broker.get("session:b:22") == 1
    assert await broker.clear(None) == 3
    assert (await broker.stats())["totalEntries"] == 0


async def test_stats_figures(broker):
    values = {"mind:q:1": "x" * 10, "mind:q:2": {"a": 1}, "tenant:acme:cache:k": [1, 2, 3]}
    for key, value in values.items():
        await broker.set(key, value)
    await broker.get("mind:q:1")
    await broker.get("mind:q:1")
    await broker.get("nope")
    stats = await broker.stats()
    assert stats["totalEntries"] == 3
    assert stats["totalSize"] == sum(len(encode(v).encode()) for v in values.values())
    assert stats["hits"] == 2 and stats["misses"] == 1
    assert stats["hitRate"] == pytest.approx(2 / 3, abs=1e-3)
    assert stats["missRate"] == pytest.approx(1 / 3, abs=1e-3)
    assert stats["namespaces"]["mind"]["entries"] == 2
    assert stats["namespaces"]["cache"]["entries"] == 1
    assert stats["byTenant"]["acme"]["entries"] == 1
    assert stats["byTenant"]["default"]["entries"] == 2


async def test_sweep_counts_evictions(broker):
    await broker.set("e1", 1, ttl_ms=30)
    await broker.set("e2", 2, ttl_ms=30)
    await broker.set("stay", 3, ttl_ms=60_000)
    await asyncio.sleep(0.1)  # let the entries expire; the sweep is what is under test
    assert await broker.sweep() == 2
    stats = await broker.stats()
    assert stats["evictions"] == 2 and stats["totalEntries"] == 1
    assert await broker.sweep() == 0


async def test_bad_arguments_are_validation_errors(broker):
    for call in (
        broker.set("", 1),
        broker.set("k", 1, ttl_ms=0),
        broker.set("k", object()),
        broker.rate_limit("r", 0, 1000),
        broker.acquire_lock("l", "", 1000),
    ):
        with pytest.raises(KbError) as caught:
            await call
        assert caught.value.status == 400


async def test_lock_contention_never_two_holders_and_tokens_increase(broker):
    holder: list[str] = []
    tokens: list[int] = []
    overlaps = 0

    async def contender(owner: str) -> None:
        nonlocal overlaps
        acquired = 0
        deadline = time.monotonic() + 20
        while acquired < 2 and time.monotonic() < deadline:
            grant = await broker.acquire_lock("critical", owner, ttl_ms=5_000)
            if grant is None:
                await asyncio.sleep(0.001)
                continue
            if holder:
                overlaps += 1
            holder.append(owner)
            tokens.append(grant.token)
            await asyncio.sleep(0.001)
            holder.remove(owner)  # before releasing, so the next holder never sees us
            assert await broker.release_lock("critical", owner, grant.token)
            acquired += 1

    await asyncio.gather(*(contender(f"worker-{i}") for i in range(50)))
    assert overlaps == 0
    assert len(tokens) == 100
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


async def test_a_holder_that_stops_renewing_loses_the_lock(broker):
    first = await broker.acquire_lock("job", "a", ttl_ms=100)
    assert first is not None
    assert await broker.acquire_lock("job", "b", ttl_ms=100) is None
    renewed = await broker.renew_lock("job", "a", first.token, ttl_ms=150)
    assert renewed is not None and renewed >= first.expires_at_ms

    async def taken_over():
        return await broker.acquire_lock("job", "b", ttl_ms=5_000)

    second = await eventually(taken_over)
    assert second is not None and second.token > first.token
    assert await broker.renew_lock("job", "a", first.token) is None
    assert await broker.release_lock("job", "a", first.token) is False
    assert (await broker.lock_holder("job")).owner == "b"


async def test_release_needs_owner_and_token(broker):
    grant = await broker.acquire_lock("r", "a", ttl_ms=5_000)
    assert await broker.release_lock("r", "b", grant.token) is False
    assert await broker.release_lock("r", "a", grant.token + 1) is False
    assert await broker.release_lock("r", "a", grant.token) is True


async def test_rate_limit_is_exact_under_concurrency(broker):
    results = await asyncio.gather(
        *(broker.rate_limit("api", limit=50, window_ms=60_000) for _ in range(200))
    )
    allowed = [r for r in results if r.allowed]
    denied = [r for r in results if not r.allowed]
    assert len(allowed) == 50
    assert all(r.remaining == 0 and r.retry_after_ms > 0 for r in denied)
    assert sorted(r.remaining for r in allowed) == list(range(50))


async def test_rate_limit_window_resets_and_cost_counts(broker):
    first = await broker.rate_limit("w", limit=3, window_ms=100, cost=3)
    assert first.allowed and first.remaining == 0
    assert not (await broker.rate_limit("w", limit=3, window_ms=100)).allowed

    async def reset():
        return (await broker.rate_limit("w", limit=3, window_ms=100)).allowed

    assert await eventually(reset)


async def test_counters_with_and_without_window(broker):
    assert (await broker.incr("hits")).value == 1
    assert (await broker.incr("hits", by=5)).value == 6
    assert (await broker.incr("hits")).reset_at_ms is None
    windowed = await broker.incr("burst", window_ms=100)
    assert windowed.value == 1 and windowed.reset_at_ms is not None

    async def restarted():
        return (await broker.incr("burst", window_ms=100)).value == 1

    assert await eventually(restarted)


async def test_stored_values_are_copies(broker):
    value = {"list": [1]}
    await broker.set("copy", value)
    value["list"].append(2)
    fetched = await broker.get("copy")
    assert fetched == {"list": [1]}
    fetched["list"].append(3)
    assert await broker.get("copy") == {"list": [1]}
