"""The host registry and protocol 1.0 on /hosts/connect, with a raw WebSocket client."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest
import websockets

from tests.integration.hostclient import (
    INTERNAL,
    TIMINGS,
    connect,
    hello,
    host,
    register_host,
)

pytestmark = [pytest.mark.live, pytest.mark.anyio]


async def wait_status(server, host_id: str, wanted: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = host(server, host_id)["status"]
        if status == wanted:
            return status
        await asyncio.sleep(0.05)
    return status


def dispatch(server, **body) -> httpx.Response:
    body = {"namespaceId": "default", **body}
    return httpx.post(
        f"{server.url}/internal/dispatch",
        json=body,
        headers={"X-Internal-Secret": INTERNAL},
        timeout=30,
    )


async def test_register_list_get_delete(server):
    created = register_host(server, workspacePaths=["/tmp"])
    assert created["status"] == "offline" and created["hostId"].startswith("host_")
    listed = httpx.get(f"{server.url}/hosts", headers=server.auth).json()["hosts"]
    assert [h["hostId"] for h in listed] == [created["hostId"]]
    assert listed[0]["capabilities"] == ["filesystem", "git"]
    bad = httpx.post(
        f"{server.url}/hosts/register",
        json={"name": "x", "capabilities": ["tv"]},
        headers=server.auth,
    )
    assert bad.status_code == 400
    assert httpx.post(f"{server.url}/hosts/register", json={"name": "x"}).status_code == 401
    deleted = httpx.delete(f"{server.url}/hosts/{created['hostId']}", headers=server.auth)
    assert deleted.status_code == 204
    assert (
        httpx.get(f"{server.url}/hosts/{created['hostId']}", headers=server.auth).status_code == 404
    )
    async with connect(server, created["machineToken"]) as ws:  # its token is revoked
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1008


async def test_handshake_heartbeat_and_status(server):
    created = register_host(server)
    async with connect(server, created["machineToken"]) as ws:
        connected = await hello(ws)
        assert connected["type"] == "connected" and connected["hostId"] == created["hostId"]
        assert connected["protocolVersion"] == "1.0"
        assert host(server, created["hostId"])["status"] == "online"
        await ws.send(json.dumps({"type": "heartbeat"}))
        assert json.loads(await ws.recv()) == {"type": "ack"}
        await ws.send(json.dumps({"type": "mystery"}))  # ignored
        await ws.send("not json")  # logged, ignored
        assert await wait_status(server, created["hostId"], "degraded") == "degraded"
        await ws.send(json.dumps({"type": "heartbeat"}))
        assert json.loads(await ws.recv()) == {"type": "ack"}
        assert host(server, created["hostId"])["status"] == "online"  # heartbeat clears it
    assert await wait_status(server, created["hostId"], "reconnecting", 2) in (
        "reconnecting",
        "offline",
    )
    assert await wait_status(server, created["hostId"], "offline") == "offline"
    assert host(server, created["hostId"])["lastSeen"].endswith("Z")


@pytest.mark.parametrize("case", ["timeout", "invalid", "version", "not-machine"])
async def test_bad_handshakes_are_closed_with_1008(server, case):
    token = server.token if case == "not-machine" else register_host(server)["machineToken"]
    async with connect(server, token) as ws:
        if case == "invalid":
            await ws.send(json.dumps({"type": "heartbeat"}))
        elif case == "version":
            await ws.send(json.dumps({"type": "hello", "protocolVersion": "9.9"}))
            assert json.loads(await ws.recv()) == {
                "type": "negotiate",
                "supportedVersions": ["1.0"],
            }
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 1008


async def test_calls_results_errors_and_chunks(server):
    created = register_host(server)
    async with connect(server, created["machineToken"]) as ws:
        await hello(ws)

        async def answer():
            for reply in ("one", "many", "error"):
                call = json.loads(await ws.recv())
                assert call["type"] == "call" and call["adapter"] == "filesystem"
                rid = call["requestId"]
                if reply == "one":
                    frames = [{"type": "chunk", "requestId": rid, "index": 0, "data": "hi"}]
                elif reply == "many":
                    frames = [
                        {"type": "chunk", "requestId": rid, "index": i, "data": i} for i in range(3)
                    ]
                else:
                    frames = [
                        {
                            "type": "error",
                            "requestId": rid,
                            "error": {"code": "ACCESS_DENIED", "message": "access denied: ../x"},
                        }
                    ]
                if reply != "error":
                    frames.append({"type": "result", "requestId": rid, "done": True})
                for frame in frames:
                    await ws.send(json.dumps(frame))

        answering = asyncio.create_task(answer())
        first = await asyncio.to_thread(
            dispatch, server, adapter="filesystem", method="readFile", args=["a"]
        )
        assert first.status_code == 200 and first.json()["result"] == "hi"
        second = await asyncio.to_thread(dispatch, server, adapter="filesystem", method="listDir")
        assert second.json()["result"] == [0, 1, 2]
        third = await asyncio.to_thread(
            dispatch, server, adapter="filesystem", method="readFile", args=["../x"]
        )
        assert third.status_code == 403 and third.json()["error"]["code"] == "ACCESS_DENIED"
        await answering


async def test_a_call_fails_at_once_when_the_host_goes_away(server):
    created = register_host(server)
    ws = await connect(server, created["machineToken"])
    await hello(ws)
    pending = asyncio.create_task(
        asyncio.to_thread(
            dispatch, server, adapter="git", method="status", hostId=created["hostId"]
        )
    )
    call = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert call["type"] == "call"
    closed_at = time.monotonic()
    await ws.close()
    response = await pending
    assert time.monotonic() - closed_at < 1.0
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "HOST_DISCONNECTED"


async def test_call_timeout_tells_the_host_to_cancel(server):
    created = register_host(server)
    async with connect(server, created["machineToken"]) as ws:
        await hello(ws)
        pending = asyncio.create_task(
            asyncio.to_thread(dispatch, server, adapter="git", method="log", timeoutMs=300)
        )
        call = json.loads(await asyncio.wait_for(ws.recv(), 5))
        cancel = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert cancel == {"type": "cancel", "requestId": call["requestId"], "reason": "timeout"}
        response = await pending
        assert response.status_code == 504 and response.json()["error"]["code"] == "CALL_TIMEOUT"


async def test_a_reconnect_is_never_removed_by_the_old_socket_closing(server):
    created = register_host(server)
    old = await connect(server, created["machineToken"])
    await hello(old)
    async with connect(server, created["machineToken"]) as new:
        await hello(new)
        assert len(host(server, created["hostId"])["connections"]) == 2
        await old.close()
        deadline = time.monotonic() + 5
        while len(host(server, created["hostId"])["connections"]) != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert host(server, created["hostId"])["status"] == "online"
        pending = asyncio.create_task(
            asyncio.to_thread(dispatch, server, adapter="git", method="status")
        )
        call = json.loads(await asyncio.wait_for(new.recv(), 5))  # the newer socket gets it
        await new.send(json.dumps({"type": "result", "requestId": call["requestId"]}))
        assert (await pending).json()["result"] is None


async def test_hosts_survive_a_restart_as_offline(live_server_factory, project):
    (project / "kb.config.json").write_text(json.dumps({"gateway": TIMINGS}))
    first = live_server_factory().start()
    created = register_host(first)
    async with connect(first, created["machineToken"]) as ws:
        await hello(ws)
        assert await asyncio.to_thread(first.stop) == 0  # the loop must answer the close
    second = live_server_factory()
    second.port = first.port
    second.start()
    assert host(second, created["hostId"])["status"] == "offline"
    async with connect(second, created["machineToken"]) as ws:  # machine token survived
        assert (await hello(ws))["type"] == "connected"


async def test_draining_closes_tunnels_so_stop_is_quick(server):
    created = register_host(server)
    async with connect(server, created["machineToken"]) as ws:
        await hello(ws)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 1012
        assert await asyncio.to_thread(server.process.wait, 20) == 0
    assert time.monotonic() - started < 10  # not the 30 s graceful timeout


async def test_capabilities_declared_at_registration_win_over_hello(server):
    registered = httpx.post(
        f"{server.url}/auth/register",
        json={"name": "agent", "capabilities": ["git"]},
        headers=server.auth,
    ).json()
    pair = httpx.post(
        f"{server.url}/auth/token",
        json={"clientId": registered["clientId"], "clientSecret": registered["clientSecret"]},
    ).json()
    async with connect(server, pair["accessToken"]) as ws:
        await ws.send(
            json.dumps(
                {"type": "hello", "protocolVersion": "1.0", "capabilities": ["filesystem", "shell"]}
            )
        )
        assert json.loads(await ws.recv())["type"] == "connected"
        assert host(server, registered["hostId"])["capabilities"] == ["git"]
        refused = dispatch(server, adapter="filesystem", method="readFile", args=["x"])
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "NO_HOST"
