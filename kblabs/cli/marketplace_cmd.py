"""`marketplace …`: install, update and manage plugins from the command line.

Works on the project's data folder directly (no server needed); a running server
notices the lock change within seconds and loads or drops the plugins.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kblabs.cli.context import CliContext
from kblabs.errors import ExitCode, KbError


def register(commands) -> None:
    parser = commands.add_parser("marketplace", help="install and manage plugins")
    sub = parser.add_subparsers(dest="marketplace_command", metavar="ACTION")
    sub.required = True
    listing = sub.add_parser("list", help="installed and linked packages")
    listing.add_argument("--kind", choices=["plugin", "adapter"])
    install = sub.add_parser("install", help="install packages (PEP 508 specs or wheel files)")
    install.add_argument("specs", nargs="+", metavar="SPEC")
    install.add_argument("--index-url", help="package index (default marketplace.indexUrl)")
    uninstall = sub.add_parser("uninstall", help="remove installed packages and their files")
    uninstall.add_argument("ids", nargs="+", metavar="ID")
    update = sub.add_parser("update", help="reinstall the newest version (all by default)")
    update.add_argument("ids", nargs="*", metavar="ID")
    update.add_argument("--index-url")
    for name in ("enable", "disable"):
        switch = sub.add_parser(name, help=f"{name} a package")
        switch.add_argument("id")
    link = sub.add_parser("link", help="link a plugin folder of this project")
    link.add_argument("path")
    unlink = sub.add_parser("unlink", help="remove a link (no files are deleted)")
    unlink.add_argument("id")
    sync = sub.add_parser("sync", help="link every plugin folder matching the globs")
    sync.add_argument("include", nargs="+", metavar="GLOB")
    sync.add_argument("--exclude", action="append", default=[])
    sync.add_argument("--enable", action="store_true", help="enable what is added")
    sub.add_parser("doctor", help="check the lock against the files")
    sub.add_parser("clear-cache", help="remove install leftovers")
    parser.set_defaults(handler=run)


def run(ctx: CliContext) -> ExitCode:
    from kblabs.marketplace.service import Marketplace

    args = ctx.args
    market = Marketplace(ctx.settings())
    if getattr(args, "index_url", None):
        market.index_url = args.index_url
    action = args.marketplace_command
    try:
        result = asyncio.run(_act(ctx, market, action))
    except KbError as exc:
        details = exc.details if isinstance(exc.details, list) else None
        ctx.output.failure(exc.message, code=exc.code, **({"details": details} if details else {}))
        if details and not ctx.output.as_json:
            for line in details[-8:]:
                ctx.output.errors.print(f"  {line}", markup=False, highlight=False)
        return ExitCode.FAILURE
    ctx.output.result({"ok": True, **result}, lambda c: _human(c, action, result))
    if action == "doctor" and not result.get("ok", True):
        return ExitCode.FAILURE
    return ExitCode.OK


async def _act(ctx: CliContext, market: Any, action: str) -> dict[str, Any]:
    args = ctx.args
    if action == "list":
        rows = market.packages(args.kind)
        return {"entries": rows, "total": len(rows)}
    if action in ("install", "update"):
        with ctx.output.errors.status("installing…") as spinner:

            def progress(line: str) -> None:  # pip's own lines, shortened, as they come
                spinner.update(f"installing… {line.strip()[:100]}")

            if action == "install":
                return await market.install(args.specs, progress=progress)
            return await market.update(args.ids or None)
    if action == "uninstall":
        await market.uninstall(args.ids)
        return {"uninstalled": args.ids}
    if action in ("enable", "disable"):
        return await market.set_enabled(args.id, action == "enable")
    if action == "link":
        return await market.link(args.path)
    if action == "unlink":
        return {"id": args.id, "removed": await market.unlink(args.id)}
    if action == "sync":
        return await market.sync(args.include, args.exclude, args.enable)
    if action == "doctor":
        return market.doctor()
    return market.clear_cache()


def _human(console: Any, action: str, result: dict[str, Any]) -> None:
    if action == "list":
        for row in result["entries"]:
            state = "enabled" if row.get("enabled", True) else "disabled"
            console.print(
                f"{row['id']:32} {row.get('version', ''):10} {row.get('source', ''):12} "
                f"{row.get('primaryKind', ''):8} {state}",
                markup=False,
            )
        if not result["entries"]:
            console.print("nothing installed")
    elif action in ("install", "update"):
        for item in result["installed"]:
            console.print(
                f"installed {item['id']} {item['version']} ({', '.join(item['provides'])})",
                markup=False,
            )
        for warning in result.get("warnings", []):
            console.print(f"warning: {warning}", markup=False)
    elif action == "doctor":
        for issue in result["issues"]:
            fix = f" → {issue['remediation']}" if issue.get("remediation") else ""
            console.print(
                f"{issue['severity']:8} {issue['packageId']}: {issue['message']}{fix}", markup=False
            )
        console.print("ok" if result["ok"] else "problems found", markup=False)
    elif action == "sync":
        for item in result["added"]:
            console.print(f"added {item['id']} {item['version']}", markup=False)
        for item in result["skipped"]:
            console.print(f"skipped {item['id']}: {item['reason']}", markup=False)
        console.print(f"{result['total']} package(s) in the lock", markup=False)
    elif action == "clear-cache":
        console.print(f"removed {len(result['cleared'])} leftover(s)", markup=False)
    else:
        console.print(str(result), markup=False)
