"""Shared fixtures: a project folder, the real app in-process, a real server process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from kblabs.app import create_app
from kblabs.config import Settings, load_settings

READY_TIMEOUT_S = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


def base_env(project: Path, **extra: str) -> dict[str, str]:
    """An environment for the project with nothing inherited that could change config."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            (
                "KB_",
                "NODE_ENV",
                "PORT",
                "LOG_LEVEL",
                "NOTIFY_SOCKET",
                "GATEWAY_",
                "REDIS_URL",
                "OPENAI_",  # an LLM or embeddings endpoint of the machine is not the test's
                "QDRANT_",
            )
        )
    }
    env["KB_PROJECT_ROOT"] = str(project)
    env.update(extra)
    return env


def make_settings(project: Path, **env: str) -> Settings:
    return load_settings(environ=base_env(project, **env))


@dataclass
class AppClient:
    client: httpx.AsyncClient
    app: object
    settings: Settings
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.asynccontextmanager
async def running_app(
    project: Path, config: dict[str, Any] | None = None, **env: str
) -> AsyncIterator[AppClient]:
    """The real app with its lifespan, served through httpx's ASGI transport; `config`,
    when given, is written as the project's kb.config.json first."""
    if config is not None:
        (project / "kb.config.json").write_text(json.dumps(config))
    settings = make_settings(project, **env)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            token = (settings.data_dir / "admin.token").read_text().strip()
            yield AppClient(client, app, settings, token)


@pytest.fixture
async def app_client(project: Path) -> AsyncIterator[AppClient]:
    """The real app with its lifespan, served through httpx's ASGI transport."""
    async with running_app(project, KB_DEBUG_ROUTES="1") as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    project: Path
    port: int
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return Path(self.env.get("KB_DATA_DIR", self.project / ".kb"))

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, wait: bool = True) -> LiveServer:
        self.log_path = self.project / f"server-{time.monotonic_ns()}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kblabs", "serve", "--port", str(self.port), *self.args],
            env=self.env,
            cwd=self.project,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server ignored {sig} for {timeout}s:\n{self.log()}") from None


@pytest.fixture
def live_server_factory(project: Path) -> Iterator:
    """Make (unstarted) real server processes on free ports; all are stopped afterwards."""
    servers: list[LiveServer] = []

    def make(*args: str, **env: str) -> LiveServer:
        server = LiveServer(
            project, free_port(), base_env(project, KB_LOG_LEVEL="info", **env), list(args)
        )
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def run_cli(
    *args: str, project: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """`python -m kblabs ARGS` as a user would run it, in the project folder."""
    return subprocess.run(
        [sys.executable, "-m", "kblabs", *args],
        env=env or base_env(project),
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
