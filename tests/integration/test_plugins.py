"""Plugins end to end on a real server: link without restart, disable, enable, failures."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from kblabs.plugins.discovery import builtin_manifests
from tests.conftest import base_env, run_cli

pytestmark = pytest.mark.live

EXAMPLE = Path(__file__).parents[2] / "examples" / "plugins" / "kb-hello"
GREET = "/api/v1/plugins/%40kb-labs%2Fhello/greet"  # a percent-encoded plugin id


def poll(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def copy_example(project: Path, name: str = "kb-hello") -> Path:
    target = project / "plugins" / name
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def broken_plugin(project: Path, name: str, manifest: dict, module: str = "") -> Path:
    folder = project / "plugins" / name
    package = folder / name.replace("-", "_")
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "handlers.py").write_text(module)
    (folder / "kb.plugin.json").write_text(json.dumps(manifest))
    return folder


def test_link_disable_enable_without_restart(live_server_factory, project):
    server = live_server_factory().start()
    folder = copy_example(project)
    assert httpx.get(server.url + GREET, headers=server.auth).status_code == 404

    linked = run_cli("plugin", "link", str(folder), project=project, env=base_env(project))
    assert linked.returncode == 0, linked.stderr
    answer = poll(
        lambda: (
            (r := httpx.get(server.url + GREET + "?name=ada", headers=server.auth)).status_code
            == 200
            and r
        )
    )
    assert answer and answer.json()["data"]["greeting"] == "hello ada"
    item = httpx.get(server.url + "/api/v1/plugins/@kb-labs/hello/items/7", headers=server.auth)
    assert item.json()["data"] == {"itemId": "7"}
    empty = httpx.post(server.url + "/api/v1/plugins/@kb-labs/hello/echo", headers=server.auth)
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "EMPTY"

    total = httpx.post(
        server.url + "/api/v1/plugins/@kb-labs/hello/sum",
        json={"a": 2, "b": 3},
        headers=server.auth,
    )
    assert total.json()["data"] == {"sum": 5}
    wrong = httpx.post(
        server.url + "/api/v1/plugins/@kb-labs/hello/sum", json={"a": "two"}, headers=server.auth
    )
    assert wrong.status_code == 400
    assert {d["field"] for d in wrong.json()["error"]["details"]} == {"body", "body.a"}
    broken = httpx.get(
        server.url + "/api/v1/plugins/@kb-labs/hello/broken-output", headers=server.auth
    )
    assert broken.status_code == 500 and broken.json()["error"]["code"] == "OUTPUT_INVALID"
    spec = httpx.get(server.url + "/openapi.json").json()
    sum_op = spec["paths"]["/api/v1/plugins/@kb-labs/hello/sum"]["post"]
    assert sum_op["requestBody"]["content"]["application/json"]["schema"]["required"] == ["a", "b"]
    assert "/api/v1/plugins/@kb-labs/hello/items/{itemId}" in spec["paths"]

    saved = httpx.post(
        server.url + "/api/v1/plugins/@kb-labs/hello/greetings",
        json={"name": "ada"},
        headers=server.auth,
    )
    assert saved.json()["data"] == {"saved": "greetings/ada.txt"}
    assert (project / "greetings" / "ada.txt").read_text() == "hello ada\n"
    escape = httpx.post(
        server.url + "/api/v1/plugins/@kb-labs/hello/greetings",
        json={"name": "../escaped"},
        headers=server.auth,
    )
    assert escape.status_code == 403 and escape.json()["error"]["code"] == "PERMISSION_DENIED"
    assert not (project / "escaped.txt").exists()

    switch = f"{server.url}/api/v1/plugins"

    def contributed() -> dict:
        listed = httpx.get(switch, headers=server.auth).json()["data"]["plugins"]
        return next((p for p in listed if p["id"] == "@kb-labs/hello"), {})

    assert contributed()["workflowHandlers"] == ["@kb-labs/hello/greet"]
    assert contributed()["cron"][0]["id"] == "nightly-tick"
    assert contributed()["commands"] == ["hello greet"]
    body = {"pluginId": "@kb-labs/hello"}
    assert httpx.post(f"{switch}/disable", json=body, headers=server.auth).status_code == 200
    assert httpx.get(server.url + GREET, headers=server.auth).status_code == 404
    assert contributed() == {}  # its workflow handler and cron entry went with it
    assert httpx.post(f"{switch}/enable", json=body, headers=server.auth).status_code == 200
    assert httpx.get(server.url + GREET, headers=server.auth).status_code == 200
    assert contributed()["workflowHandlers"] == ["@kb-labs/hello/greet"]
    unknown = httpx.post(f"{switch}/enable", json={"pluginId": "@x/y"}, headers=server.auth)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "PLUGIN_NOT_FOUND"
    assert server.stop() == 0


def test_a_linked_plugin_reloads_when_its_code_changes(live_server_factory, project):
    folder = copy_example(project)
    assert (
        run_cli("plugin", "link", str(folder), project=project, env=base_env(project)).returncode
        == 0
    )
    server = live_server_factory().start()
    first = httpx.get(server.url + GREET + "?name=ada", headers=server.auth)
    assert first.json()["data"]["greeting"] == "hello ada"
    handlers = folder / "kb_hello" / "handlers.py"
    handlers.write_text(handlers.read_text().replace('f"hello {name}"', 'f"hi again {name}"'))
    reloaded = poll(
        lambda: (
            httpx.get(server.url + GREET + "?name=ada", headers=server.auth).json()["data"][
                "greeting"
            ]
            == "hi again ada"
        )
    )
    assert reloaded, "the server kept the old code"
    assert server.stop() == 0


def test_broken_plugins_are_reported_and_do_not_stop_the_others(live_server_factory, project):
    good = copy_example(project)
    invalid = broken_plugin(project, "kb-invalid", {"schema": "kb.plugin/3", "id": "bad"})
    raising = broken_plugin(
        project,
        "kb-raising",
        {
            "schema": "kb.plugin/3",
            "id": "@kb/raising",
            "version": "1.0.0",
            "rest": {
                "routes": [{"method": "GET", "path": "/x", "handler": "kb_raising.handlers:x"}]
            },
        },
        "raise RuntimeError('broken at import')\n",
    )
    env = base_env(project)
    assert run_cli("plugin", "link", str(good), project=project, env=env).returncode == 0
    assert run_cli("plugin", "link", str(invalid), project=project, env=env).returncode == 2
    assert run_cli("plugin", "link", str(raising), project=project, env=env).returncode == 2
    # link them anyway by hand, as a broken install would leave them
    lock = json.loads((project / ".kb" / "marketplace.lock").read_text())
    for key, folder in (("bad", invalid), ("@kb/raising", raising)):
        lock["installed"][key] = {"resolvedPath": f"./plugins/{folder.name}", "source": "local"}
    (project / ".kb" / "marketplace.lock").write_text(json.dumps(lock))

    server = live_server_factory().start()
    health = httpx.get(f"{server.url}/api/v1/plugins/health", headers=server.auth).json()["data"]
    codes = {d["pluginId"]: d["code"] for d in health["failed"]}
    assert codes == {"bad": "MANIFEST_INVALID", "@kb/raising": "MODULE_IMPORT_FAILED"}
    assert health["loaded"] == 1 + len(builtin_manifests())  # the good one and the built-ins
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["ready"] is True
    assert ready["components"]["plugins"]["status"] == "degraded"
    assert "2 plugin(s) failed" in ready["components"]["plugins"]["message"]
    assert httpx.get(server.url + GREET, headers=server.auth).status_code == 200

    # fixing the broken module is enough: the watcher reloads it, no refresh, no restart
    (raising / "kb_raising" / "handlers.py").write_text("def x(ctx, input):\n    return 'fixed'\n")
    fixed = poll(
        lambda: (
            httpx.get(
                f"{server.url}/api/v1/plugins/%40kb%2Fraising/x", headers=server.auth
            ).status_code
            == 200
        )
    )
    assert fixed, "a fixed linked plugin should load without a refresh"
    assert server.stop() == 0


def test_global_flags_work_around_plugin_commands(project):
    folder = copy_example(project)
    env = base_env(project)
    assert run_cli("plugin", "link", str(folder), project=project, env=env).returncode == 0
    for argv in (
        ("--log-level", "error", "hello", "greet", "--name", "x", "--json"),
        ("hello", "greet", "--json", "--log-level", "error", "--name", "x"),
        ("--json", "--config", str(project / "kb.config.json"), "hello", "greet", "-n", "x"),
    ):
        (project / "kb.config.json").write_text("{}")
        result = run_cli(*argv, project=project, env=env)
        assert result.returncode == 0, (argv, result.stderr)
        assert json.loads(result.stdout)["result"] == "hello x"


def test_plugin_validate_reports_paths(project):
    folder = broken_plugin(
        project, "kb-v", {"schema": "kb.plugin/3", "id": "@kb/v", "version": "x"}
    )
    result = run_cli("--json", "plugin", "validate", str(folder), project=project)
    assert result.returncode == 2
    assert [p["path"] for p in json.loads(result.stdout)["problems"]] == ["version"]
    good = run_cli("plugin", "validate", str(EXAMPLE), project=project)
    assert good.returncode == 0 and "valid" in good.stdout


def test_link_outside_the_project_is_refused(project, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(EXAMPLE, outside, ignore=shutil.ignore_patterns("__pycache__"))
    result = run_cli("--json", "plugin", "link", str(outside), project=project)
    assert result.returncode == 2
    assert json.loads(result.stdout)["error"]["code"] == "LINK_OUTSIDE_ROOT"


def test_plugin_commands_run_in_process_and_go_away_when_unlinked(project):
    folder = copy_example(project)
    env = base_env(project)
    assert run_cli("plugin", "link", str(folder), project=project, env=env).returncode == 0
    greeted = run_cli("hello", "greet", "--name", "ada", project=project, env=env)
    assert greeted.returncode == 0, greeted.stderr
    assert greeted.stdout.strip() == "hello ada"
    shouted = run_cli("--json", "hello", "greet", "-n", "ada", "--shout", project=project, env=env)
    assert json.loads(shouted.stdout) == {"ok": True, "result": "HELLO ADA"}
    helped = run_cli("hello", "greet", "--help", project=project, env=env)
    assert helped.returncode == 0 and "--shout" in helped.stdout
    assert run_cli("hello", "greet", "--bogus", project=project, env=env).returncode == 2
    assert run_cli("plugin", "unlink", "@kb-labs/hello", project=project, env=env).returncode == 0
    gone = run_cli("hello", "greet", project=project, env=env)
    assert gone.returncode == 2 and "invalid choice" in gone.stderr


def test_a_client_that_leaves_cancels_its_handler(live_server_factory, project):
    folder = copy_example(project)
    assert (
        run_cli("plugin", "link", str(folder), project=project, env=base_env(project)).returncode
        == 0
    )
    server = live_server_factory().start()
    url = server.url + "/api/v1/plugins/@kb-labs/hello/slow?ms=20000"
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url, headers=server.auth, timeout=0.5)
    marker = project / ".kb" / "output" / "slow-cancelled"
    assert poll(marker.exists, timeout=5)
    quick = httpx.get(url.replace("20000", "10"), headers=server.auth)
    assert quick.json()["data"] == {"slept": True}
    assert server.stop() == 0
