"""What the OpenAI-compatible adapters (llm, embeddings) share: client construction,
retries with backoff, and turning SDK exceptions into KbErrors with clear messages.

The SDK client is built with `max_retries=0`: retrying is ours, so it is the same for
every endpoint and can be tested.

- Retried: HTTP 429, every 5xx, and connection failures (refused, reset, DNS). Up to
  `maxRetries` times, waiting `base · 2^attempt` (capped at 8 s) with jitter (a random
  50 to 100 % of that), or what the server's `Retry-After` / `retry-after-ms` header says
  (seconds or an HTTP date, capped at 60 s).
- Not retried: any other 4xx (the same request would fail the same way) and timeouts
  (a model that did not answer within `timeoutMs` is not likely to answer the same prompt
  faster, and retrying would multiply the caller's wait).

Each attempt is bounded by `timeoutMs` as a whole (connect + wait + read), not only
between bytes.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import openai
from loguru import logger

from kblabs.errors import KbError

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_RETRY_AFTER_S = 60.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
NO_KEY = "no-key"  # sent to endpoints that need no key (a local server)


@dataclass(frozen=True)
class Endpoint:
    """Who we talk to, for messages: `the LLM at https://host/v1`."""

    kind: str  # "LLM" | "EMBEDDINGS": the prefix of error codes
    noun: str  # "the LLM" | "the embeddings endpoint"
    base_url: str  # without credentials

    @property
    def where(self) -> str:
        return f"{self.noun} at {self.base_url}"

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc


@dataclass
class CallStats:
    """What happened during one call, for usage analytics."""

    retries: int = 0
    waited_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def duration_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)


def public_url(url: str) -> str:
    """The URL without `user:password@`, query or fragment: safe for messages and logs."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if parts.hostname and ":" in parts.hostname:  # IPv6
        netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def environment(project_root: Any) -> dict[str, str]:
    """The process environment plus the project's .env (which never overrides it)."""
    from kblabs.config.loader import effective_environ

    return effective_environ(project_root, os.environ)


def resolve_endpoint(
    token: str, base_url: str | None, api_key: str | None, project_root: Any
) -> tuple[str, str | None]:
    """(base URL, API key) from the options, else OPENAI_BASE_URL / OPENAI_API_KEY (the
    environment, then the project's .env). OpenAI itself without a key stops the start;
    another endpoint may need none."""
    env = environment(project_root)
    url = base_url or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    key = api_key or env.get("OPENAI_API_KEY") or None
    if key is None and public_url(url) == DEFAULT_BASE_URL:
        from kblabs.errors import StartupError

        raise StartupError(
            "adapters",
            f"platform.adapters.{token} is 'openai' but there is no API key: set "
            "OPENAI_API_KEY in the environment or .env, or platform.adapterOptions."
            f'{token}.apiKey = "${{OPENAI_API_KEY}}" (or a baseUrl of a server that '
            "needs none)",
        )
    return url, key


def make_client(api_key: str | None, base_url: str, timeout_s: float) -> openai.AsyncOpenAI:
    """An SDK client that never retries on its own. `api_key` None is only accepted for
    a custom base URL (local servers usually need none); the caller checks that. The base
    URL is always passed, so the SDK never falls back to the process's OPENAI_BASE_URL."""
    return openai.AsyncOpenAI(
        api_key=api_key or NO_KEY, base_url=base_url, timeout=timeout_s, max_retries=0
    )


def retry_after_s(headers: Mapping[str, str] | None, now: datetime | None = None) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `Retry-After` as seconds
    or an HTTP date), capped at 60 s; None when it did not say (or said nonsense)."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return min(value, MAX_RETRY_AFTER_S)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        value = (when - (now or datetime.now(UTC))).total_seconds()
        value = max(value, 0.0)
    if not math.isfinite(value) or value < 0:
        return None
    return min(value, MAX_RETRY_AFTER_S)


def backoff_s(attempt: int, base_s: float = BACKOFF_BASE_S) -> float:
    """Exponential backoff with jitter: a random 50 to 100 % of base·2^attempt (≤ 8 s)."""
    ceiling = min(BACKOFF_MAX_S, base_s * (2**attempt))
    return ceiling * (0.5 + random.random() / 2)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return False
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    endpoint: Endpoint,
    max_retries: int,
    timeout_s: float,
    stats: CallStats,
    backoff_base_s: float = BACKOFF_BASE_S,
) -> T:
    """Run `attempt` (one HTTP request) until it succeeds, retrying what is worth
    retrying; raise a KbError that says what went wrong otherwise."""
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                return await attempt()
        except Exception as exc:
            if not _retryable(exc) or stats.retries >= max_retries:
                raise to_kb_error(exc, endpoint, timeout_s, stats) from exc
            headers = exc.response.headers if isinstance(exc, openai.APIStatusError) else None
            told = retry_after_s(headers)
            wait = told if told is not None else backoff_s(stats.retries, backoff_base_s)
            logger.warning(
                "{} failed ({}); retry {}/{} in {:.2f} s",
                endpoint.where,
                describe(exc),
                stats.retries + 1,
                max_retries,
                wait,
            )
            stats.retries += 1
            stats.waited_s += wait
            await asyncio.sleep(wait)


def describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {_server_message(exc)}"
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return f"connection failed: {cause or exc}"
    return f"{type(exc).__name__}: {exc}"


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
        if isinstance(inner, str):
            return inner[:500]
    return str(exc.message)[:500]


def to_kb_error(
    exc: BaseException, endpoint: Endpoint, timeout_s: float, stats: CallStats
) -> KbError:
    """One KbError per kind of failure, naming the endpoint and what it answered."""
    if isinstance(exc, KbError):
        return exc
    kind, where = endpoint.kind, endpoint.where
    after = f" after {stats.retries} retries" if stats.retries else ""
    details: dict[str, Any] = {"baseUrl": endpoint.base_url, "retries": stats.retries}
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return KbError(
            f"{kind}_TIMEOUT",
            f"{where} did not answer within {round(timeout_s * 1000)} ms",
            504,
            details=details,
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        details["upstreamStatus"] = status
        message = f"{where} answered HTTP {status}{after}: {_server_message(exc)}"
        if status == 429:
            told = retry_after_s(exc.response.headers)
            headers = {"Retry-After": str(math.ceil(told))} if told is not None else None
            return KbError(f"{kind}_RATE_LIMITED", message, 429, details=details, headers=headers)
        if status in (401, 403):
            hint = " (check the API key: OPENAI_API_KEY or platform.adapterOptions apiKey)"
            return KbError(f"{kind}_AUTH_FAILED", message + hint, 401, details=details)
        return KbError(f"{kind}_ERROR", message, 502, details=details)
    if isinstance(exc, openai.APIConnectionError):
        return KbError(
            f"{kind}_ERROR",
            f"could not reach {where}{after}: {describe(exc)}",
            502,
            details=details,
        )
    return KbError(f"{kind}_ERROR", f"{where}: {describe(exc)}", 502, details=details)
