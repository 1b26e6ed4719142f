"""/api/v1/analytics/… and /api/v1/adapters/{adapter}/usage|daily-stats (reference
ops-studio §B.5), with the envelope; any role may read.

Everything reads the caller's namespace (the token's `namespaceId`). An admin may pass
`?namespace=<id>` for another one, or `?namespace=*` for all of them.

    GET /analytics/events        ?type=a,b&type=c&source=&actor=&runId=&from=&to=&limit=&offset=
                                 → {events, total, hasMore}, newest first
    GET /analytics/stats         same filters → {totalEvents, byType, bySource, byActor}
    GET /analytics/buffer/status the write buffer of the sqlite adapter
    GET /analytics/dlq/status    dropped events (there is no dead-letter queue)
    GET /adapters/{llm|embeddings|vectorstore|cache|storage}/usage        ?from=&to=
    GET /adapters/{…}/daily-stats ?from=&to=&groupBy=hour|day|week|month&breakdownBy=payload.model
                                  &metrics=calls,tokens,costUsd,durationMs

`from`/`to` are ISO-8601 times (no zone: UTC) or a span back from now (`90s`, `15m`,
`24h`, `7d`, `2w`); usage and daily stats default to the last 30 days. Analytics
switched off (`platform.adapters.analytics: null`) answers 501 ANALYTICS_NOT_IMPLEMENTED;
a failing read 500 ANALYTICS_ERROR.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from loguru import logger
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kblabs.auth.identity import identity_of, namespace_of
from kblabs.auth.roles import requires
from kblabs.errors import KbError
from kblabs.http.envelope import ok
from kblabs.http.validation import field_error
from kblabs.platform.interfaces import MAX_EVENT_LIMIT, EventFilters
from kblabs.platform.usage import ADAPTERS, StatsRequestError

DEFAULT_WINDOW = timedelta(days=30)
_SPAN = re.compile(r"^(\d{1,9})(ms|s|m|h|d|w)$")
_SPAN_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}

T = TypeVar("T")

# --- query parameters (shared with logs_api) ----------------------------------------------


def query_time(request: Request, name: str, now: datetime | None = None) -> datetime | None:
    """An ISO-8601 time (naive = UTC; `Z` accepted) or a span back from now (`15m`)."""
    raw = request.query_params.get(name)
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    span = _SPAN.match(raw)
    if span:
        return (now or datetime.now(UTC)) - int(span.group(1)) * _SPAN_UNITS[span.group(2)]
    try:
        value = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise field_error(
            name, f"{raw!r} is not an ISO-8601 time (2026-11-27T10:00:00Z) or a span (15m, 7d)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def query_window(
    request: Request, default: timedelta | None
) -> tuple[datetime | None, datetime | None]:
    """`from` and `to`; with `default`, missing bounds become the last `default`."""
    now = datetime.now(UTC)
    start, end = query_time(request, "from", now), query_time(request, "to", now)
    if default is not None:
        end = end or now
        start = start or end - default
    if start is not None and end is not None and start > end:
        raise field_error("from", "must not be after to")
    return start, end


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise field_error(name, f"must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise field_error(name, f"must be between {low} and {high}")
    return value


def query_list(request: Request, name: str) -> list[str]:
    """A repeatable and/or comma-separated parameter: `?type=a,b&type=c` → [a, b, c]."""
    values: list[str] = []
    for raw in request.query_params.getlist(name):
        values += [part.strip() for part in raw.split(",") if part.strip()]
    return values


def query_text(request: Request, name: str, max_length: int = 256) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_length:
        raise field_error(name, f"must be at most {max_length} characters")
    return raw


def read_namespace(request: Request) -> str | None:
    """The namespace to read: the caller's; an admin may name another or `*` (all)."""
    own = namespace_of(request.scope)
    wanted = request.query_params.get("namespace")
    if wanted is None or wanted == "" or wanted == own:
        return own
    identity = identity_of(request.scope)
    if identity is None or not identity.at_least("admin"):
        raise KbError(
            "FORBIDDEN", "only an admin may read another namespace (namespace parameter)", 403
        )
    return None if wanted == "*" else wanted


# --- the adapter ------------------------------------------------------------------------


def _analytics(request: Request) -> Any:
    registry = request.app.state.runtime.adapters
    adapter = registry.get("analytics")
    if adapter is None or registry.configured().get("analytics") == "null":
        raise KbError(
            "ANALYTICS_NOT_IMPLEMENTED",
            "analytics is switched off (platform.adapters.analytics is null)",
            501,
        )
    return adapter


async def _analytics_read(request: Request) -> Any:
    """The adapter, for a read that sees every call made before it (tallied usage of
    the cache is recorded first)."""
    adapter = _analytics(request)
    await request.app.state.runtime.adapters.flush_usage()
    return adapter


def _method(adapter: Any, name: str, code: str, what: str) -> Callable[..., Any]:
    method = getattr(adapter, name, None)
    if method is None:
        raise KbError(code, f"the configured analytics adapter has no {what}", 501)
    return method


async def _read(call: Awaitable[T]) -> T:
    try:
        return await call
    except (KbError, StatsRequestError):
        raise
    except Exception as exc:
        logger.opt(exception=exc).error("analytics read failed: {}", exc)
        raise KbError(
            "ANALYTICS_ERROR", f"analytics read failed: {type(exc).__name__}", 500
        ) from None


def _filters(request: Request) -> EventFilters:
    start, end = query_window(request, None)
    return EventFilters(
        namespace_id=read_namespace(request),
        type=query_list(request, "type") or None,
        source=query_text(request, "source"),
        actor=query_text(request, "actor"),
        run_id=query_text(request, "runId", 64),
        from_ts=start,
        to_ts=end,
        limit=query_int(request, "limit", 50, 1, MAX_EVENT_LIMIT),
        offset=query_int(request, "offset", 0, 0, 10**9),
    )


# --- endpoints --------------------------------------------------------------------------


@requires("viewer")
async def events(request: Request) -> JSONResponse:
    adapter = await _analytics_read(request)
    filters = _filters(request)
    get_events = _method(adapter, "get_events", "ANALYTICS_NOT_IMPLEMENTED", "event queries")
    return ok(request, await _read(get_events(filters)))


@requires("viewer")
async def stats(request: Request) -> JSONResponse:
    adapter = await _analytics_read(request)
    filters = _filters(request)
    get_stats = _method(adapter, "get_stats", "ANALYTICS_NOT_IMPLEMENTED", "statistics")
    return ok(request, await _read(get_stats(filters)))


@requires("viewer")
async def buffer_status(request: Request) -> JSONResponse:
    status = _method(_analytics(request), "buffer_status", "BUFFER_NOT_APPLICABLE", "buffer")
    return ok(request, status())


@requires("viewer")
async def dlq_status(request: Request) -> JSONResponse:
    status = _method(_analytics(request), "dlq_status", "BUFFER_NOT_APPLICABLE", "buffer")
    return ok(request, status())


def _adapter_name(request: Request) -> str:
    name = str(request.path_params["adapter"]).lower()
    if name not in ADAPTERS:
        raise KbError(
            "ADAPTER_NOT_FOUND",
            f"no usage for adapter {request.path_params['adapter']!r} "
            f"(known: {', '.join(ADAPTERS)})",
            404,
        )
    return name


@requires("viewer")
async def adapter_usage(request: Request) -> JSONResponse:
    name = _adapter_name(request)
    adapter = await _analytics_read(request)
    start, end = query_window(request, DEFAULT_WINDOW)
    namespace = read_namespace(request)
    get_usage = _method(adapter, "get_usage", "ANALYTICS_NOT_IMPLEMENTED", "usage queries")
    return ok(
        request,
        await _read(get_usage(name, namespace_id=namespace, from_ts=start, to_ts=end)),
    )


@requires("viewer")
async def adapter_daily_stats(request: Request) -> JSONResponse:
    name = _adapter_name(request)
    adapter = await _analytics_read(request)
    start, end = query_window(request, DEFAULT_WINDOW)
    namespace = read_namespace(request)
    daily = _method(adapter, "get_daily_stats", "ANALYTICS_NOT_IMPLEMENTED", "daily statistics")
    try:
        body = await _read(
            daily(
                name,
                namespace_id=namespace,
                from_ts=start,
                to_ts=end,
                group_by=request.query_params.get("groupBy") or "day",
                breakdown_by=query_text(request, "breakdownBy"),
                metrics=query_list(request, "metrics") or None,
            )
        )
    except StatsRequestError as exc:
        raise field_error(exc.param, exc.message) from None
    return ok(request, body)


routes = [
    Route("/api/v1/analytics/events", events, methods=["GET"]),
    Route("/api/v1/analytics/stats", stats, methods=["GET"]),
    Route("/api/v1/analytics/buffer/status", buffer_status, methods=["GET"]),
    Route("/api/v1/analytics/dlq/status", dlq_status, methods=["GET"]),
    Route("/api/v1/adapters/{adapter}/usage", adapter_usage, methods=["GET"]),
    Route("/api/v1/adapters/{adapter}/daily-stats", adapter_daily_stats, methods=["GET"]),
]
