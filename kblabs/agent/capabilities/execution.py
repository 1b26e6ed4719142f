"""The ``execution`` capability: running plugin handlers on this host.

``execute(request)`` runs one handler of a plugin installed in one of the agent's
workspaces, which are KB Labs projects: the project's settings are loaded with the
workspace root as project root, and its plugins come from that project's
``marketplace.lock``, exactly as the server and the CLI find theirs. ``request`` is what
``/api/v1/execute`` sends (``{pluginId, handlerRef, exportName, input, executionId,
requestId, timeoutMs}``), optionally with ``cwd`` (or ``workspace.cwd``) naming the
workspace directory to run in.

- The plugin must be loaded (enabled, valid) in a workspace, else ``PLUGIN_NOT_FOUND``;
  the handler reference must be one the manifest declares (a workflow, job, webhook, REST
  route or CLI command handler), else ``HANDLER_NOT_FOUND``. The declaring entry decides
  ``ctx.host`` and the handler permissions, which the plugin runner merges with the
  plugin's and enforces here as the server does (``PERMISSION_DENIED`` before any I/O).
- The handler runs through the same ``PluginRunner`` as on the server (the project's
  ``platform.execution`` mode: in this process, or a subprocess worker killed with its
  process group on timeout or cancel), with ``ctx.cwd`` the workspace root. There are no
  platform adapters and no state broker on a host: every ``ctx.platform.<adapter>`` is
  None and ``ctx.api.state`` raises ``STATE_UNAVAILABLE``.
- Failures keep the runner's code (``PERMISSION_DENIED``, ``EXECUTION_TIMEOUT``,
  ``WORKER_CRASHED``, the handler's own ``PluginError`` codes, …).
- At most once per ``executionId`` for 5 minutes: a repeated id joins the running call or
  gets the recorded outcome (a cancelled call is forgotten, so it may run again).

``discover()`` lists the plugins of every workspace: ``[{id, version, source, workspace,
handlers: [{kind, name, handlerRef}]}]``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from kblabs.agent.capabilities.base import (
    BaseCapability,
    CapabilityError,
    Handler,
    Workspace,
    want_int,
    want_str,
)
from kblabs.errors import KbError

if TYPE_CHECKING:  # the plugin runtime is imported on the first call (agent start-up)
    from kblabs.config import Settings
    from kblabs.plugins.discovery import Diagnostic, Discovered
    from kblabs.plugins.manifest import Permissions

MAX_TIMEOUT_MS = 3_600_000
MAX_MESSAGE = 1000
JOURNAL_TTL_S = 300.0
JOURNAL_MAX = 1000
# Variables of the agent's own environment that must not decide which project a
# workspace is (each workspace root is its own project, with its own data folder): the
# root variables of kblabs.config.discovery, the data folder and the database.
PROJECT_VARIABLES = frozenset(
    {"KB_PROJECT_ROOT", "KB_LABS_WORKSPACE_ROOT", "KB_LABS_REPO_ROOT"}
    | {"KB_DATA_DIR", "KB_DATABASE_URL"}
)
STATE_MESSAGE = (
    "the state broker runs only inside the server: ctx.api.state is not available to "
    "handlers run on a host agent"
)
# Manifest sections with handlers, in the order a reference declared twice is looked up.
SECTIONS = (
    ("workflows", "handlers", "workflow"),
    ("jobs", "handlers", "job"),
    ("webhooks", "handlers", "webhook"),
    ("rest", "routes", "rest"),
    ("cli", "commands", "cli"),
)


@dataclass(frozen=True)
class Declared:
    """One manifest entry naming a handler."""

    kind: str  # workflow | job | webhook | rest | cli: the ctx.host it runs as
    where: str  # its JSON path in the manifest, e.g. workflows.handlers[0]
    name: str  # handler id, webhook event, "METHOD /path" or command id
    handler_ref: str
    permissions: Permissions | None
    timeout_ms: int | None  # a REST route's own timeoutMs

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "handlerRef": self.handler_ref}


def declared_handlers(plugin: Discovered) -> list[Declared]:
    found = []
    for section, attr, kind in SECTIONS:
        entries = getattr(getattr(plugin.manifest, section), attr, None) or []
        for index, entry in enumerate(entries):
            if kind == "rest":
                name = f"{entry.method} {entry.path}"
            elif kind == "webhook":
                name = entry.event
            else:
                name = entry.id
            found.append(
                Declared(
                    kind,
                    f"{section}.{attr}[{index}]",
                    name,
                    entry.handler,
                    entry.permissions,
                    getattr(entry, "timeout_ms", None),
                )
            )
    return found


@dataclass(frozen=True)
class Project:
    """A workspace root loaded as a KB Labs project."""

    root: Path
    settings: Settings
    plugins: list[Discovered]
    diagnostics: list[Diagnostic]


@dataclass(frozen=True)
class Request:
    plugin_id: str
    handler_ref: str
    input: Any
    execution_id: str
    request_id: str
    timeout_ms: int | None
    cwd: str | None


class HostState:
    """``ctx.api.state`` on a host: the state broker runs only inside the server.

    Given to the runner instead of None so that every state call, once the plugin's
    state permissions allowed it, fails with a clear ``STATE_UNAVAILABLE`` (503).
    """

    def _unavailable(self) -> KbError:
        return KbError("STATE_UNAVAILABLE", STATE_MESSAGE, 503)

    async def get(self, key: str) -> Any:
        raise self._unavailable()

    async def set(self, key: str, value: Any, ttl_ms: int | None = None) -> None:
        raise self._unavailable()

    async def delete(self, key: str) -> bool:
        raise self._unavailable()


@dataclass
class _Entry:
    """A journalled execution: its task, and when its recorded outcome expires."""

    task: asyncio.Task[Any]
    plugin_id: str
    handler_ref: str
    expires: float | None = None


class ExecutionCapability(BaseCapability):
    name = "execution"

    def __init__(self, workspace: Workspace, *, environ: Mapping[str, str] | None = None) -> None:
        self.workspace = workspace
        self.environ = environ  # None: the agent's environment at call time
        self._journal: dict[str, _Entry] = {}
        self._stamps: dict[Path, float] = {}  # linked plugin folder → code stamp

    def methods(self) -> Mapping[str, Handler]:
        return {"execute": self.execute, "discover": self.discover}

    # --- methods -----------------------------------------------------------------------

    async def execute(self, request: Any) -> Any:
        """Run the handler ``request`` names; its return value (JSON-safe) is the result."""
        req = _parse(request)
        if not req.execution_id:
            return await self._run(req)
        self._prune()
        entry = self._journal.get(req.execution_id)
        if entry is not None:
            return await self._join(entry, req)
        task = asyncio.create_task(self._run(req), name=f"execution-{req.execution_id}")
        entry = _Entry(task, req.plugin_id, req.handler_ref)
        self._journal[req.execution_id] = entry
        try:
            return await task  # cancelling this call cancels the task (and kills its worker)
        finally:
            if task.cancelled():
                if self._journal.get(req.execution_id) is entry:
                    del self._journal[req.execution_id]
            else:
                entry.expires = time.monotonic() + JOURNAL_TTL_S

    async def discover(self) -> list[dict[str, Any]]:
        """The loaded plugins of every workspace, with the handlers they declare."""
        from kblabs.config import ConfigError

        listed = []
        for root in self.workspace.roots:
            try:
                project = await asyncio.to_thread(self.load_project, root)
            except ConfigError as exc:
                logger.warning("workspace {} has an invalid configuration: {}", root, exc)
                continue
            for plugin in project.plugins:
                listed.append(
                    {
                        "id": plugin.id,
                        "version": plugin.manifest.version,
                        "source": plugin.source,
                        "workspace": str(root),
                        "handlers": [h.to_json() for h in declared_handlers(plugin)],
                    }
                )
        return listed

    # --- projects ----------------------------------------------------------------------

    def load_project(self, root: Path) -> Project:
        """Settings and plugins of the project at ``root`` (blocking: file reads)."""
        from kblabs.config import load_settings
        from kblabs.marketplace.lockfile import LockFile
        from kblabs.plugins.discovery import discover

        source = os.environ if self.environ is None else self.environ
        environ = {k: v for k, v in source.items() if k not in PROJECT_VARIABLES}
        environ["KB_PROJECT_ROOT"] = str(root)
        settings = load_settings(
            environ=environ,
            cwd=root,
            # one single-use worker per subprocess call; nothing started ahead of need
            overrides={"platform.execution.warmWorkers": (0, "host agent")},
        )
        found = discover(LockFile.in_data_dir(settings.data_dir), settings.project_root)
        # the workspace's own plugins: the platform's built-ins (mind, commit) run on the
        # server, which reaches a laptop's files through the filesystem capability
        own = [plugin for plugin in found.plugins if plugin.source != "builtin"]
        return Project(root, settings, own, found.diagnostics)

    def _find(self, plugin_id: str, roots: list[Path]) -> tuple[Project, Discovered]:
        from kblabs.config import ConfigError

        notes: list[str] = []
        for root in roots:
            try:
                project = self.load_project(root)
            except ConfigError as exc:
                first = str(exc).splitlines()[0] if str(exc) else "invalid"
                notes.append(f"{root} has an invalid configuration ({first})")
                continue
            for plugin in project.plugins:
                if plugin.id == plugin_id:
                    return project, plugin
            notes += [d.message for d in project.diagnostics if d.plugin_id == plugin_id]
        where = ", ".join(str(root) for root in roots)
        message = f"{plugin_id} is not loaded in this host's workspaces ({where})"
        if notes:
            message += ": " + "; ".join(notes)
        raise CapabilityError("PLUGIN_NOT_FOUND", message[:MAX_MESSAGE])

    def _reload_changed_code(self, plugin: Discovered) -> None:
        """Forget a linked plugin's imported modules when its code changed (in-process)."""
        from kblabs.plugins.registry import code_stamp, forget_modules

        if plugin.source != "local":
            return
        stamp = code_stamp(plugin.root)
        known = self._stamps.get(plugin.root)
        if known is not None and known != stamp:
            forget_modules(plugin.root)
        self._stamps[plugin.root] = stamp

    # --- running -----------------------------------------------------------------------

    async def _run(self, req: Request) -> Any:
        from kblabs.plugins.context import encode
        from kblabs.plugins.runner import Call, PluginRunner

        if req.cwd is None:
            roots, cwd = list(self.workspace.roots), None
        else:
            cwd = await asyncio.to_thread(self.workspace.resolve, req.cwd)
            if not cwd.is_dir():
                raise CapabilityError("INVALID_ARGS", f"cwd is not a directory: {req.cwd}")
            root = self.workspace.root_of(cwd)
            assert root is not None  # resolve() refuses anything outside the roots
            roots = [root]
        project, plugin = await asyncio.to_thread(self._find, req.plugin_id, roots)
        declared = _declaration(plugin, req.handler_ref)
        await asyncio.to_thread(self._reload_changed_code, plugin)
        runner = PluginRunner(project.settings, lambda: project.plugins, state=HostState())
        try:
            result = await runner.run(
                plugin,
                Call(
                    host=declared.kind,
                    handler_ref=declared.handler_ref,
                    input=req.input,
                    permissions=declared.permissions,
                    timeout_ms=_time_limit(plugin, declared, req.timeout_ms),
                    host_context={
                        "executionId": req.execution_id,
                        "requestId": req.request_id,
                        "declaredAt": declared.where,
                        "remote": True,
                    },
                    request_id=req.request_id,
                    cwd=cwd or project.root,
                ),
            )
        except KbError as exc:
            raise _capability_error(exc) from exc
        finally:
            await runner.stop()
        return encode(result)

    async def _join(self, entry: _Entry, req: Request) -> Any:
        """A repeated executionId: the running call's outcome, or the recorded one."""
        if (entry.plugin_id, entry.handler_ref) != (req.plugin_id, req.handler_ref):
            raise CapabilityError(
                "INVALID_ARGS",
                f"executionId {req.execution_id} was used for {entry.plugin_id} "
                f"{entry.handler_ref}",
            )
        try:
            return await asyncio.shield(entry.task)  # this call's cancel leaves the run alone
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if entry.task.cancelled() and not (current and current.cancelling()):
                raise CapabilityError(
                    "CANCELLED", f"execution {req.execution_id} was cancelled"
                ) from None
            raise

    def _prune(self) -> None:
        now = time.monotonic()
        for key, entry in list(self._journal.items()):
            if entry.expires is not None and entry.expires <= now:
                del self._journal[key]
        finished = [k for k, e in self._journal.items() if e.expires is not None]
        for key in finished[: max(0, len(self._journal) - JOURNAL_MAX)]:
            del self._journal[key]  # oldest recorded outcomes first (insertion order)


# --- helpers -----------------------------------------------------------------------------


def _parse(request: Any) -> Request:
    if not isinstance(request, dict):
        raise CapabilityError("INVALID_ARGS", "execute takes one object {pluginId, handlerRef, …}")
    handler_ref = want_str(request.get("handlerRef"), "handlerRef")
    export_name = request.get("exportName")
    if export_name is not None:
        export_name = want_str(export_name, "exportName")
        if ":" not in handler_ref:
            handler_ref = f"{handler_ref}:{export_name}"
        elif handler_ref.rpartition(":")[2] != export_name:
            raise CapabilityError(
                "INVALID_ARGS", f"exportName {export_name!r} contradicts handlerRef {handler_ref!r}"
            )
    timeout = request.get("timeoutMs")
    workspace = request.get("workspace")
    cwd = request.get("cwd")
    if cwd is None and isinstance(workspace, dict):
        cwd = workspace.get("cwd")
    return Request(
        plugin_id=want_str(request.get("pluginId"), "pluginId"),
        handler_ref=handler_ref,
        input=request.get("input"),
        execution_id=want_str(request.get("executionId") or "", "executionId", allow_empty=True),
        request_id=want_str(request.get("requestId") or "", "requestId", allow_empty=True),
        timeout_ms=None if timeout is None else want_int(timeout, "timeoutMs", 1, MAX_TIMEOUT_MS),
        cwd=None if cwd is None else want_str(cwd, "cwd"),
    )


def _declaration(plugin: Discovered, handler_ref: str) -> Declared:
    declared = declared_handlers(plugin)
    for entry in declared:
        if entry.handler_ref == handler_ref:
            return entry
    known = sorted({entry.handler_ref for entry in declared})
    raise CapabilityError(
        "HANDLER_NOT_FOUND",
        f"{plugin.id} declares no handler {handler_ref!r}"
        + (f"; it declares: {', '.join(known)}" if known else ""),
    )


def _time_limit(plugin: Discovered, declared: Declared, asked: int | None) -> int | None:
    """The caller's limit, shortened by the handler's own (route timeoutMs, quotas)."""
    from kblabs.plugins.permissions import effective

    quotas = effective(plugin.manifest.permissions, declared.permissions).quotas
    own = declared.timeout_ms or (quotas.timeout_ms if quotas else None)
    limits = [limit for limit in (asked, own) if limit]
    return min(limits) if limits else None


def _capability_error(exc: KbError) -> CapabilityError:
    retryable = isinstance(exc.details, dict) and bool(exc.details.get("retryable"))
    return CapabilityError(exc.code, exc.message[:MAX_MESSAGE], retryable=retryable)
