"""`mind index [PATH] | query TEXT | status`: semantic code search from the terminal.

By default the command goes to the running server (the `@kb-labs/mind` plugin's routes),
because the server owns the vector store: Qdrant's local mode lets one process at a time
open its folder. `index` polls the job's progress for its progress bar. When no server
answers (and `--url` was not given) the work is done in this process instead, on the
same adapters and data; `--local` asks for that outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from kblabs.cli.context import CliContext
from kblabs.errors import ExitCode

PLUGIN_BASE = "/api/v1/plugins/@kb-labs/mind"
POLL_S = 0.25
INDEX_TIMEOUT_S = 3600.0


def register(commands) -> None:
    parser = commands.add_parser("mind", help="index the project's code and search it in words")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    index = actions.add_parser("index", help="index a folder (incremental: changed files only)")
    index.add_argument("path", nargs="?", default=".", help="folder to index (default: .)")
    index.add_argument("--rebuild", action="store_true", help="drop the index and start over")
    index.add_argument(
        "--max-file-kb", type=int, default=None, help="skip files larger than this (default 512)"
    )
    _common(index)
    index.set_defaults(handler=_index)

    query = actions.add_parser("query", help="search the index")
    query.add_argument("text", help="what you are looking for, in words or identifiers")
    query.add_argument("-k", "--limit", type=int, default=10, help="hits to show (default 10)")
    _common(query)
    query.set_defaults(handler=_query)

    status = actions.add_parser("status", help="what the index holds")
    _common(status)
    status.set_defaults(handler=_status)


def _common(parser) -> None:
    parser.add_argument("--index", default="default", help="index name (default: default)")
    parser.add_argument("--local", action="store_true", help="work in this process, no server")
    parser.add_argument("--url", help="server URL (default: KB_GATEWAY_URL or the config)")
    parser.add_argument("--token", help="bearer token (default: KB_TOKEN or the admin token)")


# --- the two ways of doing the work ------------------------------------------------------


class Remote:
    """The server's mind plugin over HTTP."""

    def __init__(self, api: Any) -> None:
        self.api = api

    async def index(self, path: str, args: Any, progress: Any) -> dict[str, Any]:
        job = uuid.uuid4().hex
        body = {"path": path, "index": args.index, "rebuild": args.rebuild, "jobId": job}
        if args.max_file_kb:
            body["maxFileBytes"] = args.max_file_kb * 1024
        self.api.client.timeout = INDEX_TIMEOUT_S
        work = asyncio.create_task(self.api.call("POST", f"{PLUGIN_BASE}/index", body=body))
        while not work.done():
            await asyncio.wait({work}, timeout=POLL_S)
            with contextlib.suppress(Exception):  # not started yet, or gone: poll again
                state = await self.api.call(
                    "GET", f"{PLUGIN_BASE}/index/progress", params={"jobId": job}
                )
                progress(state.get("stage", ""), state.get("done", 0), state.get("total", 0))
        return await work

    async def query(self, text: str, args: Any) -> dict[str, Any]:
        params = {"q": text, "limit": args.limit, "index": args.index}
        return await self.api.call("GET", f"{PLUGIN_BASE}/query", params=params)

    async def status(self, args: Any) -> dict[str, Any]:
        return await self.api.call("GET", f"{PLUGIN_BASE}/status", params={"index": args.index})


@contextlib.asynccontextmanager
async def local_mind(ctx: CliContext, name: str) -> AsyncIterator[Any]:
    """A MindIndex on adapters started in this process."""
    from kblabs.mind.index import MindIndex
    from kblabs.platform.standalone import started_adapters

    async with started_adapters(ctx.settings()) as adapters:
        yield MindIndex(
            embeddings=adapters.get("embeddings"),
            vectors=adapters.get("vectorStore"),
            storage=adapters.get("storage"),
            name=name,
        )


# --- commands --------------------------------------------------------------------------


def _index(ctx: CliContext) -> ExitCode:
    folder = Path(ctx.args.path).resolve()
    if not folder.is_dir():
        ctx.output.failure(f"no folder {folder}", code="MIND_PATH_NOT_FOUND")
        return ExitCode.USAGE
    bar = _ProgressBar(ctx.output.errors, enabled=not ctx.output.as_json)

    async def remote(api: Any) -> dict[str, Any]:
        root = ctx.settings().project_root.resolve()
        if not folder.is_relative_to(root):
            raise _Usage(
                f"{folder} is outside the project {root}; the server indexes only "
                "inside it (use --local to index it from this process)"
            )
        return await Remote(api).index(folder.relative_to(root).as_posix() or ".", ctx.args, bar)

    async def local() -> dict[str, Any]:
        from kblabs.mind.workspace import DEFAULT_MAX_FILE_BYTES, LocalWorkspace

        limit = ctx.args.max_file_kb * 1024 if ctx.args.max_file_kb else DEFAULT_MAX_FILE_BYTES
        async with local_mind(ctx, ctx.args.index) as mind:
            report = await mind.index(
                LocalWorkspace(folder, max_file_bytes=limit), bar, rebuild=ctx.args.rebuild
            )
            return report.to_json()

    with bar:
        result = _run(ctx, remote, local)
    if result is None:
        return ExitCode.FAILURE
    ctx.output.result(
        {"ok": True, "result": result}, lambda console: _print_report(console, result)
    )
    return ExitCode.OK


def _query(ctx: CliContext) -> ExitCode:
    async def local() -> dict[str, Any]:
        async with local_mind(ctx, ctx.args.index) as mind:
            hits = await mind.query(ctx.args.text, ctx.args.limit)
            return {"index": mind.name, "query": ctx.args.text, "hits": [h.to_json() for h in hits]}

    result = _run(ctx, lambda api: Remote(api).query(ctx.args.text, ctx.args), local)
    if result is None:
        return ExitCode.FAILURE
    ctx.output.result({"ok": True, "result": result}, lambda console: _print_hits(console, result))
    return ExitCode.OK


def _status(ctx: CliContext) -> ExitCode:
    async def local() -> dict[str, Any]:
        async with local_mind(ctx, ctx.args.index) as mind:
            return await mind.status()

    result = _run(ctx, lambda api: Remote(api).status(ctx.args), local)
    if result is None:
        return ExitCode.FAILURE

    def human(console: Console) -> None:
        if not result.get("exists"):
            console.print(f"no index {result['index']!r} yet: run `python -m kblabs mind index`")
            return
        console.print(
            f"{result['index']}: {result['files']} files, {result['chunks']} chunks of "
            f"{result['root']} (updated {result.get('updatedAt')})"
        )

    ctx.output.result({"ok": True, "result": result}, human)
    return ExitCode.OK


class _Usage(Exception):
    pass


def _run(ctx: CliContext, remote: Any, local: Any) -> dict[str, Any] | None:
    """Do the work on the server, or here when there is none (or --local); None after an
    error was reported."""
    from kblabs.cli.server_api import Api, ApiError, NoToken, Unreachable, token_for
    from kblabs.cli.status_cmd import server_url
    from kblabs.errors import KbError, StartupError
    from kblabs.mind.index import MindError

    async def main() -> dict[str, Any]:
        if ctx.args.local:
            return await local()
        try:
            api = Api(server_url(ctx), token_for(ctx))
        except NoToken:
            api = None  # the server never started here: nothing to ask
        if api is not None:
            try:
                return await remote(api)
            except Unreachable:
                if ctx.args.url:
                    raise
            finally:
                await api.close()
        ctx.output.errors.print(Text("no server answers: working in this process", "dim"))
        return await local()

    try:
        return asyncio.run(main())
    except _Usage as exc:
        ctx.output.failure(str(exc), code="USAGE")
    except ApiError as exc:
        ctx.output.failure(exc.message, code=exc.code)
    except Unreachable as exc:
        ctx.output.failure(str(exc), code="UNREACHABLE")
    except (MindError, KbError) as exc:
        ctx.output.failure(exc.message, code=exc.code)
    except StartupError as exc:
        ctx.output.failure(str(exc), code="STARTUP_FAILED")
    return None


# --- output ----------------------------------------------------------------------------


class _ProgressBar:
    """A rich progress bar on stderr, fed with (stage, done, total[, path])."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.enabled = enabled and console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task("scanning", total=None)

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

    def __call__(self, stage: str, done: int, total: int, path: str = "") -> None:
        if self.enabled and stage == "embed":
            self.progress.update(self.task, description="indexing", completed=done, total=total)


def _print_report(console: Console, report: dict[str, Any]) -> None:
    if report.get("rebuiltBecause"):
        console.print(f"rebuilt from scratch: {report['rebuiltBecause']}", style="yellow")
    console.print(
        f"[bold]{report['index']}[/bold]: {report['files']} files, {report['chunks']} chunks "
        f"({report['filesEmbedded']} files re-embedded, {report['chunksEmbedded']} chunks; "
        f"{report['unchanged']} unchanged; {report['filesRemoved']} removed) "
        f"in {report['durationMs'] / 1000:.1f} s"
    )
    skipped = [
        f"{report[key]} {label}"
        for key, label in (("skippedBinary", "binary"), ("skippedLarge", "too large"))
        if report[key]
    ]
    if skipped:
        console.print(f"skipped: {', '.join(skipped)}", style="dim")


def _print_hits(console: Console, result: dict[str, Any]) -> None:
    if not result["hits"]:
        console.print("no hits")
        return
    for hit in result["hits"]:
        console.print(
            Text.assemble(
                (f"{hit['path']}:{hit['startLine']}-{hit['endLine']}", "bold cyan"),
                (f"  {hit['score']:.3f}", "dim"),
            )
        )
        for n, line in enumerate(hit["snippet"].splitlines(), hit["snippetLine"]):
            console.print(Text(f"  {n:>5}  {line}"), style="dim", soft_wrap=False, overflow="crop")
        console.print()
