"""The parent side of `ctx`: every operation a handler can ask for, each checked by the
handler's `Guard` before it does any I/O.

In-process handlers reach these functions directly; subprocess workers reach them over
the JSON-lines pipe (kblabs.plugins.worker). Either way this module is the security
boundary: nothing here trusts what the worker says it may do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from kblabs.errors import KbError
from kblabs.platform.usage import charged_to
from kblabs.plugins.permissions import Guard

MAX_FETCH_BYTES = 10 * 1024 * 1024
MAX_SHELL_OUTPUT = 1024 * 1024
# Shell commands get these variables from the platform's environment and nothing else
# (the platform's own secrets must not leak into a plugin's child process).
SHELL_BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")

UiSink = Callable[[str, dict[str, Any]], None]
Invoker = Callable[[str, Any, int | None], Awaitable[Any]]

# Adapter methods a plugin may call, per token, and which argument names the resource
# the permission is checked against (cache key, storage path…; None: the flag alone).
ADAPTER_METHODS: dict[str, dict[str, int | None]] = {
    "cache": {"get": 0, "set": 0, "delete": 0, "clear": None},
    "storage": {"read": 0, "write": 0, "delete": 0, "list": 0, "exists": 0},
    "analytics": {"track": None},
    "eventBus": {"publish": 0},
    "llm": {"complete": None, "chat": None, "chat_with_tools": None},
    "embeddings": {"embed": None, "embed_batch": None, "get_dimensions": None},
    # The resource of a vector-store call is its `collection=` (default "default").
    "vectorStore": {
        "search": None,
        "upsert": None,
        "delete": None,
        "get": None,
        "count": None,
        "drop_collection": None,
    },
}
# The permission flag that governs each token (`platform.events` covers the bus).
PERMISSION_OF = {"eventBus": "events"}


@dataclass
class Services:
    """What one handler call may use; built by the runner for each call."""

    guard: Guard
    tenant_id: str
    outdir: Path
    adapters: Any = None  # AdapterRegistry | None
    state: Any = None  # StateBroker | None
    ui: UiSink | None = None
    invoke: Invoker | None = None
    hosts: Any = None  # HostHub | None: connected host agents (the server only)

    @property
    def plugin_id(self) -> str:
        return self.guard.plugin_id


Operation = Callable[[Services, dict[str, Any]], Awaitable[Any]]
OPERATIONS: dict[str, Operation] = {}


def operation(name: str) -> Callable[[Operation], Operation]:
    def register(fn: Operation) -> Operation:
        OPERATIONS[name] = fn
        return fn

    return register


async def dispatch(services: Services, op: str, args: dict[str, Any]) -> Any:
    """Run `op` for a handler; unknown operations are refused, not guessed at."""
    if op.startswith("platform."):
        return await _adapter_call(services, op, args)
    fn = OPERATIONS.get(op)
    if fn is None:
        raise KbError("UNKNOWN_OPERATION", f"no such ctx operation: {op}", 400)
    try:
        return await fn(services, args)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
        raise KbError("FS_ERROR", f"{op}: {exc.strerror}: {exc.filename}", 400) from None


def log(services: Services, level: str, message: str, fields: dict[str, Any]) -> None:
    logger.bind(plugin=services.plugin_id, **fields).log(level.upper(), "{}", message)


# --- files -----------------------------------------------------------------------------


@operation("fs.read_file")
async def _read_file(services: Services, args: dict[str, Any]) -> str:
    path = services.guard.check_read(args["path"])
    return await asyncio.to_thread(path.read_text, args.get("encoding") or "utf-8")


@operation("fs.read_bytes")
async def _read_bytes(services: Services, args: dict[str, Any]) -> bytes:
    return await asyncio.to_thread(services.guard.check_read(args["path"]).read_bytes)


def _write(path: Path, data: bytes, append: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab" if append else "wb") as handle:
        handle.write(data)


@operation("fs.write_file")
async def _write_file(services: Services, args: dict[str, Any]) -> None:
    path = services.guard.check_write(args["path"])
    data = str(args["content"]).encode(args.get("encoding") or "utf-8")
    await asyncio.to_thread(_write, path, data, bool(args.get("append")))


@operation("fs.write_bytes")
async def _write_bytes(services: Services, args: dict[str, Any]) -> None:
    path = services.guard.check_write(args["path"])
    await asyncio.to_thread(_write, path, bytes(args["data"]), False)


def _stat(path: Path) -> dict[str, Any]:
    info = path.stat()
    return {
        "name": path.name,
        "type": "dir" if path.is_dir() else "file",
        "size": info.st_size,
        "mtimeMs": int(info.st_mtime * 1000),
    }


@operation("fs.readdir")
async def _readdir(services: Services, args: dict[str, Any]) -> list[Any]:
    root = services.guard.check_read(args.get("path") or ".")
    entries = sorted(root.iterdir())
    return [_stat(e) for e in entries] if args.get("stats") else [e.name for e in entries]


@operation("fs.stat")
async def _stat_op(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    return _stat(services.guard.check_read(args["path"]))


@operation("fs.exists")
async def _exists(services: Services, args: dict[str, Any]) -> bool:
    return services.guard.check_read(args["path"]).exists()


@operation("fs.mkdir")
async def _mkdir(services: Services, args: dict[str, Any]) -> None:
    services.guard.check_write(args["path"]).mkdir(
        parents=bool(args.get("parents", True)), exist_ok=True
    )


@operation("fs.rm")
async def _rm(services: Services, args: dict[str, Any]) -> None:
    path = services.guard.check_write(args["path"])
    if path.is_dir() and not path.is_symlink():
        if not args.get("recursive"):
            raise KbError("FS_ERROR", f"{args['path']} is a folder: pass recursive=True", 400)
        await asyncio.to_thread(shutil.rmtree, path)
    else:
        path.unlink(missing_ok=True)


@operation("fs.copy")
async def _copy(services: Services, args: dict[str, Any]) -> None:
    source = services.guard.check_read(args["source"])
    target = services.guard.check_write(args["target"])
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        await asyncio.to_thread(shutil.copytree, source, target, dirs_exist_ok=True)
    else:
        await asyncio.to_thread(shutil.copy2, source, target)


@operation("fs.move")
async def _move(services: Services, args: dict[str, Any]) -> None:
    source = services.guard.check_write(args["source"])  # moving removes: a write
    target = services.guard.check_write(args["target"])
    target.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(shutil.move, source, target)


@operation("fs.glob")
async def _glob(services: Services, args: dict[str, Any]) -> list[str]:
    """Matches under cwd, minus what the handler may not read (skipped, not an error)."""
    cwd = services.guard.cwd
    found = []
    for path in sorted(cwd.glob(args["pattern"])):
        with contextlib.suppress(KbError):
            services.guard.check_read(path)
            found.append(path.relative_to(cwd).as_posix())
    return found


# --- network and shell -----------------------------------------------------------------


@operation("fetch")
async def _fetch(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    import httpx

    url = str(args["url"])
    services.guard.check_fetch(url)
    timeout = (args.get("timeout_ms") or 30_000) / 1000
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout) as client:
        try:
            response = await client.request(
                str(args.get("method") or "GET").upper(),
                url,
                headers=args.get("headers") or {},
                content=args.get("body"),
                json=args.get("json"),
            )
        except httpx.HTTPError as exc:
            raise KbError("FETCH_FAILED", f"{url}: {type(exc).__name__}: {exc}", 502) from None
    if len(response.content) > MAX_FETCH_BYTES:
        raise KbError("FETCH_FAILED", f"{url}: response larger than {MAX_FETCH_BYTES} bytes", 502)
    return {
        "status": response.status_code,
        "headers": dict(response.headers),
        "text": response.text,
        "url": str(response.url),
    }


@operation("shell.exec")
async def _shell(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    argv = [str(args["command"]), *[str(a) for a in args.get("args") or []]]
    services.guard.check_shell(argv)
    cwd = services.guard.check_read(args.get("cwd") or ".")
    env = {k: os.environ[k] for k in SHELL_BASE_ENV if k in os.environ}
    env.update({str(k): str(v) for k, v in (args.get("env") or {}).items()})
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # so a timeout can kill everything it started
    )
    timeout = (args.get("timeout_ms") or 30_000) / 1000
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise KbError(
            "SHELL_TIMEOUT", f"{argv[0]} did not finish within {int(timeout * 1000)} ms", 504
        ) from None
    return {
        "code": process.returncode,
        "stdout": stdout[-MAX_SHELL_OUTPUT:].decode(errors="replace"),
        "stderr": stderr[-MAX_SHELL_OUTPUT:].decode(errors="replace"),
    }


# --- state, artifacts, events, invoke, ui ----------------------------------------------


def _state_key(services: Services, args: dict[str, Any]) -> str:
    namespace = args.get("namespace") or services.plugin_id
    services.guard.check_state(namespace)
    if services.state is None:
        raise KbError("STATE_UNAVAILABLE", "the state broker runs only inside the server", 503)
    return f"{services.tenant_id}:{namespace}:{args['key']}"


@operation("state.get")
async def _state_get(services: Services, args: dict[str, Any]) -> Any:
    from kblabs.state.backend import MISSING

    key = _state_key(services, args)  # checks permission and availability first
    value = await services.state.get(key)
    return None if value is MISSING else value


@operation("state.set")
async def _state_set(services: Services, args: dict[str, Any]) -> None:
    key = _state_key(services, args)
    await services.state.set(key, args["value"], args.get("ttl_ms"))


@operation("state.delete")
async def _state_delete(services: Services, args: dict[str, Any]) -> bool:
    key = _state_key(services, args)
    return await services.state.delete(key)


def _artifact(services: Services, name: str) -> Path:
    path = services.guard.check_write(services.outdir / name)
    if not path.is_relative_to(services.guard.outdir):
        raise KbError("VALIDATION_ERROR", f"artifact {name!r} is outside the output folder", 400)
    return path


@operation("artifacts.write")
async def _artifact_write(services: Services, args: dict[str, Any]) -> str:
    path = _artifact(services, args["name"])
    await asyncio.to_thread(_write, path, bytes(args["data"]), False)
    return str(path)


@operation("artifacts.read")
async def _artifact_read(services: Services, args: dict[str, Any]) -> bytes:
    return await asyncio.to_thread(_artifact(services, args["name"]).read_bytes)


@operation("artifacts.exists")
async def _artifact_exists(services: Services, args: dict[str, Any]) -> bool:
    return _artifact(services, args["name"]).exists()


@operation("artifacts.list")
async def _artifact_list(services: Services, args: dict[str, Any]) -> list[str]:
    root = services.guard.outdir
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@operation("events.emit")
async def _emit(services: Services, args: dict[str, Any]) -> None:
    name = str(args["name"])
    services.guard.check_platform("events", name)
    bus = services.adapters.get("eventBus") if services.adapters else None
    if bus is None:
        raise KbError("ADAPTER_NOT_CONFIGURED", "no event bus is configured", 503)
    await bus.publish(f"{services.plugin_id}:{name}", args.get("payload"))


@operation("hosts.call")
async def _host_call(services: Services, args: dict[str, Any]) -> Any:
    """A capability of a host agent connected in the plugin's tenant, e.g.
    `filesystem.fetchWorkspace` on a developer's laptop. The permission is
    `platform.hosts`: true, or a list of capability prefixes (`["filesystem"]`)."""
    capability, method = str(args["capability"]), str(args["method"])
    services.guard.check_platform("hosts", f"{capability}.{method}")
    if services.hosts is None:
        raise KbError("HOSTS_UNAVAILABLE", "host agents are reachable only in the server", 503)
    return await services.hosts.call(
        services.tenant_id,
        str(args["host_id"]),
        capability,
        method,
        list(args.get("args") or []),
        args.get("timeout_ms"),
    )


@operation("invoke.call")
async def _invoke(services: Services, args: dict[str, Any]) -> Any:
    target = str(args["target"])
    services.guard.check_invoke(target.rpartition("/")[0] or target)  # <pluginId>/<handler>
    if services.invoke is None:
        raise KbError("INVOKE_UNAVAILABLE", "plugin invocation is not available here", 503)
    return await services.invoke(target, args.get("input"), args.get("timeout_ms"))


@operation("ui.message")
@operation("ui.json")
@operation("ui.table")
async def _ui(services: Services, args: dict[str, Any]) -> None:
    if services.ui is not None:
        services.ui(args.get("level") or ("json" if "data" in args else "table"), args)


# --- platform adapters -----------------------------------------------------------------


async def _adapter_call(services: Services, op: str, args: dict[str, Any]) -> Any:
    _, token, method = [*op.split(".", 2), "", ""][:3]
    allowed = ADAPTER_METHODS.get(token)
    if allowed is None or method not in allowed:
        raise KbError("ADAPTER_CALL_REJECTED", f"{token}.{method} is not callable by plugins", 403)
    positional = list(args.get("args") or [])
    kwargs = dict(args.get("kwargs") or {})
    index = allowed[method]
    resource = None
    if index is not None:
        resource = str(positional[index]) if len(positional) > index else kwargs.get("key")
        resource = resource or kwargs.get("path") or kwargs.get("prefix") or ""
    if token == "vectorStore":
        resource = str(kwargs.get("collection") or "default")
    services.guard.check_platform(PERMISSION_OF.get(token, token), resource)
    adapter = services.adapters.get(token) if services.adapters else None
    if adapter is None:
        raise KbError("ADAPTER_NOT_CONFIGURED", f"no {token} adapter is configured", 503)
    if token == "analytics":  # a plugin's events are its own, in its tenant
        kwargs["namespace_id"] = services.tenant_id
        kwargs.setdefault("source", {"product": services.plugin_id, "version": ""})
    if token == "vectorStore":  # a plugin's collections live in its tenant's namespace
        kwargs["namespace"] = services.tenant_id
    if token == "eventBus" and positional:  # published under the plugin's name
        positional[0] = f"{services.plugin_id}:{positional[0]}"
    with charged_to(services.tenant_id):  # usage events land in the plugin's tenant
        return await getattr(adapter, method)(*positional, **kwargs)
