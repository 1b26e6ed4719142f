"""Workflow steps and jobs take (ctx, input); input is the step's `with` values."""

from __future__ import annotations


async def greet(ctx, input):
    name = (input or {}).get("name", "world")
    return {"greeting": f"hello {name}"}


async def tick(ctx, input):
    count = (await ctx.api.state.get("ticks") or 0) + 1
    await ctx.api.state.set("ticks", count, ttl_ms=7 * 24 * 3600 * 1000)
    return {"ticks": count}
