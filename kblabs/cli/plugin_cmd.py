"""`plugin link|unlink|validate|list|new`: work with plugin folders and the lock.

A running server notices lock changes within a couple of seconds, so a linked plugin's
routes answer without a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from kblabs.cli import plugin_scaffold
from kblabs.cli.context import CliContext
from kblabs.errors import ExitCode


def register(commands) -> None:
    parser = commands.add_parser("plugin", help="link, check and list plugins")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    link = actions.add_parser("link", help="use a plugin folder of this project")
    link.add_argument("path")
    link.set_defaults(handler=run_link)
    unlink = actions.add_parser("unlink", help="stop using a linked plugin (files stay)")
    unlink.add_argument("plugin_id")
    unlink.set_defaults(handler=run_unlink)
    validate = actions.add_parser(
        "validate", help="check a plugin folder's manifest and handlers; exit 2 on problems"
    )
    validate.add_argument("path")
    validate.set_defaults(handler=run_validate)
    actions.add_parser("list", help="plugins in the lock and their state").set_defaults(
        handler=run_list
    )
    new = actions.add_parser("new", help="start a plugin folder: manifest, handlers, tests")
    new.add_argument("name", help="my-plugin or @scope/my-plugin")
    new.add_argument("--dir", metavar="PATH", help="folder to create (default: ./NAME)")
    new.add_argument("--force", action="store_true", help="write into a non-empty folder")
    new.set_defaults(handler=plugin_scaffold.run_new)


def _check_folder(path: Path) -> tuple[Any, list[dict[str, str]]]:
    from kblabs.config import jsonc
    from kblabs.plugins.discovery import MANIFEST_FILE
    from kblabs.plugins.handlers import HandlerError, import_handler
    from kblabs.plugins.manifest import validate_manifest
    from kblabs.plugins.registry import handler_refs

    manifest_path = path / MANIFEST_FILE
    try:
        data = jsonc.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [{"path": "", "message": f"no {MANIFEST_FILE} in {path}"}]
    except (OSError, jsonc.JsoncError) as exc:
        return None, [{"path": "", "message": f"cannot read {manifest_path}: {exc}"}]
    manifest, problems = validate_manifest(data)
    if manifest is None:
        return None, problems
    for where, ref in handler_refs(_discovered(manifest, path)):
        try:
            import_handler(ref, path)
        except HandlerError as exc:
            problems.append({"path": where, "message": f"{exc.code}: {exc.message}"})
    return (manifest if not problems else None), problems


def _discovered(manifest, path: Path):
    from kblabs.plugins.discovery import Discovered

    return Discovered(manifest, path, "local", manifest.id)


def _report(ctx: CliContext, problems: list[dict[str, str]], path: Path) -> ExitCode:
    if ctx.output.as_json:
        ctx.output.failure(
            f"{len(problems)} problem(s) in {path}", code="PLUGIN_INVALID", problems=problems
        )
    else:
        for problem in problems:
            where = f"{problem['path']}: " if problem["path"] else ""
            text = escape(f"{path}: {where}{problem['message']}")
            ctx.output.errors.print(f"[red]plugin error:[/red] {text}", markup=True)
    return ExitCode.USAGE


def run_validate(ctx: CliContext) -> ExitCode:
    path = Path(ctx.args.path).resolve()
    manifest, problems = _check_folder(path)
    if manifest is None:
        return _report(ctx, problems, path)
    ctx.output.result(
        {
            "ok": True,
            "id": manifest.id,
            "version": manifest.version,
            "provides": manifest.provides(),
        },
        lambda c: c.print(
            f"{manifest.id} {manifest.version}: valid "
            f"({', '.join(manifest.provides()) or 'nothing'})"
        ),
    )
    return ExitCode.OK


def run_link(ctx: CliContext) -> ExitCode:
    import asyncio

    from kblabs.errors import KbError
    from kblabs.marketplace.service import Marketplace

    settings = ctx.settings()
    path = Path(ctx.args.path).resolve()
    manifest, problems = _check_folder(path)
    if manifest is None:
        return _report(ctx, problems, path)
    try:
        asyncio.run(Marketplace(settings).link(path))
    except KbError as exc:
        ctx.output.failure(exc.message, code=exc.code)
        return ExitCode.USAGE
    ctx.output.result(
        {"ok": True, "id": manifest.id, "path": str(path)},
        lambda c: c.print(
            f"linked {manifest.id} from {path} (a running server picks it up within a few seconds)"
        ),
    )
    return ExitCode.OK


def run_unlink(ctx: CliContext) -> ExitCode:
    import asyncio

    from kblabs.errors import KbError
    from kblabs.marketplace.service import Marketplace

    settings = ctx.settings()
    try:
        removed = asyncio.run(Marketplace(settings).unlink(ctx.args.plugin_id))
    except KbError as exc:
        ctx.output.failure(exc.message, code=exc.code)
        return ExitCode.FAILURE
    ctx.output.result(
        {"ok": True, "id": ctx.args.plugin_id, "removed": removed},
        lambda c: c.print(
            f"unlinked {ctx.args.plugin_id}" if removed else f"{ctx.args.plugin_id} was not linked"
        ),
    )
    return ExitCode.OK


def run_list(ctx: CliContext) -> ExitCode:
    from kblabs.marketplace.lockfile import LockFile
    from kblabs.plugins.discovery import discover
    from kblabs.plugins.registry import importable

    settings = ctx.settings()
    lock = LockFile.in_data_dir(settings.data_dir)
    found = discover(lock, settings.project_root)
    found.plugins = importable(found)  # "loaded" means its handlers import, as in the server
    entries = lock.read()
    loaded = {p.lock_key for p in found.plugins}
    rows = [
        {
            "id": key,
            "version": e.version,
            "source": e.source,
            "enabled": e.enabled,
            "loaded": key in loaded,
        }
        for key, e in entries.items()
    ]
    payload = {"ok": True, "plugins": rows, "diagnostics": [d.to_dict() for d in found.diagnostics]}

    def human(console) -> None:
        for row in rows:
            state = "loaded" if row["loaded"] else ("disabled" if not row["enabled"] else "failed")
            console.print(f"{row['id']:32} {row['version']:10} {row['source']:12} {state}")
        for diagnostic in found.diagnostics:
            if diagnostic.severity == "error":
                console.print(
                    f"[red]{diagnostic.code}[/red] {escape(diagnostic.message)}", markup=True
                )

    ctx.output.result(payload, human)
    return ExitCode.OK
