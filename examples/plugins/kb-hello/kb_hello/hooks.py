"""Webhook handlers take (ctx, {"event", "source", "payload", "deliveryId"})."""

from __future__ import annotations


def on_push(ctx, input):
    ctx.outdir.mkdir(parents=True, exist_ok=True)
    target = ctx.guard.check_write(ctx.outdir / "pushes.log")  # checked before the write
    with open(target, "a") as log:
        log.write(f"{input['deliveryId']} {input['payload'].get('ref')}\n")
