"""An OpenAI-compatible HTTP server for tests: real HTTP on a loopback port, scripted.

The real openai SDK (and our adapters) talk to it exactly as to api.openai.com. It runs
Hypercorn in a background thread with its own event loop, so sync and async tests, and
server processes started by a test, can all use it.

    with OpenAIServer() as server:                       # or the `openai_server` fixture
        server.script("chat", rate_limited("1"), completion("hello"))
        ...  point an adapter at server.url ...
        assert len(server.requests("chat")) == 2

Endpoints: POST /v1/chat/completions ("chat"), POST /v1/embeddings ("embeddings"),
GET /v1/models ("models"). Each endpoint has a queue of canned replies, used first in
first out; when it is empty the server answers by itself: chat echoes the last user
message (`echo: <text>`) with usage counted as ceil(chars / 4), embeddings returns
deterministic unit vectors (seeded by the text) of the requested `dimensions` or
`embedding_dimensions`. A chat reply asked for with `stream: true` is sent as SSE
chunks (word by word) with a final usage chunk when `stream_options.include_usage` is
set, unless the reply says otherwise.

Every request is recorded (`requests(endpoint)`): path, headers, JSON body and the
server's `time.monotonic()` at arrival.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import random
import socket
import struct
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ENDPOINTS = ("chat", "embeddings", "models")


# --- canned replies -----------------------------------------------------------------------


@dataclass
class Canned:
    """One scripted answer. `kind`: "chat" (a completion, streamed when asked to),
    "stream" (SSE chunks), "embeddings", "json" (any body, status and headers)."""

    kind: str
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait before answering (timeouts); cut short when stopping
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, int] | bool | None = True  # True: counted; False/None: none sent
    model: str | None = None
    chunks: list[str] | None = None
    dimensions: int | None = None  # embeddings: force this length
    chunk_delay_s: float = 0.0  # stream: wait between chunks

    def after(self, delay_s: float) -> Canned:
        self.delay_s = delay_s
        return self


def completion(
    content: str = "",
    *,
    usage: dict[str, int] | bool | None = True,
    model: str | None = None,
    finish_reason: str | None = None,
) -> Canned:
    """A chat completion with `content` (streamed word by word if the client streams)."""
    return Canned("chat", content=content, usage=usage, model=model, finish_reason=finish_reason)


def tool_call(
    name: str,
    arguments: dict[str, Any] | str,
    *,
    call_id: str = "call_1",
    content: str = "",
    usage: dict[str, int] | bool | None = True,
) -> Canned:
    """A completion whose message calls one tool (finish_reason `tool_calls`)."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}
    return Canned(
        "chat", content=content, tool_calls=[call], finish_reason="tool_calls", usage=usage
    )


def stream(
    chunks: list[str],
    *,
    usage: dict[str, int] | bool | None = True,
    chunk_delay_s: float = 0.0,
) -> Canned:
    """SSE chunks exactly as given; `usage=False` never sends a usage chunk (a server
    that ignores `stream_options`)."""
    return Canned("stream", chunks=list(chunks), usage=usage, chunk_delay_s=chunk_delay_s)


def error(
    status: int,
    message: str = "scripted error",
    *,
    type: str | None = None,
    headers: dict[str, str] | None = None,
) -> Canned:
    """An error in OpenAI's shape: {"error": {message, type, code}}."""
    kind = type or ("rate_limit_error" if status == 429 else "api_error")
    body = {"error": {"message": message, "type": kind, "code": None, "param": None}}
    return Canned("json", status=status, body=body, headers=dict(headers or {}))


def rate_limited(retry_after: str | None = "1", message: str = "slow down") -> Canned:
    return error(429, message, headers={"Retry-After": retry_after} if retry_after else None)


def embeddings(*, dimensions: int | None = None, usage: bool = True) -> Canned:
    """Computed vectors for the request's inputs; `dimensions` forces their length."""
    return Canned("embeddings", dimensions=dimensions, usage=usage)


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Canned:
    return Canned("json", status=status, body=body, headers=dict(headers or {}))


# --- what the server saw --------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    endpoint: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() when the request arrived

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text`."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    values = [rng.gauss(0, 1) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


# --- the server ------------------------------------------------------------------------------


class OpenAIServer:
    def __init__(self, *, model: str = "fake-model", embedding_dimensions: int = 1536) -> None:
        self.model = model
        self.embedding_dimensions = embedding_dimensions
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Canned]] = defaultdict(deque)
        self._received: list[Received] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._socket: socket.socket | None = None
        self._error: BaseException | None = None
        self.port = 0

    # --- scripting and inspection ---

    @property
    def url(self) -> str:
        """The base URL for the SDK (`…/v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, endpoint: str, *replies: Canned) -> OpenAIServer:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {ENDPOINTS}")
        with self._lock:
            self._queues[endpoint].extend(replies)
        return self

    def pending(self, endpoint: str) -> int:
        with self._lock:
            return len(self._queues[endpoint])

    def requests(self, endpoint: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if endpoint is None or r.endpoint == endpoint]

    def reset(self) -> None:
        with self._lock:
            self._queues.clear()
            self._received.clear()

    # --- lifecycle ---

    def start(self) -> OpenAIServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self._socket = sock
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="openai-test-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the OpenAI test server did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"the OpenAI test server failed: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # reported by start() or seen in the test's failure
            self._error = exc
            ready.set()
        finally:
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        config = Config()
        assert self._socket is not None
        # a duplicate: Hypercorn owns (and closes) its descriptor, we close ours
        config.bind = [f"fd://{os.dup(self._socket.fileno())}"]
        config.graceful_timeout = 1.0
        config.accesslog = None
        config.errorlog = None
        config.loglevel = "WARNING"
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        loop = asyncio.get_running_loop()
        loop.call_soon(ready.set)
        await serve(app, config, shutdown_trigger=self._stopping.wait)  # type: ignore[arg-type]

    # --- handlers ---

    async def _record(self, endpoint: str, request: Request) -> tuple[Any, Canned | None]:
        arrived = time.monotonic()
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode(errors="replace")
        with self._lock:
            self._received.append(
                Received(endpoint, request.url.path, dict(request.headers), body, arrived)
            )
            canned = self._queues[endpoint].popleft() if self._queues[endpoint] else None
        if canned is not None and canned.delay_s > 0:
            await self._wait(canned.delay_s)
        return body, canned

    async def _wait(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _chat(self, request: Request) -> Response:
        body, canned = await self._record("chat", request)
        body = body if isinstance(body, dict) else {}
        if canned is None:
            last = next(
                (
                    m.get("content")
                    for m in reversed(body.get("messages") or [])
                    if m.get("role") == "user"
                ),
                "",
            )
            canned = completion(f"echo: {last if isinstance(last, str) else json.dumps(last)}")
        if canned.kind == "json":
            return JSONResponse(canned.body, canned.status, headers=canned.headers)
        model = canned.model or body.get("model") or self.model
        prompt_tokens = tokens(json.dumps(body.get("messages") or []))
        if canned.kind == "stream" or body.get("stream"):
            return self._stream_reply(canned, body, model, prompt_tokens)
        if canned.kind != "chat":
            return JSONResponse({"error": {"message": f"cannot answer chat with {canned.kind}"}})
        message: dict[str, Any] = {"role": "assistant", "content": canned.content or None}
        if canned.tool_calls:
            message["tool_calls"] = canned.tool_calls
        elif message["content"] is None:
            message["content"] = ""
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": canned.finish_reason or "stop",
                    "logprobs": None,
                }
            ],
        }
        usage = self._usage(canned, prompt_tokens, canned.content)
        if usage is not None:
            answer["usage"] = usage
        return JSONResponse(answer, canned.status, headers=canned.headers)

    @staticmethod
    def _usage(canned: Canned, prompt_tokens: int, text: str) -> dict[str, int] | None:
        if isinstance(canned.usage, dict):
            usage = dict(canned.usage)
            usage.setdefault(
                "total_tokens", usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
            )
            return usage
        if not canned.usage:
            return None
        completion_tokens = tokens(text)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def _stream_reply(
        self, canned: Canned, body: dict[str, Any], model: str, prompt_tokens: int
    ) -> StreamingResponse:
        pieces = canned.chunks
        if pieces is None:
            words = canned.content.split(" ")
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)] if words else []
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        usage = self._usage(canned, prompt_tokens, "".join(pieces)) if include_usage else None
        ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            data = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(data)}\n\n"

        async def events() -> AsyncIterator[str]:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
            for piece in pieces:
                if canned.chunk_delay_s:
                    await self._wait(canned.chunk_delay_s)
                yield chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
            reason = canned.finish_reason or "stop"
            yield chunk([{"index": 0, "delta": {}, "finish_reason": reason}])
            if usage is not None:
                yield chunk([], usage=usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(), canned.status, headers=canned.headers, media_type="text/event-stream"
        )

    async def _embeddings(self, request: Request) -> Response:
        body, canned = await self._record("embeddings", request)
        body = body if isinstance(body, dict) else {}
        canned = canned or embeddings()
        if canned.kind == "json":
            return JSONResponse(canned.body, canned.status, headers=canned.headers)
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        size = canned.dimensions or body.get("dimensions") or self.embedding_dimensions
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            values = vector(str(text), int(size))
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
                if as_base64
                else values
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        answer: dict[str, Any] = {
            "object": "list",
            "data": data,
            "model": body.get("model") or self.model,
        }
        if canned.usage:
            counted = sum(tokens(str(t)) for t in texts)
            answer["usage"] = {"prompt_tokens": counted, "total_tokens": counted}
        return JSONResponse(answer, canned.status, headers=canned.headers)

    async def _models(self, request: Request) -> Response:
        _, canned = await self._record("models", request)
        if canned is not None and canned.kind == "json":
            return JSONResponse(canned.body, canned.status, headers=canned.headers)
        return JSONResponse(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "test"}]}
        )


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A started OpenAIServer, stopped after the test. Import it into a test module
    (`from tests.openai_server import openai_server  # noqa: F401`) to use it."""
    with OpenAIServer() as server:
        yield server
