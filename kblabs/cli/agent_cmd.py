"""`agent register|run|status`: the host agent on a developer's machine.

`register` trades an enrollment token (or an admin token) for client credentials and
stores them in ~/.kb/agent.json (KB_AGENT_CONFIG); `run` keeps the machine connected to
the gateway; `status` asks the gateway whether this host is online. See docs/agent.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from kblabs.cli.context import CliContext
from kblabs.errors import ExitCode

HEARTBEAT_ENV = "KB_AGENT_HEARTBEAT_S"
TOKEN_REFRESH_ENV = "KB_AGENT_TOKEN_REFRESH_S"
ENROLLMENT_ENV = "KB_AGENT_ENROLLMENT_TOKEN"
ADMIN_TOKEN_ENV = "KB_AGENT_ADMIN_TOKEN"
HTTP_TIMEOUT_S = 10.0


def register(commands) -> None:
    from kblabs.gateway.protocol import CAPABILITIES

    parser = commands.add_parser("agent", help="the host agent: register, run, status")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    reg = actions.add_parser("register", help="register this machine with a gateway")
    reg.add_argument("--gateway", required=True, metavar="URL", help="e.g. https://kb.example")
    reg.add_argument(
        "--workspace",
        action="append",
        required=True,
        dest="workspaces",
        metavar="DIR",
        help="a directory the gateway may reach (repeat for more)",
    )
    reg.add_argument("--name", help="host name shown by the gateway (default: hostname)")
    how = reg.add_mutually_exclusive_group()
    how.add_argument(
        "--enrollment-token",
        metavar="TOKEN",
        help=f"one-time token from `auth enroll` (or {ENROLLMENT_ENV})",
    )
    how.add_argument(
        "--token", metavar="ADMIN_TOKEN", help=f"an admin bearer token (or {ADMIN_TOKEN_ENV})"
    )
    reg.add_argument("--namespace", help="namespace to register in (admin token only)")
    reg.add_argument(
        "--capability",
        action="append",
        dest="capabilities",
        choices=list(CAPABILITIES),
        metavar="NAME",
        help="offer only these (default: filesystem git search execution)",
    )
    reg.add_argument(
        "--allow-shell", action="store_true", help="also offer shell.exec (runs commands!)"
    )
    reg.add_argument(
        "--allow-insecure-ws",
        action="store_true",
        help="accept plain http:// / ws:// to a public address",
    )
    reg.add_argument("--force", action="store_true", help="replace an existing configuration")
    _config_flag(reg)
    reg.set_defaults(handler=run_register)

    run = actions.add_parser("run", help="connect and serve calls until stopped")
    run.add_argument(
        "--heartbeat",
        type=float,
        metavar="SECONDS",
        help=f"heartbeat interval (default: {HEARTBEAT_ENV} or 30)",
    )
    _config_flag(run)
    run.set_defaults(handler=run_agent)

    status = actions.add_parser("status", help="is this host online at its gateway?")
    _config_flag(status)
    status.set_defaults(handler=run_status)


def _config_flag(parser) -> None:
    parser.add_argument(
        "--agent-config",
        metavar="PATH",
        help="agent configuration file (default: KB_AGENT_CONFIG or ~/.kb/agent.json)",
    )


def _path(ctx: CliContext) -> Path:
    from kblabs.agent.config import config_path

    given = getattr(ctx.args, "agent_config", None)
    return Path(given).expanduser() if given else config_path()


# --------------------------------------------------------------------------- register


def run_register(ctx: CliContext) -> ExitCode:
    import httpx

    from kblabs.agent.client import error_text
    from kblabs.agent.config import (
        DEFAULT_CAPABILITIES,
        AgentConfig,
        check_gateway_url,
        save_config,
        valid_secret,
    )

    args, out = ctx.args, ctx.output
    path = _path(ctx)
    if path.exists() and not args.force:
        out.failure(
            f"{path} already exists (this machine is registered); pass --force to replace it",
            code="ALREADY_REGISTERED",
        )
        return ExitCode.FAILURE
    try:
        gateway = check_gateway_url(args.gateway, args.allow_insecure_ws)
    except ValueError as exc:  # InsecureUrlError is one
        out.failure(str(exc), code="INSECURE_URL" if "refusing" in str(exc) else "USAGE")
        return ExitCode.USAGE
    workspaces: list[str] = []
    for raw in args.workspaces:
        folder = Path(raw).expanduser().resolve()
        if not folder.is_dir():
            out.failure(f"workspace is not an existing directory: {raw}", code="USAGE")
            return ExitCode.USAGE
        workspaces.append(str(folder))
    capabilities = list(args.capabilities or DEFAULT_CAPABILITIES)
    if "shell" in capabilities and not args.allow_shell:
        out.failure("the shell capability needs --allow-shell", code="USAGE")
        return ExitCode.USAGE
    if args.allow_shell:
        capabilities.append("shell")
    capabilities = list(dict.fromkeys(capabilities))
    name = (args.name or socket.gethostname() or "agent")[:64]

    enrollment = args.enrollment_token or (None if args.token else os.environ.get(ENROLLMENT_ENV))
    admin = args.token or (None if enrollment else os.environ.get(ADMIN_TOKEN_ENV))
    headers: dict[str, str] = {}
    if enrollment:
        headers["X-Enrollment-Token"] = enrollment
    elif admin:
        headers["Authorization"] = f"Bearer {admin}"
    else:
        out.failure(
            "give --enrollment-token (from `python -m kblabs auth enroll`) or --token "
            "(an admin token)",
            code="USAGE",
        )
        return ExitCode.USAGE
    body: dict[str, Any] = {"name": name, "capabilities": capabilities}
    if args.namespace:
        body["namespaceId"] = args.namespace

    url = f"{gateway}/auth/register"
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=HTTP_TIMEOUT_S)
    except httpx.HTTPError as exc:
        out.failure(f"cannot reach {url}: {type(exc).__name__}: {exc}", code="UNREACHABLE")
        return ExitCode.UNREACHABLE
    if response.status_code != 201:
        out.failure(
            f"registration refused: {error_text(response)} (HTTP {response.status_code})",
            code="REGISTER_FAILED",
        )
        return ExitCode.FAILURE
    try:
        created = response.json()
        client_id, secret = str(created["clientId"]), str(created["clientSecret"])
        host_id, namespace = str(created["hostId"]), str(created["namespaceId"])
        role = created.get("role", "machine")
    except (ValueError, KeyError, TypeError):
        out.failure(f"{url} did not answer with client credentials", code="REGISTER_FAILED")
        return ExitCode.FAILURE
    if role != "machine":
        out.failure(
            f"the gateway registered a {role!r} client, but an agent needs the machine role "
            "(ask for `auth enroll --role machine`)",
            code="REGISTER_FAILED",
        )
        return ExitCode.FAILURE
    if not valid_secret(secret):
        out.failure("the gateway returned a malformed client secret", code="REGISTER_FAILED")
        return ExitCode.FAILURE

    config = AgentConfig.model_validate(
        {
            "gatewayUrl": gateway,
            "clientId": client_id,
            "clientSecret": secret,
            "hostId": host_id,
            "namespaceId": namespace,
            "name": name,
            "workspacePaths": workspaces,
            "capabilities": capabilities,
            "shell": {"enabled": bool(args.allow_shell)},
            "allowInsecureWs": bool(args.allow_insecure_ws),
        }
    )
    save_config(config, path)
    payload = {
        "ok": True,
        "hostId": host_id,
        "clientId": client_id,
        "namespaceId": namespace,
        "name": name,
        "gatewayUrl": gateway,
        "capabilities": capabilities,
        "workspacePaths": workspaces,
        "configPath": str(path),
    }
    out.result(
        payload,
        lambda c: c.print(
            f"registered host {host_id} ({name}) in namespace {namespace}\n"
            f"credentials saved to {path} (mode 0600)\n"
            f"capabilities: {', '.join(capabilities)}\n"
            "start it with: python -m kblabs agent run"
        ),
    )
    return ExitCode.OK


# --------------------------------------------------------------------------- run


def _agent_logging(level: str | None) -> None:
    """One short line per event on stderr (journald adds its own timestamps)."""
    from loguru import logger

    from kblabs.observability.logging import LOGURU_LEVELS

    logger.remove()
    chosen = (level or "info").lower()
    chosen = {"warn": "warning", "fatal": "critical"}.get(chosen, chosen)
    if chosen != "silent":
        logger.add(
            sys.stderr,
            level=LOGURU_LEVELS[chosen],
            format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {message}",
        )


def _seconds(flag: float | None, env: str, default: float | None) -> float | None:
    if flag is not None:
        return flag
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{env} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{env} must be positive")
    return value


def run_agent(ctx: CliContext) -> ExitCode:
    from kblabs.agent.client import AgentClient, AgentFatal
    from kblabs.agent.config import AgentConfigError, check_gateway_url, load_config

    out = ctx.output
    _agent_logging(ctx.args.log_level)
    try:
        config = load_config(_path(ctx))
        check_gateway_url(config.gateway_url, config.allow_insecure_ws)
        heartbeat = _seconds(ctx.args.heartbeat, HEARTBEAT_ENV, 30.0)
        refresh = _seconds(None, TOKEN_REFRESH_ENV, None)
    except AgentConfigError as exc:
        out.failure(exc.message, code="AGENT_CONFIG")
        return ExitCode.USAGE
    except ValueError as exc:
        out.failure(str(exc), code="USAGE")
        return ExitCode.USAGE
    assert heartbeat is not None
    if heartbeat <= 0:
        out.failure("--heartbeat must be positive", code="USAGE")
        return ExitCode.USAGE

    async def main() -> None:
        client = AgentClient(config, heartbeat_s=heartbeat, token_refresh_s=refresh)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, client.stop)
        try:
            await client.run()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    try:
        asyncio.run(main())
    except AgentFatal as exc:
        out.failure(str(exc), code="AGENT_FATAL")
        return ExitCode.FAILURE
    except (OSError, ValueError) as exc:  # a workspace that vanished, and the like
        out.failure(f"cannot start the agent: {exc}", code="AGENT_CONFIG")
        return ExitCode.USAGE
    return ExitCode.OK


# --------------------------------------------------------------------------- status


def run_status(ctx: CliContext) -> ExitCode:
    import httpx

    from kblabs.agent.client import (
        CredentialsRejected,
        TransientError,
        check_token_response,
        error_text,
        token_request,
    )
    from kblabs.agent.config import AgentConfigError, load_config

    out = ctx.output
    path = _path(ctx)
    try:
        config = load_config(path)
    except AgentConfigError as exc:
        out.failure(exc.message, code="AGENT_CONFIG", configPath=str(path))
        return ExitCode.USAGE
    gateway = config.gateway_url
    report: dict[str, Any] = {
        "gatewayUrl": gateway,
        "hostId": config.host_id,
        "name": config.name,
        "namespaceId": config.namespace_id,
        "configPath": str(path),
    }
    with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
        try:
            ready = http.get(f"{gateway}/ready")
            report["gatewayReady"] = ready.status_code == 200
            url, body = token_request(config)
            pair = check_token_response(http.post(url, json=body))
            host = http.get(
                f"{gateway}/hosts/{config.host_id}",
                headers={"Authorization": f"Bearer {pair.access_token}"},
            )
            # this pair was only for the look-up: end its session at once
            with contextlib.suppress(httpx.HTTPError):
                http.post(f"{gateway}/auth/revoke", json={"token": pair.refresh_token})
        except httpx.HTTPError as exc:
            out.failure(
                f"cannot reach the gateway {gateway}: {type(exc).__name__}: {exc}",
                code="UNREACHABLE",
                **report,
            )
            return ExitCode.UNREACHABLE
        except CredentialsRejected as exc:
            out.failure(str(exc), code="CREDENTIALS_REJECTED", **report)
            return ExitCode.USAGE
        except TransientError as exc:
            out.failure(str(exc), code="NOT_READY", **report)
            return ExitCode.NOT_READY
    if host.status_code == 200:
        described = host.json()
        report.update(
            status=described.get("status", "unknown"),
            lastSeen=described.get("lastSeen"),
            connections=len(described.get("connections") or []),
            capabilities=described.get("capabilities"),
        )
    elif host.status_code == 404:
        report.update(status="unknown", lastSeen=None, connections=0)
        report["message"] = "the gateway has not seen this host yet (never connected)"
    else:
        out.failure(f"GET /hosts/{config.host_id}: {error_text(host)}", code="NOT_READY", **report)
        return ExitCode.NOT_READY
    online = report["status"] == "online"
    out.result({"ok": online, **report}, lambda c: _print_status(c, report))
    return ExitCode.OK if online else ExitCode.NOT_READY


def _print_status(console, report: dict[str, Any]) -> None:
    colour = "green" if report["status"] == "online" else "yellow"
    ready = "ready" if report.get("gatewayReady") else "not ready"
    console.print(
        f"host     {report['hostId']} ({report['name']}, namespace {report['namespaceId']})\n"
        f"gateway  {report['gatewayUrl']} ({ready})\n"
        f"status   [{colour}]{report['status']}[/{colour}]"
        f" (last seen {report.get('lastSeen') or 'never'},"
        f" {report.get('connections', 0)} connection(s))",
        markup=True,
    )
    if report.get("message"):
        console.print(report["message"])
