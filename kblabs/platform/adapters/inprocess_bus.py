"""eventBus → "inprocess": publish/subscribe between the parts of this process.

A subscription names a topic exactly (`workflow.run.completed`) or with a glob
(`workflow.*`, `*.failed`; `*` also matches dots). `publish` runs the matching handlers
concurrently and returns when all of them have finished (or timed out), so a publisher
gets natural back-pressure and a test can assert right after it. A handler with long
work should start its own task. A handler that raises or times out is logged and the
others still run; the publisher never sees the error.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from loguru import logger
from pydantic import Field

from kblabs.platform.interfaces import EventHandler, Unsubscribe
from kblabs.platform.options import AdapterOptions

GLOB_CHARS = frozenset("*?[")


class InProcessBusOptions(AdapterOptions):
    # How long `publish` waits for one async handler before logging it as failed.
    handler_timeout_ms: int = Field(default=30_000, ge=1)


@dataclass(eq=False)  # identity: the same handler may be subscribed twice
class _Subscription:
    topic: str
    handler: EventHandler


class InProcessEventBus:
    def __init__(self, options: InProcessBusOptions | None = None) -> None:
        self.handler_timeout_s = (options or InProcessBusOptions()).handler_timeout_ms / 1000
        self._exact: dict[str, list[_Subscription]] = {}
        self._globs: list[_Subscription] = []
        self.published = 0
        self.handler_errors = 0

    def subscribe(self, topic: str, handler: EventHandler) -> Unsubscribe:
        if not isinstance(topic, str) or not topic:
            raise ValueError("an event bus topic must be a non-empty string")
        subscription = _Subscription(topic, handler)
        is_glob = not GLOB_CHARS.isdisjoint(topic)
        if is_glob:
            self._globs.append(subscription)
        else:
            self._exact.setdefault(topic, []).append(subscription)

        def unsubscribe() -> None:
            group = self._globs if is_glob else self._exact.get(topic, [])
            if subscription in group:
                group.remove(subscription)
            if not is_glob and not group:
                self._exact.pop(topic, None)

        return unsubscribe

    def subscribers(self, topic: str) -> list[EventHandler]:
        """The handlers `publish(topic, …)` would run now, in subscription order per kind."""
        matching = list(self._exact.get(topic, ()))
        matching += [s for s in self._globs if fnmatchcase(topic, s.topic)]
        return [s.handler for s in matching]

    async def publish(self, topic: str, event: Any) -> None:
        self.published += 1
        handlers = self.subscribers(topic)  # a snapshot: (un)subscribing inside is safe
        if handlers:
            await asyncio.gather(*(self._deliver(h, topic, event) for h in handlers))

    async def _deliver(self, handler: EventHandler, topic: str, event: Any) -> None:
        try:
            result = handler(topic, event)
            if inspect.isawaitable(result):
                await asyncio.wait_for(result, self.handler_timeout_s)
        except TimeoutError:
            self.handler_errors += 1
            logger.warning(
                "event bus subscriber {} did not finish {} within {:.0f} ms",
                _name(handler),
                topic,
                self.handler_timeout_s * 1000,
            )
        except Exception as exc:  # one subscriber must not stop the others
            self.handler_errors += 1
            logger.opt(exception=exc).warning(
                "event bus subscriber {} failed on {}: {}", _name(handler), topic, exc
            )

    async def stop(self) -> None:
        self._exact.clear()
        self._globs.clear()

    def stats(self) -> dict[str, int]:
        return {
            "subscriptions": sum(len(group) for group in self._exact.values()) + len(self._globs),
            "published": self.published,
            "handlerErrors": self.handler_errors,
        }


def _name(handler: Any) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
