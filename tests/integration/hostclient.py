"""A raw protocol-1.0 host for tests: register, connect, say hello."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets

INTERNAL = "i" * 40
TIMINGS = {"helloTimeoutMs": 500, "reconnectGraceMs": 500, "degradedAfterMs": 800}


def register_host(server, **body) -> dict:
    body = {"name": "laptop", "capabilities": ["filesystem", "git"], **body}
    response = httpx.post(f"{server.url}/hosts/register", json=body, headers=server.auth)
    assert response.status_code == 201, response.text
    return response.json()


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/hosts/connect"


def connect(server, token: str):
    return websockets.connect(
        ws_url(server), additional_headers={"Authorization": f"Bearer {token}"}
    )


async def hello(ws, version: str = "1.0") -> dict:
    await ws.send(json.dumps({"type": "hello", "protocolVersion": version, "agentVersion": "t"}))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


def host(server, host_id: str) -> dict:
    return httpx.get(f"{server.url}/hosts/{host_id}", headers=server.auth).json()
