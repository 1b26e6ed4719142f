"""The marketplace end to end, offline: wheels built by the tests, served by a PEP 503
index on loopback (tests/marketplace_fixtures.py), installed through a real server's
HTTP API, the service in other processes, and `python -m kblabs marketplace`.

Every process that may run pip (servers, CLI calls, hammering scripts) gets the
environment of `market_env()`: the project's `base_env` with no `PIP_*` variable and
`PIP_CONFIG_FILE=/dev/null`, so pip sees only the index named by the project's
`marketplace.indexUrl` (this machine's pip.conf adds extra indexes, a constraints file
and find-links).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kblabs.marketplace.service import Marketplace
from tests.conftest import base_env, make_settings, run_cli
from tests.marketplace_fixtures import (
    PLUGIN_ENTRY_POINT_GROUP,
    SimpleIndex,
    broken_wheel,
    build_wheel,
    pip_env,
    plugin_manifest,
    plugin_wheel,
    run_pip,
)

pytestmark = pytest.mark.live

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKET = "/api/v1/marketplace"
DEMO_ID = "@acme/demo"
HELLO = "/api/v1/plugins/@acme/demo/hello"
LINKED_ID = "@acme/linked"
LINKED_HELLO = "/api/v1/plugins/@acme/linked/hello"
PICKUP_S = 5.0  # a change made by another process reaches the server within this
LEFTOVER = "leftover files not referenced by the lock: "


# --- helpers ---------------------------------------------------------------------------


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SimpleIndex]:
    """A PEP 503 index on loopback over the empty folder `index.wheels_dir`."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    with SimpleIndex(folder) as served:
        yield served


def market_env(project: Path, **extra: str) -> dict[str, str]:
    """base_env for the project, with pip seeing no configuration but its command line."""
    return pip_env(base_env(project, **extra))


def configure_index(project: Path, index_url: str) -> None:
    (project / "kb.config.json").write_text(json.dumps({"marketplace": {"indexUrl": index_url}}))


def start_server(factory: Callable[..., Any], project: Path, index: SimpleIndex) -> Any:
    configure_index(project, index.url)
    server = factory()
    server.env = pip_env(server.env)
    return server.start()


def market(*args: str, project: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m kblabs marketplace ARGS` in the project, pip kept offline."""
    return run_cli("marketplace", *args, project=project, env=market_env(project), timeout=timeout)


def market_json(*args: str, project: Path) -> tuple[int, dict[str, Any]]:
    result = market(*args, "--json", project=project)
    try:
        return result.returncode, json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON: {result.stdout!r}\n{result.stderr}") from None


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """The first truthy result of `check()` before the deadline, else AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {result!r})")
        time.sleep(0.05)


def status_of(server: Any, path: str) -> int:
    return httpx.get(server.url + path, headers=server.auth, timeout=10).status_code


def reporting_plugin_wheel(out_dir: Path, name: str = "kb-demo", version: str = "1.0.0") -> Path:
    """Like `plugin_wheel`, but `GET /hello` also answers the pid of the process that ran
    the handler (to tell the server process from a subprocess worker)."""
    package = name.replace("-", "_")
    handlers = (
        "import os\n\n\nasync def hello(ctx, input):\n"
        f"    return {{'answer': 'hi', 'version': {version!r}, 'pid': os.getpid()}}\n"
    )
    manifest = plugin_manifest(name, version, DEMO_ID)
    return build_wheel(
        out_dir,
        name,
        version,
        files={
            f"{package}/__init__.py": "",
            f"{package}/kb.plugin.json": json.dumps(manifest, indent=2) + "\n",
            f"{package}/handlers.py": handlers,
        },
        entry_points={PLUGIN_ENTRY_POINT_GROUP: {"demo": package}},
    )


def linked_plugin(folder: Path, plugin_id: str = LINKED_ID) -> Path:
    """A plugin folder to link: kb.plugin.json at its root, route `GET /hello`."""
    name = folder.name
    package = folder / name.replace("-", "_")
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "handlers.py").write_text(
        "async def hello(ctx, input):\n    return {'answer': 'linked'}\n"
    )
    (folder / "kb.plugin.json").write_text(json.dumps(plugin_manifest(name, "1.0.0", plugin_id)))
    return folder


def tree(root: Path) -> set[str]:
    """Every file and folder under `root`, relative, except the (empty) staging folder."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.relative_to(root).parts[0] != ".staging"
    }


def staged(project: Path) -> list[str]:
    staging = project / ".kb" / "plugins" / ".staging"
    return sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []


def lock_bytes(project: Path) -> tuple[bytes | None, bytes | None]:
    """(marketplace.lock, marketplace.lock.bak) as bytes, None when absent."""
    data = project / ".kb"
    return tuple(  # type: ignore[return-value]
        p.read_bytes() if p.exists() else None
        for p in (data / "marketplace.lock", data / "marketplace.lock.bak")
    )


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (code, response.status_code, response.text)
    body = response.json()
    assert body["ok"] is False and body["error"]["code"] == code, body
    assert body["meta"]["requestId"], body
    return body["error"]


# --- 1. install from the index → the route answers; uninstall → gone ------------------


def test_install_from_the_index_serves_the_route_live_and_uninstall_removes_exactly_its_files(
    live_server_factory, project, index
):
    reporting_plugin_wheel(index.wheels_dir)
    plugins_dir = project / ".kb" / "plugins"
    linked_plugin(plugins_dir / "kb-linked")  # a sibling of the install folders
    (plugins_dir / "NOTES.txt").write_text("not the marketplace's\n")
    server = start_server(live_server_factory, project, index)
    api = httpx.Client(base_url=server.url, headers=server.auth, timeout=120)

    linked = api.post(f"{MARKET}/packages/link", json={"path": ".kb/plugins/kb-linked"})
    assert linked.status_code == 200, linked.text
    assert status_of(server, LINKED_HELLO) == 200
    assert status_of(server, HELLO) == 404
    before = tree(plugins_dir)

    response = api.post(f"{MARKET}/packages/install", json={"specs": ["kb-demo"]})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["ok"] is True and body["meta"]["requestId"]
    data = body["data"]
    assert data["scope"] == "platform" and data["warnings"] == []
    [item] = data["installed"]
    root = item.pop("packageRoot")
    assert item == {
        "id": DEMO_ID,
        "version": "1.0.0",
        "primaryKind": "plugin",
        "provides": ["plugin", "cli-command", "rest-route"],
        "distribution": "kb-demo",
        "scope": "platform",
    }
    assert root.startswith("./.kb/plugins/kb-demo-1.0.0-"), root
    folder = (project / root).resolve()
    assert (folder / "kb_demo" / "kb.plugin.json").is_file()
    assert (folder / "kb_demo-1.0.0.dist-info" / "RECORD").is_file()
    assert index.requests > 0  # it came from the local index

    hello = wait_for(
        lambda: (r := api.get(HELLO)).status_code == 200 and r.json()["data"],
        PICKUP_S,
        "the installed plugin's route",
    )
    assert hello["answer"] == "hi" and hello["version"] == "1.0.0"
    assert hello["pid"] != server.process.pid, "a marketplace plugin must run in a worker"

    listed = api.get(f"{MARKET}/packages")
    assert listed.status_code == 200
    rows = {row["id"]: row for row in listed.json()["data"]["entries"]}
    assert set(rows) == {DEMO_ID, LINKED_ID} and listed.json()["data"]["total"] == 2
    assert rows[DEMO_ID]["source"] == "marketplace" and rows[DEMO_ID]["enabled"] is True
    assert rows[DEMO_ID]["resolvedPath"] == root and rows[DEMO_ID]["version"] == "1.0.0"
    assert rows[LINKED_ID]["source"] == "local"

    gone = api.post(f"{MARKET}/packages/uninstall", json={"packageIds": [DEMO_ID]})
    assert gone.status_code == 204 and gone.content == b""
    wait_for(lambda: status_of(server, HELLO) == 404, PICKUP_S, "the route to go away")
    assert status_of(server, LINKED_HELLO) == 200
    assert not folder.exists()
    assert tree(plugins_dir) == before  # the link's folder and NOTES.txt survive
    assert staged(project) == []
    remaining = api.get(f"{MARKET}/packages").json()["data"]["entries"]
    assert [row["id"] for row in remaining] == [LINKED_ID]
    api.close()
    assert server.stop() == 0


# --- 2. a conflict with the platform's dependencies ----------------------------------


def test_a_plugin_needing_another_version_of_a_platform_dependency_is_refused(
    live_server_factory, project, index
):
    plugin_wheel(index.wheels_dir, "kb-old", plugin_id="@acme/old", requires=["pydantic<2"])
    plugin_wheel(index.wheels_dir, "kb-new", plugin_id="@acme/new", requires=["pydantic>=2"])
    linked_plugin(project / "plugins" / "kb-linked")
    assert market("link", "plugins/kb-linked", project=project).returncode == 0
    server = start_server(live_server_factory, project, index)
    frozen = run_pip("freeze", "--all")
    assert frozen.returncode == 0, frozen.stderr
    lock_before = lock_bytes(project)
    assert lock_before[0] is not None
    folders_before = tree(project / ".kb" / "plugins")

    response = httpx.post(
        f"{server.url}{MARKET}/packages/install",
        json={"specs": ["kb-old"]},
        headers=server.auth,
        timeout=120,
    )
    error = assert_error(response, 422, "INSTALL_FAILED")
    details = error["details"]
    assert isinstance(details, list) and details and all(isinstance(x, str) for x in details)
    assert any("pydantic" in line for line in details), details

    assert run_pip("freeze", "--all").stdout == frozen.stdout  # the platform is untouched
    assert lock_bytes(project) == lock_before
    assert tree(project / ".kb" / "plugins") == folders_before
    assert staged(project) == []
    assert status_of(server, "/api/v1/plugins/@acme/old/hello") == 404

    # the contrast: a requirement the platform already meets is reused, not installed
    fits = httpx.post(
        f"{server.url}{MARKET}/packages/install",
        json={"specs": ["kb-new"]},
        headers=server.auth,
        timeout=120,
    )
    assert fits.status_code == 201, fits.text
    folder = project / fits.json()["data"]["installed"][0]["packageRoot"]
    assert sorted(p.name for p in folder.iterdir()) == ["kb_new", "kb_new-1.0.0.dist-info"]
    assert run_pip("freeze", "--all").stdout == frozen.stdout


# --- 3. broken wheels ------------------------------------------------------------------


def test_a_broken_wheel_is_refused_and_leaves_the_lock_byte_for_byte_unchanged(
    live_server_factory, project, index, tmp_path
):
    broken_wheel(index.wheels_dir, "kb-broken", defect="no-wheel-file")
    files = tmp_path / "files"
    not_a_zip = broken_wheel(files, "kb-garbage", defect="not-a-zip")
    too_new = broken_wheel(files, "kb-future", defect="bad-wheel-version")
    linked_plugin(project / "plugins" / "kb-linked")
    assert market("link", "plugins/kb-linked", project=project).returncode == 0
    server = start_server(live_server_factory, project, index)
    lock_before = lock_bytes(project)
    folders_before = tree(project / ".kb" / "plugins")

    for spec in ("kb-broken", str(not_a_zip), str(too_new)):
        response = httpx.post(
            f"{server.url}{MARKET}/packages/install",
            json={"specs": [spec]},
            headers=server.auth,
            timeout=120,
        )
        error = assert_error(response, 422, "INSTALL_FAILED")
        assert error["details"], (spec, error)
        assert lock_bytes(project) == lock_before, spec
        assert staged(project) == [], spec
        assert tree(project / ".kb" / "plugins") == folders_before, spec


# --- 4. error codes and roles --------------------------------------------------------


def test_errors_are_4xx_with_their_codes_and_viewers_only_read(
    live_server_factory, project, index, tmp_path
):
    outside = linked_plugin(tmp_path / "elsewhere" / "kb-outside", "@acme/outside")
    server = start_server(live_server_factory, project, index)
    api = httpx.Client(base_url=server.url + MARKET, headers=server.auth, timeout=120)

    missing = api.post("/packages/install", json={"specs": ["kb-not-on-the-index"]})
    assert_error(missing, 404, "NOT_FOUND")
    no_file = api.post("/packages/install", json={"specs": [str(tmp_path / "nope-1.0-py3.whl")]})
    assert_error(no_file, 404, "NOT_FOUND")
    for action in ("enable", "disable"):
        unknown = api.post(f"/packages/{action}", json={"packageId": "@acme/nope"})
        assert_error(unknown, 404, "PACKAGE_NOT_FOUND")
    unknown = api.post("/packages/uninstall", json={"packageIds": ["@acme/nope"]})
    assert_error(unknown, 404, "PACKAGE_NOT_FOUND")

    for path in (str(outside), "../elsewhere/kb-outside"):
        refused = api.post("/packages/link", json={"path": path})
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json()["error"]["code"] == "LINK_OUTSIDE_ROOT"

    assert_error(
        api.get("/packages", params={"scope": "project"}), 400, "SCOPE_PROJECT_ROOT_REQUIRED"
    )
    no_root = api.post("/packages/install", json={"specs": ["kb-x"], "scope": "project"})
    assert_error(no_root, 400, "SCOPE_PROJECT_ROOT_REQUIRED")
    relative = api.post(
        "/packages/install",
        json={"specs": ["kb-x"], "scope": "project", "projectRoot": "some/project"},
    )
    assert_error(relative, 400, "SCOPE_PROJECT_ROOT_NOT_ABSOLUTE")
    relative_read = api.get("/packages", params={"scope": "project", "projectRoot": "rel"})
    assert_error(relative_read, 400, "SCOPE_PROJECT_ROOT_NOT_ABSOLUTE")
    assert_error(api.get("/packages", params={"scope": "galaxy"}), 400, "SCOPE_INVALID")
    assert_error(api.post("/packages/install", json={"specs": []}), 400, "VALIDATION_ERROR")

    key = run_cli("--json", "auth", "create-key", "--role", "viewer", "reader", project=project)
    assert key.returncode == 0, key.stdout + key.stderr
    viewer = {"Authorization": f"Bearer {json.loads(key.stdout)['token']}"}
    listed = api.get("/packages", headers=viewer)
    assert listed.status_code == 200 and listed.json()["data"] == {"entries": [], "total": 0}
    assert api.get("/diagnostics", headers=viewer).status_code == 200
    forbidden = api.post("/packages/install", json={"specs": ["kb-x"]}, headers=viewer)
    assert_error(forbidden, 403, "FORBIDDEN")
    for action, body in (
        ("packages/uninstall", {"packageIds": ["@acme/nope"]}),
        ("packages/enable", {"packageId": "@acme/nope"}),
        ("packages/link", {"path": "plugins"}),
        ("cache/clear", {}),
    ):
        assert_error(api.post(f"/{action}", json=body, headers=viewer), 403, "FORBIDDEN")
    assert index.request_paths  # the missing package was looked up on the local index
    api.close()
    assert "Traceback" not in server.log()


# --- 5. two processes hammering the lock --------------------------------------------

HAMMER = textwrap.dedent(
    """
    import asyncio, json, random, sys, time
    from pathlib import Path

    from kblabs.marketplace.service import Marketplace
    from tests.conftest import make_settings

    project, seed, toggles = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    ids, wheels = json.loads(sys.argv[4]), json.loads(sys.argv[5])
    barrier = Path(sys.argv[6])


    async def main():
        market = Marketplace(make_settings(project))
        rng, final, installed = random.Random(seed), {}, []
        (barrier / f"ready-{seed}").touch()
        deadline = time.monotonic() + 60
        while not (barrier / "go").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        started = time.time()

        async def switches():
            for n in range(toggles):
                package_id = ids[n % len(ids)]
                enabled = rng.random() < 0.5
                await market.set_enabled(package_id, enabled)
                final[package_id] = enabled
                await asyncio.sleep(rng.uniform(0, 0.15))  # spread over the installs

        async def installs():
            for wheel in wheels:
                installed.extend(i["id"] for i in (await market.install([wheel]))["installed"])

        await asyncio.gather(switches(), installs())
        print(json.dumps({
            "enabled": final,
            "installed": installed,
            "ops": toggles + len(wheels),
            "window": [started, time.time()],
        }))


    asyncio.run(main())
    """
)


def test_fifty_concurrent_operations_from_two_processes_keep_every_entry(project, index, tmp_path):
    configure_index(project, index.url)  # nothing there: only wheel files install
    linked_ids = [f"@acme/p{n}" for n in range(10)]
    for n, plugin_id in enumerate(linked_ids):
        linked_plugin(project / "plugins" / f"kb-p{n}", plugin_id)
    synced = market("sync", "plugins/*", "--enable", project=project)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    wheels = [
        str(plugin_wheel(tmp_path / "files", f"kb-c{n}", plugin_id=f"@acme/c{n}")) for n in range(4)
    ]
    plans = [  # disjoint switches per process, so each one knows the final state of its own
        (linked_ids[:5], wheels[:2]),
        (linked_ids[5:], wheels[2:]),
    ]
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                HAMMER,
                str(project),
                str(seed),
                "23",
                json.dumps(ids),
                json.dumps(files),
                str(barrier),
            ],
            cwd=REPO_ROOT,
            env=market_env(project),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed, (ids, files) in enumerate(plans)
    ]
    wait_for(
        lambda: (
            all((barrier / f"ready-{n}").exists() for n in range(2))
            or any(p.poll() is not None for p in processes)
        ),
        60,
        "both processes to be ready",
    )
    (barrier / "go").touch()  # both start their 25 operations at once
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(report["ops"] for report in reports) == 50
    (a_start, a_end), (b_start, b_end) = (report["window"] for report in reports)
    assert a_start < b_end and b_start < a_end, "the two processes did not overlap"

    lock = json.loads((project / ".kb" / "marketplace.lock").read_text())
    backup = json.loads((project / ".kb" / "marketplace.lock.bak").read_text())
    assert backup["schema"] == lock["schema"] == "kb.marketplace/2"
    entries = lock["installed"]
    installed_ids = [i for report in reports for i in report["installed"]]
    assert sorted(installed_ids) == [f"@acme/c{n}" for n in range(4)]
    assert set(entries) == set(linked_ids) | set(installed_ids)
    expected = {k: v for report in reports for k, v in report["enabled"].items()}
    assert {k: entries[k]["enabled"] for k in linked_ids} == expected  # no switch was lost
    for plugin_id in installed_ids:
        assert entries[plugin_id]["source"] == "marketplace" and entries[plugin_id]["enabled"]
        assert (project / entries[plugin_id]["resolvedPath"]).is_dir()
    assert set(backup["installed"]) <= set(entries)  # the previous complete version
    health = Marketplace(make_settings(project)).doctor()
    assert health["ok"], health
    assert not [i for i in health["issues"] if i["message"].startswith(LEFTOVER)], health


# --- 6. SIGKILL during an install ----------------------------------------------------


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line mentions `text` (pip runs in a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def leftovers_on_disk(project: Path, lock: dict[str, Any]) -> set[str]:
    """What doctor must report: every staged entry and every unreferenced install folder."""
    plugins_dir = (project / ".kb" / "plugins").resolve()
    referenced = {(project / e["resolvedPath"]).resolve() for e in lock["installed"].values()}
    found = {str(p) for p in (plugins_dir / ".staging").iterdir()}
    found |= {
        str(p)
        for p in plugins_dir.iterdir()
        if p.is_dir() and p.name != ".staging" and p.resolve() not in referenced
    }
    return found


@pytest.mark.parametrize(
    "kill_when", ["staging-appears", "pip-running", "install-folder-appears", "lock-switched"]
)
def test_sigkill_during_an_install_leaves_the_old_or_the_new_lock_and_doctor_sees_leftovers(
    project, index, kill_when
):
    reporting_plugin_wheel(index.wheels_dir, version="1.0.0")
    reporting_plugin_wheel(index.wheels_dir, version="2.0.0")
    configure_index(project, index.url)
    first = market("install", "kb-demo==1.0.0", project=project)
    assert first.returncode == 0, first.stdout + first.stderr
    lock_path = project / ".kb" / "marketplace.lock"
    before = lock_path.read_bytes()
    plugins_dir = project / ".kb" / "plugins"
    old_folders = {p.name for p in plugins_dir.iterdir()}

    def trigger() -> bool:
        if kill_when == "staging-appears":
            return bool(staged(project))
        if kill_when == "pip-running":
            return bool(pids_mentioning(str(plugins_dir / ".staging")))
        if kill_when == "install-folder-appears":
            return any(p.name.startswith("kb-demo-2.0.0-") for p in plugins_dir.iterdir())
        return lock_path.read_bytes() != before  # lock-switched

    process = subprocess.Popen(
        [sys.executable, "-m", "kblabs", "marketplace", "install", "kb-demo==2.0.0"],
        cwd=project,
        env=market_env(project),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not trigger() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    killed = process.poll() is None
    if killed:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    if kill_when in ("staging-appears", "pip-running"):
        assert killed, f"the install finished before the kill ({kill_when})"
    seen_staged = staged(project)
    # pip runs in a session of its own: an orphaned pip may still finish its step
    wait_for(
        lambda: not pids_mentioning(str(plugins_dir / ".staging")),
        60,
        "the orphaned pip to finish",
    )

    after = lock_path.read_bytes()
    lock = json.loads(after)  # never partial
    entry = lock["installed"][DEMO_ID]
    if after != before:  # the new version, complete
        assert entry["version"] == "2.0.0"
        folder = project / entry["resolvedPath"]
        assert (folder / "kb_demo" / "kb.plugin.json").is_file()
        assert (folder / "kb_demo-2.0.0.dist-info" / "RECORD").is_file()
    else:
        assert entry["version"] == "1.0.0"
        assert {p.name for p in plugins_dir.iterdir()} >= old_folders
    backup = project / ".kb" / "marketplace.lock.bak"
    if backup.exists():  # written before each replace: a complete earlier version
        assert json.loads(backup.read_text())["schema"] == "kb.marketplace/2"

    code, doctor = market_json("doctor", project=project)
    reported = {
        i["message"].removeprefix(LEFTOVER)
        for i in doctor["issues"]
        if i["message"].startswith(LEFTOVER)
    }
    expected = leftovers_on_disk(project, lock)
    assert reported == expected, doctor
    if kill_when == "staging-appears":
        assert str((plugins_dir / ".staging" / seen_staged[0]).resolve()) in reported
    assert code == 0 and doctor["ok"] is True  # leftovers are warnings, the lock is sound

    code, cleared = market_json("clear-cache", project=project)
    assert code == 0 and set(cleared["cleared"]) == expected
    assert staged(project) == []
    code, doctor = market_json("doctor", project=project)
    assert not [i for i in doctor["issues"] if i["message"].startswith(LEFTOVER)], doctor
    assert (project / entry["resolvedPath"]).is_dir()  # clear-cache kept what the lock uses
    code, listed = market_json("list", project=project)
    assert [(r["id"], r["version"]) for r in listed["entries"]] == [(DEMO_ID, entry["version"])]


# --- 7. the CLI ------------------------------------------------------------------------


def test_cli_install_list_disable_enable_doctor_uninstall(project, index, tmp_path):
    configure_index(project, index.url)
    wheel = plugin_wheel(tmp_path / "files")
    broken = broken_wheel(tmp_path / "files", defect="no-wheel-file")

    code, installed = market_json("install", str(wheel), project=project)
    assert code == 0, installed
    assert installed["ok"] is True and installed["scope"] == "platform"
    [item] = installed["installed"]
    assert (item["id"], item["version"], item["distribution"]) == (DEMO_ID, "1.0.0", "kb-demo")
    folder = project / item["packageRoot"]
    assert (folder / "kb_demo" / "handlers.py").is_file()

    def listed() -> dict[str, dict[str, Any]]:
        code, body = market_json("list", project=project)
        assert code == 0, body
        assert body["total"] == len(body["entries"])
        return {row["id"]: row for row in body["entries"]}

    assert listed()[DEMO_ID]["enabled"] is True
    human = market("list", project=project)
    assert human.returncode == 0 and DEMO_ID in human.stdout and "enabled" in human.stdout
    code, switched = market_json("disable", DEMO_ID, project=project)
    assert code == 0 and switched["enabled"] is False
    assert listed()[DEMO_ID]["enabled"] is False
    code, switched = market_json("enable", "kb-demo", project=project)  # by distribution too
    assert code == 0 and switched == {
        "ok": True,
        "id": DEMO_ID,
        "enabled": True,
        "scope": "platform",
    }
    assert listed()[DEMO_ID]["enabled"] is True

    code, doctor = market_json("doctor", project=project)
    assert code == 0 and doctor["ok"] is True
    assert {i["severity"] for i in doctor["issues"]} == {"info"}  # only "unsigned package"

    lock_before = lock_bytes(project)
    code, failed = market_json("install", str(broken), project=project)
    assert code == 1 and failed["ok"] is False
    assert failed["error"]["code"] == "INSTALL_FAILED"
    assert any("WHEEL" in line for line in failed["details"]), failed  # pip's last lines
    assert lock_bytes(project) == lock_before
    human = market("install", str(broken), project=project)
    assert human.returncode == 1 and "invalid wheel" in human.stderr, human.stderr

    code, removed = market_json("uninstall", DEMO_ID, project=project)
    assert code == 0 and removed["ok"] is True
    assert listed() == {} and not folder.exists()
    code, missing = market_json("uninstall", DEMO_ID, project=project)
    assert code == 1 and missing["error"]["code"] == "PACKAGE_NOT_FOUND"


# --- 8. a running server picks up what the CLI did ------------------------------------


def test_the_running_server_picks_up_a_cli_install_and_uninstall(
    live_server_factory, project, index
):
    reporting_plugin_wheel(index.wheels_dir)
    server = start_server(live_server_factory, project, index)
    assert status_of(server, HELLO) == 404

    installed = market("install", "kb-demo", project=project)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    hello = wait_for(
        lambda: (
            (r := httpx.get(server.url + HELLO, headers=server.auth)).status_code == 200
            and r.json()["data"]
        ),
        PICKUP_S,
        "the server to serve the plugin the CLI installed",
    )
    assert hello["version"] == "1.0.0" and hello["pid"] != server.process.pid

    removed = market("uninstall", DEMO_ID, project=project)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    wait_for(
        lambda: status_of(server, HELLO) == 404,
        PICKUP_S,
        "the server to drop the plugin the CLI uninstalled",
    )
    assert server.stop() == 0
