"""One way to run any plugin handler, whoever asks: a REST route, a CLI command, a
webhook delivery, a workflow step, another plugin (`ctx.api.invoke`).

The runner decides the execution mode (config `platform.execution`: a per-plugin entry,
else subprocess for marketplace-installed plugins, else the default mode), computes the
effective permissions (plugin ← handler), builds the call's identity and services, and
hands them to the executor.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from kblabs.config import Settings
from kblabs.errors import KbError
from kblabs.plugins.context import PLATFORM_TOKENS, Identity, env_allowed
from kblabs.plugins.discovery import Discovered
from kblabs.plugins.executor import ExecutionRequest, SubprocessExecutor, run_in_process
from kblabs.plugins.manifest import Permissions
from kblabs.plugins.operations import Services, UiSink
from kblabs.plugins.permissions import Guard, effective

MAX_INVOKE_DEPTH = 8
LIFECYCLE_TIMEOUT_MS = 5_000  # a hook is time-boxed: a slow one must not hold a refresh


@dataclass(frozen=True)
class Call:
    """What the caller knows about one handler call."""

    host: str  # cli | rest | workflow | webhook | job | cron
    handler_ref: str
    input: Any
    permissions: Permissions | None = None  # the handler's own section, if any
    timeout_ms: int | None = None  # the handler's own (route timeoutMs): wins over quotas
    default_timeout_ms: int | None = None  # the host's default when nothing else is said
    host_context: dict[str, Any] | None = None
    request_id: str = ""
    trace_id: str = ""
    tenant_id: str = "default"
    cwd: Path | None = None
    depth: int = 0  # nesting of ctx.api.invoke calls


def _log_ui(plugin_id: str) -> UiSink:
    def sink(kind: str, payload: dict[str, Any]) -> None:
        logger.bind(plugin=plugin_id).debug("ui {}: {}", kind, payload)

    return sink


class PluginRunner:
    """The `plugin-runner` component (it owns the subprocess worker pool)."""

    name = "plugin-runner"

    def __init__(
        self,
        settings: Settings,
        plugins: Callable[[], list[Discovered]],
        *,
        adapters: Any = None,
        state: Any = None,
        hosts: Any = None,
        ui: Callable[[str], UiSink] | None = None,
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.adapters = adapters
        self.state = state
        self.hosts = hosts
        self.ui = ui or _log_ui
        self.execution = settings.platform.execution
        self.subprocess = SubprocessExecutor(self.execution.warm_workers)
        self._loaded: dict[str, Discovered] = {}  # what onLoad ran for, by plugin id

    async def start(self) -> None:
        if self.execution.mode == "subprocess" or any(
            m == "subprocess" for m in self.execution.plugins.values()
        ):
            await self.subprocess.start()

    async def stop(self) -> None:
        for plugin in list(self._loaded.values()):
            await self.lifecycle(plugin, "on_unload")
        self._loaded = {}
        await self.subprocess.close()

    async def on_registry_change(self, change: dict[str, Any]) -> None:
        """Registry listener: onLoad for plugins that appeared, onUnload for those gone."""
        current = {plugin.id: plugin for plugin in self.plugins()}
        for plugin_id, plugin in list(self._loaded.items()):
            if plugin_id not in current:
                await self.lifecycle(plugin, "on_unload")
        for plugin_id, plugin in current.items():
            if plugin_id not in self._loaded:
                await self.lifecycle(plugin, "on_load")
        self._loaded = current

    async def lifecycle(self, plugin: Discovered, hook: str) -> None:
        """Run the plugin's `lifecycle.<hook>` if it declares one; failures are logged,
        never raised (one plugin's hook cannot break a refresh or a shutdown)."""
        ref = getattr(plugin.manifest.lifecycle, hook, None) if plugin.manifest.lifecycle else None
        if not ref:
            return
        try:
            await self.run(
                plugin,
                Call(
                    host="lifecycle",
                    handler_ref=ref,
                    input={"event": hook.removeprefix("on_")},
                    timeout_ms=LIFECYCLE_TIMEOUT_MS,
                ),
            )
        except Exception as exc:
            logger.warning("plugin {} {} failed: {}", plugin.id, hook, exc)

    def health(self) -> tuple[str, str]:
        return "ok", f"default mode {self.execution.mode}"

    def mode_for(self, plugin: Discovered) -> str:
        if plugin.id in self.execution.plugins:
            return self.execution.plugins[plugin.id]
        if plugin.source == "marketplace":  # third-party code: not in the server's memory
            return "subprocess"
        return self.execution.mode

    def find(self, plugin_id: str) -> Discovered:
        for plugin in self.plugins():
            if plugin.id == plugin_id:
                return plugin
        raise KbError("PLUGIN_NOT_FOUND", f"{plugin_id} is not loaded (or disabled)", 404)

    async def run(self, plugin: Discovered, call: Call) -> Any:
        """Run one handler of `plugin`; raises KbError (PERMISSION_DENIED 403,
        EXECUTION_TIMEOUT 504, WORKER_CRASHED 500, the handler's own codes…)."""
        manifest = plugin.manifest
        perms = effective(manifest.permissions, call.permissions)
        cwd = (call.cwd or self.settings.project_root).resolve()
        outdir = self.settings.project_root / ".kb" / "output"
        section = manifest.config_section
        identity = Identity(
            host=call.host,
            plugin_id=plugin.id,
            plugin_version=manifest.version,
            handler_id=call.handler_ref,
            request_id=call.request_id or str(uuid.uuid4()),
            trace_id=call.trace_id,
            tenant_id=call.tenant_id,
            cwd=str(cwd),
            outdir=str(outdir),
            config=dict(self.settings.products.get(section, {})) if section else {},
            host_context=dict(call.host_context or {}),
            env_allow=perms.env,
            configured=tuple(
                t for t in PLATFORM_TOKENS if self.adapters and self.adapters.get(t) is not None
            ),
        )
        quotas = perms.quotas
        request = ExecutionRequest(
            identity=identity,
            handler_ref=call.handler_ref,
            plugin_root=str(plugin.root),
            input=call.input,
            timeout_ms=call.timeout_ms
            or (quotas.timeout_ms if quotas else None)
            or call.default_timeout_ms
            or self.execution.default_timeout_ms,
            memory_mb=quotas.memory_mb if quotas else None,
            cpu_ms=quotas.cpu_ms if quotas else None,
            env={k: v for k, v in os.environ.items() if env_allowed(k, perms.env)},
        )
        services = Services(
            guard=Guard(perms, plugin.id, cwd, outdir),
            tenant_id=call.tenant_id,
            outdir=outdir,
            adapters=self.adapters,
            state=self.state,
            ui=self.ui(plugin.id),
            invoke=lambda target, data, timeout: self.invoke(target, data, timeout, parent=call),
            hosts=self.hosts,
        )
        if self.mode_for(plugin) == "subprocess":
            return await self.subprocess.run(request, services)
        return await run_in_process(request, services)

    async def invoke(
        self, target: str, input: Any, timeout_ms: int | None, *, parent: Call | None = None
    ) -> Any:
        """Run `<pluginId>/<handlerId>` (a workflow handler), as ctx.api.invoke and
        workflow `plugin:` steps do."""
        plugin_id, _, handler_id = target.rpartition("/")
        if not plugin_id or not handler_id:
            raise KbError("VALIDATION_ERROR", f"{target!r}: expected <pluginId>/<handlerId>", 400)
        depth = (parent.depth + 1) if parent else 0
        if depth > MAX_INVOKE_DEPTH:
            raise KbError(
                "INVOKE_DEPTH_EXCEEDED", f"more than {MAX_INVOKE_DEPTH} nested invoke calls", 508
            )
        plugin = self.find(plugin_id)
        spec = workflow_handler(plugin, handler_id)
        return await self.run(
            plugin,
            Call(
                host="workflow",  # an invoked handler is a workflow handler, whoever calls
                handler_ref=spec.handler,
                input=input,
                permissions=spec.permissions,
                timeout_ms=timeout_ms,
                host_context={"invokedBy": parent.host} if parent else {},
                request_id=parent.request_id if parent else "",
                trace_id=parent.trace_id if parent else "",
                tenant_id=parent.tenant_id if parent else "default",
                depth=depth,
            ),
        )


def workflow_handler(plugin: Discovered, handler_id: str) -> Any:
    handlers = plugin.manifest.workflows.handlers if plugin.manifest.workflows else []
    for spec in handlers:
        if spec.id == handler_id:
            return spec
    raise KbError(
        "HANDLER_NOT_FOUND",
        f"{plugin.id} has no workflow handler {handler_id!r}"
        + (f"; it has: {', '.join(h.id for h in handlers)}" if handlers else ""),
        404,
    )
