"""Identity against real server processes and the real CLI: restarts, secrets, tools."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import base_env, run_cli

pytestmark = pytest.mark.live


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_identities_survive_a_restart(live_server_factory):
    server = live_server_factory().start()
    secret_before = (server.data_dir / "jwt.secret").read_text()
    registered = httpx.post(
        f"{server.url}/auth/register", json={"name": "laptop"}, headers=server.auth
    ).json()
    pair = httpx.post(
        f"{server.url}/auth/token",
        json={"clientId": registered["clientId"], "clientSecret": registered["clientSecret"]},
    ).json()
    assert server.stop() == 0

    again = live_server_factory().start()
    assert (again.data_dir / "jwt.secret").read_text() == secret_before
    kv = f"{again.url}/api/v1/state/kv/x"
    assert httpx.get(kv, headers=bearer(pair["accessToken"])).status_code == 404  # accepted
    assert httpx.get(kv, headers=again.auth).status_code == 404  # admin token too
    refreshed = httpx.post(f"{again.url}/auth/refresh", json={"refreshToken": pair["refreshToken"]})
    assert refreshed.status_code == 200
    token = httpx.post(
        f"{again.url}/auth/token",
        json={"clientId": registered["clientId"], "clientSecret": registered["clientSecret"]},
    )
    assert token.status_code == 200
    assert "generated a JWT signing secret" not in again.log()
    assert again.stop() == 0


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (None, "GATEWAY_JWT_SECRET is not set"),
        ("short", "at least 32"),
        ("dev-insecure-secret-change-me", "well-known default"),
    ],
)
def test_production_refuses_a_missing_or_weak_jwt_secret(live_server_factory, secret, message):
    env = {"KB_ENV": "production"}
    if secret is not None:
        env["GATEWAY_JWT_SECRET"] = secret
    server = live_server_factory(**env)
    server.start(wait=False)
    assert server.process.wait(timeout=30) == 1
    log = server.log()
    assert message in log and "auth" in log
    assert "Traceback" not in log


def test_development_generates_the_secret_once_and_warns(live_server_factory):
    first = live_server_factory().start()
    secret_file = first.data_dir / "jwt.secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert "generated a JWT signing secret" in first.log()
    assert first.stop() == 0


def test_cli_tokens_clients_and_revocation(live_server_factory, project):
    server = live_server_factory().start()
    env = base_env(project)
    token = run_cli("auth", "token", project=project, env=env)
    assert token.returncode == 0, token.stderr
    access = token.stdout.strip()
    kv = f"{server.url}/api/v1/state/kv/x"
    assert httpx.get(kv, headers=bearer(access)).status_code == 404

    created = json.loads(
        run_cli(
            "--json", "auth", "create-client", "ci", "--role", "viewer", project=project, env=env
        ).stdout
    )
    pair = httpx.post(
        f"{server.url}/auth/token",
        json={"clientId": created["clientId"], "clientSecret": created["clientSecret"]},
    ).json()
    assert httpx.get(kv, headers=bearer(pair["accessToken"])).status_code == 404
    assert (
        httpx.put(kv, json={"value": 1}, headers=bearer(pair["accessToken"])).status_code == 403
    )  # viewer

    listed = json.loads(run_cli("--json", "auth", "list", project=project, env=env).stdout)
    assert created["clientId"] in {c["client_id"] for c in listed["clients"]}
    assert all("secret_hash" not in c for c in listed["clients"])

    revoked = run_cli("auth", "revoke", "--client", created["clientId"], project=project, env=env)
    assert revoked.returncode == 0
    deadline = time.monotonic() + 10
    status = 404
    while status != 401 and time.monotonic() < deadline:
        status = httpx.get(kv, headers=bearer(pair["accessToken"])).status_code
        time.sleep(0.2)
    assert status == 401
    missing = run_cli("auth", "revoke", "--client", "clt_nope", project=project, env=env)
    assert missing.returncode == 1

    enroll = json.loads(run_cli("--json", "auth", "enroll", project=project, env=env).stdout)
    registered = httpx.post(
        f"{server.url}/auth/register",
        json={"name": "agent"},
        headers={"X-Enrollment-Token": enroll["token"]},
    )
    assert registered.status_code == 201
    assert server.stop() == 0
