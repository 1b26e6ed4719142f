"""What plugin authors import.

    from kblabs.sdk import define_route, PluginError, use_cache, use_config

    @define_route
    async def greet(ctx, input):
        cache = use_cache()            # None when the platform has no cache
        ...

Handlers are `fn(ctx, input)` (async or plain), classes with `execute(ctx, input)`, or
the objects the `define_*` helpers return. `ctx` is kblabs.plugins.context
.HandlerContext. This module stays light: subprocess workers import it per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kblabs.errors import KbError
from kblabs.plugins.context import HandlerContext, current_context

__all__ = [
    "Handler",
    "HandlerContext",
    "PluginError",
    "define_command",
    "define_handler",
    "define_route",
    "define_webhook",
    "use_analytics",
    "use_cache",
    "use_config",
    "use_embeddings",
    "use_env",
    "use_event_bus",
    "use_llm",
    "use_logger",
    "use_storage",
    "use_vector_store",
]


class PluginError(KbError):
    """Raise from a handler to answer with your own code and HTTP status (a route's
    declared `errors[]` entry for the same code wins over `http_status`)."""

    def __init__(
        self, code: str, message: str, http_status: int = 500, details: Any = None
    ) -> None:
        super().__init__(code, message, http_status, details=details)
        self.http_status = http_status


# --- define_* --------------------------------------------------------------------------


class Handler:
    """A handler that refuses to run for the wrong host (HOST_MISMATCH, 400)."""

    def __init__(self, fn: Callable[..., Any], hosts: frozenset[str], kind: str) -> None:
        self.fn = fn
        self.hosts = hosts
        self.kind = kind
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", kind)

    async def execute(self, ctx: HandlerContext, input: Any) -> Any:
        import asyncio
        import inspect

        if self.hosts and ctx.host not in self.hosts:
            raise PluginError(
                "HOST_MISMATCH",
                f"{self.__name__} is a {self.kind}; it cannot run for host {ctx.host!r} "
                f"(only {', '.join(sorted(self.hosts))})",
                400,
            )
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(ctx, input)
        result = await asyncio.to_thread(self.fn, ctx, input)
        return await result if inspect.isawaitable(result) else result


def _define(hosts: frozenset[str], kind: str) -> Callable[..., Handler]:
    def define(fn: Callable[..., Any]) -> Handler:
        return Handler(fn, hosts, kind)

    define.__name__ = f"define_{kind}"
    define.__doc__ = f"Mark `fn(ctx, input)` as a {kind} (hosts: {', '.join(sorted(hosts))})."
    return define


define_command = _define(frozenset({"cli", "workflow"}), "command")
define_route = _define(frozenset({"rest"}), "route")
define_webhook = _define(frozenset({"webhook"}), "webhook")
define_handler = _define(frozenset(), "handler")  # any host


# --- hooks -----------------------------------------------------------------------------


def _platform_hook(name: str) -> Callable[[], Any]:
    def hook() -> Any:
        ctx = current_context()
        if ctx is not None:
            token = {"use_event_bus": "eventBus", "use_vector_store": "vectorStore"}.get(
                name, name.removeprefix("use_")
            )
            return ctx.platform.logger if token == "logger" else ctx.platform.adapter(token)
        from kblabs.platform import hooks  # outside a handler: the server's adapters

        return getattr(hooks, name)()

    hook.__name__ = name
    hook.__doc__ = "The adapter (governed inside a handler), or None when not configured."
    return hook


use_cache = _platform_hook("use_cache")
use_storage = _platform_hook("use_storage")
use_event_bus = _platform_hook("use_event_bus")
use_analytics = _platform_hook("use_analytics")
use_llm = _platform_hook("use_llm")
use_embeddings = _platform_hook("use_embeddings")
use_vector_store = _platform_hook("use_vector_store")
use_logger = _platform_hook("use_logger")


def _ctx(hook: str) -> HandlerContext:
    ctx = current_context()
    if ctx is None:
        raise RuntimeError(f"{hook}() works only inside a plugin handler")
    return ctx


def use_config() -> dict[str, Any]:
    """This plugin's config slice (kb.config.json `products.<configSection>`)."""
    return _ctx("use_config").config


def use_env(name: str) -> str | None:
    """The variable's value if the manifest's `env.read` allows it, else None."""
    return _ctx("use_env").runtime.env(name)
