"""The running server's HTTP API as CLI commands use it: the bearer token, the client
that unwraps the `{ok, data}` envelope, and the errors a command reports."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from kblabs.cli.context import CliContext

if TYPE_CHECKING:
    import httpx

TOKEN_ENV = "KB_TOKEN"
HTTP_TIMEOUT_S = 30.0
STREAM_READ_TIMEOUT_S = 60.0  # the server sends a keep-alive every 15 s


class ApiError(Exception):
    """The server's `{ok: false, error: {code, message}}`, or a problem found here."""

    def __init__(self, code: str, message: str, status: int | None = None, details: Any = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details = details


class Unreachable(Exception):
    def __init__(self, url: str, exc: Exception) -> None:
        import httpx

        what = "no answer from" if isinstance(exc, httpx.TimeoutException) else "cannot reach"
        super().__init__(f"{what} {url}: {type(exc).__name__}: {exc}".rstrip(": "))
        self.url = url


class NoToken(Exception):
    pass


def _error_from(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code"):
        return ApiError(
            str(error["code"]),
            str(error.get("message", "")),
            response.status_code,
            error.get("details"),
        )
    text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    return ApiError(
        f"HTTP_{response.status_code}", text or response.reason_phrase, response.status_code
    )


class Api:
    def __init__(self, url: str, token: str) -> None:
        import httpx

        self.url = url
        self.client = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=HTTP_TIMEOUT_S,
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The `data` of a successful answer; ApiError or Unreachable otherwise."""
        import httpx

        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self.client.request(method, path, params=query, json=body)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, exc) from None
        if response.status_code >= 400:
            raise _error_from(response)
        try:
            payload = response.json()
        except ValueError:
            raise ApiError(
                "BAD_RESPONSE", f"{method} {path}: not JSON", response.status_code
            ) from None
        data = payload.get("data") if isinstance(payload, dict) else None
        return data if isinstance(data, dict) else {}

    async def events(self, run_id: str, last_id: str | None) -> AsyncIterator[dict[str, Any]]:
        """One connection to the run's event stream. Each event gets the frame's `id:` as
        `_id`, to be sent back as `Last-Event-ID` (whatever its format: `<seq>`, or
        `<event seq>.<log seq>`)."""
        import httpx

        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        timeout = httpx.Timeout(HTTP_TIMEOUT_S, read=STREAM_READ_TIMEOUT_S)
        path = f"/api/v1/runs/{quote(run_id, safe='')}/events"
        async with self.client.stream("GET", path, headers=headers, timeout=timeout) as response:
            if response.status_code >= 400:
                await response.aread()
                raise _error_from(response)
            data: list[str] = []
            frame_id: str | None = None
            async for line in response.aiter_lines():
                if line == "":
                    if data:
                        event = json.loads("\n".join(data))
                        if frame_id:
                            event["_id"] = frame_id
                        yield event
                    data, frame_id = [], None
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "id":
                    frame_id = value


def token_for(ctx: CliContext) -> str:
    """`--token`, else KB_TOKEN, else the admin token the server wrote in the data dir."""
    if ctx.args.token:
        return str(ctx.args.token)
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    from kblabs.datadir import ADMIN_TOKEN_FILE

    path = ctx.settings().data_dir / ADMIN_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except OSError:
        token = ""
    if not token:
        raise NoToken(
            f"no token: pass --token, set {TOKEN_ENV}, or start the server once so that "
            f"it writes {path}"
        )
    return token
