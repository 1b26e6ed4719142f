"""/platform/v1/{adapter}/{method}, /llm/v1/chat/completions, /telemetry/v1/ingest.

**Platform API** (`POST /platform/v1/{adapter}/{method}`, operator; body `{args: [...],
collection?}` → `{ok, result, durationMs}`). Checks in order: 404 ADAPTER_NOT_FOUND,
403 METHOD_NOT_ALLOWED (the allowlist below), admin for the databases, 400 body,
503 ADAPTER_UNAVAILABLE (the adapter is not configured), 501 METHOD_NOT_IMPLEMENTED (the
configured adapter lacks it), 400 VALIDATION_ERROR (args); an adapter's KbError keeps
its code and status, any other exception is 502 ADAPTER_ERROR.

Every adapter is the one the registry built (`runtime.adapters`), in the caller's
namespace where the adapter has one:

- cache: the state broker, keys `cache:<namespace>:<key>` (get, set, delete, clear).
- llm: complete [prompt, opts?] → {content, model, usage, …}; stream: the same answer,
  or SSE text chunks when the request accepts `text/event-stream`; chatWithTools
  [messages, opts] → the same plus toolCalls and stopReason.
- embeddings: embed [text] → vector; embedBatch [texts] → vectors.
- vectorStore: search [vector, limit?, filter?], upsert [records], delete [ids],
  count [] in the caller's namespace and the body's `collection` (default "default").
- storage: read [path, {encoding?}] → text (utf-8, or base64 when asked) or null;
  write [path, text, {encoding?}]; delete [path]; list [prefix?]; exists [path]. Paths
  live under `tenants/<namespace>/` in the storage adapter.
- analytics: track [type, payload?, {runId, actor, ctx, source}?]; flush; getEvents and
  getStats [{type, source, actor, runId, from, to, limit, offset}?]; all in the
  caller's namespace.
- eventBus: publish [topic, event], published as `<namespace>:<topic>`.

LLM options (`opts`) are LLMOptions in either case (`maxTokens` or `max_tokens`…);
`metadata.namespaceId` is always the caller's. An SSE answer is `data: <JSON>` per item
and `data: [DONE]`; an error after the first item is `data: {"error": {code, message}}`.

**LLM** (`POST /llm/v1/chat/completions`, operator): an OpenAI chat completions request
answered by the configured LLM adapter; `model` is a tier (small|medium|large, echoed
back as the answer's model) or a model name. `stream: true` → SSE
`chat.completion.chunk`s then `data: [DONE]` (tools are ignored when streaming).
`tools`/`tool_choice` pass through (tool calls come back in OpenAI's shape). Errors use
OpenAI's error shape. With no LLM adapter configured: 503 saying how to configure one.

**Telemetry** (`POST /telemetry/v1/ingest`, any role): `{events: [1..500]}` → each one
`analytics.track(type, payload, namespace=the caller's, source.product=event.source,
ts=timestamp, ctx.tags=tags)` → `{ok, accepted, rejected: 0}`; 503 only when analytics
is switched off.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kblabs.auth.identity import namespace_of
from kblabs.auth.roles import check_role, requires
from kblabs.config.loader import effective_environ
from kblabs.errors import KbError
from kblabs.http.validation import json_body
from kblabs.platform.interfaces import EventFilters
from kblabs.platform.usage import charged_to
from kblabs.state.backend import MISSING

ALLOWED_METHODS: dict[str, frozenset[str]] = {
    "llm": frozenset({"complete", "stream", "chatWithTools"}),
    "cache": frozenset({"get", "set", "delete", "clear"}),
    "vectorStore": frozenset({"search", "upsert", "delete", "count"}),
    "analytics": frozenset(
        {"track", "identify", "flush", "getEvents", "getStats", "getDailyStats"}
    ),
    "embeddings": frozenset({"embed", "embedBatch"}),
    "storage": frozenset({"read", "write", "delete", "list", "exists"}),
    "eventBus": frozenset({"publish", "subscribe"}),
    "sqlDatabase": frozenset({"query", "execute"}),
    "documentDatabase": frozenset({"find", "findOne", "insert", "update", "delete"}),
}
ADMIN_ONLY = frozenset({"sqlDatabase", "documentDatabase"})
TIERS = frozenset({"small", "medium", "large"})
STORAGE_ROOT = "tenants"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class PlatformBody(BaseModel):
    args: list[Any] = Field(default_factory=list, max_length=64)
    collection: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$"
    )


class TelemetryEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1, max_length=128)
    type: str = Field(min_length=1, max_length=256)
    timestamp: datetime | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)


class TelemetryBody(BaseModel):
    events: list[TelemetryEvent] = Field(min_length=1, max_length=500)


def _elapsed(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _platform_error(
    code: str,
    message: str,
    status: int,
    started: float,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"ok": False, "error": {"code": code, "message": message}, "durationMs": _elapsed(started)},
        status_code=status,
        headers=headers or None,
    )


# --- /platform/v1 -------------------------------------------------------------------------


class NotImplementedByAdapter(Exception):
    """The configured adapter has no such method: 501."""


@dataclass
class Call:
    request: Request
    adapter: Any
    args: list[Any]
    namespace: str
    collection: str | None

    def arg(
        self, index: int, name: str, kind: type | tuple[type, ...], *, default: Any = MISSING
    ) -> Any:
        if index >= len(self.args) or self.args[index] is None:
            if default is MISSING:
                raise _bad_arg(index, name, "is required")
            return default
        value = self.args[index]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            wanted = " or ".join(k.__name__ for k in _kinds(kind))
            raise _bad_arg(index, name, f"must be {wanted}, not {type(value).__name__}")
        return value

    def method(self, name: str) -> Callable[..., Any]:
        found = getattr(self.adapter, name, None)
        if found is None or not callable(found):
            raise NotImplementedByAdapter(name)
        return found


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _bad_arg(index: int, name: str, problem: str) -> KbError:
    return KbError(
        "VALIDATION_ERROR",
        f"args[{index}] ({name}) {problem}",
        400,
        details=[{"field": f"args[{index}]", "message": f"{name} {problem}"}],
    )


Handler = Callable[[Call], Awaitable[Any]]
HANDLERS: dict[tuple[str, str], Handler] = {}


def handles(adapter: str, *methods: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for method in methods:
            HANDLERS[(adapter, method)] = fn
        return fn

    return register


@requires("operator")
async def platform_call(request: Request) -> Response:
    """Call a platform adapter method: body {args: [...]} → {ok, result, durationMs}."""
    started = time.perf_counter()
    adapter, method = request.path_params["adapter"], request.path_params["method"]
    if adapter not in ALLOWED_METHODS:
        return _platform_error("ADAPTER_NOT_FOUND", f"no adapter {adapter!r}", 404, started)
    if method not in ALLOWED_METHODS[adapter]:
        allowed = ", ".join(sorted(ALLOWED_METHODS[adapter]))
        return _platform_error(
            "METHOD_NOT_ALLOWED", f"{adapter}.{method} is not allowed ({allowed})", 403, started
        )
    if adapter in ADMIN_ONLY:
        check_role(request, "admin")
    body = await json_body(request, PlatformBody, optional=True)
    if adapter == "cache":  # served by the state broker, not the cache adapter
        try:
            result = await _cache(request, method, body.args)
        except KbError as exc:
            return _platform_error(exc.code, exc.message, exc.status, started)
        return JSONResponse({"ok": True, "result": result, "durationMs": _elapsed(started)})
    instance = request.app.state.runtime.adapters.get(adapter)
    if instance is None:
        return _platform_error(
            "ADAPTER_UNAVAILABLE",
            f"the {adapter} adapter is not configured (platform.adapters.{adapter} in "
            "kb.config.json; see docs/adapters.md)",
            503,
            started,
        )
    call = Call(request, instance, body.args, namespace_of(request.scope), body.collection)
    handler = HANDLERS.get((adapter, method))
    try:
        if handler is None:
            raise NotImplementedByAdapter(method)
        with charged_to(call.namespace):  # usage events land in the caller's namespace
            result = await handler(call)
        if isinstance(result, AsyncIterator):
            return await _sse(result, _platform_chunk, _platform_error_chunk)
    except NotImplementedByAdapter:
        name = type(getattr(instance, "__wrapped__", instance)).__name__
        return _platform_error(
            "METHOD_NOT_IMPLEMENTED",
            f"{adapter}.{method} is not implemented by the configured adapter ({name})",
            501,
            started,
        )
    except KbError as exc:  # Retry-After of a rate limit passes through
        return _platform_error(exc.code, exc.message, exc.status, started, exc.headers)
    except Exception as exc:
        logger.opt(exception=exc).error("platform API: {}.{} failed", adapter, method)
        return _platform_error(
            "ADAPTER_ERROR", f"{adapter}.{method} failed: {type(exc).__name__}: {exc}", 502, started
        )
    return JSONResponse({"ok": True, "result": result, "durationMs": _elapsed(started)})


async def _cache(request: Request, method: str, args: list[Any]) -> Any:
    state = request.app.state.runtime.state
    prefix = f"cache:{namespace_of(request.scope)}:"
    if method == "clear":
        return await state.clear(prefix + "*")
    if not args or not isinstance(args[0], str):
        raise KbError("VALIDATION_ERROR", f"cache.{method} needs a string key as args[0]", 400)
    key = prefix + args[0]
    if method == "get":
        value = await state.get(key)
        return None if value is MISSING else value
    if method == "set":
        ttl = args[2] if len(args) > 2 and isinstance(args[2], int) else None
        await state.set(key, args[1] if len(args) > 1 else None, ttl)
        return True
    return await state.delete(key)


# llm


def llm_options(raw: Any, namespace: str) -> dict[str, Any]:
    """Platform API options → LLMOptions (camelCase accepted); metadata.namespaceId is
    always the caller's."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _bad_arg(1, "opts", f"must be an object, not {type(raw).__name__}")
    renames = {
        "maxTokens": "max_tokens",
        "systemPrompt": "system_prompt",
        "toolChoice": "tool_choice",
    }
    options: dict[str, Any] = {renames.get(str(k), str(k)): v for k, v in raw.items()}
    metadata = options.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _bad_arg(1, "opts.metadata", "must be an object")
    options["metadata"] = {**metadata, "namespaceId": namespace}
    return options


def llm_result(response: Any) -> dict[str, Any]:
    usage = dict(getattr(response, "usage", None) or {})
    prompt = int(usage.get("prompt_tokens", 0) or 0)
    completion = int(usage.get("completion_tokens", 0) or 0)
    counted: dict[str, Any] = {
        "promptTokens": prompt,
        "completionTokens": completion,
        "totalTokens": prompt + completion,
    }
    if usage.get("cache_read_tokens"):
        counted["cacheReadTokens"] = usage["cache_read_tokens"]
    result: dict[str, Any] = {
        "content": getattr(response, "content", ""),
        "model": getattr(response, "model", None),
        "usage": counted,
    }
    if hasattr(response, "tool_calls"):
        result["toolCalls"] = list(response.tool_calls or [])
        result["stopReason"] = getattr(response, "stop_reason", None)
    return result


def _accepts_sse(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


@handles("llm", "complete", "stream")
async def _llm_complete(call: Call) -> Any:
    prompt = call.arg(0, "prompt", str)
    options = llm_options(call.args[1] if len(call.args) > 1 else None, call.namespace)
    if call.request.path_params["method"] == "stream" and _accepts_sse(call.request):
        return call.method("stream")(prompt, options)
    return llm_result(await call.method("complete")(prompt, options))


@handles("llm", "chatWithTools")
async def _llm_tools(call: Call) -> Any:
    messages = call.arg(0, "messages", list)
    options = llm_options(call.arg(1, "opts", dict, default={}), call.namespace)
    return llm_result(await call.method("chat_with_tools")(messages, options))


# embeddings


@handles("embeddings", "embed")
async def _embed(call: Call) -> Any:
    return list(await call.method("embed")(call.arg(0, "text", str)))


@handles("embeddings", "embedBatch")
async def _embed_batch(call: Call) -> Any:
    texts = call.arg(0, "texts", list)
    return [list(v) for v in await call.method("embed_batch")(texts)]


# vector store


def _where(call: Call) -> dict[str, Any]:
    where: dict[str, Any] = {"namespace": call.namespace}
    if call.collection:
        where["collection"] = call.collection
    return where


@handles("vectorStore", "search")
async def _vector_search(call: Call) -> Any:
    vector = call.arg(0, "vector", list)
    limit = call.arg(1, "limit", int, default=10)
    if limit < 1:
        raise _bad_arg(1, "limit", "must be at least 1")
    filter = call.arg(2, "filter", (dict, list), default=None)
    return await call.method("search")(vector, limit, filter, **_where(call))


@handles("vectorStore", "upsert")
async def _vector_upsert(call: Call) -> Any:
    return await call.method("upsert")(call.arg(0, "records", list), **_where(call))


@handles("vectorStore", "delete")
async def _vector_delete(call: Call) -> Any:
    return await call.method("delete")(call.arg(0, "ids", list), **_where(call))


@handles("vectorStore", "count")
async def _vector_count(call: Call) -> Any:
    return await call.method("count")(**_where(call))


# storage


def _storage_path(call: Call, index: int, name: str, *, allow_empty: bool = False) -> str:
    raw = call.arg(index, name, str, default="" if allow_empty else MISSING)
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts or raw.startswith("/"):
        raise _bad_arg(index, name, "must be a relative path without '..'")
    if not parts and not allow_empty:
        raise _bad_arg(index, name, "must not be empty")
    prefix = f"{STORAGE_ROOT}/{call.namespace}/"
    return prefix + "/".join(parts) + ("/" if raw.endswith("/") and parts else "")


def _encoding(call: Call, index: int) -> str:
    options = call.arg(index, "options", dict, default={})
    encoding = options.get("encoding", "utf-8")
    if encoding not in ("utf-8", "base64"):
        raise _bad_arg(index, "options.encoding", "must be utf-8 or base64")
    return str(encoding)


@handles("storage", "read")
async def _storage_read(call: Call) -> Any:
    path = _storage_path(call, 0, "path")
    encoding = _encoding(call, 1)
    data = await call.method("read")(path)
    if data is None:
        return None
    if encoding == "base64":
        return base64.b64encode(data).decode()
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise KbError(
            "STORAGE_NOT_TEXT",
            f'{call.args[0]} is not UTF-8 text; read it with {{"encoding": "base64"}}',
            422,
        ) from None


@handles("storage", "write")
async def _storage_write(call: Call) -> Any:
    path = _storage_path(call, 0, "path")
    text = call.arg(1, "data", str)
    if _encoding(call, 2) == "base64":
        try:
            data = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise _bad_arg(1, "data", "is not valid base64") from None
    else:
        data = text.encode("utf-8")
    await call.method("write")(path, data)
    return True


@handles("storage", "delete", "exists")
async def _storage_check(call: Call) -> Any:
    method = call.request.path_params["method"]
    return await call.method(method)(_storage_path(call, 0, "path"))


@handles("storage", "list")
async def _storage_list(call: Call) -> Any:
    prefix = _storage_path(call, 0, "prefix", allow_empty=True)
    root = f"{STORAGE_ROOT}/{call.namespace}/"
    return [
        path[len(root) :] for path in await call.method("list")(prefix) if path.startswith(root)
    ]


# analytics


@handles("analytics", "track")
async def _analytics_track(call: Call) -> Any:
    event_type = call.arg(0, "type", str)
    payload = call.arg(1, "payload", dict, default=None)
    options = call.arg(2, "options", dict, default={})
    source = options.get("source")
    if isinstance(source, str):
        source = {"product": source, "version": ""}
    await call.method("track")(
        event_type,
        payload,
        namespace_id=call.namespace,
        run_id=options.get("runId"),
        actor=options.get("actor"),
        ctx=options.get("ctx"),
        source=source,
    )
    return True


@handles("analytics", "flush")
async def _analytics_flush(call: Call) -> Any:
    await call.method("flush")()
    return True


@handles("analytics", "identify")
async def _analytics_identify(call: Call) -> Any:
    identify = call.method("identify")
    return await identify(call.arg(0, "userId", str), call.arg(1, "traits", dict, default=None))


@handles("analytics", "getDailyStats")
async def _analytics_daily(call: Call) -> Any:
    """args[0] = {adapter, from?, to?, groupBy?, breakdownBy?, metrics?} as for
    GET /api/v1/adapters/{adapter}/daily-stats (default window: the last 30 days)."""
    options = call.arg(0, "options", dict, default={})
    adapter = options.get("adapter")
    if not isinstance(adapter, str) or not adapter:
        raise _bad_arg(0, "options", "adapter must name an adapter (llm, embeddings, …)")
    try:
        to_ts = _when(options.get("to"), "to") or datetime.now(UTC)
        from_ts = _when(options.get("from"), "from") or to_ts - timedelta(days=30)
    except ValueError as exc:
        raise _bad_arg(0, "options", str(exc)) from None
    metrics = options.get("metrics")
    return await call.method("get_daily_stats")(
        adapter,
        namespace_id=call.namespace,
        from_ts=from_ts,
        to_ts=to_ts,
        group_by=str(options.get("groupBy") or "day"),
        breakdown_by=options.get("breakdownBy"),
        metrics=metrics.split(",") if isinstance(metrics, str) else metrics,
    )


def _filters(call: Call) -> EventFilters:
    raw = call.arg(0, "filters", dict, default={})
    try:
        return EventFilters(
            namespace_id=call.namespace,
            type=raw.get("type"),
            source=raw.get("source"),
            actor=raw.get("actor"),
            run_id=raw.get("runId"),
            from_ts=_when(raw.get("from"), "from"),
            to_ts=_when(raw.get("to"), "to"),
            limit=int(raw.get("limit", 50)),
            offset=int(raw.get("offset", 0)),
        )
    except (TypeError, ValueError) as exc:
        raise _bad_arg(0, "filters", str(exc)) from None


def _when(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{name} must be an ISO-8601 date-time, not {value!r}") from None


@handles("analytics", "getEvents")
async def _analytics_events(call: Call) -> Any:
    return await call.method("get_events")(_filters(call))


@handles("analytics", "getStats")
async def _analytics_stats(call: Call) -> Any:
    return await call.method("get_stats")(_filters(call))


# event bus


@handles("eventBus", "publish")
async def _publish(call: Call) -> Any:
    topic = call.arg(0, "topic", str)
    if not topic:
        raise _bad_arg(0, "topic", "must not be empty")
    await call.method("publish")(
        f"{call.namespace}:{topic}", call.args[1] if len(call.args) > 1 else None
    )
    return True


# --- SSE ------------------------------------------------------------------------------------


def _platform_chunk(item: Any) -> str:
    return f"data: {json.dumps(item)}\n\n"


def _platform_error_chunk(exc: KbError) -> str:
    return f"data: {json.dumps({'error': {'code': exc.code, 'message': exc.message}})}\n\n"


async def _sse(
    chunks: AsyncIterator[Any],
    encode: Callable[[Any], str],
    encode_error: Callable[[KbError], str],
    *,
    first_events: list[str] | None = None,
    last_events: list[str] | None = None,
) -> Response:
    """An SSE response. The first item is awaited before answering, so a failure before
    anything was produced (rate limit, timeout) still gets its HTTP status."""
    iterator = aiter(chunks)
    try:
        first = await anext(iterator)
        empty = False
    except StopAsyncIteration:
        first, empty = None, True

    async def events() -> AsyncIterator[str]:
        try:
            for event in first_events or ():
                yield event
            if not empty:
                yield encode(first)
                async for item in iterator:
                    yield encode(item)
            for event in last_events or ():
                yield event
            yield "data: [DONE]\n\n"
        except Exception as exc:
            error = exc if isinstance(exc, KbError) else KbError("ADAPTER_ERROR", str(exc), 502)
            if not isinstance(exc, KbError):
                logger.opt(exception=exc).error("SSE stream failed")
            yield encode_error(error)
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


# --- /llm/v1/chat/completions -----------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = Field(default=None, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    stream_options: dict[str, Any] | None = None


OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
FINISH_REASONS = {
    "end_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "content_filter": "content_filter",
}


def openai_error(
    message: str,
    status: int,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    kind = OPENAI_ERROR_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )


def _kb_openai_error(exc: KbError) -> JSONResponse:
    param = None
    if exc.code == "VALIDATION_ERROR" and isinstance(exc.details, list) and exc.details:
        param = exc.details[0].get("field")
    return openai_error(exc.message, exc.status, exc.code.lower(), param, exc.headers or None)


def not_configured_message(project_root: Any) -> str:
    message = (
        'no LLM adapter is configured: set platform.adapters.llm to "openai" in '
        "kb.config.json, with the API key in OPENAI_API_KEY (or "
        "platform.adapterOptions.llm.apiKey) and, for another OpenAI-compatible server, "
        "platform.adapterOptions.llm.baseUrl; see docs/adapters.md"
    )
    if effective_environ(project_root, os.environ).get("OPENAI_API_KEY"):
        message += (
            ". OPENAI_API_KEY is set in the environment, but a key alone does not switch the LLM on"
        )
    return message


def _our_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI messages → the adapter's ({role, content, tool_call_id, tool_calls [{id,
    name, input}]})."""
    converted: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        item: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": message.content,
        }
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            calls = []
            for number, call in enumerate(message.tool_calls):
                function = call.get("function") or {}
                arguments = function.get("arguments") or "{}"
                try:
                    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
                except json.JSONDecodeError:
                    raise KbError(
                        "VALIDATION_ERROR",
                        f"messages[{index}].tool_calls[{number}].function.arguments is not JSON",
                        400,
                        details=[
                            {
                                "field": f"messages[{index}].tool_calls[{number}]",
                                "message": "not JSON",
                            }
                        ],
                    ) from None
                calls.append(
                    {"id": call.get("id", ""), "name": function.get("name", ""), "input": parsed}
                )
            item["tool_calls"] = calls
        converted.append(item)
    return converted


def _our_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if tool.get("type", "function") == "function" else None
        if not isinstance(function, dict) or not function.get("name"):
            raise KbError(
                "VALIDATION_ERROR",
                f'tools[{index}] must be {{type: "function", function: {{name, parameters}}}}',
                400,
                details=[{"field": f"tools[{index}]", "message": "not a function tool"}],
            )
        converted.append(
            {
                "name": function["name"],
                "description": function.get("description", ""),
                "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
            }
        )
    return converted


def _flatten(messages: list[dict[str, Any]]) -> tuple[str, str | None]:
    """For an adapter with only complete/stream: (prompt, system prompt)."""
    system = [str(m["content"]) for m in messages if m["role"] == "system" and m["content"]]
    rest = [str(m["content"]) for m in messages if m["role"] != "system" and m["content"]]
    return "\n\n".join(rest), ("\n\n".join(system) or None)


@requires("operator")
async def chat_completions(request: Request) -> Response:
    """OpenAI-compatible chat completions (model = tier small|medium|large or a model)."""
    llm = request.app.state.runtime.adapters.get("llm")
    if llm is None:
        root = request.app.state.runtime.settings.project_root
        return openai_error(not_configured_message(root), 503, "llm_not_configured")
    try:
        body = await json_body(request, ChatRequest)
        return await _answer_chat(request, llm, body)
    except KbError as exc:
        return _kb_openai_error(exc)


async def _answer_chat(request: Request, llm: Any, body: ChatRequest) -> Response:
    messages = _our_messages(body.messages)
    metadata: dict[str, Any] = {"namespaceId": namespace_of(request.scope), "source": "llm-api"}
    options: dict[str, Any] = {"metadata": metadata}
    if body.model in TIERS:
        metadata["tier"] = body.model
    elif body.model:
        options["model"] = body.model
    if body.temperature is not None:
        options["temperature"] = body.temperature
    max_tokens = body.max_tokens or body.max_completion_tokens
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if body.stop:
        options["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        return await _stream_chat(llm, messages, options, body, ident, created)
    if body.tools:
        options["tools"] = _our_tools(body.tools)
        if body.tool_choice is not None:
            options["tool_choice"] = body.tool_choice
        chat_with_tools = getattr(llm, "chat_with_tools", None)
        if chat_with_tools is None:
            raise KbError("VALIDATION_ERROR", "the configured LLM adapter cannot call tools", 400)
        response = await chat_with_tools(messages, options)
    elif getattr(llm, "chat", None) is not None:
        response = await llm.chat(messages, options)
    else:
        prompt, system = _flatten(messages)
        if system:
            options["system_prompt"] = system
        response = await llm.complete(prompt, options)
    result = llm_result(response)
    message: dict[str, Any] = {"role": "assistant", "content": result["content"]}
    calls = result.get("toolCalls") or []
    if calls:
        message["content"] = result["content"] or None
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": json.dumps(call.get("input") or {}),
                },
            }
            for call in calls
        ]
    stop_reason = result.get("stopReason") or ("tool_use" if calls else "end_turn")
    usage = result["usage"]
    return JSONResponse(
        {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": body.model if body.model in TIERS else result["model"],
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": FINISH_REASONS.get(stop_reason, stop_reason),
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": usage["promptTokens"],
                "completion_tokens": usage["completionTokens"],
                "total_tokens": usage["totalTokens"],
            },
        }
    )


async def _stream_chat(
    llm: Any,
    messages: list[dict[str, Any]],
    options: dict[str, Any],
    body: ChatRequest,
    ident: str,
    created: int,
) -> Response:
    stream_chat = getattr(llm, "stream_chat", None)
    if stream_chat is not None:
        chunks = stream_chat(messages, options)
    else:
        prompt, system = _flatten(messages)
        if system:
            options["system_prompt"] = system
        chunks = llm.stream(prompt, options)
    model = body.model or options.get("model") or "default"

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        data = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(data)}\n\n"

    def error_chunk(exc: KbError) -> str:
        kind = OPENAI_ERROR_TYPES.get(exc.status, "server_error")
        error = {"message": exc.message, "type": kind, "code": exc.code.lower()}
        return f"data: {json.dumps({'error': error})}\n\n"

    return await _sse(
        chunks,
        lambda text: chunk({"content": text}),
        error_chunk,
        first_events=[chunk({"role": "assistant", "content": ""})],
        last_events=[chunk({}, "stop")],
    )


# --- /telemetry/v1/ingest -----------------------------------------------------------------------


@requires("viewer")
async def telemetry_ingest(request: Request) -> JSONResponse:
    """Ingest 1..500 telemetry events into analytics, in the caller's namespace."""
    body = await json_body(request, TelemetryBody)
    analytics = request.app.state.runtime.adapters.get("analytics")
    if analytics is None:
        raise KbError(
            "ANALYTICS_UNAVAILABLE",
            "the analytics adapter is switched off (platform.adapters.analytics is null)",
            503,
        )
    namespace = namespace_of(request.scope)
    for event in body.events:
        await analytics.track(
            event.type,
            event.payload,
            namespace_id=namespace,
            source={"product": event.source, "version": event.tags.get("version", "")},
            ctx={"tags": event.tags} if event.tags else None,
            ts=event.timestamp,
        )
    return JSONResponse({"ok": True, "accepted": len(body.events), "rejected": 0})


routes = [
    Route("/platform/v1/{adapter}/{method}", platform_call, methods=["POST"]),
    Route("/llm/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/telemetry/v1/ingest", telemetry_ingest, methods=["POST"]),
]
