"""`use_cache()`, `use_storage()`, …: the adapters of the platform serving this call.

The registry travels in a context variable, so code deep in a handler needs no
parameter to reach it, and two apps in one process (tests) never see each other's:

    with bind_platform(runtime.adapters):
        await handler(ctx, input)           # inside: use_cache() is runtime's cache

Tasks started inside the block inherit the binding (asyncio copies the context). Every
hook returns None when its adapter is not configured, except `use_logger()`, which
always returns a logger (loguru when nothing is bound).

Inside a plugin handler the hooks answer with the handler's governed view
(`ctx.platform.<adapter>`): each call is checked against the plugin's permissions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

from kblabs.platform.adapters.loguru_logger import LoguruLogger
from kblabs.platform.adapters.null import NullLogger
from kblabs.platform.interfaces import (
    LLM,
    Analytics,
    Cache,
    Embeddings,
    EventBus,
    Logger,
    Storage,
    VectorStore,
)
from kblabs.plugins.context import current_context

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from kblabs.platform.registry import AdapterRegistry

_current: ContextVar[AdapterRegistry | None] = ContextVar("kb_platform", default=None)
_fallback_logger = LoguruLogger()


@contextmanager
def bind_platform(registry: AdapterRegistry) -> Iterator[AdapterRegistry]:
    """Make `registry` the one the hooks read, for the duration of the block."""
    token = _current.set(registry)
    try:
        yield registry
    finally:
        _current.reset(token)


def current_platform() -> AdapterRegistry | None:
    return _current.get()


def _adapter(token: str) -> Any | None:
    handler_ctx = current_context()
    if handler_ctx is not None:  # inside a plugin handler: the governed view, checked
        return handler_ctx.platform.adapter(token)
    registry = _current.get()
    return None if registry is None else registry.get(token)


def use_cache() -> Cache | None:
    return cast("Cache | None", _adapter("cache"))


def use_storage() -> Storage | None:
    return cast("Storage | None", _adapter("storage"))


def use_event_bus() -> EventBus | None:
    return cast("EventBus | None", _adapter("eventBus"))


def use_analytics() -> Analytics | None:
    return cast("Analytics | None", _adapter("analytics"))


def use_llm() -> LLM | None:
    return cast("LLM | None", _adapter("llm"))


def use_embeddings() -> Embeddings | None:
    return cast("Embeddings | None", _adapter("embeddings"))


def use_vector_store() -> VectorStore | None:
    return cast("VectorStore | None", _adapter("vectorStore"))


def use_logger() -> Logger:
    """The configured logger; a discarding one when logger is switched off (null);
    plain loguru when no platform is bound (scripts, early startup)."""
    handler_ctx = current_context()
    if handler_ctx is not None:
        return cast("Logger", handler_ctx.platform.logger)
    registry = _current.get()
    if registry is None:
        return _fallback_logger
    adapter = registry.get("logger")
    return NullLogger() if adapter is None else cast("Logger", adapter)


class PlatformContextMiddleware:
    """Pure ASGI middleware: every HTTP/WebSocket request runs inside
    `bind_platform(registry)`, so handlers (and plugin code they call) can use the hooks."""

    def __init__(self, app: ASGIApp, registry: AdapterRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with bind_platform(self.registry):
            await self.app(scope, receive, send)
