"""`status`: ask a running server whether it is ready (GET /ready)."""

from __future__ import annotations

import os
import time

from kblabs.cli.context import CliContext
from kblabs.errors import ExitCode

POLL_INTERVAL_S = 0.25


def register(commands) -> None:
    parser = commands.add_parser("status", help="is the server up and ready?")
    parser.add_argument("--url", help="server URL (default: KB_GATEWAY_URL or the config)")
    parser.add_argument("--wait", action="store_true", help="wait until ready")
    parser.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="how long --wait waits (60)"
    )
    parser.set_defaults(handler=run)


def server_url(ctx: CliContext) -> str:
    if ctx.args.url:
        return ctx.args.url.rstrip("/")
    settings = ctx.settings()  # also exports the project's .env
    if os.environ.get("KB_GATEWAY_URL"):
        return os.environ["KB_GATEWAY_URL"].rstrip("/")
    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.server.port}"


NO_ANSWER = 0  # connected, but no answer in time: a server that is still starting up


def probe(url: str) -> tuple[int | None, dict, str]:
    """(HTTP status, NO_ANSWER, or None when unreachable; body; error text)."""
    import httpx

    try:
        response = httpx.get(f"{url}/ready", timeout=5.0)
    except (httpx.ReadTimeout, httpx.RemoteProtocolError) as exc:
        return NO_ANSWER, {}, f"connected but no answer ({type(exc).__name__}); starting up?"
    except httpx.HTTPError as exc:
        return None, {}, f"{type(exc).__name__}: {exc}"
    try:
        body = response.json()
    except ValueError:
        body = {}
    return response.status_code, body, ""


def run(ctx: CliContext) -> ExitCode:
    url = server_url(ctx)
    deadline = time.monotonic() + max(ctx.args.timeout, 0)
    while True:
        status, body, error = probe(url)
        ready = status == 200 and body.get("ready") is True
        if ready or not ctx.args.wait or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    if status is None:
        ctx.output.failure(f"cannot reach {url}: {error}", code="UNREACHABLE", url=url)
        return ExitCode.UNREACHABLE
    if status == NO_ANSWER:
        ctx.output.failure(f"{url}: {error}", code="NOT_READY", url=url)
        return ExitCode.NOT_READY
    payload = {"ok": ready, "url": url, "httpStatus": status, **body}
    ctx.output.result(payload, lambda console: _print(console, url, status, body))
    return ExitCode.OK if ready else ExitCode.NOT_READY


def _print(console, url: str, status: int, body: dict) -> None:
    from rich.table import Table

    state = body.get("status", f"HTTP {status}")
    colour = "green" if body.get("ready") else "yellow"
    console.print(f"{url}: [{colour}]{state}[/{colour}] ({body.get('reason', '-')})", markup=True)
    components = body.get("components") or {}
    if components:
        table = Table("component", "status", "message", box=None)
        for name, entry in components.items():
            table.add_row(name, entry.get("status", "?"), entry.get("message", ""))
        console.print(table)
