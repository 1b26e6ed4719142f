"""The sandbox, end to end on a real server: every permission kind is refused before
any side effect, in process and in a subprocess worker; quotas, timeouts and crashes in
subprocess mode answer cleanly and leave the server healthy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, base_env, free_port, run_cli

pytestmark = pytest.mark.live

PROBE = Path(__file__).parents[1] / "fixtures" / "kb-probe"
IN_PROCESS = "@kb-test/probe"
SUBPROCESS = "@kb-test/probe-sub"
MODES = [IN_PROCESS, SUBPROCESS]


def link_probe(project: Path, plugin_id: str) -> None:
    folder = project / "plugins" / plugin_id.split("/")[1]
    shutil.copytree(PROBE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = json.loads((folder / "kb.plugin.json").read_text())
    manifest["id"] = plugin_id
    (folder / "kb.plugin.json").write_text(json.dumps(manifest))
    linked = run_cli("plugin", "link", str(folder), project=project, env=base_env(project))
    assert linked.returncode == 0, linked.stderr


class Hits(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):
        Hits.seen.append(self.path)
        body = b"fetched"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    project = tmp_path_factory.mktemp("sandbox")
    config = {"platform": {"execution": {"plugins": {SUBPROCESS: "subprocess"}, "warmWorkers": 2}}}
    (project / "kb.config.json").write_text(json.dumps(config))
    for plugin_id in MODES:
        link_probe(project, plugin_id)
    env = base_env(
        project,
        KB_LOG_LEVEL="info",
        PROBE_VISIBLE="yes",
        SECRET_TOKEN="hidden",
        PROBE_IMPORT_LOG=str(project / "imports.log"),
    )
    server = LiveServer(project, free_port(), env).start()
    yield server
    server.stop()


def call(server: LiveServer, plugin_id: str, method: str, path: str, **kwargs) -> httpx.Response:
    encoded = plugin_id.replace("@", "%40").replace("/", "%2F")
    url = f"{server.url}/api/v1/plugins/{encoded}{path}"
    return httpx.request(method, url, headers=server.auth, timeout=30, **kwargs)


def denied(response: httpx.Response, permission: str) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "PERMISSION_DENIED"
    assert error["details"]["permission"] == permission


# --- execution modes ---------------------------------------------------------------------


def test_each_mode_runs_where_it_says(sandbox):
    inside = call(sandbox, IN_PROCESS, "GET", "/whoami").json()["data"]
    outside = call(sandbox, SUBPROCESS, "GET", "/whoami").json()["data"]
    assert inside["pid"] == sandbox.process.pid
    assert outside["pid"] != sandbox.process.pid and outside["host"] == "rest"
    again = call(sandbox, SUBPROCESS, "GET", "/whoami").json()["data"]
    assert again["pid"] != outside["pid"]  # one worker per call: nothing carries over


# --- permissions: refused before any side effect --------------------------------------------


@pytest.mark.parametrize("plugin_id", MODES)
def test_fs_write_outside_the_allowlist_is_refused_and_nothing_is_written(sandbox, plugin_id):
    name = f"denied-{plugin_id.rsplit('/', 1)[1]}.txt"
    denied(call(sandbox, plugin_id, "POST", "/write-file", json={"path": name}), "fs.write")
    assert not (sandbox.project / name).exists()
    target = f"allowed/{name}"
    assert call(sandbox, plugin_id, "POST", "/write-file", json={"path": target}).status_code == 200
    assert (sandbox.project / target).read_text() == "written"
    # `..` cannot climb out of an allowed folder
    sneaky = f"allowed/../{name}"
    denied(call(sandbox, plugin_id, "POST", "/write-file", json={"path": sneaky}), "fs.write")
    assert not (sandbox.project / name).exists()


@pytest.mark.parametrize("plugin_id", MODES)
def test_fs_read_of_secrets_and_system_files_is_refused(sandbox, plugin_id):
    (sandbox.project / ".env").write_text("SECRET=1")
    for path in (".env", "/etc/hostname", "../outside.txt"):
        denied(call(sandbox, plugin_id, "GET", "/read-file", params={"path": path}), "fs.read")
    (sandbox.project / "allowed").mkdir(exist_ok=True)
    (sandbox.project / "allowed" / "r.txt").write_text("readable")
    ok = call(sandbox, plugin_id, "GET", "/read-file", params={"path": "allowed/r.txt"})
    assert ok.json()["data"]["content"] == "readable"


@pytest.mark.parametrize("plugin_id", MODES)
def test_env_outside_the_allowlist_reads_as_none(sandbox, plugin_id):
    visible = call(sandbox, plugin_id, "GET", "/env", params={"name": "PROBE_VISIBLE"})
    hidden = call(sandbox, plugin_id, "GET", "/env", params={"name": "SECRET_TOKEN"})
    assert visible.json()["data"]["value"] == "yes"
    assert hidden.json()["data"]["value"] is None


@pytest.mark.parametrize("plugin_id", MODES)
def test_fetch_outside_the_allowlist_is_refused_before_the_request(sandbox, web, plugin_id):
    Hits.seen.clear()
    denied(
        call(sandbox, plugin_id, "GET", "/fetch", params={"url": f"{web}/denied"}), "network.fetch"
    )
    assert Hits.seen == []
    ok = call(sandbox, plugin_id, "GET", "/fetch", params={"url": f"{web}/allowed"})
    assert ok.json()["data"] == {"status": 200, "text": "fetched"}
    assert Hits.seen == ["/allowed"]


@pytest.mark.parametrize("plugin_id", MODES)
def test_shell_outside_the_allowlist_is_refused_and_does_not_run(sandbox, plugin_id):
    marker = sandbox.project / f"touched-{plugin_id.rsplit('/', 1)[1]}"
    body = {"command": "touch", "args": [str(marker)]}
    denied(call(sandbox, plugin_id, "POST", "/shell", json=body), "shell")
    assert not marker.exists()
    echoed = call(sandbox, plugin_id, "POST", "/shell", json={"command": "echo", "args": ["hi"]})
    assert echoed.json()["data"] == {"code": 0, "stdout": "hi\n"}


@pytest.mark.parametrize("plugin_id", MODES)
def test_invoke_outside_the_allowlist_is_refused(sandbox, plugin_id):
    body = {"target": "@kb-labs/hello/anything", "input": {}}
    denied(call(sandbox, plugin_id, "POST", "/invoke", json=body), "invoke")
    allowed = {"target": f"{SUBPROCESS}/double", "input": {"n": 21}}
    result = call(sandbox, plugin_id, "POST", "/invoke", json=allowed).json()["data"]["result"]
    assert result == {"doubled": 42, "host": "workflow"}  # invoked handlers are workflow handlers


def test_a_route_only_handler_refuses_another_host(sandbox):
    assert call(sandbox, IN_PROCESS, "GET", "/route-only").json()["data"] == {"host": "rest"}
    as_command = run_cli(
        "probe", "route-only", project=sandbox.project, env=base_env(sandbox.project)
    )
    assert as_command.returncode == 1 and "HOST_MISMATCH" in as_command.stderr


@pytest.mark.parametrize("plugin_id", MODES)
def test_cache_keys_outside_the_allowed_prefix_are_refused_and_not_stored(sandbox, plugin_id):
    denied(
        call(sandbox, plugin_id, "POST", "/cache-set", json={"key": "secret:k"}), "platform.cache"
    )
    peek = call(sandbox, plugin_id, "GET", "/cache-get", params={"key": "secret:k"})
    assert peek.json()["data"]["value"] is None
    assert (
        call(sandbox, plugin_id, "POST", "/cache-set", json={"key": "allowed:k"}).status_code == 200
    )
    peek = call(sandbox, plugin_id, "GET", "/cache-get", params={"key": "allowed:k"})
    assert peek.json()["data"]["value"] == "set-by-probe"


@pytest.mark.parametrize("plugin_id", MODES)
def test_storage_outside_the_allowed_prefix_is_refused_and_not_written(sandbox, plugin_id):
    name = f"other/{plugin_id.rsplit('/', 1)[1]}.bin"
    denied(
        call(sandbox, plugin_id, "POST", "/storage-write", json={"path": name}), "platform.storage"
    )
    assert not [p for p in sandbox.data_dir.rglob("*.bin") if "other" in p.parts]
    good = f"allowed/{plugin_id.rsplit('/', 1)[1]}.bin"
    assert (
        call(sandbox, plugin_id, "POST", "/storage-write", json={"path": good}).status_code == 200
    )
    assert [p for p in sandbox.data_dir.rglob("*.bin") if "allowed" in p.parts]


def test_a_plugins_storage_use_is_charged_to_the_callers_namespace(sandbox):
    key = run_cli(
        "--json",
        "auth",
        "create-key",
        "--role",
        "operator",
        "--namespace",
        "team-z",
        "z",
        project=sandbox.project,
        env=base_env(sandbox.project),
    )
    assert key.returncode == 0, key.stderr
    team_z = {"Authorization": f"Bearer {json.loads(key.stdout)['token']}"}
    encoded = SUBPROCESS.replace("@", "%40").replace("/", "%2F")
    written = httpx.post(
        f"{sandbox.url}/api/v1/plugins/{encoded}/storage-write",
        json={"path": "allowed/team-z.bin"},
        headers=team_z,
        timeout=30,
    )
    assert written.status_code == 200, written.text
    usage = httpx.get(f"{sandbox.url}/api/v1/adapters/storage/usage", headers=team_z, timeout=10)
    assert usage.status_code == 200, usage.text
    assert usage.json()["data"]["bytesWritten"] == len(b"stored")


@pytest.mark.parametrize("plugin_id", MODES)
def test_analytics_and_events_are_gated(sandbox, plugin_id):
    denied(call(sandbox, plugin_id, "POST", "/analytics"), "platform.analytics")
    denied(call(sandbox, plugin_id, "POST", "/emit"), "platform.events")
    assert call(sandbox, plugin_id, "POST", "/analytics-allowed").status_code == 200


@pytest.mark.parametrize("plugin_id", MODES)
def test_state_in_another_namespace_is_refused(sandbox, plugin_id):
    own = call(sandbox, plugin_id, "POST", "/state", json={"key": "k", "value": {"n": 1}})
    assert own.json()["data"]["value"] == {"n": 1}
    body = {"key": "k", "value": 2, "namespace": "@kb-labs/hello"}
    denied(call(sandbox, plugin_id, "POST", "/state", json=body), "state")


@pytest.mark.parametrize("plugin_id", MODES)
def test_artifacts_and_ctx_sync_from_a_plain_function(sandbox, plugin_id):
    made = call(sandbox, plugin_id, "POST", "/artifacts").json()["data"]
    assert made["path"].endswith("probe/report.txt") and "probe/report.txt" in made["list"]
    synced = call(sandbox, plugin_id, "POST", "/sync")
    assert synced.json()["data"] == {"read": "from a thread"}, synced.text


@pytest.mark.parametrize("plugin_id", MODES)
def test_a_handler_exception_is_a_500_with_a_one_line_message(sandbox, plugin_id):
    response = call(sandbox, plugin_id, "GET", "/crash")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "HANDLER_ERROR" and "ValueError: boom" in error["message"]


def test_print_in_a_worker_does_not_break_the_protocol(sandbox):
    assert call(sandbox, SUBPROCESS, "GET", "/print").json()["data"] == {"printed": True}


# --- subprocess quotas, timeouts, crashes ---------------------------------------------------


def test_memory_beyond_the_quota_fails_clearly(sandbox):
    response = call(sandbox, SUBPROCESS, "GET", "/hog")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "QUOTA_EXCEEDED" and "memory" in error["message"]
    assert httpx.get(f"{sandbox.url}/ready").status_code == 200


def test_an_infinite_loop_times_out_fast_and_leaves_no_process(sandbox):
    pid_file = sandbox.project / ".kb" / "output" / "spin.pid"
    pid_file.unlink(missing_ok=True)
    started = time.monotonic()
    response = call(sandbox, SUBPROCESS, "GET", "/spin")
    elapsed = time.monotonic() - started
    assert response.status_code == 504 and response.json()["error"]["code"] == "EXECUTION_TIMEOUT"
    assert elapsed < 3.0, f"504 after {elapsed:.2f}s"  # 500 ms timeout + a worker start under load
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert call(sandbox, SUBPROCESS, "GET", "/whoami").status_code == 200


def test_cpu_beyond_the_quota_fails_clearly(sandbox):
    response = call(sandbox, SUBPROCESS, "GET", "/burn")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "QUOTA_EXCEEDED" and "CPU" in error["message"]


def test_os_exit_is_a_worker_crash_and_the_server_stays_healthy(sandbox):
    response = call(sandbox, SUBPROCESS, "GET", "/die")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "WORKER_CRASHED" and error["details"]["exitCode"] == 1
    assert httpx.get(f"{sandbox.url}/ready").status_code == 200
    assert call(sandbox, IN_PROCESS, "GET", "/whoami").status_code == 200


def test_the_warm_pool_holds_started_workers(sandbox):
    children = subprocess.run(
        ["pgrep", "-P", str(sandbox.process.pid), "-f", "kblabs.plugins.worker"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(children) >= 1


def test_subprocess_as_the_default_mode_and_no_worker_outlives_the_server(
    live_server_factory, project
):
    (project / "kb.config.json").write_text(
        json.dumps({"platform": {"execution": {"mode": "subprocess", "warmWorkers": 2}}})
    )
    link_probe(project, IN_PROCESS)
    server = live_server_factory().start()
    answer = call(server, IN_PROCESS, "GET", "/whoami").json()["data"]
    assert answer["pid"] != server.process.pid
    workers = subprocess.run(
        ["pgrep", "-P", str(server.process.pid), "-f", "kblabs.plugins.worker"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert workers, "the warm pool should hold started workers"
    assert server.stop() == 0
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


# --- CLI ---------------------------------------------------------------------------------


def test_a_cli_command_denied_a_write_exits_1_and_writes_nothing(sandbox):
    env = base_env(sandbox.project)
    refused = run_cli(
        "probe", "write", "--path", "cli-denied.txt", project=sandbox.project, env=env
    )
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr + refused.stdout
    assert not (sandbox.project / "cli-denied.txt").exists()
    allowed = run_cli(
        "probe", "write", "--path", "allowed/cli.txt", "--json", project=sandbox.project, env=env
    )
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["result"] == {"written": "allowed/cli.txt"}


# --- lifecycle hooks ---------------------------------------------------------------------


def test_lifecycle_hooks_run_on_load_disable_enable_and_shutdown(live_server_factory, project):
    link_probe(project, SUBPROCESS)
    log = project / ".kb" / "output" / "lifecycle-probe-sub.log"
    server = live_server_factory().start()
    assert poll_for(lambda: log.exists() and log.read_text().split() == ["load"])
    switch = f"{server.url}/api/v1/plugins"
    body = {"pluginId": SUBPROCESS}
    assert httpx.post(f"{switch}/disable", json=body, headers=server.auth).status_code == 200
    assert log.read_text().split() == ["load", "disable", "unload"]
    assert httpx.post(f"{switch}/enable", json=body, headers=server.auth).status_code == 200
    assert log.read_text().split() == ["load", "disable", "unload", "load", "enable"]
    assert server.stop() == 0
    assert log.read_text().split()[-1] == "unload"


def poll_for(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_marketplace_installed_plugin_runs_in_a_subprocess_by_default(sandbox):
    from kblabs.marketplace.lockfile import LockEntry, LockFile
    from kblabs.plugins.discovery import integrity_of

    installed = "@kb-test/probe-installed"
    target = sandbox.project / ".kb" / "plugins" / "kb-probe-installed"
    shutil.copytree(PROBE / "kb_probe", target / "kb_probe")
    (target / "kb_probe" / "__init__.py").write_text(  # notes which process imports it
        'import os\nopen(os.environ.get("PROBE_IMPORT_LOG", "/dev/null"), "a")'
        '.write(f"{os.getpid()}\\n")\n'
    )
    manifest = json.loads((PROBE / "kb.plugin.json").read_text())
    manifest["id"] = installed
    (target / "kb_probe" / "kb.plugin.json").write_text(json.dumps(manifest))
    info = target / "kb_probe-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kb-probe\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[kb_labs.plugins]\nprobe = kb_probe\n")
    with LockFile.in_data_dir(sandbox.data_dir).update() as entries:
        entries[installed] = LockEntry(
            resolved_path="./.kb/plugins/kb-probe-installed",
            source="marketplace",
            integrity=integrity_of(target),
        )
    answer = poll_for(lambda: call(sandbox, installed, "GET", "/whoami").status_code == 200)
    assert answer, "the registry did not pick up the lock change"
    data = call(sandbox, installed, "GET", "/whoami").json()["data"]
    assert data["pid"] != sandbox.process.pid and data["plugin"] == installed
    denied(call(sandbox, installed, "POST", "/write-file", json={"path": "x.txt"}), "fs.write")
    importers = (sandbox.project / "imports.log").read_text().split()
    assert importers, "the import check and the workers should have imported it"
    assert str(sandbox.process.pid) not in importers  # never inside the server
