"""The platform adapters started outside the server: for CLI commands that work in their
own process (`mind … --local`, plugin commands that use `ctx.platform`).

The data dir is created if needed and the store migrated as the server would (a no-op
when the server already did it), but no boot is recorded: a CLI call is not a restart.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from kblabs.config import Settings
from kblabs.datadir import ensure_data_dir
from kblabs.platform.registry import AdapterRegistry
from kblabs.store import Store


@contextlib.asynccontextmanager
async def started_adapters(settings: Settings) -> AsyncIterator[AdapterRegistry]:
    ensure_data_dir(settings.data_dir)
    store = Store(settings, record_boot=False)
    adapters = AdapterRegistry(settings, store)
    await store.start()
    try:
        await adapters.start()
        try:
            yield adapters
        finally:
            await adapters.stop()
    finally:
        await store.stop()
