"""Handlers of `@kb-labs/mind`.

The plugin runs in the server process (built-ins are trusted platform code) and reads
the folder it indexes directly, in a worker thread: through `ctx.runtime.fs` every file
would be one permission-checked operation, and a repository has thousands. The folder
must be inside the call's working directory (the project root for REST and workflow
calls), so a request cannot make it read anything else. With `hostId` the folder is in
that host agent's workspace instead, fetched through the gateway (`ctx.api.hosts`).
Embeddings, vectors and the manifest go through `ctx.platform`, checked against the
manifest's permissions, in the caller's namespace.

Progress of a running index is kept here, in memory, under the caller's `jobId`, and
answered by `GET /index/progress`: the CLI polls it to draw its progress bar.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from kblabs.mind.index import MindError, MindIndex
from kblabs.mind.workspace import (
    DEFAULT_MAX_FILE_BYTES,
    HostWorkspace,
    LocalWorkspace,
    Workspace,
)
from kblabs.sdk import PluginError

MAX_TRACKED_JOBS = 100
HOST_TIMEOUT_MS = 300_000  # one fetch of a whole workspace from a laptop
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
STATUS_OF = {
    "MIND_INDEX_NOT_FOUND": 404,
    "MIND_ADAPTERS_MISSING": 503,
    "MIND_DIMENSIONS_CHANGED": 409,
}
PROGRESS: OrderedDict[str, dict[str, Any]] = OrderedDict()  # "<tenant>:<jobId>" → state


def _mind(ctx: Any, name: str | None) -> MindIndex:
    try:
        return MindIndex(
            embeddings=ctx.platform.embeddings,
            vectors=ctx.platform.vector_store,
            storage=ctx.platform.storage,
            name=name or "default",
            namespace=ctx.tenant_id,
        )
    except MindError as exc:
        raise _plugin_error(exc) from None


def _plugin_error(exc: MindError) -> PluginError:
    return PluginError(exc.code, exc.message, STATUS_OF.get(exc.code, 400))


def _workspace(ctx: Any, options: dict[str, Any]) -> Workspace:
    path, host_id = options.get("path"), options.get("hostId")
    if path is not None and not isinstance(path, str):
        raise PluginError("VALIDATION_ERROR", "path must be a string", 400)
    limit = options.get("maxFileBytes")
    limit = DEFAULT_MAX_FILE_BYTES if limit is None else limit
    if not isinstance(limit, int) or limit < 1:
        raise PluginError("VALIDATION_ERROR", "maxFileBytes must be a positive integer", 400)
    if host_id is not None:
        if not isinstance(host_id, str) or not host_id:
            raise PluginError("VALIDATION_ERROR", "hostId must be a host id", 400)

        async def call(capability: str, method: str, *args: Any) -> Any:
            return await ctx.api.hosts.call(
                host_id, capability, method, *args, timeout_ms=HOST_TIMEOUT_MS
            )

        # the agent keeps the path inside its workspace (NOT_FOUND / outside: refused there)
        return HostWorkspace(call, host_id, path or ".", max_file_bytes=limit)
    base = Path(ctx.cwd).resolve()
    root = (base / (path or ".")).resolve()
    if not root.is_relative_to(base):
        raise PluginError(
            "MIND_PATH_OUTSIDE_PROJECT", f"{path} is outside the project folder {base}", 400
        )
    if not root.is_dir():
        raise PluginError("MIND_PATH_NOT_FOUND", f"no folder {root}", 404)
    return LocalWorkspace(root, max_file_bytes=limit)


def _track(key: str | None, **state: Any) -> None:
    if key is None:
        return
    PROGRESS[key] = {**PROGRESS.get(key, {}), **state, "updatedAt": time.time()}
    PROGRESS.move_to_end(key)
    while len(PROGRESS) > MAX_TRACKED_JOBS:
        PROGRESS.popitem(last=False)


async def run_index(ctx: Any, options: dict[str, Any]) -> dict[str, Any]:
    mind = _mind(ctx, options.get("index"))
    workspace = _workspace(ctx, options)
    job = options.get("jobId")
    key = f"{ctx.tenant_id}:{job}" if job else None
    _track(key, state="running", stage="scan", done=0, total=0, path="")

    def progress(stage: str, done: int, total: int, path: str) -> None:
        _track(key, stage=stage, done=done, total=total, path=path)

    try:
        report = await mind.index(workspace, progress, rebuild=bool(options.get("rebuild")))
    except MindError as exc:
        _track(key, state="failed", error={"code": exc.code, "message": exc.message})
        raise _plugin_error(exc) from None
    except BaseException as exc:
        _track(key, state="failed", error={"code": type(exc).__name__, "message": str(exc)})
        raise
    result = report.to_json()
    _track(key, state="done", report=result)
    ctx.platform.logger.info(
        "mind index done",
        index=mind.name,
        files=result["files"],
        chunksEmbedded=result["chunksEmbedded"],
        durationMs=result["durationMs"],
    )
    return result


async def run_query(ctx: Any, options: dict[str, Any]) -> dict[str, Any]:
    text = options.get("q")
    if not isinstance(text, str) or not text.strip():
        raise PluginError("MIND_QUERY_EMPTY", "give the question as q", 400)
    try:
        limit = int(options.get("limit") or DEFAULT_LIMIT)
    except (TypeError, ValueError):
        raise PluginError("VALIDATION_ERROR", "limit must be a number", 400) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise PluginError("VALIDATION_ERROR", f"limit must be 1..{MAX_LIMIT}", 400)
    mind = _mind(ctx, options.get("index"))
    started = time.perf_counter()
    try:
        hits = await mind.query(text, limit)
    except MindError as exc:
        raise _plugin_error(exc) from None
    return {
        "index": mind.name,
        "query": text,
        "hits": [hit.to_json() for hit in hits],
        "tookMs": round((time.perf_counter() - started) * 1000, 1),
    }


# --- REST ------------------------------------------------------------------------------


async def index_route(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    body = input.get("body") or {}
    if not isinstance(body, dict):
        raise PluginError("VALIDATION_ERROR", "the body must be a JSON object", 400)
    return await run_index(ctx, body)


async def progress_route(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    job = input["query"].get("jobId")
    if not job:
        raise PluginError("VALIDATION_ERROR", "give ?jobId=", 400)
    state = PROGRESS.get(f"{ctx.tenant_id}:{job}")
    if state is None:
        raise PluginError("MIND_JOB_NOT_FOUND", f"no indexing job {job!r} here", 404)
    return {"jobId": job, **state}


async def query_route(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    return await run_query(ctx, dict(input["query"]))


async def status_route(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    return await _mind(ctx, input["query"].get("index")).status()


# --- workflow steps ----------------------------------------------------------------------


async def index_step(ctx: Any, input: Any) -> dict[str, Any]:
    return await run_index(ctx, dict(input or {}))


async def query_step(ctx: Any, input: Any) -> dict[str, Any]:
    return await run_query(ctx, dict(input or {}))
