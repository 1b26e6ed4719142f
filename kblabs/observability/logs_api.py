"""/api/v1/logs… (reference ops-studio §B.5): the records kblabs.observability.log_store
persisted, and a live tail over server-sent events. Envelope; any role may read.

Who sees what: an admin sees every record (`?namespace=<id>` narrows to one tenant's).
Any other role sees only the records tagged with its own namespace (a record is tagged
when the code that logged it bound `namespaceId`/`tenantId`); records of the platform
itself carry no namespace and are for admins only, because they describe every tenant's
requests.

    GET /logs              ?from=&to=&level=&plugin=&executionId=&traceId=&requestId=
                           &search=&limit=100&offset=0 → {logs, total, hasMore}, newest first
    GET /logs/stats        same filters → {total, byLevel, byPlugin, oldest, newest, sink}
    GET /logs/{id}         one record; 404 LOG_NOT_FOUND
    GET /logs/{id}/related the records with its trace id or request id, oldest first
    GET /logs/stream       ?level=&plugin=&tail=0 → SSE `event: log`, `data: {record}`;
                           `: keep-alive` comments every 15 s; 503 when streaming is off

`level=warning` means warning or worse; a list (`level=error,critical`) means exactly
those (`warn` and `fatal` are accepted). `from`/`to` take ISO-8601 or a span (`15m`).
A record: {id, time, level, msg, module, plugin, requestId, traceId, executionId,
namespaceId, fields}.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from kblabs.auth.identity import identity_of, namespace_of
from kblabs.auth.roles import requires
from kblabs.errors import KbError
from kblabs.http.envelope import ok
from kblabs.http.validation import field_error
from kblabs.observability.analytics_api import (
    query_int,
    query_list,
    query_text,
    query_window,
)
from kblabs.observability.log_store import (
    LEVELS,
    SUBSCRIBER_QUEUE,
    LogQuery,
    LogStore,
    Subscriber,
    level_number,
    to_api,
)

MAX_LIMIT = 1000
KEEPALIVE_S = 15.0


def _store(request: Request) -> LogStore:
    store = getattr(request.app.state, "log_store", None)
    if store is None:
        raise KbError("LOGS_NOT_AVAILABLE", "log records are not kept by this server", 503)
    return store


def _namespace(request: Request) -> str | None:
    """None (everything) for an admin unless `namespace` narrows it; else the caller's."""
    identity = identity_of(request.scope)
    wanted = query_text(request, "namespace", 64) or query_text(request, "tenantId", 64)
    if identity is not None and identity.at_least("admin"):
        return None if wanted in (None, "*") else wanted
    own = namespace_of(request.scope)
    if wanted not in (None, own):
        raise KbError(
            "FORBIDDEN", "only an admin may read another namespace (namespace parameter)", 403
        )
    return own


def _levels(request: Request) -> tuple[int | None, tuple[int, ...]]:
    """(minimum level, exact levels) from `level`."""
    names = query_list(request, "level")
    numbers = []
    for name in names:
        number = level_number(name)
        if number is None:
            raise field_error(
                "level", f"unknown level {name!r} (known: {', '.join(LEVELS)}, warn, fatal)"
            )
        numbers.append(number)
    if len(numbers) == 1:
        return numbers[0], ()
    return None, tuple(numbers)


def _query(request: Request, *, paged: bool = True) -> LogQuery:
    start, end = query_window(request, None)
    min_level, levels = _levels(request)
    return LogQuery(
        namespace_id=_namespace(request),
        from_ts=start,
        to_ts=end,
        min_level=min_level,
        levels=levels,
        plugin=query_text(request, "plugin"),
        execution_id=query_text(request, "executionId", 128),
        trace_id=query_text(request, "traceId", 128),
        request_id=query_text(request, "requestId", 128),
        search=query_text(request, "search", 1000),
        limit=query_int(request, "limit", 100, 1, MAX_LIMIT) if paged else 0,
        offset=query_int(request, "offset", 0, 0, 10**9) if paged else 0,
    )


@requires("viewer")
async def list_logs(request: Request) -> JSONResponse:
    store = _store(request)
    return ok(request, await store.query(_query(request)))


@requires("viewer")
async def log_stats(request: Request) -> JSONResponse:
    store = _store(request)
    return ok(request, await store.stats(_query(request, paged=False)))


async def _own_record(request: Request) -> dict[str, Any]:
    store = _store(request)
    record_id = request.path_params["log_id"]
    record = await store.get(record_id) if len(record_id) <= 32 else None
    namespace = _namespace(request)
    if record is None or (namespace is not None and record["namespaceId"] != namespace):
        raise KbError("LOG_NOT_FOUND", f"Log record not found: {record_id}", 404)
    return record


@requires("viewer")
async def get_log(request: Request) -> JSONResponse:
    return ok(request, await _own_record(request))


@requires("viewer")
async def related_logs(request: Request) -> JSONResponse:
    record = await _own_record(request)
    found = await _store(request).related(record, _namespace(request))
    return ok(
        request,
        {
            "id": record["id"],
            "traceId": record["traceId"],
            "requestId": record["requestId"],
            "logs": found,
            "total": len(found),
        },
    )


@requires("viewer")
async def stream_logs(request: Request) -> StreamingResponse:
    store = _store(request)
    if not store.streaming:
        raise KbError(
            "LOG_STREAMING_DISABLED",
            "Log streaming not enabled (observability.logBufferSize is 0)",
            503,
        )
    min_level, levels = _levels(request)
    subscriber = Subscriber(
        min_level=min_level,
        levels=frozenset(levels),
        plugin=query_text(request, "plugin"),
        namespace_id=_namespace(request),
    )
    tail = query_int(request, "tail", 0, 0, SUBSCRIBER_QUEUE)
    return StreamingResponse(
        _stream(store, subscriber, tail),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )


def _frame(row: dict[str, Any]) -> bytes:
    body = json.dumps(to_api(row), default=str)
    return f"id: {row['id']}\nevent: log\ndata: {body}\n\n".encode()


async def _next(subscriber: Subscriber) -> dict[str, Any] | None:
    return await subscriber.queue.get()


async def _stream(store: LogStore, subscriber: Subscriber, tail: int) -> AsyncIterator[bytes]:
    store.subscribe(subscriber)  # before the replay: nothing falls between the two
    try:
        yield b": connected\n\n"
        last = ""
        for old in store.recent(subscriber, tail):
            last = old["id"]
            yield _frame(old)
        while not store.draining.is_set():
            try:
                row = await asyncio.wait_for(_next(subscriber), KEEPALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if row is None:  # the server is shutting down
                return
            if row["id"] <= last:  # already sent by the replay
                continue
            yield _frame(row)
    finally:
        store.unsubscribe(subscriber)


# fixed words before {log_id}
routes = [
    Route("/api/v1/logs", list_logs, methods=["GET"]),
    Route("/api/v1/logs/stats", log_stats, methods=["GET"]),
    Route("/api/v1/logs/stream", stream_logs, methods=["GET"]),
    Route("/api/v1/logs/{log_id}", get_log, methods=["GET"]),
    Route("/api/v1/logs/{log_id}/related", related_logs, methods=["GET"]),
]
