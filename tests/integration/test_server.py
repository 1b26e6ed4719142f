"""A real `python -m kblabs serve` process: readiness, drain, crash, clear start errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import run_cli

pytestmark = pytest.mark.live


def metric_value(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=server.auth, timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def test_starts_on_embedded_defaults_and_status_reports_ready(live_server_factory, project):
    server = live_server_factory().start()
    assert not (project / "kb.config.json").exists()
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["ready"] is True
    status = run_cli("--json", "status", "--url", server.url, project=project)
    assert status.returncode == 0
    assert json.loads(status.stdout)["status"] == "ready"
    assert (server.data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    assert server.stop() == 0


def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(live_server_factory):
    server = live_server_factory(KB_DEBUG_ROUTES="1").start()

    async def scenario() -> tuple[list[int], float, bool]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(limits=limits, timeout=20) as client:
            requests = [
                asyncio.create_task(
                    client.get(f"{server.url}/api/v1/debug/sleep?ms=1000", headers=server.auth)
                )
                for _ in range(50)
            ]
            deadline = time.monotonic() + 10
            while metric_value(server, "service_active_operations") < 51:  # 50 + this scrape
                assert time.monotonic() < deadline, "requests never became in flight"
                await asyncio.sleep(0.02)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            refused = False
            while not refused and time.monotonic() - signalled < 0.8:
                refused = refuses_connections(server.port)
                await asyncio.sleep(0.02)
            statuses = [(await r).status_code for r in requests]
            return statuses, signalled, refused

    statuses, signalled, refused = asyncio.run(scenario())
    assert statuses == [200] * 50
    assert refused, "new connections were still accepted after SIGTERM"
    assert server.process.wait(timeout=30) == 0
    assert time.monotonic() - signalled < 30


def test_ready_turns_503_during_the_drain_delay(live_server_factory):
    server = live_server_factory("--drain-delay", "2").start()
    server.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 1.5
    status = None
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.url}/ready", timeout=1).status_code
        if status == 503:
            break
        time.sleep(0.05)
    assert status == 503
    assert server.process.wait(timeout=20) == 0


def test_sigkill_then_restart_keeps_the_database_sound(live_server_factory):
    first = live_server_factory().start()
    assert metric_value(first, "service_restarts_total") == 0
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=10)

    second = live_server_factory().start()
    assert metric_value(second, "service_restarts_total") == 1
    database = second.data_dir / "kblabs.db"
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert second.stop() == 0


def test_port_in_use_is_one_clear_line(live_server_factory):
    first = live_server_factory().start()
    clash = live_server_factory()
    clash.port = first.port
    clash.start(wait=False)
    assert clash.process.wait(timeout=30) == 1
    assert "already in use" in clash.log()
    assert "Traceback" not in clash.log()


def test_data_dir_that_cannot_be_created_is_reported(live_server_factory, project):
    blocker = project / "not-a-dir"
    blocker.write_text("")
    server = live_server_factory(KB_DATA_DIR=str(blocker / "data"))
    server.start(wait=False)
    assert server.process.wait(timeout=30) == 1
    log = server.log()
    assert "data-dir" in log and "cannot create data dir" in log
    assert "Traceback" not in log


def test_database_newer_than_code_names_the_component(live_server_factory, project):
    assert run_cli("migrate", "upgrade", project=project).returncode == 0
    with sqlite3.connect(project / ".kb" / "kblabs.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'ffff_future'")
    server = live_server_factory()
    server.start(wait=False)
    assert server.process.wait(timeout=30) == 1
    log = server.log()
    assert "store" in log and "newer than this code" in log
    assert "Traceback" not in log


def test_locked_database_is_reported(live_server_factory, project):
    assert run_cli("migrate", "upgrade", project=project).returncode == 0
    holder = sqlite3.connect(project / ".kb" / "kblabs.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        server = live_server_factory()
        server.start(wait=False)
        assert server.process.wait(timeout=40) == 1
    finally:
        holder.close()
    log = server.log()
    assert "is locked by another process" in log
    assert "Traceback" not in log


def test_status_wait_until_ready(live_server_factory, project):
    server = live_server_factory()
    server.start(wait=False)
    result = run_cli("status", "--url", server.url, "--wait", "--timeout", "30", project=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.stop() == 0
    after = run_cli("status", "--url", server.url, project=project)
    assert after.returncode == 4


def test_production_logs_are_json_lines_with_ids_and_no_secrets(live_server_factory):
    server = live_server_factory(KB_ENV="production", GATEWAY_JWT_SECRET="p" * 40).start()
    httpx.get(
        f"{server.url}/health?access_token=supersecret-1",
        headers={"X-Request-Id": "req-42", "Authorization": "Bearer supersecret-2"},
    )
    assert httpx.get(f"{server.url}/docs").status_code == 401  # no /docs in production
    assert server.stop() == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    access = [line for line in lines if line.get("module") == "access"]
    health = next(line for line in access if line.get("route") == "/health")
    assert health["requestId"] == "req-42"
    assert health["status"] == 200 and health["method"] == "GET"
    assert "durationMs" in health and health["serviceId"] == "kblabs"
    assert "supersecret" not in server.log()


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_dev_mode_restarts_on_config_change(live_server_factory, project):
    config = project / "kb.config.json"
    config.write_text("{}")
    server = live_server_factory("--dev").start()
    describe = f"{server.url}/observability/describe"
    first = httpx.get(describe, headers=server.auth).json()["instanceId"]
    config.write_text('{"server": {"drainDelayMs": 0}}')
    deadline = time.monotonic() + 30
    second = first
    while second == first and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            second = httpx.get(describe, headers=server.auth, timeout=2).json()["instanceId"]
        time.sleep(0.1)
    assert second != first, server.log()
    assert server.stop() == 0
    assert _processes_with(f"--port\x00{server.port}\x00") == []


def test_json_serve_failure_is_one_object_on_stdout(live_server_factory, project):
    first = live_server_factory().start()
    result = run_cli("--json", "serve", "--port", str(first.port), project=project, timeout=30)
    assert result.returncode == 1
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and payload["error"]["code"] == "START_FAILED"
    assert "already in use" in payload["error"]["message"]


def test_status_of_a_server_that_accepts_but_does_not_answer_is_not_ready(project):
    with socket.socket() as silent:  # listens, never accepts: like a server starting up
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = run_cli("--json", "status", "--url", url, project=project)
    assert result.returncode == 3
    assert json.loads(result.stdout)["error"]["code"] == "NOT_READY"


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body; (0, b"") when the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), body


def test_an_early_error_answer_keeps_the_connection_when_the_body_arrives_late(
    live_server_factory,
):
    # A 401 is decided from the headers alone. When the body's bytes come after that answer,
    # the server must still read them, or it closes the keep-alive connection and the client
    # gets a reset instead of the 401 (seen as "Server disconnected without sending a response").
    server = live_server_factory().start()
    body = b'{"specs": ["kb-x"]}'
    head = (
        f"POST /api/v1/marketplace/packages/install HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(head)
            time.sleep(0.3)  # the server answers from the headers before the body is sent
            sock.sendall(body)
            status, answer = _read_response(sock)
            assert status == 401, answer
            assert json.loads(answer)["error"]["code"] == "UNAUTHORIZED"
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock)[0] == 200
