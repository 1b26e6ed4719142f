"""Plugin REST routes: where they mount and how a request finds one.

Mount rules (reference §4): a `rest.basePath` starting `/api/` is used as is, one
starting `/v1/` becomes `/api/v1/…`, anything else is appended to `/api/v1`; without a
basePath routes live under `/api/v1/plugins/<pluginId>` (the id keeps its `@scope/`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.routing import compile_path

from kblabs.plugins.discovery import Discovered
from kblabs.plugins.manifest import RestRoute

API_BASE = "/api/v1"


def base_path(plugin: Discovered) -> str:
    declared = plugin.manifest.rest.base_path if plugin.manifest.rest else None
    if not declared:
        return f"{API_BASE}/plugins/{plugin.id}"
    if declared.startswith("/api/"):
        return declared.rstrip("/")
    if declared.startswith("/v1/"):
        return "/api" + declared.rstrip("/")
    return API_BASE + declared.rstrip("/")


@dataclass(frozen=True)
class MountedRoute:
    plugin: Discovered
    route: RestRoute
    template: str  # the full path template, used as the metrics route label
    regex: re.Pattern[str]
    converters: dict[str, Any]

    def match(self, method: str, path: str) -> dict[str, Any] | None:
        if method != self.route.method:
            return None
        found = self.regex.match(path)
        if found is None:
            return None
        return {k: self.converters[k].convert(v) for k, v in found.groupdict().items()}


def mount(plugins: list[Discovered]) -> tuple[list[MountedRoute], list[str]]:
    """Routes of every plugin, and the conflicts found (later duplicates are skipped)."""
    table: list[MountedRoute] = []
    seen: dict[tuple[str, str], str] = {}
    conflicts: list[str] = []
    for plugin in plugins:
        for route in plugin.manifest.rest.routes if plugin.manifest.rest else []:
            template = base_path(plugin) + route.path
            key = (route.method, template)
            if key in seen:
                conflicts.append(
                    f"{plugin.id}: {route.method} {template} is already mounted by {seen[key]}"
                )
                continue
            seen[key] = plugin.id
            regex, _, converters = compile_path(template)
            table.append(MountedRoute(plugin, route, template, regex, converters))
    return table, conflicts


def find(
    table: list[MountedRoute], method: str, path: str
) -> tuple[MountedRoute | None, dict[str, Any], bool]:
    """(route, path params, path matched under another method)."""
    other_method = False
    for mounted in table:
        params = mounted.match(method, path)
        if params is not None:
            return mounted, params, False
        if mounted.regex.match(path):
            other_method = True
    return None, {}, other_method
