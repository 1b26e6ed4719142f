"""The plugin registry component: a snapshot of what is loaded, refreshed live.

It rebuilds from the marketplace lock at start, on `refresh()`, and whenever the lock
file changes on disk (checked every couple of seconds), so `link`, `enable` and
`disable` made by the CLI or another process take effect without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from kblabs.marketplace.lockfile import LockFile
from kblabs.plugins.discovery import Diagnostic, Discovered, Discovery, discover
from kblabs.plugins.handlers import HandlerError, import_handler
from kblabs.plugins.routes import MountedRoute, mount

WATCH_INTERVAL_S = 2.0


def handler_refs(plugin: Discovered) -> list[tuple[str, str]]:
    """(JSON path, handler reference) of every handler the manifest names."""
    manifest, refs = plugin.manifest, []
    for section, attr in (
        ("cli", "commands"),
        ("rest", "routes"),
        ("workflows", "handlers"),
        ("webhooks", "handlers"),
        ("jobs", "handlers"),
    ):
        for i, entry in enumerate(getattr(getattr(manifest, section), attr, None) or []):
            refs.append((f"{section}.{attr}[{i}].handler", entry.handler))
    return refs


def _importable(found: Discovery) -> list[Discovered]:
    """Plugins whose every handler imports; the others become diagnostics."""
    loaded = []
    for plugin in found.plugins:
        failures = []
        for where, ref in handler_refs(plugin):
            try:
                import_handler(ref, plugin.root)
            except HandlerError as exc:
                failures.append(
                    Diagnostic(exc.code, "error", plugin.id, f"{plugin.id}: {where}: {exc.message}")
                )
        found.diagnostics.extend(failures)
        if not failures:
            loaded.append(plugin)
    return loaded


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PluginRegistry:
    name = "plugins"

    def __init__(self, lock: LockFile, project_root: Path) -> None:
        self.lock = lock
        self.project_root = project_root
        self.revision = 0
        self.generated_at = _now()
        self.plugins: list[Discovered] = []
        self.diagnostics: list[Diagnostic] = []
        self.routes: list[MountedRoute] = []
        self._lock_stamp: float | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._refreshing = asyncio.Lock()

    async def start(self) -> None:
        await self.refresh()
        self._watcher = asyncio.create_task(self._watch(), name="plugins-watch")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def health(self) -> tuple[str, str]:
        failed = sorted({d.plugin_id for d in self.diagnostics if d.severity == "error"})
        if failed:
            return "degraded", f"{len(failed)} plugin(s) failed to load: {', '.join(failed)}"
        return "ok", f"{len(self.plugins)} plugin(s) loaded"

    def _stamp(self) -> float | None:
        try:
            return self.lock.path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self._stamp() != self._lock_stamp:
                try:
                    await self.refresh()
                except Exception as exc:  # keep watching whatever happened
                    logger.opt(exception=exc).warning("plugin refresh failed: {}", exc)

    async def refresh(self) -> dict[str, Any]:
        """Rediscover from the lock; returns what changed."""
        async with self._refreshing:
            started = time.perf_counter()
            stamp = self._stamp()
            found = await asyncio.to_thread(discover, self.lock, self.project_root)
            found.plugins = await asyncio.to_thread(_importable, found)
            table, conflicts = mount(found.plugins)
            diagnostics = list(found.diagnostics) + [
                Diagnostic("ENTITY_CONFLICT", "error", c.split(":", 1)[0], c) for c in conflicts
            ]
            before = {p.id for p in self.plugins}
            after = {p.id for p in found.plugins}
            self.plugins, self.routes, self.diagnostics = found.plugins, table, diagnostics
            self.revision += 1
            self.generated_at = _now()
            self._lock_stamp = stamp
            for diagnostic in diagnostics:
                if diagnostic.severity == "error":
                    logger.warning(
                        "plugin {}: {} {}",
                        diagnostic.plugin_id,
                        diagnostic.code,
                        diagnostic.message,
                    )
            change = {
                "added": sorted(after - before),
                "removed": sorted(before - after),
                "revision": self.revision,
                "durationMs": round((time.perf_counter() - started) * 1000, 1),
            }
            if change["added"] or change["removed"]:
                logger.info("plugins refreshed: {}", change)
            return change

    def snapshot(self) -> dict[str, Any]:
        return {
            "schema": "kb.registry/1",
            "rev": self.revision,
            "generatedAt": self.generated_at,
            "plugins": [self.describe(p) for p in self.plugins],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }

    def describe(self, plugin: Discovered) -> dict[str, Any]:
        manifest = plugin.manifest
        return {
            "id": plugin.id,
            "version": manifest.version,
            "source": plugin.source,
            "root": str(plugin.root),
            "display": manifest.display.model_dump(by_alias=True) if manifest.display else None,
            "provides": ["plugin", *manifest.provides()],
            "routes": [
                f"{m.route.method} {m.template}" for m in self.routes if m.plugin.id == plugin.id
            ],
        }
