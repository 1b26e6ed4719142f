"""Webhook handlers take (ctx, {"event", "source", "payload", "deliveryId"})."""

from __future__ import annotations


async def on_push(ctx, input):
    # ctx.runtime.fs checks the write against the plugin's permissions before it happens
    # (ctx.outdir is always writable).
    line = f"{input['deliveryId']} {input['payload'].get('ref')}\n"
    await ctx.runtime.fs.write_file(ctx.outdir / "pushes.log", line, append=True)
