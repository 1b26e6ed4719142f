"""The host agent's connection to the gateway: tokens, the WebSocket session, calls.

One :class:`AgentClient` keeps one connection to ``<gateway>/hosts/connect`` alive
(reference/gateway.md §6-§7):

- it gets a token pair from ``/auth/token`` and refreshes the access token before it
  expires (``/auth/refresh``, falling back to ``/auth/token``); a refresh never touches
  the live connection, only the next one uses the new token;
- on connect it sends ``hello`` and expects ``connected`` within 5 s; anything else closes
  the attempt (``negotiate`` is fatal: this agent speaks a version the gateway does not);
- it sends ``heartbeat`` every 30 s and answers each ``call`` in its own task (so a slow
  call never delays a heartbeat or another call) with ``chunk`` + ``result`` or ``error``;
  ``cancel{requestId}`` cancels that task and nothing more is sent for it;
- any close or error → reconnect after an exponential backoff (1 s doubling to 60 s,
  ±20 % jitter), reset once a connection is handshaken.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from loguru import logger
from pydantic_core import PydanticSerializationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

import kblabs
from kblabs.agent.capabilities import (
    Capability,
    CapabilityError,
    Workspace,
    build_capabilities,
    dispatch,
)
from kblabs.agent.config import AgentConfig, websocket_url
from kblabs.gateway import protocol as p

HELLO_TIMEOUT_S = p.HELLO_TIMEOUT_S
HTTP_TIMEOUT_S = 10.0
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
BACKOFF_JITTER = 0.2
MIN_TOKEN_VALIDITY_S = 30.0
"""A new connection gets a fresh token when the current one expires sooner than this."""
REFRESH_RETRY_S = 15.0
USER_AGENT = f"kblabs-agent/{kblabs.__version__}"


class AgentFatal(Exception):
    """Retrying cannot help (a protocol version the gateway refuses, revoked credentials):
    the agent stops with exit code 1."""


class CredentialsRejected(AgentFatal):
    """/auth/token refused the client id and secret."""


class TransientError(Exception):
    """A failed attempt (gateway down, 5xx, handshake refused): retried after a backoff."""


# --------------------------------------------------------------------------- HTTP


def error_text(response: httpx.Response) -> str:
    """The gateway's error message (``{error:{code,message}}``) or the HTTP status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return f"{error.get('code', 'ERROR')}: {error.get('message', '')}".strip()
    return f"HTTP {response.status_code}"


@dataclass
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: float
    obtained_at: float = field(default_factory=time.monotonic)

    @property
    def remaining_s(self) -> float:
        return self.obtained_at + self.expires_in - time.monotonic()

    @classmethod
    def from_response(cls, response: httpx.Response, what: str) -> TokenPair:
        try:
            body = response.json()
            return cls(
                access_token=str(body["accessToken"]),
                refresh_token=str(body["refreshToken"]),
                expires_in=float(body.get("expiresIn", 900)),
            )
        except (ValueError, KeyError, TypeError):
            raise TransientError(f"{what} did not return a token pair") from None


def token_request(config: AgentConfig) -> tuple[str, dict[str, str]]:
    """URL and body of the client-credentials request."""
    return f"{config.gateway_url}/auth/token", {
        "clientId": config.client_id,
        "clientSecret": config.client_secret,
    }


def check_token_response(response: httpx.Response) -> TokenPair:
    if response.status_code in (401, 403):
        raise CredentialsRejected(
            f"the gateway rejected this agent's credentials ({error_text(response)}); "
            "the client may have been revoked or its secret rotated: register again"
        )
    if response.status_code != 200:
        raise TransientError(f"/auth/token answered {error_text(response)}")
    return TokenPair.from_response(response, "/auth/token")


class TokenManager:
    """The agent's token pair: renewed on demand for new connections and in the
    background before it expires. Renewals are serialised (a refresh token is single-use;
    presenting it twice revokes the session)."""

    def __init__(
        self, config: AgentConfig, http: httpx.AsyncClient, refresh_every_s: float | None = None
    ) -> None:
        self.config = config
        self.http = http
        self.refresh_every_s = refresh_every_s
        self.pair: TokenPair | None = None
        self.stale = False
        self.refreshes = 0
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()  # a new pair: the refresher reschedules
        self._retry_at: float | None = None

    async def access_token(self) -> str:
        """A token valid for at least MIN_TOKEN_VALIDITY_S (CredentialsRejected, or
        TransientError while the gateway cannot be reached)."""
        async with self._lock:
            if self.pair is None or self.stale or self.pair.remaining_s < MIN_TOKEN_VALIDITY_S:
                await self._renew()
            assert self.pair is not None
            return self.pair.access_token

    def invalidate(self) -> None:
        """The gateway refused the access token: the next connection renews it first."""
        self.stale = True

    def _set(self, pair: TokenPair) -> None:
        self.pair = pair
        self.stale = False
        self._retry_at = None
        self._changed.set()

    async def _renew(self) -> None:
        if self.pair is not None:
            try:
                self._set(await self._refresh(self.pair.refresh_token))
                return
            except CredentialsRejected as exc:
                logger.warning("token refresh refused ({}); asking for a new pair", exc)
            except TransientError:
                if self.pair.remaining_s > MIN_TOKEN_VALIDITY_S and not self.stale:
                    raise
        self._set(await self._token())

    async def _token(self) -> TokenPair:
        url, body = token_request(self.config)
        try:
            response = await self.http.post(url, json=body)
        except httpx.HTTPError as exc:
            raise TransientError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
        return check_token_response(response)

    async def _refresh(self, refresh_token: str) -> TokenPair:
        url = f"{self.config.gateway_url}/auth/refresh"
        try:
            response = await self.http.post(url, json={"refreshToken": refresh_token})
        except httpx.HTTPError as exc:
            raise TransientError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
        if response.status_code in (401, 403):
            raise CredentialsRejected(error_text(response))
        if response.status_code != 200:
            raise TransientError(f"/auth/refresh answered {error_text(response)}")
        return TokenPair.from_response(response, "/auth/refresh")

    def refresh_due_in(self) -> float | None:
        """Seconds until the background refresh is due; None before the first pair."""
        if self.pair is None:
            return None
        now = time.monotonic()
        if self._retry_at is not None:
            return self._retry_at - now
        if self.refresh_every_s is not None:
            return self.pair.obtained_at + self.refresh_every_s - now
        lifetime = self.pair.expires_in
        at = max(lifetime - 120.0, lifetime * 0.5)  # 13 min into a 15 min token
        return self.pair.obtained_at + at - now

    async def run_refresher(self) -> None:
        """Keep the pair fresh until cancelled. The live connection is never touched."""
        while True:
            due = self.refresh_due_in()
            if due is None or due > 0:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), due)
                continue
            async with self._lock:
                if (self.refresh_due_in() or 0) > 0:
                    continue  # renewed for a new connection meanwhile
                try:
                    await self._renew()
                except (AgentFatal, TransientError) as exc:
                    retry = min(REFRESH_RETRY_S, self.refresh_every_s or REFRESH_RETRY_S)
                    self._retry_at = time.monotonic() + retry
                    log = logger.error if isinstance(exc, AgentFatal) else logger.warning
                    log("token refresh failed (retrying in {:.0f} s): {}", retry, exc)
                    continue
            self.refreshes += 1
            logger.info("access token refreshed (the live connection is kept)")


# --------------------------------------------------------------------------- backoff


class Backoff:
    """1 s, 2 s, 4 s … capped at 60 s, each ±20 % at random; reset() after a success."""

    def __init__(
        self,
        initial: float = BACKOFF_INITIAL_S,
        maximum: float = BACKOFF_MAX_S,
        jitter: float = BACKOFF_JITTER,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.rng = rng
        self.current = initial

    def next_delay(self) -> float:
        base = self.current
        self.current = min(self.current * 2, self.maximum)
        return base * (1 + self.jitter * (2 * self.rng() - 1))

    def reset(self) -> None:
        self.current = self.initial


# --------------------------------------------------------------------------- the session


class _Live:
    """One handshaken connection: serialised sends and the calls running on it."""

    def __init__(self, ws: ClientConnection, session_id: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self.calls: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()

    async def send(self, *messages: p.Message) -> None:
        texts = [p.dump(message) for message in messages]
        async with self._lock:  # a chunk and its result go out back to back
            for text in texts:
                await self.ws.send(text)


class AgentClient:
    def __init__(
        self,
        config: AgentConfig,
        *,
        heartbeat_s: float = p.HEARTBEAT_INTERVAL_S,
        token_refresh_s: float | None = None,
        backoff: Backoff | None = None,
        tokens: TokenManager | None = None,
    ) -> None:
        self.config = config
        self.heartbeat_s = heartbeat_s
        self.token_refresh_s = token_refresh_s
        self.backoff = backoff or Backoff()
        self.tokens = tokens
        workspace = Workspace([Path(path) for path in config.workspace_paths])
        table = build_capabilities(
            workspace,
            shell_enabled=config.shell_enabled,
            shell_timeout_ms=config.shell.timeout_ms,
        )
        # Only what was registered is served; shell stays so a call to it gets a clear
        # "disabled" answer rather than UNKNOWN_ADAPTER.
        self.capabilities: dict[str, Capability] = {
            name: cap
            for name, cap in table.items()
            if name in config.capabilities or name == "shell"
        }
        self.session_id: str | None = None
        self.connections = 0
        self._stopping = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Close the connection with 1000 and make run() return (signal handlers)."""
        self._stopping.set()

    async def run(self) -> None:
        """Connect and stay connected until stop(); AgentFatal when retrying is futile."""
        async with httpx.AsyncClient(
            timeout=HTTP_TIMEOUT_S, headers={"User-Agent": USER_AGENT}
        ) as http:
            tokens = self.tokens or TokenManager(self.config, http, self.token_refresh_s)
            self.tokens = tokens
            refresher = asyncio.create_task(tokens.run_refresher(), name="agent-token-refresh")
            try:
                await self._loop(tokens)
            finally:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
        logger.info("agent stopped")

    async def _loop(self, tokens: TokenManager) -> None:
        while not self._stopping.is_set():
            attempt = asyncio.create_task(self._attempt(tokens), name="agent-connection")
            stopper = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait({attempt, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if attempt not in done:
                attempt.cancel()  # it closes a live connection with 1000 itself
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await attempt
                return
            stopper.cancel()
            error = attempt.exception()
            if isinstance(error, AgentFatal):
                raise error
            if error is not None:
                if isinstance(error, TransientError | OSError | WebSocketException | TimeoutError):
                    logger.warning("connection attempt failed: {}", _describe(error))
                else:
                    logger.opt(exception=error).error("connection failed unexpectedly")
            if self._stopping.is_set():
                return
            delay = self.backoff.next_delay()
            logger.info("reconnecting in {:.1f} s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _attempt(self, tokens: TokenManager) -> None:
        token = await tokens.access_token()
        url = websocket_url(self.config.gateway_url)
        try:
            async with connect(
                url,
                additional_headers={"Authorization": f"Bearer {token}"},
                user_agent_header=USER_AGENT,
                open_timeout=OPEN_TIMEOUT_S,
                close_timeout=CLOSE_TIMEOUT_S,
                max_size=MAX_MESSAGE_BYTES,
            ) as ws:
                connected = await self._handshake(ws, tokens)
                self.backoff.reset()
                self.session_id = connected.session_id
                self.connections += 1
                logger.info(
                    "connected to {} as host {} (session {})",
                    url,
                    connected.host_id,
                    connected.session_id,
                )
                live = _Live(ws, connected.session_id)
                try:
                    await self._serve(live)
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await ws.close(1000, "agent stopped")
                    logger.info("disconnected (agent stopping)")
                    raise
                finally:
                    self.session_id = None
                logger.info("disconnected: {}", _close_text(ws.close_code, ws.close_reason))
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                tokens.invalidate()
            raise TransientError(
                f"{url} refused the WebSocket upgrade with HTTP {exc.response.status_code}"
            ) from None

    async def _handshake(self, ws: ClientConnection, tokens: TokenManager) -> p.Connected:
        hello = p.Hello(
            type="hello",
            protocol_version=p.PROTOCOL_VERSION,
            agent_version=kblabs.__version__,
            host_id=self.config.host_id,
            name=self.config.name,
            capabilities=list(self.config.capabilities),
            host_type="local",
            workspaces=[{"path": path} for path in self.config.workspace_paths],
        )
        try:
            await ws.send(p.dump(hello))
            raw = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT_S)
        except TimeoutError:
            await ws.close(1008, "no connected message")
            raise TransientError(f"no `connected` within {HELLO_TIMEOUT_S:.0f} s") from None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            reason = exc.rcvd.reason if exc.rcvd else ""
            if code == 1008:
                tokens.invalidate()  # maybe expired or revoked: renew before the next try
            raise TransientError(
                f"the gateway closed the connection during the handshake "
                f"({_close_text(code, reason)})"
            ) from None
        try:
            message = p.parse(raw)
        except p.InvalidMessage as exc:
            message = None
            logger.debug("invalid handshake reply: {}", exc)
        if isinstance(message, p.Negotiate):
            await ws.close(1000, "unsupported protocol version")
            raise AgentFatal(
                f"the gateway does not speak protocol {p.PROTOCOL_VERSION} (it supports "
                f"{', '.join(message.supported_versions) or 'none'}); upgrade the agent "
                "or the gateway"
            )
        if not isinstance(message, p.Connected) or not message.host_id:
            await ws.close(1008, "expected connected")
            kind = getattr(message, "type", None) or "an invalid message"
            raise TransientError(f"expected `connected` from the gateway, got {kind}")
        if message.host_id != self.config.host_id:
            logger.warning(
                "the gateway calls this host {} (the configuration says {})",
                message.host_id,
                self.config.host_id,
            )
        return message

    async def _serve(self, live: _Live) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(live), name="agent-heartbeat")
        try:
            async for raw in live.ws:
                self._on_message(live, raw)
        except ConnectionClosed:
            pass  # reported by the caller from close_code / close_reason
        finally:
            heartbeat.cancel()
            for task in list(live.calls.values()):
                task.cancel()  # nobody can receive their answers any more
            live.calls.clear()

    async def _heartbeat(self, live: _Live) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await live.send(p.Heartbeat())
            except ConnectionClosed:
                return

    def _on_message(self, live: _Live, raw: str | bytes) -> None:
        try:
            message = p.parse(raw)
        except p.InvalidMessage as exc:
            logger.warning("ignoring an invalid message from the gateway: {}", exc)
            return
        if isinstance(message, p.Call):
            if message.request_id in live.calls:
                return  # a duplicate id: the first call answers
            request_id = message.request_id
            task = asyncio.create_task(self._answer(live, message), name=f"call-{request_id}")
            live.calls[request_id] = task

            def forget(done: asyncio.Task[None]) -> None:
                if live.calls.get(request_id) is done:
                    del live.calls[request_id]

            task.add_done_callback(forget)
        elif isinstance(message, p.Cancel):
            running = live.calls.pop(message.request_id, None)
            if running is not None:
                running.cancel()
                logger.info(
                    "call {} cancelled by the gateway ({})", message.request_id, message.reason
                )
        # ack, and every other or unknown type: nothing to do

    async def _answer(self, live: _Live, call: p.Call) -> None:
        replies: tuple[p.Message, ...]
        try:
            data = await dispatch(self.capabilities, call.adapter, call.method, call.args)
        except CapabilityError as exc:
            replies = (_error(call.request_id, exc),)
        except Exception as exc:  # dispatch wraps handler errors; this is a last resort
            logger.opt(exception=exc).error("call {}.{} failed", call.adapter, call.method)
            replies = (_error(call.request_id, CapabilityError("HANDLER_ERROR", str(exc)[:300])),)
        else:
            replies = (
                p.Chunk(request_id=call.request_id, index=0, data=data),
                p.Result(request_id=call.request_id),
            )
        try:
            await live.send(*replies)
        except (PydanticSerializationError, TypeError, ValueError) as exc:
            logger.warning(
                "{}.{} returned a value JSON cannot hold: {}", call.adapter, call.method, exc
            )
            with contextlib.suppress(ConnectionClosed):
                await live.send(
                    _error(
                        call.request_id,
                        CapabilityError("HANDLER_ERROR", "the result is not JSON-serialisable"),
                    )
                )
        except ConnectionClosed:
            pass  # the gateway fails the call itself when the socket closes


def _error(request_id: str, exc: CapabilityError) -> p.Error:
    return p.Error(request_id=request_id, error=p.ErrorBody(**exc.to_dict()))


def _close_text(code: int | None, reason: str | None) -> str:
    if code is None:
        return "connection lost without a close frame"
    return f"close code {code}" + (f" {reason!r}" if reason else "")


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, TransientError):
        return text
    return f"{type(error).__name__}: {text}"


def config_summary(config: AgentConfig) -> dict[str, Any]:
    """The configuration without its secret (for status output and logs)."""
    data = config.to_json()
    data.pop("clientSecret", None)
    return data
