"""`auth token|create-client|create-key|enroll|list|revoke|rotate-secret`: operator tools.

They work on the store directly (the server need not run, and a running server sees
changes within seconds), with the same signing secret the server uses.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from kblabs.cli.context import CliContext
from kblabs.config import Settings
from kblabs.errors import ExitCode, StartupError

ROLES = ["viewer", "operator", "admin", "machine"]
CLI_CLIENT_FILE = "cli-client.id"


def register(commands) -> None:
    parser = commands.add_parser("auth", help="tokens, clients, keys and enrollments")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    token = actions.add_parser("token", help="print a 15-minute admin access token")
    token.set_defaults(handler=run_token)

    client = actions.add_parser("create-client", help="a client id and secret (shown once)")
    client.add_argument("name")
    client.add_argument("--role", choices=ROLES, default="machine")
    client.add_argument("--namespace", default="default")
    client.add_argument("--capability", action="append", default=[], dest="capabilities")
    client.set_defaults(handler=run_create_client)

    key = actions.add_parser("create-key", help="a long-lived API key (shown once)")
    key.add_argument("label")
    key.add_argument("--role", choices=ROLES, default="viewer")
    key.add_argument("--namespace", default="default")
    key.set_defaults(handler=run_create_key)

    enroll = actions.add_parser("enroll", help="a one-time token to register a machine")
    enroll.add_argument("--role", choices=ROLES, default="machine")
    enroll.add_argument(
        "--namespace", default="default", help='namespace of the new client ("" to generate one)'
    )
    enroll.add_argument("--ttl", type=int, default=3600, metavar="SECONDS")
    enroll.add_argument("--note", default="")
    enroll.set_defaults(handler=run_enroll)

    actions.add_parser("list", help="clients, API keys, enrollments").set_defaults(handler=run_list)

    revoke = actions.add_parser("revoke", help="revoke a client or an API key")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--client", metavar="CLIENT_ID")
    target.add_argument("--key", metavar="KEY_ID")
    revoke.set_defaults(handler=run_revoke)

    rotate = actions.add_parser(
        "rotate-secret",
        help="new client secret (old one kept for a grace window), or a new JWT signing secret",
    )
    which = rotate.add_mutually_exclusive_group(required=True)
    which.add_argument("--client", metavar="CLIENT_ID")
    which.add_argument("--jwt", action="store_true")
    rotate.set_defaults(handler=run_rotate)


@asynccontextmanager
async def auth_service(settings: Settings):
    from prometheus_client import CollectorRegistry

    from kblabs.auth.service import AuthService
    from kblabs.state.service import StateBroker
    from kblabs.store import Store

    store = Store(settings, migrate=False, record_boot=False)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    await store.start()  # refuses a database that is behind: run `migrate upgrade`
    state = StateBroker(
        settings.model_copy(update={"platform": type(settings.platform)()}), CollectorRegistry()
    )
    service = AuthService(settings, store, state)
    try:
        await service.start()
        yield service
    finally:
        await service.stop()
        await store.stop()


def _run(
    ctx: CliContext,
    work: Callable[[Any], Awaitable[dict[str, Any]]],
    human: Callable[[Any, dict[str, Any]], None],
) -> ExitCode:
    settings = ctx.settings()

    async def main() -> dict[str, Any]:
        async with auth_service(settings) as service:
            return await work(service)

    try:
        payload = asyncio.run(main())
    except StartupError as exc:
        ctx.output.failure(str(exc), code="STARTUP_FAILED")
        return ExitCode.FAILURE
    if not payload.pop("ok", True):
        ctx.output.failure(payload["message"], code=payload["code"])
        return ExitCode.FAILURE
    ctx.output.result({"ok": True, **payload}, lambda console: human(console, payload))
    return ExitCode.OK


def run_token(ctx: CliContext) -> ExitCode:
    async def work(service) -> dict[str, Any]:
        client_id = await _cli_client(service)
        client = await service.db.client(client_id)
        return {
            "accessToken": service.signer.issue(
                {
                    "sub": client_id,
                    "namespaceId": client["namespace_id"],
                    "role": client["role"],
                    "hostId": client["host_id"],
                }
            ),
            "expiresIn": 900,
            "tokenType": "Bearer",
        }

    return _run(ctx, work, lambda console, p: console.print(p["accessToken"]))


async def _cli_client(service) -> str:
    """The admin client the CLI mints tokens for, created on first use."""
    path = service.settings.data_dir / CLI_CLIENT_FILE
    if path.is_file():
        client_id = path.read_text().strip()
        row = await service.db.client(client_id)
        if row is not None and row["revoked_at"] is None:
            return client_id
    created = await service.create_client("kblabs-cli", "default", "admin", [])
    path.unlink(missing_ok=True)
    from kblabs.datadir import write_secret_file

    write_secret_file(path, created["clientId"])
    return created["clientId"]


def run_create_client(ctx: CliContext) -> ExitCode:
    args = ctx.args

    async def work(service) -> dict[str, Any]:
        return await service.create_client(args.name, args.namespace, args.role, args.capabilities)

    def human(console, p: dict[str, Any]) -> None:
        console.print(
            f"clientId      {p['clientId']}\nclientSecret  {p['clientSecret']}\n"
            f"hostId        {p['hostId']}\nnamespaceId   {p['namespaceId']}\n"
            f"role          {p['role']}\n(the secret is shown only now)"
        )

    return _run(ctx, work, human)


def run_create_key(ctx: CliContext) -> ExitCode:
    args = ctx.args

    async def work(service) -> dict[str, Any]:
        return await service.create_api_key(args.label, args.role, args.namespace)

    return _run(
        ctx,
        work,
        lambda c, p: c.print(
            f"keyId {p['keyId']} ({p['role']}, {p['namespaceId']})\n{p['token']}\n"
            "(the key is shown only now)"
        ),
    )


def run_enroll(ctx: CliContext) -> ExitCode:
    args = ctx.args

    async def work(service) -> dict[str, Any]:
        return await service.create_enrollment(
            args.role, args.namespace or None, args.ttl, args.note
        )

    return _run(
        ctx,
        work,
        lambda c, p: c.print(
            f"{p['token']}\n(one use, {p['role']}, expires {p['expiresAt']}; send it as the "
            "X-Enrollment-Token header of POST /auth/register)"
        ),
    )


def run_list(ctx: CliContext) -> ExitCode:
    async def work(service) -> dict[str, Any]:
        clients = [
            {k: v for k, v in c.items() if "secret" not in k} for c in await service.db.clients()
        ]
        return {
            "clients": clients,
            "keys": await service.db.api_keys(),
            "enrollments": await service.db.enrollments(),
        }

    def human(console, p: dict[str, Any]) -> None:
        from rich.table import Table

        for title, rows, columns in (
            ("clients", p["clients"], ["client_id", "name", "role", "namespace_id", "revoked_at"]),
            ("API keys", p["keys"], ["key_id", "label", "role", "namespace_id", "revoked_at"]),
            (
                "enrollments",
                p["enrollments"],
                ["enrollment_id", "role", "namespace_id", "expires_at", "used_at"],
            ),
        ):
            table = Table(*columns, title=title, title_justify="left", box=None)
            for row in rows:
                table.add_row(*[str(row.get(c) or "-") for c in columns])
            console.print(table)

    return _run(ctx, work, human)


def run_revoke(ctx: CliContext) -> ExitCode:
    args = ctx.args

    async def work(service) -> dict[str, Any]:
        if args.client:
            done = await service.revoke_client(args.client)
            target = f"client {args.client}"
        else:
            done = await service.revoke_api_key(args.key)
            target = f"key {args.key}"
        if not done:
            return {"ok": False, "code": "NOT_FOUND", "message": f"no active {target}"}
        return {"revoked": target}

    return _run(
        ctx,
        work,
        lambda c, p: c.print(
            f"revoked {p['revoked']} (a running server stops accepting it within 5 s)"
        ),
    )


def run_rotate(ctx: CliContext) -> ExitCode:
    args = ctx.args
    if args.jwt:
        return _rotate_jwt(ctx)

    async def work(service) -> dict[str, Any]:
        secret = await service.rotate_client_secret(args.client)
        if secret is None:
            return {"ok": False, "code": "NOT_FOUND", "message": f"no active client {args.client}"}
        grace = service.settings.auth.secret_rotation_grace_s
        return {"clientId": args.client, "clientSecret": secret, "previousValidForS": grace}

    return _run(
        ctx,
        work,
        lambda c, p: c.print(
            f"new secret for {p['clientId']}:\n{p['clientSecret']}\n(the old secret keeps "
            f"working for {p['previousValidForS']} s)"
        ),
    )


def _rotate_jwt(ctx: CliContext) -> ExitCode:
    import os

    from kblabs.auth.signing import rotate_development_secret

    settings = ctx.settings()
    if os.environ.get("GATEWAY_JWT_SECRET") or os.environ.get("KB_JWT_SECRET"):
        fresh = secrets.token_urlsafe(48)
        message = (
            "GATEWAY_JWT_SECRET comes from the environment: set\n"
            f"  GATEWAY_JWT_SECRET={fresh}\n"
            "  GATEWAY_JWT_SECRET_PREVIOUS=<the current value>\n"
            "and restart; tokens signed with the previous secret keep working until they "
            "expire (15 min). Remove GATEWAY_JWT_SECRET_PREVIOUS afterwards."
        )
        ctx.output.result(
            {"ok": True, "newSecret": fresh, "instructions": message}, lambda c: c.print(message)
        )
        return ExitCode.OK
    rotate_development_secret(settings.data_dir)
    message = (
        f"new signing secret in {settings.data_dir / 'jwt.secret'}; the old one is "
        "kept as jwt.secret.previous. Restart the server to sign with the new one."
    )
    ctx.output.result({"ok": True, "message": message}, lambda c: c.print(message))
    return ExitCode.OK
