"""What systemd relies on: sd_notify READY/STOPPING and socket activation (fd://N)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import base_env

pytestmark = pytest.mark.live


def receive(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def test_notify_ready_then_stopping(live_server_factory, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        server = live_server_factory(NOTIFY_SOCKET=path)
        server.start(wait=False)
        assert receive(notify, 30) == "READY=1"
        assert httpx.get(f"{server.url}/ready").status_code == 200  # ready means ready
        server.process.send_signal(signal.SIGTERM)
        assert receive(notify, 10) == "STOPPING=1"
        assert server.process.wait(timeout=30) == 0


def test_socket_activation_with_an_inherited_listening_socket(project):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    env = base_env(project)
    process = subprocess.Popen(
        [sys.executable, "-m", "kblabs", "serve", "--bind", f"fd://{fd}"],
        env=env,
        cwd=project,
        pass_fds=(fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    listener.close()  # only the server holds it now, as under systemd
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code
            except httpx.HTTPError:
                time.sleep(0.05)
        assert status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_bad_file_descriptor_is_one_clear_line(project):
    result = subprocess.run(
        [sys.executable, "-m", "kblabs", "serve", "--bind", "fd://97"],
        env=base_env(project),
        cwd=project,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "fd://97" in result.stderr
    assert "Traceback" not in result.stderr


def test_bind_accepts_only_fd_or_unix(project):
    result = subprocess.run(
        [sys.executable, "-m", "kblabs", "serve", "--bind", "0.0.0.0:80"],
        env=base_env(project),
        cwd=project,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--bind" in result.stderr
    assert os.path.exists(project) and not (project / ".kb").exists()
