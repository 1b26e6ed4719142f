"""Identity end to end in-process: the route table, token lifecycle, limits, enrollment."""

from __future__ import annotations

import base64
import json
import re
import time
from contextlib import asynccontextmanager

import httpx
import jwt
import pytest
from starlette.routing import WebSocketRoute

from kblabs.app import create_app
from kblabs.auth.middleware import OPTIONAL_AUTH
from kblabs.http.openapi import walk_routes
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

PARAM = re.compile(r"{([^}:]+)(:path)?}")


@asynccontextmanager
async def running_app(project, **env):
    settings = make_settings(project, KB_DEBUG_ROUTES="1", **env)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app  # type: ignore[attr-defined]
            client.admin = {  # type: ignore[attr-defined]
                "Authorization": "Bearer " + (settings.data_dir / "admin.token").read_text().strip()
            }
            yield client


def websocket_refused(app, path: str) -> int | None:
    """The close code a WebSocket without credentials gets (None if it was served)."""
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    try:
        with TestClient(app).websocket_connect(path) as ws:
            ws.receive_text()
    except WebSocketDisconnect as closed:
        return closed.code
    return None


def concrete(template: str) -> str:
    return PARAM.sub(lambda m: "a/b" if m.group(2) else "x", template)


async def test_every_route_outside_the_allowlist_refuses_anonymous_callers(project):
    async with running_app(project) as client:
        public = client.app.state.public_paths
        checked = 0
        for template, route in walk_routes(client.app.routes):
            path = concrete(template)
            if isinstance(route, WebSocketRoute):
                assert websocket_refused(client.app, path) == 1008, template
                checked += 1
                continue
            for method in sorted((route.methods or set()) - {"HEAD"}):
                response = await client.request(method, path)
                if template in public:
                    continue
                checked += 1
                if template in OPTIONAL_AUTH:
                    assert response.status_code >= 400, (method, template)
                elif template.startswith("/internal/"):  # X-Internal-Secret, not a bearer
                    assert response.status_code == 403, (method, template)
                else:
                    assert response.status_code == 401, (method, template, response.text)
        assert checked >= 15
        for path in ("/api/v1/anything", "/nope", "/internal/dispatch"):
            assert (await client.get(path)).status_code in (401, 403), path


async def test_viewers_are_refused_operator_and_admin_actions(project):
    async with running_app(project) as client:
        viewer = await client.app.state.runtime.auth.create_api_key("v", "viewer", "default")
        headers = {"Authorization": f"Bearer {viewer['token']}"}
        guarded = 0
        for template, route in walk_routes(client.app.routes):
            role = getattr(getattr(route, "endpoint", None), "required_role", None)
            if role not in ("operator", "admin"):
                continue
            for method in sorted((route.methods or set()) - {"HEAD"}):
                response = await client.request(method, concrete(template), headers=headers)
                assert response.status_code == 403, (method, template, response.text)
                assert response.json()["error"]["code"] == "FORBIDDEN"
                guarded += 1
        assert guarded >= 8
        assert (await client.get("/api/v1/state/kv/x", headers=headers)).status_code == 404


async def register(client, **body) -> dict:
    response = await client.post(
        "/auth/register", json={"name": "laptop", **body}, headers=client.admin
    )
    assert response.status_code == 201, response.text
    return response.json()


async def token_pair(client, registered: dict) -> httpx.Response:
    return await client.post(
        "/auth/token",
        json={"clientId": registered["clientId"], "clientSecret": registered["clientSecret"]},
    )


async def test_token_lifecycle(project):
    async with running_app(project) as client:
        registered = await register(client, role="operator", namespaceId="team-a")
        assert registered["namespaceId"] == "team-a" and registered["role"] == "operator"
        assert registered["clientSecret"].startswith("cs_")
        pair = (await token_pair(client, registered)).json()
        assert pair["tokenType"] == "Bearer" and pair["expiresIn"] == 900
        claims = jwt.decode(pair["accessToken"], options={"verify_signature": False})
        assert {"sub", "namespaceId", "role", "type", "iat", "exp", "jti"} <= set(claims)
        assert claims["exp"] - claims["iat"] == 900 and claims["type"] == "access"
        bearer = {"Authorization": f"Bearer {pair['accessToken']}"}
        put = await client.put("/api/v1/state/kv/k", json={"value": 1}, headers=bearer)
        assert put.status_code == 200

        # the refresh token is not a bearer
        as_bearer = {"Authorization": f"Bearer {pair['refreshToken']}"}
        assert (await client.get("/api/v1/state/stats", headers=as_bearer)).status_code == 401

        rotated = await client.post("/auth/refresh", json={"refreshToken": pair["refreshToken"]})
        assert rotated.status_code == 200
        new_pair = rotated.json()
        assert new_pair["refreshToken"] != pair["refreshToken"]
        replay = await client.post("/auth/refresh", json={"refreshToken": pair["refreshToken"]})
        assert replay.status_code == 401
        after = await client.post("/auth/refresh", json={"refreshToken": new_pair["refreshToken"]})
        assert after.status_code == 401  # the whole family was revoked by the replay


async def test_bad_access_tokens_are_refused(project):
    async with running_app(project) as client:
        registered = await register(client)
        pair = (await token_pair(client, registered)).json()
        signer = client.app.state.runtime.auth.signer
        claims = jwt.decode(pair["accessToken"], options={"verify_signature": False})
        header = jwt.get_unverified_header(pair["accessToken"])
        expired = signer.issue({k: claims[k] for k in ("sub", "namespaceId", "role")}, ttl_s=-5)
        head, _body, sig = pair["accessToken"].split(".")
        forged_claims = {**claims, "role": "admin"}
        forged_body = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=")
        tampered = f"{head}.{forged_body.decode()}.{sig}"
        alg_none = jwt.encode(
            forged_claims, key=None, algorithm=None, headers={"kid": header["kid"]}
        )
        wrong_secret = jwt.encode(
            claims, "w" * 48, algorithm="HS256", headers={"kid": header["kid"]}
        )
        for token in (expired, tampered, alg_none, wrong_secret, "garbage", "a.b.c"):
            response = await client.get(
                "/api/v1/state/stats", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 401, token


async def test_revoking_a_client_stops_its_tokens(project):
    async with running_app(project) as client:
        registered = await register(client)
        pair = (await token_pair(client, registered)).json()
        bearer = {"Authorization": f"Bearer {pair['accessToken']}"}
        assert (await client.get("/api/v1/state/kv/x", headers=bearer)).status_code == 404
        revoked = await client.post(
            "/auth/revoke", json={"clientId": registered["clientId"]}, headers=client.admin
        )
        assert revoked.json() == {"revoked": True}
        assert (await client.get("/api/v1/state/kv/x", headers=bearer)).status_code == 401
        assert (await token_pair(client, registered)).status_code == 401
        refresh = await client.post("/auth/refresh", json={"refreshToken": pair["refreshToken"]})
        assert refresh.status_code == 401


async def test_registration_needs_admin_or_enrollment(project):
    async with running_app(project) as client:
        anonymous = await client.post("/auth/register", json={"name": "x"})
        assert anonymous.status_code == 401
        auth = client.app.state.runtime.auth
        viewer = await auth.create_api_key("v", "viewer", "default")
        as_viewer = await client.post(
            "/auth/register",
            json={"name": "x"},
            headers={"Authorization": f"Bearer {viewer['token']}"},
        )
        assert as_viewer.status_code == 403
        enrollment = await auth.create_enrollment("machine", None, 600, "laptop")
        enrolled = await client.post(
            "/auth/register",
            json={"name": "laptop", "namespaceId": "stolen"},
            headers={"X-Enrollment-Token": enrollment["token"]},
        )
        assert enrolled.status_code == 201
        assert enrolled.json()["namespaceId"].startswith("ns_")  # not the one asked for
        assert enrolled.json()["role"] == "machine"
        again = await client.post(
            "/auth/register",
            json={"name": "x"},
            headers={"X-Enrollment-Token": enrollment["token"]},
        )
        assert again.status_code == 401  # one-time


async def test_failed_logins_are_limited(project):
    async with running_app(project) as client:
        statuses = []
        for i in range(20):
            response = await client.post(
                "/auth/token", json={"clientId": f"clt_{i}", "clientSecret": "wrong"}
            )
            statuses.append(response.status_code)
        assert statuses[0] == 401
        assert statuses[-1] == 429
        limited = response
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "TOO_MANY_ATTEMPTS"
        same_client = [
            (
                await client.post(
                    "/auth/token",
                    json={"clientId": "c", "clientSecret": "x"},
                    headers={"X-Forwarded-For": str(i)},
                )
            ).status_code
            for i in range(7)
        ]
        assert 429 in same_client


async def test_secret_rotation_keeps_the_old_secret_for_the_grace_window(project):
    async with running_app(project) as client:
        registered = await register(client)
        auth = client.app.state.runtime.auth
        new_secret = await auth.rotate_client_secret(registered["clientId"])
        assert new_secret and new_secret != registered["clientSecret"]
        assert (await token_pair(client, registered)).status_code == 200  # old, in grace
        rotated = {**registered, "clientSecret": new_secret}
        assert (await token_pair(client, rotated)).status_code == 200


async def test_internal_routes_need_the_internal_secret(project, monkeypatch):
    async with running_app(project) as client:
        monkeypatch.delenv("GATEWAY_INTERNAL_SECRET", raising=False)
        unset = await client.post("/internal/dispatch", headers=client.admin)
        assert unset.status_code == 403
        monkeypatch.setenv("GATEWAY_INTERNAL_SECRET", "i" * 40)
        wrong = await client.post("/internal/dispatch", headers={"X-Internal-Secret": "nope"})
        assert wrong.status_code == 403
        right = await client.post(
            "/internal/dispatch",
            headers={"X-Internal-Secret": "i" * 40},
            json={"namespaceId": "default", "adapter": "git", "method": "status"},
        )
        assert right.status_code == 503  # past the gate: no host is connected
        assert right.json()["error"]["code"] == "NO_HOST"


def test_websockets_without_credentials_are_closed_with_1008(project):
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    settings = make_settings(project)
    app = create_app(settings)
    handled = []

    async def echo(websocket: WebSocket) -> None:
        handled.append(True)
        await websocket.accept()
        await websocket.close()

    app.router.routes.append(WebSocketRoute("/test-ws", echo))
    with TestClient(app) as client:
        with (
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect("/test-ws") as ws,
        ):
            ws.receive_text()
        assert closed.value.code == 1008
        bad = {"Authorization": "Bearer nope"}
        with (
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect("/test-ws", headers=bad) as ws,
        ):
            ws.receive_text()
        assert closed.value.code == 1008
        assert handled == []
        token = (settings.data_dir / "admin.token").read_text().strip()
        with client.websocket_connect(f"/test-ws?access_token={token}") as ws:
            pass
        assert handled == [True]


async def test_expired_enrollment_is_refused(project):
    async with running_app(project) as client:
        auth = client.app.state.runtime.auth
        enrollment = await auth.create_enrollment("viewer", "default", 1, "short")
        time.sleep(1.1)
        response = await client.post(
            "/auth/register",
            json={"name": "x"},
            headers={"X-Enrollment-Token": enrollment["token"]},
        )
        assert response.status_code == 401


async def test_forwarded_addresses_count_only_behind_a_trusted_proxy(project):
    (project / "kb.config.json").write_text(
        json.dumps({"server": {"trustedProxies": ["203.0.113.7"]}})
    )
    async with running_app(project) as client:
        body = {"clientId": "clt_x", "clientSecret": "wrong"}
        for i in range(12):  # 12 different clients behind the proxy: no shared lockout
            headers = {"X-Forwarded-For": f"198.51.100.{i}, 203.0.113.7"}
            response = await client.post(
                "/auth/token", json={**body, "clientId": f"c{i}"}, headers=headers
            )
            assert response.status_code == 401
        assert (await client.post("/auth/token", json=body)).status_code == 401


async def test_observers_below_operator_cannot_cancel_and_bad_frames_are_answered(project):
    from starlette.testclient import TestClient

    settings = make_settings(project)
    app = create_app(settings)
    with TestClient(app) as client:
        viewer = client.portal.call(app.state.runtime.auth.create_api_key, "v", "viewer", "default")
        headers = {"Authorization": f"Bearer {viewer['token']}"}
        with client.websocket_connect("/clients/connect", headers=headers) as ws:
            ws.send_json({"type": "client:hello"})
            assert ws.receive_json()["type"] == "client:connected"
            ws.send_text("not json")
            assert ws.receive_json()["code"] == "INVALID_MESSAGE"
            ws.send_json({"type": "client:cancel", "executionId": "nope"})
            assert ws.receive_json()["code"] == "EXECUTION_NOT_FOUND"
