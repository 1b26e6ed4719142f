"""`ctx`: what a plugin handler receives, the same object in every execution mode.

Everything that touches the world (files, network, shell, state, platform adapters,
other plugins, the UI) goes through one door, `Transport.call(op, args)`. In process
the transport calls `kblabs.plugins.operations` directly; in a subprocess worker it
sends the call to the parent over JSON lines. Either way the permission check happens
in the parent, before any I/O, so a worker cannot grant itself more than its manifest.

This module imports only the standard library: the subprocess worker loads it, and
every millisecond of its import time is paid per plugin call.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

# Readable by every plugin whatever its manifest says (reference §7).
ALWAYS_ENV = frozenset({"NODE_ENV", "KB_ENV", "CI", "DEBUG", "TZ", "LANG", "LC_ALL"})

PLATFORM_TOKENS = (
    "cache",
    "storage",
    "analytics",
    "eventBus",
    "llm",
    "embeddings",
    "vectorStore",
)


def env_allowed(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Exact names or `PREFIX*` patterns, plus the always-readable set."""
    if name in ALWAYS_ENV:
        return True
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in patterns)


def encode(value: Any) -> Any:
    """JSON-safe form for the worker pipe: bytes become {"$bytes": base64}."""
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


class Transport(Protocol):
    async def call(self, op: str, args: dict[str, Any]) -> Any: ...


_current: ContextVar[HandlerContext | None] = ContextVar("kb_handler_context", default=None)


def current_context() -> HandlerContext | None:
    """The context of the handler running in this task/thread, if any (for the hooks)."""
    return _current.get()


# --- facades ---------------------------------------------------------------------------


class _Facade:
    def __init__(self, transport: Transport, prefix: str) -> None:
        self._transport = transport
        self._prefix = prefix

    async def _call(self, method: str, /, **args: Any) -> Any:
        return await self._transport.call(f"{self._prefix}.{method}", args)


class FileSystem(_Facade):
    """`ctx.runtime.fs`: paths relative to `ctx.cwd`; checked against fs permissions."""

    async def read_file(self, path: str | Path, encoding: str = "utf-8") -> str:
        return await self._call("read_file", path=str(path), encoding=encoding)

    async def read_bytes(self, path: str | Path) -> bytes:
        return await self._call("read_bytes", path=str(path))

    async def write_file(
        self, path: str | Path, content: str, *, append: bool = False, encoding: str = "utf-8"
    ) -> None:
        await self._call(
            "write_file", path=str(path), content=content, append=append, encoding=encoding
        )

    async def write_bytes(self, path: str | Path, data: bytes) -> None:
        await self._call("write_bytes", path=str(path), data=data)

    async def readdir(self, path: str | Path = ".", *, stats: bool = False) -> list[Any]:
        return await self._call("readdir", path=str(path), stats=stats)

    async def stat(self, path: str | Path) -> dict[str, Any]:
        return await self._call("stat", path=str(path))

    async def exists(self, path: str | Path) -> bool:
        return await self._call("exists", path=str(path))

    async def mkdir(self, path: str | Path, *, parents: bool = True) -> None:
        await self._call("mkdir", path=str(path), parents=parents)

    async def rm(self, path: str | Path, *, recursive: bool = False) -> None:
        await self._call("rm", path=str(path), recursive=recursive)

    async def copy(self, source: str | Path, target: str | Path) -> None:
        await self._call("copy", source=str(source), target=str(target))

    async def move(self, source: str | Path, target: str | Path) -> None:
        await self._call("move", source=str(source), target=str(target))

    async def glob(self, pattern: str) -> list[str]:
        """Paths (relative to cwd) matching `pattern`; `**` recurses."""
        return await self._call("glob", pattern=pattern)


@dataclass(frozen=True)
class FetchResponse:
    status: int
    headers: dict[str, str]
    text: str
    url: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        import json

        return json.loads(self.text)


class Fetch(_Facade):
    """`ctx.runtime.fetch(url, …)`: HTTP through the network allowlist. Redirects are not
    followed (each hop would need its own check): a 3xx comes back as it is."""

    async def __call__(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: str | None = None,
        json: Any = None,
        timeout_ms: int = 30_000,
    ) -> FetchResponse:
        raw = await self._transport.call(
            "fetch",
            {
                "url": url,
                "method": method,
                "headers": headers or {},
                "body": body,
                "json": json,
                "timeout_ms": timeout_ms,
            },
        )
        return FetchResponse(**raw)


class Runtime:
    def __init__(self, transport: Transport, env: dict[str, str], env_allow: tuple[str, ...]):
        self.fs = FileSystem(transport, "fs")
        self.fetch = Fetch(transport, "fetch")
        self._env = env
        self._env_allow = env_allow

    def env(self, name: str) -> str | None:
        """The variable's value, or None when it is unset or not in `env.read`."""
        return self._env.get(name) if env_allowed(name, self._env_allow) else None


class State(_Facade):
    """`ctx.api.state`: keys live under `<tenant>:<plugin>:`; another plugin's
    namespace needs `permissions.state.namespaces`."""

    async def get(self, key: str, *, namespace: str | None = None) -> Any:
        return await self._call("get", key=key, namespace=namespace)

    async def set(
        self, key: str, value: Any, *, ttl_ms: int | None = None, namespace: str | None = None
    ) -> None:
        await self._call("set", key=key, value=value, ttl_ms=ttl_ms, namespace=namespace)

    async def delete(self, key: str, *, namespace: str | None = None) -> bool:
        return await self._call("delete", key=key, namespace=namespace)

    async def has(self, key: str, *, namespace: str | None = None) -> bool:
        return await self.get(key, namespace=namespace) is not None

    async def get_many(self, keys: list[str]) -> dict[str, Any]:
        return {key: await self.get(key) for key in keys}

    async def set_many(self, values: dict[str, Any], *, ttl_ms: int | None = None) -> None:
        for key, value in values.items():
            await self.set(key, value, ttl_ms=ttl_ms)


class Artifacts(_Facade):
    """`ctx.api.artifacts`: files under `ctx.outdir` (always writable)."""

    def __init__(self, transport: Transport, outdir: Path) -> None:
        super().__init__(transport, "artifacts")
        self._outdir = outdir

    def path(self, name: str) -> Path:
        return self._outdir / name

    async def write(self, name: str, content: str | bytes) -> str:
        data = content.encode() if isinstance(content, str) else content
        return await self._call("write", name=name, data=data)

    async def read(self, name: str) -> str:
        return (await self.read_bytes(name)).decode()

    async def read_bytes(self, name: str) -> bytes:
        return await self._call("read", name=name)

    async def list(self) -> list[str]:
        return await self._call("list")

    async def exists(self, name: str) -> bool:
        return await self._call("exists", name=name)


@dataclass(frozen=True)
class ShellResult:
    code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0


class Shell(_Facade):
    async def exec(
        self,
        command: str,
        args: list[str] | None = None,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_ms: int = 30_000,
        throw_on_error: bool = False,
    ) -> ShellResult:
        """Run `command args…` (no shell); the program must be in `shell.allow`."""
        raw = await self._call(
            "exec", command=command, args=list(args or []), cwd=cwd, env=env, timeout_ms=timeout_ms
        )
        result = ShellResult(**raw)
        if throw_on_error and not result.ok:
            from kblabs.sdk import PluginError

            raise PluginError(
                "SHELL_COMMAND_FAILED",
                f"{command} exited with {result.code}: {result.stderr.strip()[-500:]}",
                500,
            )
        return result


class Events(_Facade):
    async def emit(self, name: str, payload: Any = None) -> None:
        """Publish `<pluginId>:<name>` on the event bus (needs `platform.events`)."""
        await self._call("emit", name=name, payload=payload)


class Invoke(_Facade):
    async def call(self, target: str, input: Any = None, *, timeout_ms: int | None = None) -> Any:
        """Run another plugin's workflow handler, `<pluginId>/<handlerId>`
        (the plugin id must be in `invoke.allow`)."""
        return await self._call("call", target=target, input=input, timeout_ms=timeout_ms)


class Hosts(_Facade):
    async def call(
        self,
        host_id: str,
        capability: str,
        method: str,
        *args: Any,
        timeout_ms: int | None = None,
    ) -> Any:
        """Run `capability.method(*args)` on a host agent connected in this tenant
        (`ctx.api.hosts.call(host, "filesystem", "readFile", "src/a.py")`); needs
        `platform.hosts` (true, or capability prefixes). Server calls only."""
        return await self._call(
            "call",
            host_id=host_id,
            capability=capability,
            method=method,
            args=list(args),
            timeout_ms=timeout_ms,
        )


class Lifecycle:
    def __init__(self) -> None:
        self.cleanups: list[Callable[[], Any]] = []

    def on_cleanup(self, fn: Callable[[], Any]) -> None:
        """`fn()` (plain or async) runs after the handler, whatever happened."""
        self.cleanups.append(fn)


class Api:
    def __init__(self, transport: Transport, outdir: Path) -> None:
        self.state = State(transport, "state")
        self.artifacts = Artifacts(transport, outdir)
        self.shell = Shell(transport, "shell")
        self.events = Events(transport, "events")
        self.invoke = Invoke(transport, "invoke")
        self.hosts = Hosts(transport, "hosts")
        self.lifecycle = Lifecycle()


class UI(_Facade):
    """`ctx.ui`: printed by the CLI; logged at debug level by the other hosts.
    Interactive prompts answer their default outside a terminal."""

    async def _say(self, level: str, text: Any) -> None:
        await self._call("message", level=level, text=str(text))

    async def info(self, text: Any) -> None:
        await self._say("info", text)

    async def success(self, text: Any) -> None:
        await self._say("success", text)

    async def warn(self, text: Any) -> None:
        await self._say("warn", text)

    async def error(self, text: Any) -> None:
        await self._say("error", text)

    async def debug(self, text: Any) -> None:
        await self._say("debug", text)

    async def write(self, text: Any) -> None:
        await self._say("write", text)

    async def newline(self) -> None:
        await self._say("write", "")

    async def divider(self) -> None:
        await self._say("write", "─" * 40)

    async def json(self, data: Any) -> None:
        await self._call("json", data=data)

    async def table(self, rows: list[dict[str, Any]]) -> None:
        await self._call("table", rows=rows)

    async def box(self, title: str, lines: list[str]) -> None:
        await self._say("write", "\n".join([f"┌ {title}", *[f"│ {line}" for line in lines]]))

    async def confirm(self, question: str, default: bool = False) -> bool:
        return default

    async def prompt(self, question: str, default: str = "") -> str:
        return default


class Governed(_Facade):
    """A platform adapter as a plugin sees it: every method goes through the parent,
    which checks `permissions.platform.<token>` first. Not permitted → the first call
    raises PermissionDenied (so `if ctx.platform.cache:` still works)."""

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._transport.call(
                f"{self._prefix}.{method}", {"args": list(args), "kwargs": kwargs}
            )

        return call


class Logger:
    """`ctx.platform.logger`: lines tagged with the plugin and the request."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def _log(self, level: str, message: str, fields: dict[str, Any]) -> None:
        send = getattr(self._transport, "notify", None)
        if send is not None:
            send("log", {"level": level, "message": str(message), "fields": fields})

    def debug(self, message: str, **fields: Any) -> None:
        self._log("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._log("info", message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._log("warning", message, fields)

    warning = warn

    def error(self, message: str, **fields: Any) -> None:
        self._log("error", message, fields)


class Platform:
    """`ctx.platform`: None for an adapter the platform has not configured."""

    def __init__(self, transport: Transport, configured: tuple[str, ...]) -> None:
        self.logger = Logger(transport)
        self._transport = transport
        self._configured = configured

    def adapter(self, token: str) -> Governed | None:
        return Governed(self._transport, f"platform.{token}") if token in self._configured else None

    @property
    def cache(self) -> Governed | None:
        return self.adapter("cache")

    @property
    def storage(self) -> Governed | None:
        return self.adapter("storage")

    @property
    def analytics(self) -> Governed | None:
        return self.adapter("analytics")

    @property
    def event_bus(self) -> Governed | None:
        return self.adapter("eventBus")

    @property
    def llm(self) -> Governed | None:
        return self.adapter("llm")

    @property
    def embeddings(self) -> Governed | None:
        return self.adapter("embeddings")

    @property
    def vector_store(self) -> Governed | None:
        return self.adapter("vectorStore")


# --- the context ----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The JSON-able description of one call; crosses the process boundary as is."""

    host: str  # cli | rest | workflow | webhook | job | cron
    plugin_id: str
    plugin_version: str
    handler_id: str
    request_id: str
    trace_id: str
    tenant_id: str
    cwd: str
    outdir: str
    config: dict[str, Any] = field(default_factory=dict)
    host_context: dict[str, Any] = field(default_factory=dict)
    env_allow: tuple[str, ...] = ()
    configured: tuple[str, ...] = ()  # platform tokens with an adapter

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["env_allow"] = list(self.env_allow)
        data["configured"] = list(self.configured)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Identity:
        data = dict(data)
        data["env_allow"] = tuple(data.get("env_allow", ()))
        data["configured"] = tuple(data.get("configured", ()))
        return cls(**data)


class HandlerContext:
    """What `handler(ctx, input)` gets (reference §6)."""

    def __init__(self, identity: Identity, transport: Transport, env: dict[str, str]) -> None:
        self.identity = identity
        self.host = identity.host
        self.plugin_id = identity.plugin_id
        self.plugin_version = identity.plugin_version
        self.handler_id = identity.handler_id
        self.request_id = identity.request_id
        self.trace_id = identity.trace_id
        self.tenant_id = identity.tenant_id
        self.cwd = Path(identity.cwd)
        self.outdir = Path(identity.outdir)
        self.config = identity.config
        self.host_context = identity.host_context
        self.trace = {"trace_id": identity.trace_id, "span_id": identity.request_id}
        self.cancel = threading.Event()  # set on timeout, client disconnect, Ctrl-C
        self.runtime = Runtime(transport, env, identity.env_allow)
        self.api = Api(transport, self.outdir)
        self.ui = UI(transport, "ui")
        self.platform = Platform(transport, identity.configured)
        self._loop: asyncio.AbstractEventLoop | None = None

    def sync(self, awaitable: Coroutine[Any, Any, T]) -> T:
        """Run one of ctx's async calls from a plain (sync) handler, which runs in a
        worker thread: `ctx.sync(ctx.runtime.fs.write_file("a.txt", "x"))`."""
        if self._loop is None:
            raise RuntimeError("ctx.sync() works only while the handler runs")
        return asyncio.run_coroutine_threadsafe(awaitable, self._loop).result()


# --- calling a handler -----------------------------------------------------------------


def resolve_callable(handler: Any) -> Callable[..., Any]:
    """A handler is `fn(ctx, input)`, a class (one instance per call) or an object with
    `execute(ctx, input)`."""
    import inspect

    if inspect.isclass(handler):
        handler = handler()
    if not inspect.isroutine(handler) and callable(getattr(handler, "execute", None)):
        return handler.execute
    return handler


async def invoke_handler(handler: Any, ctx: HandlerContext, input: Any) -> Any:
    """Call the handler with `ctx` current (for the hooks); sync code runs in a thread;
    cleanups registered with `ctx.api.lifecycle.on_cleanup` always run."""
    import inspect

    if inspect.isclass(handler):  # one instance per call, so its cleanup() is its own
        handler = handler()
    target = resolve_callable(handler)
    ctx._loop = asyncio.get_running_loop()
    token = _current.set(ctx)
    try:
        if inspect.iscoroutinefunction(target):
            result = await target(ctx, input)
        else:
            result = await asyncio.to_thread(target, ctx, input)
        if inspect.isawaitable(result):  # a sync callable that returned a coroutine
            result = await result
        return result
    except asyncio.CancelledError:
        ctx.cancel.set()
        raise
    finally:
        _current.reset(token)
        await _run_cleanups(ctx, handler)


async def _run_cleanups(ctx: HandlerContext, handler: Any) -> None:
    import inspect

    cleanups = list(ctx.api.lifecycle.cleanups)
    own = getattr(handler, "cleanup", None)
    if callable(own) and not inspect.isroutine(handler):
        cleanups.append(own)
    for fn in cleanups:
        try:
            outcome = fn()
            if inspect.isawaitable(outcome):
                await outcome
        except Exception as exc:  # a failing cleanup must not hide the handler's result
            ctx.platform.logger.warn(f"cleanup {fn!r} failed: {type(exc).__name__}: {exc}")
