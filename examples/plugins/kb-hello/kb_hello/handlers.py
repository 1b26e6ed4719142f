"""Handlers take (ctx, input); input is {query, body, params} for REST routes."""

from __future__ import annotations

import asyncio

from kblabs.sdk import PluginError


async def greet(ctx, input):
    name = input["query"].get("name", "world")
    return {"greeting": f"hello {name}", "plugin": ctx.plugin_id, "tenant": ctx.tenant_id}


def echo(ctx, input):  # a plain function: runs in a worker thread
    if not input["body"]:
        raise PluginError("EMPTY", "send a JSON body to echo", 400)
    return {"echo": input["body"]}


class Item:
    async def execute(self, ctx, input):
        return {"itemId": input["params"]["itemId"]}


async def add(ctx, input):
    body = input["body"]
    return {"sum": body["a"] + body["b"]}


async def broken_output(ctx, input):
    return {"total": 3}  # does not fit the declared output: 500 in development


async def slow(ctx, input):
    try:
        await asyncio.sleep(int(input["query"].get("ms", "1000")) / 1000)
    except asyncio.CancelledError:  # client gone or timed out: clean up, then let it go
        ctx.outdir.mkdir(parents=True, exist_ok=True)
        (ctx.outdir / "slow-cancelled").write_text("cancelled")
        raise
    return {"slept": True}


async def save_greeting(ctx, input):
    # `permissions.fs.write: ["greetings/"]`: any other path is refused before the write
    name = input["body"]["name"]
    path = f"greetings/{name}.txt"
    await ctx.runtime.fs.write_file(path, f"hello {name}\n")
    return {"saved": path}
