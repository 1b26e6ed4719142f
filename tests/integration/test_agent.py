"""The host agent against real server processes: register, run, calls, reconnects, status.

The agent runs as a real subprocess (`python -m kblabs agent run`) with its configuration
in tmp_path (KB_AGENT_CONFIG) and a 1 s heartbeat. A few protocol corners the real
gateway never produces (negotiate, a wrong first reply) use an in-process fake gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from kblabs.agent.client import AgentClient, AgentFatal, Backoff, TokenManager
from kblabs.agent.config import (
    AgentConfig,
    AgentConfigError,
    InsecureUrlError,
    check_gateway_url,
    load_config,
    websocket_url,
)
from kblabs.gateway import protocol as p
from tests.conftest import base_env, run_cli

pytestmark = pytest.mark.live

INTERNAL_SECRET = "agent-test-internal-secret-0123456789"
SERVER_ENV = {"GATEWAY_INTERNAL_SECRET": INTERNAL_SECRET, "KB_GRACEFUL_TIMEOUT_MS": "1000"}


# --------------------------------------------------------------------------- helpers


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A workspace with hello.txt, plus a secret outside it and a symlink pointing there."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "hello.txt").write_text("hello from the workspace\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    (ws / "escape.txt").symlink_to(outside / "secret.txt")
    return ws


class Agent:
    """`python -m kblabs agent run` as a subprocess."""

    def __init__(self, project: Path, env: dict[str, str], log_path: Path) -> None:
        self.project, self.env, self.log_path = project, env, log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> Agent:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kblabs", "agent", "run"],
                env=self.env,
                cwd=self.project,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 10) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.cleanup()


def agent_env(project: Path, config: Path, **extra: str) -> dict[str, str]:
    return base_env(project, KB_AGENT_CONFIG=str(config), KB_AGENT_HEARTBEAT_S="1", **extra)


def register(server, project: Path, env: dict[str, str], workspace: Path, *extra: str) -> dict:
    result = run_cli(
        "agent",
        "register",
        "--gateway",
        server.url,
        "--workspace",
        str(workspace),
        "--name",
        "test-laptop",
        "--token",
        server.token,
        "--json",
        *extra,
        project=project,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def start_agent(agents: list[Agent], project: Path, env: dict[str, str], tmp_path: Path) -> Agent:
    agent = Agent(project, env, tmp_path / f"agent-{len(agents)}.log").start()
    agents.append(agent)
    return agent


def host(server, host_id: str) -> dict | None:
    try:
        response = httpx.get(f"{server.url}/hosts/{host_id}", headers=server.auth, timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def listed_status(server, host_id: str) -> str | None:
    try:
        response = httpx.get(f"{server.url}/hosts", headers=server.auth, timeout=2)
    except httpx.HTTPError:
        return None
    for entry in response.json()["hosts"]:
        if entry["hostId"] == host_id:
            return entry["status"]
    return None


def wait_online(server, host_id: str, agent: Agent, timeout: float = 10.0) -> None:
    def online() -> bool:
        assert agent.process is not None
        assert agent.process.poll() is None, f"agent exited:\n{agent.log()}"
        return listed_status(server, host_id) == "online"

    try:
        wait_for(online, timeout, f"host {host_id} online in GET /hosts")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nagent log:\n{agent.log()}\nserver:\n{server.log()}") from None


def dispatch(
    server, host_id: str, adapter: str, method: str, args: list, **extra
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/internal/dispatch",
        json={
            "namespaceId": "default",
            "hostId": host_id,
            "adapter": adapter,
            "method": method,
            "args": args,
            **extra,
        },
        headers={"X-Internal-Secret": INTERNAL_SECRET},
        timeout=30,
    )


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie is dead, just not reaped yet


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def kill_quietly(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# A command that publishes its pid (atomically) and then sleeps in that same process.
def sleeper(seconds: int) -> str:
    return f"echo $$ > .sleep.tmp && mv .sleep.tmp sleep.pid && exec sleep {seconds}"


# --------------------------------------------------------------------------- (a) + (b)


def test_agent_registers_comes_online_and_serves_calls(
    live_server_factory, project, tmp_path, workspace, agents
):
    server = live_server_factory(**SERVER_ENV).start()
    config_path = tmp_path / "kb" / "agent.json"
    env = agent_env(project, config_path)
    registered = register(server, project, env, workspace)
    host_id = registered["hostId"]
    assert registered["capabilities"] == ["filesystem", "git", "search", "execution"]
    assert "clientSecret" not in registered

    # the stored configuration: 0600, absolute workspace, the credentials
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    stored = json.loads(config_path.read_text())
    assert stored["hostId"] == host_id and stored["clientSecret"].startswith("cs_")
    assert stored["workspacePaths"] == [str(workspace.resolve())]
    assert stored["shell"] == {"enabled": False, "timeoutMs": 30000}
    assert stored["allowInsecureWs"] is False
    again = run_cli(
        "agent", "register", "--gateway", server.url, "--workspace", str(workspace),
        "--token", server.token, project=project, env=env,
    )  # fmt: skip
    assert again.returncode == 1 and "--force" in again.stderr

    agent = start_agent(agents, project, env, tmp_path)
    wait_online(server, host_id, agent)
    described = host(server, host_id)
    assert described is not None
    assert described["name"] == "test-laptop"
    assert described["workspaces"] == [{"path": str(workspace.resolve())}]
    assert len(described["connections"]) == 1

    # (b) calls through /internal/dispatch
    ok = dispatch(server, host_id, "filesystem", "readFile", ["hello.txt"])
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"result": "hello from the workspace\n", "hostId": host_id}
    for escape in ("../outside/secret.txt", "escape.txt", str(tmp_path / "outside/secret.txt")):
        denied = dispatch(server, host_id, "filesystem", "readFile", [escape])
        assert denied.status_code == 403, (escape, denied.text)
        assert denied.json()["error"]["code"] == "ACCESS_DENIED"
        assert "top secret" not in denied.text
    # shell was not registered: refused clearly, not run
    shell = dispatch(server, host_id, "shell", "exec", ["echo hi"])
    assert shell.status_code == 501 and shell.json()["error"]["code"] == "UNSUPPORTED"

    # SIGTERM: a clean close and exit 0; the gateway sees the host go away
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0, agent.log()
    wait_for(
        lambda: listed_status(server, host_id) in ("reconnecting", "offline"),
        5,
        "the host to leave `online`",
    )
    log = agent.log()
    assert "connected to ws://127.0.0.1" in log and "agent stopped" in log
    assert stored["clientSecret"] not in log


# --------------------------------------------------------------------------- (c)


def test_agent_reconnects_after_a_server_restart(
    live_server_factory, project, tmp_path, workspace, agents
):
    first = live_server_factory(**SERVER_ENV).start()
    env = agent_env(project, tmp_path / "agent.json")
    host_id = register(first, project, env, workspace)["hostId"]
    agent = start_agent(agents, project, env, tmp_path)
    wait_online(first, host_id, agent)

    assert first.stop() == 0, first.log()
    second = live_server_factory(**SERVER_ENV)
    second.port = first.port  # same port, same project (data dir)
    second.start()
    wait_online(second, host_id, agent, timeout=20)
    assert agent.process is not None and agent.process.poll() is None
    log = agent.log()
    assert log.count("connected to ws://") >= 2, log  # a try during the drain may count
    assert "reconnecting in" in log
    reply = dispatch(second, host_id, "filesystem", "exists", ["hello.txt"])
    assert reply.status_code == 200 and reply.json()["result"] is True


# --------------------------------------------------------------------------- (d)


def test_killing_the_agent_fails_a_running_call_within_a_second(
    live_server_factory, project, tmp_path, workspace, agents
):
    server = live_server_factory(**SERVER_ENV).start()
    env = agent_env(project, tmp_path / "agent.json")
    registered = register(server, project, env, workspace, "--allow-shell")
    host_id = registered["hostId"]
    assert "shell" in registered["capabilities"]
    agent = start_agent(agents, project, env, tmp_path)
    wait_online(server, host_id, agent)

    answer: dict[str, Any] = {}

    def slow_call() -> None:
        try:
            answer["response"] = dispatch(
                server, host_id, "shell", "exec", [sleeper(5)], timeoutMs=20_000
            )
        finally:
            answer["at"] = time.monotonic()

    caller = threading.Thread(target=slow_call)
    pid_file = workspace / "sleep.pid"
    sleep_pid: int | None = None
    try:
        caller.start()
        sleep_pid = wait_for(lambda: read_pid(pid_file), 10, "the slow call to start")
        assert agent.process is not None
        agent.process.kill()  # SIGKILL: no close frame
        killed_at = time.monotonic()
        caller.join(timeout=10)
        assert not caller.is_alive(), "the dispatch request did not return"
        response = answer["response"]
        elapsed = answer["at"] - killed_at
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "HOST_DISCONNECTED"
        print(f"HOST_DISCONNECTED {elapsed * 1000:.1f} ms after SIGKILL")
        assert elapsed < 1.0, f"the call failed {elapsed:.3f}s after the kill"
    finally:
        caller.join(timeout=30)
        kill_quietly(sleep_pid)


def test_a_call_the_gateway_abandons_is_cancelled_on_the_agent(
    live_server_factory, project, tmp_path, workspace, agents
):
    server = live_server_factory(**SERVER_ENV).start()
    env = agent_env(project, tmp_path / "agent.json")
    host_id = register(server, project, env, workspace, "--allow-shell")["hostId"]
    agent = start_agent(agents, project, env, tmp_path)
    wait_online(server, host_id, agent)
    sleep_pid = None
    try:
        started = time.monotonic()
        timed_out = dispatch(server, host_id, "shell", "exec", [sleeper(60)], timeoutMs=1500)
        assert timed_out.status_code == 504, timed_out.text
        assert timed_out.json()["error"]["code"] == "CALL_TIMEOUT"
        assert time.monotonic() - started < 10
        sleep_pid = wait_for(lambda: read_pid(workspace / "sleep.pid"), 5, "the sleeper's pid")
        # the gateway sent cancel{requestId}: the task is cancelled, its process group killed
        wait_for(lambda: not pid_alive(sleep_pid), 5, "the cancelled command to be killed")
        wait_for(lambda: "cancelled by the gateway" in agent.log(), 5, "the cancel log line")
        # the agent is still connected and serving
        assert listed_status(server, host_id) == "online"
        ok = dispatch(server, host_id, "shell", "exec", ["echo still here"])
        assert ok.status_code == 200 and ok.json()["result"]["stdout"] == "still here\n"
    finally:
        kill_quietly(sleep_pid)


# --------------------------------------------------------------------------- (e)


def test_agent_status_exit_codes(live_server_factory, project, tmp_path, workspace, agents):
    config_path = tmp_path / "agent.json"
    env = agent_env(project, config_path)

    def status() -> subprocess.CompletedProcess:
        return run_cli("agent", "status", "--json", project=project, env=env, timeout=30)

    missing = status()
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert json.loads(missing.stdout)["error"]["code"] == "AGENT_CONFIG"
    assert "agent register" in json.loads(missing.stdout)["error"]["message"]

    config_path.write_text("{not json")
    corrupt = status()
    assert corrupt.returncode == 2 and "not valid JSON" in corrupt.stdout
    config_path.unlink()

    server = live_server_factory(**SERVER_ENV).start()
    host_id = register(server, project, env, workspace)["hostId"]
    never = status()
    assert never.returncode == 3, never.stdout + never.stderr
    assert json.loads(never.stdout)["status"] == "unknown"

    agent = start_agent(agents, project, env, tmp_path)
    wait_online(server, host_id, agent)
    online = status()
    assert online.returncode == 0, online.stdout + online.stderr
    body = json.loads(online.stdout)
    assert body["ok"] is True and body["status"] == "online" and body["hostId"] == host_id
    assert body["gatewayReady"] is True and body["connections"] == 1
    human = run_cli("agent", "status", project=project, env=env)
    assert human.returncode == 0 and "online" in human.stdout and host_id in human.stdout

    config_path.chmod(0o644)  # loose permissions: still works, with a warning
    loose = status()
    assert loose.returncode == 0 and "readable by other users" in loose.stderr
    config_path.chmod(0o600)

    agent.process.kill()  # type: ignore[union-attr]
    agent.wait()
    wait_for(lambda: status().returncode == 3, 10, "status to report the host not online")

    server.stop()
    down = status()
    assert down.returncode == 4, down.stdout + down.stderr
    assert json.loads(down.stdout)["error"]["code"] == "UNREACHABLE"


# --------------------------------------------------------------------------- (f)


def test_a_non_machine_token_is_closed_with_1008(live_server_factory):
    server = live_server_factory(**SERVER_ENV).start()

    async def attempt() -> tuple[int | None, str]:
        url = websocket_url(server.url)
        async with ws_connect(url, additional_headers=server.auth) as ws:
            try:  # the server closes before reading anything: the hello may not get out
                await ws.send(p.dump(p.Hello(type="hello", protocol_version="1.0")))
                await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                return exc.rcvd.code, exc.rcvd.reason
        return None, "not closed"

    code, reason = asyncio.run(attempt())
    assert code == 1008, reason
    assert "machine" in reason


# --------------------------------------------------------------------------- refresh


def test_a_token_refresh_keeps_the_live_connection(
    live_server_factory, project, tmp_path, workspace, agents
):
    server = live_server_factory(**SERVER_ENV).start()
    env = agent_env(project, tmp_path / "agent.json", KB_AGENT_TOKEN_REFRESH_S="0.5")
    host_id = register(server, project, env, workspace)["hostId"]
    agent = start_agent(agents, project, env, tmp_path)
    wait_online(server, host_id, agent)
    before = host(server, host_id)
    assert before is not None
    wait_for(lambda: agent.log().count("access token refreshed") >= 3, 15, "three token refreshes")
    after = host(server, host_id)
    assert after is not None
    assert after["connections"] == before["connections"]  # the same single connection
    assert after["status"] == "online"
    assert agent.log().count("connected to ws://") == 1
    assert "refresh failed" not in agent.log()


# --------------------------------------------------------------------------- URL policy


def test_register_refuses_unencrypted_public_gateways(project, tmp_path, workspace):
    config_path = tmp_path / "agent.json"
    env = agent_env(project, config_path)
    for url in ("http://kb.example.com", "ws://203.0.113.7:4000", "http://172.32.0.1"):
        refused = run_cli(
            "agent", "register", "--gateway", url, "--workspace", str(workspace),
            "--token", "whatever", "--json", project=project, env=env,
        )  # fmt: skip
        assert refused.returncode == 2, (url, refused.stdout, refused.stderr)
        assert json.loads(refused.stdout)["error"]["code"] == "INSECURE_URL"
        assert not config_path.exists()

    for url in (
        "https://kb.example.com",
        "wss://kb.example.com/",
        "http://localhost:4000",
        "ws://127.0.0.1",
        "http://10.1.2.3",
        "http://172.16.0.9",
        "http://192.168.1.10:4000",
        "http://[::1]:4000",
        "http://host.docker.internal:4000",
    ):
        assert check_gateway_url(url).startswith(("http://", "https://")), url
    assert check_gateway_url("wss://kb.example.com/") == "https://kb.example.com"
    assert check_gateway_url("http://kb.example.com", allow_insecure=True)
    with pytest.raises(InsecureUrlError):
        check_gateway_url("http://8.8.8.8")
    assert websocket_url("https://kb.example.com/gw") == "wss://kb.example.com/gw/hosts/connect"

    missing = run_cli(
        "agent", "register", "--gateway", "http://127.0.0.1:9", "--workspace",
        str(tmp_path / "nope"), "--token", "x", project=project, env=env,
    )  # fmt: skip
    assert missing.returncode == 2 and "not an existing directory" in missing.stderr
    shell = run_cli(
        "agent", "register", "--gateway", "http://127.0.0.1:9", "--workspace",
        str(workspace), "--token", "x", "--capability", "shell", project=project, env=env,
    )  # fmt: skip
    assert shell.returncode == 2 and "--allow-shell" in shell.stderr


def test_config_file_errors_are_clear(tmp_path, workspace):
    path = tmp_path / "agent.json"
    with pytest.raises(AgentConfigError, match="agent register"):
        load_config(path)
    path.write_text("[]")
    with pytest.raises(AgentConfigError, match="JSON object"):
        load_config(path)
    base = {
        "gatewayUrl": "http://127.0.0.1:1",
        "clientId": "clt_x",
        "clientSecret": "cs_" + "a" * 20,
        "hostId": "host_x",
        "name": "n",
        "workspacePaths": [str(tmp_path / "gone")],
    }
    path.write_text(json.dumps(base))
    with pytest.raises(AgentConfigError, match="not an existing directory"):
        load_config(path)
    path.write_text(json.dumps({**base, "workspacePaths": ["relative/dir"]}))
    with pytest.raises(AgentConfigError, match="absolute"):
        load_config(path)
    path.write_text(json.dumps({**base, "workspacePaths": []}))
    with pytest.raises(AgentConfigError, match="workspacePaths"):
        load_config(path)
    path.write_text(json.dumps({**base, "workspacePaths": [str(workspace)]}))
    config = load_config(path)
    assert config.capabilities == ["filesystem", "git", "search", "execution"]
    assert config.shell.enabled is False and config.shell.timeout_ms == 30000


# --------------------------------------------------------------------------- fake gateway


class FixedToken(TokenManager):
    """No HTTP: the fake gateway accepts any token."""

    def __init__(self, config: AgentConfig) -> None:
        super().__init__(config, http=None)  # type: ignore[arg-type]

    async def access_token(self) -> str:
        return "test-token"

    async def run_refresher(self) -> None:
        await asyncio.Event().wait()


def fake_config(workspace: Path, port: int) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "gatewayUrl": f"http://127.0.0.1:{port}",
            "clientId": "clt_fake",
            "clientSecret": "cs_" + "x" * 30,
            "hostId": "host_fake",
            "name": "fake",
            "workspacePaths": [str(workspace)],
        }
    )


def test_negotiate_is_fatal(workspace):
    async def main() -> None:
        async def handler(ws: ServerConnection) -> None:
            hello = p.parse(await ws.recv())
            assert isinstance(hello, p.Hello) and hello.protocol_version == "1.0"
            await ws.send(p.dump(p.Negotiate(supported_versions=["2.0"])))
            await ws.wait_closed()

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            config = fake_config(workspace, port)
            client = AgentClient(config, tokens=FixedToken(config))
            with pytest.raises(AgentFatal, match=r"supports 2\.0"):
                await asyncio.wait_for(client.run(), 10)

    asyncio.run(main())


def test_a_wrong_first_reply_is_a_failed_attempt_and_unknown_types_are_ignored(workspace):
    async def main() -> None:
        closes: list[int | None] = []
        answers: list[dict] = []
        hellos: list[p.Hello] = []
        done = asyncio.Event()

        async def handler(ws: ServerConnection) -> None:
            hello = p.parse(await ws.recv())
            assert isinstance(hello, p.Hello)
            hellos.append(hello)
            if len(hellos) == 1:  # first attempt: not `connected`
                await ws.send(json.dumps({"type": "ack"}))
                await ws.wait_closed()
                closes.append(ws.close_code)
                return
            await ws.send(p.dump(p.Connected(host_id="host_fake", session_id="s-2")))
            await ws.send(json.dumps({"type": "bulk-redirect", "whatever": 1}))
            call = p.Call(request_id="r1", adapter="filesystem", method="readFile", args=["x"])
            call.args = ["hello.txt"]
            await ws.send(p.dump(call))
            await ws.send(p.dump(p.Call(request_id="r2", adapter="nope", method="x")))
            while len(answers) < 3:
                message = json.loads(await ws.recv())
                if message["type"] != "heartbeat":
                    answers.append(message)
            done.set()
            await ws.wait_closed()
            closes.append(ws.close_code)

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            config = fake_config(workspace, port)
            client = AgentClient(
                config,
                tokens=FixedToken(config),
                heartbeat_s=0.2,
                backoff=Backoff(initial=0.05, maximum=0.1),
            )
            running = asyncio.create_task(client.run())
            await asyncio.wait_for(done.wait(), 10)
            client.stop()
            await asyncio.wait_for(running, 5)
            await asyncio.sleep(0)  # let the handler record the close

        assert closes == [1008, 1000]  # a wrong first reply; then stop() closes with 1000
        assert hellos[1].capabilities == ["filesystem", "git", "search", "execution"]
        assert hellos[1].agent_version and hellos[1].host_type == "local"
        by_type: dict[str, list[dict]] = {}
        for message in answers:
            by_type.setdefault(message["type"], []).append(message)
        assert by_type["chunk"] == [
            {"type": "chunk", "requestId": "r1", "index": 0, "data": "hello from the workspace\n"}
        ]
        assert by_type["result"][0]["requestId"] == "r1"
        assert by_type["error"][0]["requestId"] == "r2"
        assert by_type["error"][0]["error"]["code"] == "UNKNOWN_ADAPTER"
        assert answers.index(by_type["chunk"][0]) < answers.index(by_type["result"][0])

    asyncio.run(main())


def test_backoff_doubles_to_a_cap_with_jitter_and_resets():
    backoff = Backoff(rng=lambda: 0.5)  # no jitter at the midpoint
    assert [backoff.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    backoff.reset()
    assert backoff.next_delay() == 1
    low, high = Backoff(rng=lambda: 0.0), Backoff(rng=lambda: 1.0)
    assert low.next_delay() == pytest.approx(0.8) and high.next_delay() == pytest.approx(1.2)
