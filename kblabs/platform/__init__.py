"""Platform adapters: interfaces, the registry that builds them from `platform.adapters`,
the built-ins that need no service (memory cache, fs storage, in-process event bus,
loguru logger, store-backed analytics) and the `use_*()` hooks. See docs/adapters.md."""

from kblabs.platform.hooks import (
    PlatformContextMiddleware,
    bind_platform,
    current_platform,
    use_analytics,
    use_cache,
    use_embeddings,
    use_event_bus,
    use_llm,
    use_logger,
    use_storage,
    use_vector_store,
)
from kblabs.platform.interfaces import (
    LLM,
    Analytics,
    Cache,
    Embeddings,
    EventBus,
    EventFilters,
    Logger,
    Storage,
    VectorStore,
)
from kblabs.platform.registry import TOKENS, AdapterRegistry

__all__ = [
    "LLM",
    "TOKENS",
    "AdapterRegistry",
    "Analytics",
    "Cache",
    "Embeddings",
    "EventBus",
    "EventFilters",
    "Logger",
    "PlatformContextMiddleware",
    "Storage",
    "VectorStore",
    "bind_platform",
    "current_platform",
    "use_analytics",
    "use_cache",
    "use_embeddings",
    "use_event_bus",
    "use_llm",
    "use_logger",
    "use_storage",
    "use_vector_store",
]
