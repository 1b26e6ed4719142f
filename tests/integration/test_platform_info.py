"""/api/v1/routes, /api/v1/platform/config, /api/v1/studio/registry and widget bundles,
on the real app in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import base_env, run_cli
from tests.integration.test_plugins import EXAMPLE, copy_example

pytestmark = pytest.mark.anyio

STUDIO_ID = "@test/studio-demo"
WIDGETS = f"/plugins/{STUDIO_ID}/widgets"
ENTRY_MTIME = 1_700_000_000
PLATFORM = {
    "adapters": {"cache": "memory"},
    "adapterOptions": {
        # llm is not selected in "adapters", so these options are only shown, never used
        "llm": {
            "apiKey": "sk-not-a-real-key",
            "model": "small",
            "baseUrl": "https://user:hunter2@llm.invalid/v1",
        },
    },
}


@pytest.fixture
def project(project: Path) -> Path:
    """The shared project folder, with a platform section to show (and redact)."""
    (project / "kb.config.json").write_text(json.dumps({"platform": PLATFORM}))
    return project


async def link(app_client, folder: Path) -> None:
    """`kb plugin link` as a user runs it, then a refresh instead of the 2 s lock watch."""
    project = app_client.settings.project_root
    linked = run_cli("plugin", "link", str(folder), project=project, env=base_env(project))
    assert linked.returncode == 0, linked.stderr
    await app_client.app.state.runtime.plugins.refresh()


def studio_plugin(project: Path) -> Path:
    """A plugin with only a Studio section and a built widget bundle."""
    folder = project / "plugins" / "studio-demo"
    widgets = folder / "dist" / "widgets"
    (widgets / "assets").mkdir(parents=True)
    (widgets / "widgets").mkdir()
    manifest = {
        "schema": "kb.plugin/3",
        "id": STUDIO_ID,
        "version": "1.2.3",
        "display": {"name": "Studio Demo"},
        "studio": {
            "version": 2,
            "remoteName": "studioDemo",
            "pages": [
                {
                    "id": "overview",
                    "title": "Overview",
                    "route": "/demo",
                    "entry": "./Overview",
                    "icon": "chart",
                    "order": 1,
                }
            ],
            "menus": [{"id": "demo", "label": "Demo", "target": "/demo"}],
        },
    }
    (folder / "kb.plugin.json").write_text(json.dumps(manifest))
    entry = widgets / "remoteEntry.js"
    entry.write_text("var studioDemo = {};\n")
    os.utime(entry, (ENTRY_MTIME, ENTRY_MTIME))
    (widgets / "assets" / "chunk-abc123.js").write_text("export const x = 1;\n")
    (widgets / "widgets" / "inner.js").write_text("export const inner = 1;\n")
    (project / "outside.txt").write_text("not part of the bundle")
    (widgets / "escape.txt").symlink_to(project / "outside.txt")
    return folder


async def test_routes_lists_fixed_and_plugin_routes_sorted(app_client, project):
    client, auth = app_client.client, app_client.auth
    before = (await client.get("/api/v1/routes", headers=auth)).json()["data"]
    assert before["schema"] == "kb.routes/1" and before["ts"].endswith("Z")
    pairs = {(r["method"], r["url"]) for r in before["routes"]}
    assert {
        ("GET", "/api/v1/routes"),
        ("GET", "/api/v1/platform/config"),
        ("GET", "/api/v1/studio/registry"),
        ("GET", "/api/v1/plugins/registry"),
        ("POST", "/api/v1/plugins/enable"),
        ("PUT", "/api/v1/state/kv/{key}"),  # inside a Mount, converter dropped
    } <= pairs
    assert not any("hello" in url for _, url in pairs)

    await link(app_client, copy_example(project))
    data = (await client.get("/api/v1/routes", headers=auth)).json()["data"]
    routes = data["routes"]
    declared = json.loads((EXAMPLE / "kb.plugin.json").read_text())["rest"]["routes"]
    assert data["count"] == len(routes) == len(before["routes"]) + len(declared)
    pairs = {(r["method"], r["url"]) for r in routes}
    assert {
        ("GET", "/api/v1/plugins/@kb-labs/hello/greet"),
        ("POST", "/api/v1/plugins/@kb-labs/hello/sum"),
        ("GET", "/api/v1/plugins/@kb-labs/hello/items/{itemId}"),
    } <= pairs
    assert routes == sorted(routes, key=lambda r: (r["url"], r["method"]))
    assert all(r["method"] != "HEAD" for r in routes)
    assert all(r["url"].startswith("/api/") for r in routes)
    assert not any(r["url"] in ("/api/{path}", "/api/{path:path}") for r in routes)
    assert not any(r["url"].startswith("/plugins/") for r in routes)


async def test_platform_config_redacts_secrets(app_client):
    response = await app_client.client.get("/api/v1/platform/config", headers=app_client.auth)
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["schema"] == "kb.platform.config/1" and data["ts"].endswith("Z")
    assert data["adapters"] == {"cache": "memory"}
    llm = data["adapterOptions"]["llm"]
    assert llm["apiKey"] == "***REDACTED***" and llm["model"] == "small"
    assert llm["baseUrl"] == "https://user:***REDACTED***@llm.invalid/v1"
    assert sorted(data["redacted"]) == ["adapterOptions.llm.apiKey", "adapterOptions.llm.baseUrl"]
    assert data["execution"]["mode"] == "in-process"  # not configured
    assert "sk-not-a-real-key" not in response.text and "hunter2" not in response.text


async def test_studio_registry_and_widget_assets(app_client, project):
    client, auth = app_client.client, app_client.auth
    await link(app_client, copy_example(project))
    empty = (await client.get("/api/v1/studio/registry", headers=auth)).json()["data"]
    assert empty["schema"] == "kb.studio/2" and empty["schemaVersion"] == 2
    assert empty["generatedAt"].endswith("Z") and empty["plugins"] == []

    await link(app_client, studio_plugin(project))
    data = (await client.get("/api/v1/studio/registry", headers=auth)).json()["data"]
    assert data["plugins"] == [
        {
            "pluginId": STUDIO_ID,
            "displayName": "Studio Demo",
            "pluginVersion": "1.2.3",
            "remoteName": "studioDemo",
            "remoteEntryUrl": f"{WIDGETS}/remoteEntry.js?v={ENTRY_MTIME}",
            "pages": [
                {
                    "id": "overview",
                    "title": "Overview",
                    "route": "/demo",
                    "entry": "./Overview",
                    "icon": "chart",
                    "order": 1,
                }
            ],
            "menus": [{"id": "demo", "label": "Demo", "target": "/demo"}],
        }
    ]

    entry = await client.get(data["plugins"][0]["remoteEntryUrl"], headers=auth)
    assert entry.status_code == 200 and entry.text == "var studioDemo = {};\n"
    assert entry.headers["cache-control"] == "public, max-age=10, must-revalidate"
    assert "javascript" in entry.headers["content-type"]
    chunk = await client.get(f"{WIDGETS}/assets/chunk-abc123.js", headers=auth)
    assert chunk.status_code == 200
    assert chunk.headers["cache-control"] == "public, max-age=31536000, immutable"
    # a percent-encoded id, and an asset path that itself holds "widgets/"
    encoded_id = "/plugins/%40test%2Fstudio-demo/widgets"
    encoded = await client.get(f"{encoded_id}/widgets/inner.js", headers=auth)
    assert encoded.status_code == 200 and encoded.text == "export const inner = 1;\n"

    for bad in ("%2E%2E/%2E%2E/kb.plugin.json", "assets/..%2F..%2Fkb.plugin.json", "escape.txt"):
        refused = await client.get(f"{WIDGETS}/{bad}", headers=auth)
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["code"] == "VALIDATION_ERROR"
    missing = await client.get(f"{WIDGETS}/nope.js", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    no_bundle = await client.get("/plugins/@kb-labs/hello/widgets/remoteEntry.js", headers=auth)
    assert no_bundle.status_code == 404 and no_bundle.json()["error"]["code"] == "NOT_FOUND"
    unknown = await client.get("/plugins/@nope/x/widgets/remoteEntry.js", headers=auth)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "PLUGIN_NOT_FOUND"


async def test_a_viewer_token_is_needed(app_client):
    client = app_client.client
    viewer = await app_client.app.state.runtime.auth.create_api_key("v", "viewer", "default")
    headers = {"Authorization": f"Bearer {viewer['token']}"}
    for path in (
        "/api/v1/routes",
        "/api/v1/platform/config",
        "/api/v1/studio/registry",
        f"{WIDGETS}/remoteEntry.js",
    ):
        anonymous = await client.get(path)
        assert anonymous.status_code == 401, path
        assert anonymous.json()["error"]["code"] == "UNAUTHORIZED"
        assert (await client.get(path, headers=headers)).status_code != 401, path
    assert (await client.get("/api/v1/routes", headers=headers)).status_code == 200
