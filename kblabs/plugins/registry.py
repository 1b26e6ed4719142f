"""The plugin registry component: a snapshot of what is loaded, refreshed live.

It rebuilds from the marketplace lock at start, on `refresh()`, and whenever the lock
file changes on disk (checked every couple of seconds), so `link`, `enable` and
`disable` made by the CLI or another process take effect without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from kblabs.marketplace.lockfile import LockFile, LockFileError
from kblabs.plugins.discovery import Diagnostic, Discovered, Discovery, discover
from kblabs.plugins.handlers import HandlerError, import_handler
from kblabs.plugins.routes import MountedRoute, mount

WATCH_INTERVAL_S = 2.0
SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".venv", "node_modules", "dist", "build"})
MAX_WATCHED_FILES = 5_000  # per linked plugin: a folder bigger than this is not a plugin

RefreshListener = Callable[[dict[str, Any]], Any]


def code_stamp(root: Path) -> float:
    """Newest modification time of a linked plugin's code and manifest."""
    newest, seen = 0.0, 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        for name in files:
            if name.endswith(".py") or name == "kb.plugin.json":
                with contextlib.suppress(OSError):
                    newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime)
                seen += 1
                if seen > MAX_WATCHED_FILES:
                    return newest
    return newest


def forget_modules(root: Path) -> list[str]:
    """Drop the modules imported from `root` so the next import reads the new code."""
    prefix = str(root.resolve()) + os.sep
    stale = [
        name
        for name, module in list(sys.modules.items())
        if (getattr(module, "__file__", None) or "").startswith(prefix)
    ]
    for name in stale:
        del sys.modules[name]
    return stale


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
    lifecycle = manifest.lifecycle
    for hook, key in (
        ("on_load", "onLoad"),
        ("on_unload", "onUnload"),
        ("on_enable", "onEnable"),
        ("on_disable", "onDisable"),
    ):
        ref = getattr(lifecycle, hook, None) if lifecycle else None
        if ref:
            refs.append((f"lifecycle.{key}", ref))
    return refs


# Checks that a plugin's handlers import, in a child process: a plugin that runs in
# subprocess workers must not run its module code in the server even once.
IMPORT_CHECK = """
import json, sys
from pathlib import Path
from kblabs.plugins.handlers import HandlerError, import_handler
problems = []
for where, ref in json.loads(sys.argv[2]):
    try:
        import_handler(ref, Path(sys.argv[1]))
    except HandlerError as exc:
        problems.append([where, exc.code, exc.message])
print(json.dumps(problems))
"""
IMPORT_CHECK_TIMEOUT_S = 30


def _import_problems(plugin: Discovered, isolated: bool) -> list[tuple[str, str, str]]:
    """(where, code, message) of every handler reference that does not import."""
    refs = handler_refs(plugin)
    if not isolated:
        problems = []
        for where, ref in refs:
            try:
                import_handler(ref, plugin.root)
            except HandlerError as exc:
                problems.append((where, exc.code, exc.message))
        return problems
    import json
    import subprocess
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-P", "-c", IMPORT_CHECK, str(plugin.root), json.dumps(refs)],
            capture_output=True,
            text=True,
            timeout=IMPORT_CHECK_TIMEOUT_S,
            cwd=plugin.root,
        )
        return [tuple(p) for p in json.loads(done.stdout.strip().splitlines()[-1])]
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return [("", "MODULE_IMPORT_FAILED", f"the import check did not finish: {exc}")]


def importable(
    found: Discovery, isolated: Callable[[Discovered], bool] | None = None
) -> list[Discovered]:
    """Plugins whose every handler imports; the others become diagnostics. Plugins
    `isolated` says run in subprocess workers are checked in a child process."""
    loaded = []
    for plugin in found.plugins:
        failures = [
            Diagnostic(code, "error", plugin.id, f"{plugin.id}: {where}: {message}")
            for where, code, message in _import_problems(
                plugin, bool(isolated and isolated(plugin))
            )
        ]
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
        self._code_stamps: dict[Path, float] = {}  # linked plugin folder → code_stamp
        self.listeners: list[RefreshListener] = []  # told {added, removed, revision…}
        # plugins that run in subprocess workers: their imports are checked out of process
        self.isolated: Callable[[Discovered], bool] | None = None
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

    def _code_changed(self) -> list[Path]:
        """Linked folders whose code changed since they were last loaded."""
        return [
            root for root, stamp in list(self._code_stamps.items()) if code_stamp(root) != stamp
        ]

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            changed = await asyncio.to_thread(self._code_changed)
            if self._stamp() != self._lock_stamp or changed:
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
            reloaded = await asyncio.to_thread(self._reload_changed_code, found)
            found.plugins = await asyncio.to_thread(importable, found, self.isolated)
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
                "reloaded": reloaded,
                "revision": self.revision,
                "durationMs": round((time.perf_counter() - started) * 1000, 1),
            }
            if change["added"] or change["removed"] or reloaded:
                logger.info("plugins refreshed: {}", change)
        await self._tell_listeners(change)
        return change

    def _reload_changed_code(self, found: Discovery) -> list[str]:
        """Forget the imported modules of linked plugins whose code changed, so their
        handlers are imported afresh; returns those plugins' ids. Every linked folder
        is watched, also one that failed to load (fixing it reloads it)."""
        try:
            entries = self.lock.read()
        except LockFileError:
            entries = {}
        stamps, reloaded = {}, []
        for key, entry in entries.items():
            if entry.source != "local":
                continue
            root = (self.project_root / entry.resolved_path).resolve()
            if not root.is_dir():
                continue
            stamps[root] = code_stamp(root)
            known = self._code_stamps.get(root)
            if known is not None and known != stamps[root]:
                forget_modules(root)
                reloaded.append(key)
        self._code_stamps = stamps
        return reloaded

    async def _tell_listeners(self, change: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            try:
                outcome = listener(change)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as exc:  # a listener's bug must not break refresh
                logger.opt(exception=exc).warning("plugin refresh listener failed: {}", exc)

    # --- what the plugins contribute ------------------------------------------------------

    def workflow_handlers(self) -> dict[str, tuple[Discovered, Any]]:
        """`<pluginId>/<handlerId>` → (plugin, WorkflowHandler) for workflow steps."""
        table = {}
        for plugin in self.plugins:
            for spec in plugin.manifest.workflows.handlers if plugin.manifest.workflows else []:
                table[f"{plugin.id}/{spec.id}"] = (plugin, spec)
        return table

    def cron_schedules(self) -> list[tuple[Discovered, Any]]:
        """(plugin, CronSchedule) of every loaded plugin, for the scheduler."""
        return [
            (plugin, schedule)
            for plugin in self.plugins
            for schedule in (plugin.manifest.cron.schedules if plugin.manifest.cron else [])
        ]

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
            "commands": [
                " ".join([p for p in (c.group, c.subgroup) if p] + c.id.split(":"))
                for c in (manifest.cli.commands if manifest.cli else [])
            ],
            "workflowHandlers": [
                f"{plugin.id}/{h.id}"
                for h in (manifest.workflows.handlers if manifest.workflows else [])
            ],
            "cron": [
                {"id": c.id, "schedule": c.schedule, "enabled": c.enabled}
                for c in (manifest.cron.schedules if manifest.cron else [])
            ],
        }
