"""The adapter registry: reads `platform.adapters`, builds the adapters, hands them out.

    "platform": {
      "adapters": {
        "cache": "memory",           // a name
        "analytics": ["sqlite"],     // a list: the first is the primary
        "storage": null              // JSON null: switched off, get("storage") is None
      },                             // absent: the embedded default (table below)
      "adapterOptions": { "cache": { "maxEntries": 5000 } }
    }

| token       | default     | built-in names      |
|-------------|-------------|---------------------|
| cache       | memory      | memory, null        |
| storage     | fs          | fs, null            |
| eventBus    | inprocess   | inprocess, null     |
| logger      | loguru      | loguru, null        |
| analytics   | sqlite      | sqlite, null        |
| embeddings  | hashed      | hashed, local, openai |
| vectorStore | qdrant      | qdrant              |
| llm         | not configured | openai (any OpenAI-compatible endpoint) |

`embeddings: hashed` is lexical (feature-hashed words and 3-grams, no model);
`vectorStore: qdrant` is Qdrant's local mode in `<data dir>/qdrant`, or a Qdrant server
when `QDRANT_URL` is set. Both open nothing until first used.

An unknown name, or bad options, stop the start with a StartupError that names the
token. `state` belongs to the state broker and is skipped here; any other token is
reported once in the log and ignored. Names after the first in a list are checked and
kept (`choices()`) for the routers that will use them; only the primary is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from loguru import logger
from prometheus_client import CollectorRegistry

from kblabs.config import Settings
from kblabs.errors import StartupError
from kblabs.platform.adapters.fs_storage import FsStorage, FsStorageOptions
from kblabs.platform.adapters.inprocess_bus import InProcessBusOptions, InProcessEventBus
from kblabs.platform.adapters.loguru_logger import LoguruLogger, LoguruLoggerOptions
from kblabs.platform.adapters.memory_cache import MemoryCache, MemoryCacheOptions
from kblabs.platform.adapters.null import (
    NullAnalytics,
    NullCache,
    NullEventBus,
    NullLogger,
    NullStorage,
)
from kblabs.platform.adapters.sql_analytics import SqlAnalytics, SqlAnalyticsOptions
from kblabs.platform.installed import InstalledAdapter, installed_adapters
from kblabs.platform.interfaces import Analytics, Cache, EventBus, Logger, Storage
from kblabs.platform.options import parse_options
from kblabs.store import Store

COMPONENT = "adapters"

# In start order (the logger first, so the others may log through it); stop is reversed.
TOKENS = ("logger", "cache", "storage", "eventBus", "analytics", "llm", "embeddings", "vectorStore")
EMBEDDED_DEFAULTS = {
    "logger": "loguru",
    "cache": "memory",
    "storage": "fs",
    "eventBus": "inprocess",
    "analytics": "sqlite",
    "embeddings": "hashed",
    "vectorStore": "qdrant",
}
OWNED_ELSEWHERE = frozenset({"state"})  # platform.adapters.state: kblabs.state


@dataclass(frozen=True)
class AdapterContext:
    """What a factory may use besides its options."""

    settings: Settings
    store: Store
    # token → an adapter started before this one (TOKENS order), or None: the LLM adapter
    # records its usage through `adapter("analytics")`.
    adapter: Callable[[str], Any] = lambda token: None


# factory(token, raw adapterOptions.<token> or None, context) → adapter
Factory = Callable[[str, Any, AdapterContext], Any]
# A built-in whose library is heavy (openai, qdrant-client) is named "module:function" and
# imported only when configured, so a plugin worker or a CLI call never pays for it.
FactoryRef = Factory | str


def _loguru(token: str, raw: Any, ctx: AdapterContext) -> Logger:
    return LoguruLogger(parse_options(LoguruLoggerOptions, token, raw).fields)


def _memory_cache(token: str, raw: Any, ctx: AdapterContext) -> Cache:
    return MemoryCache(parse_options(MemoryCacheOptions, token, raw))


def _fs_storage(token: str, raw: Any, ctx: AdapterContext) -> Storage:
    options = parse_options(FsStorageOptions, token, raw)
    if options.base_dir is None:
        return FsStorage(ctx.settings.data_dir / "storage")
    base = Path(options.base_dir).expanduser()
    return FsStorage(base if base.is_absolute() else ctx.settings.project_root / base)


def _inprocess_bus(token: str, raw: Any, ctx: AdapterContext) -> EventBus:
    return InProcessEventBus(parse_options(InProcessBusOptions, token, raw))


def _sql_analytics(token: str, raw: Any, ctx: AdapterContext) -> Analytics:
    return SqlAnalytics(ctx.store, parse_options(SqlAnalyticsOptions, token, raw))


def _null(adapter: Callable[[], Any]) -> Factory:
    return lambda token, raw, ctx: adapter()  # a null adapter has no options


BUILTINS: dict[str, dict[str, FactoryRef]] = {
    "logger": {"loguru": _loguru, "null": _null(NullLogger)},
    "cache": {"memory": _memory_cache, "null": _null(NullCache)},
    "storage": {"fs": _fs_storage, "null": _null(NullStorage)},
    "eventBus": {"inprocess": _inprocess_bus, "null": _null(NullEventBus)},
    "analytics": {"sqlite": _sql_analytics, "null": _null(NullAnalytics)},
    "llm": {"openai": "kblabs.platform.adapters.openai_llm:build"},
    "embeddings": {
        "hashed": "kblabs.platform.adapters.hashed_embeddings:build",
        "local": "kblabs.platform.adapters.local_embeddings:build",
        "openai": "kblabs.platform.adapters.openai_embeddings:build",
    },
    "vectorStore": {"qdrant": "kblabs.platform.adapters.qdrant_vectors:build"},
}


Installed = dict[tuple[str, str], InstalledAdapter]


def selection(
    token: str, adapters: dict[str, Any], installed: Installed | None = None
) -> list[str] | None:
    """The adapter names configured for `token` (first = primary), None when off."""
    if token not in adapters:
        default = EMBEDDED_DEFAULTS.get(token)
        return [default] if default else None
    value = adapters[token]
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise StartupError(
            COMPONENT,
            f"platform.adapters.{token} must be an adapter name, a non-empty list of names "
            f"or null, not {value!r}",
        )
    for name in names:
        factory_for(token, name, installed)  # an unknown name fails now, not when first used
    return names


def factory_for(token: str, name: str, installed: Installed | None = None) -> Factory:
    """A built-in first, then an adapter installed through the marketplace."""
    known = BUILTINS[token]
    if name in known:
        return _resolve(known[name])
    if installed and (token, name) in installed:
        return cast(Factory, installed[(token, name)].load())
    names = [*known, *(n for t, n in (installed or {}) if t == token)]
    raise StartupError(
        COMPONENT,
        f"platform.adapters.{token}: unknown adapter {name!r}; known: {', '.join(names)} "
        f"(installed adapters are entry points '{token}.<name>' in group kb_labs.adapters)",
    )


def _resolve(ref: FactoryRef) -> Factory:
    if not isinstance(ref, str):
        return ref
    module, _, function = ref.partition(":")
    return cast(Factory, getattr(importlib.import_module(module), function))


class AdapterRegistry:
    """The `adapters` component: starts after the store, before everything that uses it."""

    name = COMPONENT

    def __init__(
        self, settings: Settings, store: Store, *, metrics: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self._adapters: dict[str, Any] = {}  # token → started adapter, in start order
        self._choices: dict[str, list[str]] = {}  # token → configured names
        if metrics is not None:
            from kblabs.platform.metrics import AdapterCollector

            metrics.register(AdapterCollector(self))

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        from kblabs.platform.usage import track_usage

        adapters = dict(self.settings.platform.adapters)
        options = self.settings.platform.adapter_options
        plan: dict[str, list[str]] = {}
        installed = installed_adapters(self.settings.data_dir, self.settings.project_root)
        for token in TOKENS:
            names = selection(token, adapters, installed)
            if names is not None:
                plan[token] = names
        started: list[tuple[str, Any]] = []
        context = AdapterContext(self.settings, self.store, lambda token: dict(started).get(token))
        for token, names in plan.items():
            try:
                factory = factory_for(token, names[0], installed)
                adapter = factory(token, options.get(token), context)
                start = getattr(adapter, "start", None)
                if start is not None:
                    await start()
            except Exception as exc:
                await _stop_all(started)
                if isinstance(exc, StartupError):
                    raise
                raise StartupError(
                    COMPONENT, f"{token} adapter {names[0]!r}: {type(exc).__name__}: {exc}"
                ) from exc
            started.append((token, adapter))
            # usage tracking (kblabs.platform.usage): cache, storage, embeddings and the
            # vector store record their calls into analytics once it has started
            track_usage(started, plan)
        self._adapters = dict(started)
        self._choices = plan
        for token in adapters:
            if token not in BUILTINS and token not in OWNED_ELSEWHERE:
                logger.warning("platform.adapters.{} is not handled here yet: ignored", token)
        logger.info(
            "adapters: {}",
            ", ".join(f"{t}={n}" for t, n in self.configured().items()) or "none",
        )

    async def stop(self) -> None:
        await self.flush_usage()  # while analytics still runs: it may stop first
        await _stop_all(list(self._adapters.items()))

    async def flush_usage(self) -> None:
        """Record the usage the proxies have tallied (kblabs.platform.usage)."""
        from kblabs.platform.usage import flush_usage

        try:
            await flush_usage(self._adapters.values())
        except Exception as exc:  # usage is best effort; never block a read or a stop
            logger.warning("adapters: could not record tallied usage: {}", exc)

    def health(self) -> tuple[str, str]:
        """("ok" | "degraded", message): degraded when an adapter says so (analytics
        cannot write, say). Answered from memory, no I/O."""
        for token, adapter in self._adapters.items():
            check = getattr(adapter, "health", None)
            if check is not None:
                status, message = check()
                if status != "ok":
                    return status, f"{token}: {message}"
        return "ok", ", ".join(f"{t}={n}" for t, n in self.configured().items())

    # --- lookup ----------------------------------------------------------------------

    def get(self, token: str) -> Any | None:
        """The primary adapter of `token`; None when it is not configured (or switched off
        with JSON null, or the registry is not started)."""
        return self._adapters.get(token)

    def configured(self) -> dict[str, str]:
        """token → name of the primary adapter, for every token that has one."""
        return {token: self._choices[token][0] for token in self._adapters}

    def choices(self, token: str) -> list[str]:
        """Every name configured for `token`, primary first ([] when none)."""
        return list(self._choices.get(token, []))


async def _stop_all(started: list[tuple[str, Any]]) -> None:
    for token, adapter in reversed(started):
        stop = getattr(adapter, "stop", None)
        if stop is None:
            continue
        try:
            await stop()
        except Exception as exc:  # one failing stop must not keep the others running
            logger.opt(exception=exc).error("{} adapter failed to stop: {}", token, exc)
