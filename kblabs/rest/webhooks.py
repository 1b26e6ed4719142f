"""Webhooks: `POST /api/v1/webhooks/{source}` → a durable delivery → plugin handlers.

The sender proves itself with an HMAC-SHA256 of the raw body (`X-KB-Signature:
sha256=<hex>`, or GitHub's `X-Hub-Signature-256`) keyed by the source's secret from the
environment (`KB_WEBHOOK_SECRET_<SOURCE>`). The answer is 202 `{deliveryId, handlers}`
at once; the delivery is stored first (a crash loses nothing accepted) and run in the
background by a leased worker with retries. A delivery id seen before is not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import json
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger
from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kblabs.errors import KbError
from kblabs.plugins.registry import PluginRegistry
from kblabs.plugins.runner import Call, PluginRunner
from kblabs.store import Store
from kblabs.store.tables import webhook_deliveries as deliveries

MAX_ATTEMPTS = 3
LEASE = timedelta(seconds=120)
HANDLER_TIMEOUT_MS = 60_000
POLL_INTERVAL_S = 1.0
EVENT_HEADERS = ("x-kb-event", "x-github-event", "x-gitlab-event")
DELIVERY_HEADERS = ("x-kb-delivery", "x-github-delivery", "x-gitlab-event-uuid")
SOURCE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def now() -> datetime:
    return datetime.now(UTC)


def secret_for(source: str) -> str | None:
    name = "KB_WEBHOOK_SECRET_" + re.sub(r"[^A-Z0-9]", "_", source.upper())
    return os.environ.get(name) or None


def signature_ok(secret: str, body: bytes, presented: str | None) -> bool:
    if not presented or not presented.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, presented[len("sha256=") :])


def matching_handlers(registry: PluginRegistry, event: str) -> list[dict[str, str]]:
    found = []
    for plugin in registry.plugins:
        for handler in plugin.manifest.webhooks.handlers if plugin.manifest.webhooks else []:
            if handler.event == event or fnmatch.fnmatchcase(event, handler.event):
                found.append({"pluginId": plugin.id, "handler": handler.handler})
    return found


async def receive(request: Request) -> JSONResponse:
    """Accept a signed delivery (202), store it, run matching plugin handlers later."""
    source = request.path_params["source"]
    secret = secret_for(source) if SOURCE_PATTERN.match(source) else None
    if secret is None:  # unknown sources look like bad signatures: nothing to probe
        raise KbError("UNAUTHORIZED", "unknown webhook source or bad signature", 401)
    body = await request.body()
    presented = request.headers.get("x-kb-signature") or request.headers.get("x-hub-signature-256")
    if not signature_ok(secret, body, presented):
        raise KbError("UNAUTHORIZED", "unknown webhook source or bad signature", 401)
    try:
        payload = json.loads(body) if body.strip() else None
    except ValueError:
        payload = body.decode("utf-8", "replace")
    event_name = next((request.headers[h] for h in EVENT_HEADERS if h in request.headers), None)
    if event_name is None and isinstance(payload, dict):
        event_name = str(payload.get("event") or "message")
    event = f"{source}:{event_name or 'message'}"
    sender_id = next(
        (request.headers[h] for h in DELIVERY_HEADERS if h in request.headers),
        hashlib.sha256(body).hexdigest()[:32],
    )
    queue: WebhookQueue = request.app.state.runtime.webhooks
    delivery_id = f"{source}:{sender_id}"[:128]
    handlers = matching_handlers(queue.registry, event)
    duplicate = not await queue.enqueue(delivery_id, source, event, payload, handlers)
    return JSONResponse(
        {"deliveryId": delivery_id, "event": event, "handlers": handlers, "duplicate": duplicate},
        status_code=202,
    )


class WebhookQueue:
    """Component: stores deliveries and runs them with leases, retries and backoff."""

    name = "webhooks"

    def __init__(self, store: Store, registry: PluginRegistry, runner: PluginRunner) -> None:
        self.store = store
        self.registry = registry
        self.runner = runner
        self.worker_id = f"webhooks-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name="webhook-worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def enqueue(
        self,
        delivery_id: str,
        source: str,
        event: str,
        payload: Any,
        handlers: list[dict[str, str]],
    ) -> bool:
        """False when the delivery id was seen before (nothing is queued again)."""
        stamp = now()
        try:
            async with self.store.engine.begin() as conn:
                await conn.execute(
                    insert(deliveries).values(
                        delivery_id=delivery_id,
                        source=source,
                        event=event,
                        payload=payload,
                        handlers=handlers,
                        status="queued" if handlers else "done",
                        attempts=0,
                        max_attempts=MAX_ATTEMPTS,
                        available_at=stamp,
                        created_at=stamp,
                        updated_at=stamp,
                        results={},
                    )
                )
        except IntegrityError:
            return False
        self._wake.set()
        return True

    async def get(self, delivery_id: str) -> dict[str, Any] | None:
        async with self.store.engine.connect() as conn:
            query = select(deliveries).where(deliveries.c.delivery_id == delivery_id)
            row = (await conn.execute(query)).mappings().first()
        return dict(row) if row else None

    async def _work(self) -> None:
        while True:
            try:
                claimed = await self._claim()
            except Exception as exc:  # the store may be briefly busy; never stop working
                logger.opt(exception=exc).warning("webhook claim failed: {}", exc)
                claimed = None
            if claimed is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)
                continue
            await self._run(claimed)

    async def _claim(self) -> dict[str, Any] | None:
        """Take the oldest due delivery (or one whose lease expired) with a fresh lease."""
        stamp = now()
        due = or_(
            and_(deliveries.c.status == "queued", deliveries.c.available_at <= stamp),
            and_(deliveries.c.status == "running", deliveries.c.lease_expires_at < stamp),
        )
        token = uuid.uuid4().hex
        async with self.store.engine.connect() as conn:
            conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                query = select(deliveries).where(due).order_by(deliveries.c.available_at).limit(1)
                row = (await conn.execute(query)).mappings().first()
                if row is None:
                    return None
                claimed = await conn.execute(  # re-checked: another worker may have won
                    update(deliveries)
                    .where(deliveries.c.delivery_id == row["delivery_id"], due)
                    .values(
                        status="running",
                        lease_owner=self.worker_id,
                        lease_token=token,
                        lease_expires_at=stamp + LEASE,
                        attempts=row["attempts"] + 1,
                        updated_at=stamp,
                    )
                )
                if claimed.rowcount != 1:
                    return None
        return {**dict(row), "lease_token": token, "attempts": row["attempts"] + 1}

    async def _run(self, delivery: dict[str, Any]) -> None:
        results = dict(delivery.get("results") or {})
        failures = []
        for target in delivery["handlers"]:
            key = f"{target['pluginId']}|{target['handler']}"
            if results.get(key) == "ok":
                continue  # done in an earlier attempt: never run twice
            try:
                await self._call(delivery, target)
                results[key] = "ok"
            except Exception as exc:
                results[key] = f"error: {type(exc).__name__}: {exc}"[:500]
                failures.append(key)
        await self._finish(delivery, results, failures)

    async def _call(self, delivery: dict[str, Any], target: dict[str, str]) -> None:
        plugin = next((p for p in self.registry.plugins if p.id == target["pluginId"]), None)
        if plugin is None:
            raise KbError("PLUGIN_NOT_FOUND", f"{target['pluginId']} is not loaded", 503)
        handlers = plugin.manifest.webhooks.handlers if plugin.manifest.webhooks else []
        spec = next((h for h in handlers if h.handler == target["handler"]), None)
        payload = {
            "event": delivery["event"],
            "source": delivery["source"],
            "payload": delivery["payload"],
            "deliveryId": delivery["delivery_id"],
        }
        call = Call(
            host="webhook",
            handler_ref=target["handler"],
            input=payload,
            permissions=spec.permissions if spec else None,
            timeout_ms=HANDLER_TIMEOUT_MS,
            host_context={k: v for k, v in payload.items() if k != "payload"},
            request_id=delivery["delivery_id"],
        )
        await self.runner.run(plugin, call)

    async def _finish(
        self, delivery: dict[str, Any], results: dict[str, str], failures: list[str]
    ) -> None:
        stamp = now()
        values: dict[str, Any] = {
            "results": results,
            "lease_owner": None,
            "lease_token": None,
            "lease_expires_at": None,
            "updated_at": stamp,
        }
        if not failures:
            values.update(status="done", error=None)
        elif delivery["attempts"] >= delivery["max_attempts"]:
            values.update(status="failed", error="; ".join(results[k] for k in failures)[:2000])
        else:
            backoff = timedelta(seconds=2 ** delivery["attempts"])
            values.update(
                status="queued",
                available_at=stamp + backoff,
                error="; ".join(results[k] for k in failures)[:2000],
            )
        async with self.store.engine.begin() as conn:
            await conn.execute(  # fenced: only the lease holder may finish it
                update(deliveries)
                .where(
                    deliveries.c.delivery_id == delivery["delivery_id"],
                    deliveries.c.lease_token == delivery["lease_token"],
                )
                .values(**values)
            )
        if failures:
            logger.warning(
                "webhook {} attempt {} failed: {}",
                delivery["delivery_id"],
                delivery["attempts"],
                values.get("error"),
            )


routes = [Route("/api/v1/webhooks/{source}", receive, methods=["POST"])]
