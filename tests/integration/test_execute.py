"""/api/v1/execute, cancel and observers, and the platform facades, on a real server."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import base_env, run_cli
from tests.integration.hostclient import connect, hello, register_host
from tests.integration.test_agent import (
    SERVER_ENV,
    Agent,
    agent_env,
    register,
    start_agent,
    wait_for,
    wait_online,
)

pytestmark = [pytest.mark.live, pytest.mark.anyio]

EXAMPLE = Path(__file__).parents[2] / "examples" / "plugins" / "kb-hello"
BODY = {"pluginId": "@kb/demo", "handlerRef": "demo.handlers:run", "input": {"n": 1}}


async def stream_events(server, body=BODY):
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream(
            "POST", f"{server.url}/api/v1/execute", json=body, headers=server.auth
        ) as response,
    ):
        events = [json.loads(line) async for line in response.aiter_lines() if line]
        return response, events


async def execution_host(server, ws_behaviour):
    created = register_host(server, capabilities=["execution"])
    ws = await connect(server, created["machineToken"])
    await hello(ws)
    task = asyncio.create_task(ws_behaviour(ws))
    return ws, task


async def test_no_execution_host_is_503(server):
    response = httpx.post(f"{server.url}/api/v1/execute", json=BODY, headers=server.auth)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "NO_EXECUTION_HOST"
    bad = httpx.post(f"{server.url}/api/v1/execute", json={"pluginId": ""}, headers=server.auth)
    assert bad.status_code == 400


async def test_success_and_failure_streams(server):
    async def host(ws):
        for outcome in ("ok", "fail"):
            call = json.loads(await ws.recv())
            assert call["adapter"] == "execution" and call["method"] == "execute"
            assert call["args"][0]["pluginId"] == "@kb/demo"
            rid = call["requestId"]
            if outcome == "ok":
                await ws.send(
                    json.dumps(
                        {"type": "chunk", "requestId": rid, "index": 0, "data": {"answer": 42}}
                    )
                )
                await ws.send(json.dumps({"type": "result", "requestId": rid}))
            else:
                await ws.send(
                    json.dumps(
                        {
                            "type": "error",
                            "requestId": rid,
                            "error": {"code": "HANDLER_ERROR", "message": "boom"},
                        }
                    )
                )

    ws, task = await execution_host(server, host)
    response, events = await stream_events(server)
    assert response.headers["content-type"].startswith("application/x-ndjson")
    execution_id = response.headers["x-execution-id"]
    assert events == [
        {
            "type": "execution:done",
            "executionId": execution_id,
            "requestId": events[0]["requestId"],
            "exitCode": 0,
            "durationMs": events[0]["durationMs"],
            "metadata": {"result": {"answer": 42}},
        }
    ]
    _, failed = await stream_events(server)
    assert [e["type"] for e in failed] == ["execution:error", "execution:done"]
    assert failed[0]["code"] == "HANDLER_ERROR" and failed[1]["exitCode"] == 1
    await task
    await ws.close()


async def test_cancel_reaches_the_host_and_observers(server):
    seen_cancel = asyncio.get_running_loop().create_future()

    async def host(ws):
        call = json.loads(await ws.recv())
        cancel = json.loads(await ws.recv())
        seen_cancel.set_result((call["requestId"], cancel))

    ws, task = await execution_host(server, host)
    observer = await websockets.connect(
        server.url.replace("http://", "ws://") + "/clients/connect",
        additional_headers=server.auth,
    )
    await observer.send(json.dumps({"type": "client:hello", "clientVersion": "t"}))
    assert json.loads(await observer.recv())["type"] == "client:connected"
    await observer.send(json.dumps({"type": "client:subscribe", "executionId": "nope"}))
    assert json.loads(await observer.recv())["code"] == "EXECUTION_NOT_FOUND"
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream(
            "POST", f"{server.url}/api/v1/execute", json=BODY, headers=server.auth
        ) as response,
    ):
        execution_id = response.headers["x-execution-id"]  # headers come before events
        await observer.send(json.dumps({"type": "client:subscribe", "executionId": execution_id}))
        await asyncio.sleep(0.2)  # let the subscription land before the events exist
        async with httpx.AsyncClient() as other:
            cancelled = await other.post(
                f"{server.url}/api/v1/execute/{execution_id}/cancel",
                json={},
                headers=server.auth,
            )
        assert cancelled.json() == {
            "executionId": execution_id,
            "status": "cancelled",
            "reason": "user",
        }
        events = [json.loads(line) async for line in response.aiter_lines() if line]
    assert [e["type"] for e in events] == ["execution:cancelled", "execution:done"]
    assert events[0]["reason"] == "user" and events[1]["exitCode"] == 130
    observed = [json.loads(await asyncio.wait_for(observer.recv(), 5)) for _ in range(2)]
    assert observed == events
    request_id, cancel = await asyncio.wait_for(seen_cancel, 5)
    assert cancel == {"type": "cancel", "requestId": request_id, "reason": "cancelled"}
    again = httpx.post(
        f"{server.url}/api/v1/execute/{execution_id}/cancel", json={}, headers=server.auth
    )
    assert again.status_code == 404
    await observer.close()
    await task
    await ws.close()


async def test_platform_facades(server):
    url = f"{server.url}/platform/v1"
    assert httpx.post(f"{url}/nope/get", headers=server.auth).status_code == 404
    forbidden = httpx.post(f"{url}/cache/flushAll", headers=server.auth)
    assert (
        forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    )
    unavailable = httpx.post(f"{url}/llm/complete", json={"args": ["hi"]}, headers=server.auth)
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["code"] == "ADAPTER_UNAVAILABLE"
    put = httpx.post(f"{url}/cache/set", json={"args": ["k", {"v": 1}]}, headers=server.auth)
    assert put.json()["ok"] is True
    got = httpx.post(f"{url}/cache/get", json={"args": ["k"]}, headers=server.auth).json()
    assert got["result"] == {"v": 1} and "durationMs" in got
    llm = httpx.post(
        f"{server.url}/llm/v1/chat/completions", json={"model": "small"}, headers=server.auth
    )
    assert llm.status_code == 503 and llm.json()["error"]["type"] == "server_error"
    bad = httpx.post(f"{server.url}/telemetry/v1/ingest", json={"events": []}, headers=server.auth)
    assert bad.status_code == 400
    good = httpx.post(
        f"{server.url}/telemetry/v1/ingest",
        json={"events": [{"source": "cli", "type": "x"}]},
        headers=server.auth,
    )
    assert good.status_code == 200 and good.json()["accepted"] == 1  # into sqlite analytics


# --------------------------------------------------------------------------- a real host agent


@pytest.fixture
def host_agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.cleanup()


def host_project(tmp_path: Path) -> Path:
    """The agent's workspace: a KB Labs project of its own, with kb-hello linked."""
    root = tmp_path / "laptop-project"
    folder = root / "plugins" / "kb-hello"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    linked = run_cli("plugin", "link", str(folder), project=root, env=base_env(root))
    assert linked.returncode == 0, linked.stdout + linked.stderr
    return root


def hello_call(handler_ref: str, input=None, **extra) -> dict:
    return {"pluginId": "@kb-labs/hello", "handlerRef": handler_ref, "input": input, **extra}


async def test_a_real_agent_runs_the_handler_on_its_host(
    live_server_factory, project, tmp_path, host_agents
):
    server = live_server_factory(**SERVER_ENV).start()
    workspace = host_project(tmp_path)  # the server's own project has no plugin at all
    env = agent_env(project, tmp_path / "agent.json")
    host_id = register(server, project, env, workspace)["hostId"]
    agent = start_agent(host_agents, project, env, tmp_path)
    wait_online(server, host_id, agent)

    response, events = await stream_events(
        server, hello_call("kb_hello.steps:greet", {"name": "ada"})
    )
    assert response.status_code == 200
    assert [e["type"] for e in events] == ["execution:done"], events
    assert events[0]["exitCode"] == 0
    assert events[0]["metadata"] == {"result": {"greeting": "hello ada"}}
    assert events[0]["executionId"] == response.headers["x-execution-id"]

    # the manifest's permissions hold on the host: refused before the write
    _, denied = await stream_events(
        server, hello_call("kb_hello.handlers:save_greeting", {"body": {"name": "../x"}})
    )
    assert [e["type"] for e in denied] == ["execution:error", "execution:done"]
    assert denied[0]["code"] == "PERMISSION_DENIED" and denied[1]["exitCode"] == 1
    assert not (workspace / "x.txt").exists() and not (workspace / "greetings").exists()
    for body, code in (
        (hello_call("os:getcwd"), "HANDLER_NOT_FOUND"),
        ({"pluginId": "@kb-labs/nope", "handlerRef": "nope:run"}, "PLUGIN_NOT_FOUND"),
    ):
        _, failed = await stream_events(server, body)
        assert failed[0]["code"] == code, failed

    # cancel: the gateway tells the agent, and the handler on the host sees it
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream(
            "POST",
            f"{server.url}/api/v1/execute",
            json=hello_call("kb_hello.handlers:slow", {"query": {"ms": "30000"}}),
            headers=server.auth,
        ) as streaming,
    ):
        execution_id = streaming.headers["x-execution-id"]
        await asyncio.sleep(1.0)  # the call reaches the agent and the handler starts
        cancelled = await client.post(
            f"{server.url}/api/v1/execute/{execution_id}/cancel", json={}, headers=server.auth
        )
        assert cancelled.status_code == 200, cancelled.text
        tail = [json.loads(line) async for line in streaming.aiter_lines() if line]
    assert [e["type"] for e in tail] == ["execution:cancelled", "execution:done"]
    marker = workspace / ".kb" / "output" / "slow-cancelled"
    wait_for(marker.exists, 10, "the handler on the host to see the cancel")
    assert "cancelled by the gateway" in agent.log()
