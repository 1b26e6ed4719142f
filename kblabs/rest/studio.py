"""Studio: the registry of plugin UI (kb.studio/2) and the plugins' widget bundles.

A plugin with a `studio` section in its manifest ships its Module Federation build in
`<plugin root>/dist/widgets/` (the folder that holds `remoteEntry.js` and its chunks).

- `GET /api/v1/studio/registry` (viewer): every loaded plugin with a `studio` section,
  with its pages, menus and `remoteEntryUrl` =
  `/plugins/<pluginId>/widgets/remoteEntry.js?v=<mtime of that file in seconds, 0 when
  absent>` so a rebuilt bundle gets a new URL. `remoteName` is the manifest's
  `studio.remoteName`, or the id with every character outside `[A-Za-z0-9_]` turned into
  `_` (`@kb-labs/hello` → `kb_labs_hello`). `generatedAt` is the registry's revision time.
- `GET /plugins/<pluginId>/widgets/<asset>` (viewer, bare): a file of that folder.
  Plugin ids contain a slash (`@scope/name`), so one route takes `/plugins/{rest:path}`
  and finds the loaded plugin whose id is followed by `/widgets/` (an asset path may
  itself contain `widgets/`); when none is, the text before the last `/widgets/` names
  the unknown plugin. `..` segments, NUL bytes and paths resolving outside the folder
  are 400 `VALIDATION_ERROR`; an unknown plugin 404 `PLUGIN_NOT_FOUND`; a missing file
  404 `NOT_FOUND`. `remoteEntry.js` is `public, max-age=10, must-revalidate`; every
  other asset (content-hashed chunks) `public, max-age=31536000, immutable`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from kblabs.auth.roles import requires
from kblabs.errors import KbError
from kblabs.http.envelope import ok
from kblabs.plugins.discovery import Discovered
from kblabs.plugins.registry import PluginRegistry

WIDGETS_DIR = ("dist", "widgets")
REMOTE_ENTRY = "remoteEntry.js"
SEPARATOR = "/widgets/"
CACHE_REMOTE_ENTRY = "public, max-age=10, must-revalidate"
CACHE_IMMUTABLE = "public, max-age=31536000, immutable"

_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


def widgets_dir(plugin: Discovered) -> Path:
    return plugin.root.joinpath(*WIDGETS_DIR)


def _registry(request: Request) -> PluginRegistry:
    return request.app.state.runtime.plugins


def _remote_entry_url(plugin: Discovered) -> str:
    try:
        version = int((widgets_dir(plugin) / REMOTE_ENTRY).stat().st_mtime)
    except OSError:
        version = 0
    return f"/plugins/{plugin.id}/widgets/{REMOTE_ENTRY}?v={version}"


def studio_entry(plugin: Discovered) -> dict[str, Any]:
    manifest = plugin.manifest
    studio = manifest.studio
    assert studio is not None
    return {
        "pluginId": plugin.id,
        "displayName": manifest.display.name if manifest.display else plugin.id,
        "pluginVersion": manifest.version,
        "remoteName": studio.remote_name or _NOT_IDENTIFIER.sub("_", plugin.id.lstrip("@")),
        "remoteEntryUrl": _remote_entry_url(plugin),
        "pages": [
            {
                "id": page.id,
                "title": page.title,
                "route": page.route,
                "entry": page.entry,
                "icon": page.icon,
                "order": page.order,
            }
            for page in studio.pages
        ],
        "menus": list(studio.menus),
    }


@requires("viewer")
async def studio_registry(request: Request) -> JSONResponse:
    """Plugins with Studio pages and menus, and where their widget bundles load from."""
    registry = _registry(request)
    plugins = [studio_entry(p) for p in registry.plugins if p.manifest.studio is not None]
    return ok(
        request,
        {
            "schema": "kb.studio/2",
            "schemaVersion": 2,
            "generatedAt": registry.generated_at,
            "plugins": plugins,
        },
    )


def _split(registry: PluginRegistry, rest: str) -> tuple[Discovered, str]:
    """(plugin, asset path) of `<pluginId>/widgets/<asset>`."""
    for plugin in registry.plugins:
        prefix = plugin.id + SEPARATOR
        if rest.startswith(prefix):
            return plugin, rest[len(prefix) :]
    plugin_id, found, _ = rest.rpartition(SEPARATOR)
    if not found:
        raise KbError("NOT_FOUND", f"no route for /plugins/{rest}", 404)
    raise KbError("PLUGIN_NOT_FOUND", f"{plugin_id} is not a loaded plugin", 404)


def _asset_path(folder: Path, asset: str) -> Path:
    parts = asset.split("/")
    if "\x00" in asset or ".." in parts:
        raise KbError("VALIDATION_ERROR", f"asset: {asset!r} is not a path inside the bundle")
    base = folder.resolve()
    target = (base / asset).resolve()
    if not target.is_relative_to(base):
        raise KbError("VALIDATION_ERROR", f"asset: {asset!r} resolves outside the bundle")
    return target


@requires("viewer")
async def widget_asset(request: Request) -> FileResponse:
    """A file of a plugin's widget bundle (<root>/dist/widgets/)."""
    plugin, asset = _split(_registry(request), request.path_params["rest"])
    target = _asset_path(widgets_dir(plugin), asset)
    if not target.is_file():
        raise KbError("NOT_FOUND", f"{plugin.id} has no widget asset {asset}", 404)
    cache = CACHE_REMOTE_ENTRY if asset == REMOTE_ENTRY else CACHE_IMMUTABLE
    return FileResponse(target, headers={"Cache-Control": cache})


routes = [
    Route("/api/v1/studio/registry", studio_registry, methods=["GET"]),
    Route("/plugins/{rest:path}", widget_asset, methods=["GET"]),
]
