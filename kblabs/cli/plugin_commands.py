"""Commands that plugins contribute: `python -m kblabs <group> [<subgroup>] <command>`.

Run in this process, without a server: the plugin registry is read from the lock, the
command's flags become an argparse parser (so `--help` is generated), and the handler
gets `(ctx, {"flags": {...}, "argv": [...]})` with `ctx.host == "cli"`. Exit codes: 0 ok,
1 the command failed (an error it raised, a permission denied), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from kblabs.errors import ExitCode, KbError

FLAG_TYPES: dict[str, Any] = {"string": str, "number": float, "array": str}
CLI_TIMEOUT_MS = 600_000  # unless the plugin's quotas.timeoutMs says otherwise


def find_plugins(settings) -> list[Any]:
    """The enabled, loadable plugins of the project's marketplace lock."""
    from kblabs.marketplace.lockfile import LockFile
    from kblabs.plugins.discovery import discover

    return discover(LockFile.in_data_dir(settings.data_dir), settings.project_root).plugins


def find_command(argv: list[str], settings) -> tuple[Any, Any, list[str]] | None:
    """(plugin, command, remaining argv) for the words at the start of `argv`."""
    words = [w for w in argv if not w.startswith("-")][:3]
    best = None
    for plugin in find_plugins(settings):
        for command in plugin.manifest.cli.commands if plugin.manifest.cli else []:
            path = [p for p in (command.group, command.subgroup) if p] + command.id.split(":")
            if words[: len(path)] == path and (best is None or len(path) > len(best[2])):
                best = (plugin, command, path)
    if best is None:
        return None
    plugin, command, path = best
    rest = list(argv)
    for word in path:
        rest.remove(word)
    return plugin, command, rest


def _parser(plugin, command, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=command.describe or plugin.id)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    for flag in command.flags:
        names = [f"--{flag.name}"] + ([f"-{flag.alias}"] if flag.alias else [])
        options: dict[str, Any] = {"help": flag.description, "dest": flag.name}
        if flag.type == "boolean":
            options["action"] = "store_true"
        else:
            options.update(
                type=FLAG_TYPES[flag.type],
                required=flag.required,
                default=flag.default,
                choices=flag.choices,
            )
            if flag.type == "array":
                options["action"] = "append"
        parser.add_argument(*names, **options)
    return parser


def run_plugin_command(argv: list[str], settings, output) -> int | None:
    """Run the plugin command named by `argv`; None when no plugin has it."""
    found = find_command(argv, settings)
    if found is None:
        return None
    plugin, command, rest = found
    prog = "python -m kblabs " + " ".join(
        [p for p in (command.group, command.subgroup) if p] + command.id.split(":")
    )
    parser = _parser(plugin, command, prog)
    try:
        flags = vars(parser.parse_args(rest))
    except SystemExit as exc:  # --help (0), or a usage error argparse already printed
        return ExitCode.OK if not exc.code else ExitCode.USAGE
    as_json = flags.pop("json") or output.as_json
    try:
        result = asyncio.run(_execute(plugin, command, flags, rest, settings, output))
    except KbError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": exc.to_dict()}))
        else:
            from rich.text import Text  # a message is shown as written, never as markup

            output.errors.print(Text.assemble((f"{exc.code}:", "red"), f" {exc.message}"))
        return ExitCode.FAILURE
    if as_json:
        print(json.dumps({"ok": True, "result": result}, default=str))
    elif isinstance(result, str):
        output.console.print(result)
    elif result is not None:
        output.console.print_json(json.dumps(result, default=str))
    return ExitCode.OK


def _console_ui(output) -> Any:
    """ctx.ui for a terminal: messages on stderr (stdout stays the command's result)."""
    styles = {"success": "green", "warn": "yellow", "error": "red", "debug": "dim"}

    def for_plugin(plugin_id: str):
        def sink(kind: str, payload: dict[str, Any]) -> None:
            from rich.text import Text

            if kind == "json":
                output.errors.print_json(json.dumps(payload.get("data"), default=str))
            elif kind == "table":
                for row in payload.get("rows") or []:
                    output.errors.print(Text("  ".join(f"{k}={v}" for k, v in row.items())))
            else:  # Text: a plugin's message is shown as written, never read as markup
                output.errors.print(Text(str(payload.get("text", "")), style=styles.get(kind, "")))

        return sink

    return for_plugin


async def _execute(
    plugin, command, flags: dict[str, Any], argv: list[str], settings, output
) -> Any:
    from kblabs.plugins.runner import Call, PluginRunner

    needs_platform = any(
        perms is not None and perms.platform
        for perms in (plugin.manifest.permissions, command.permissions)
    )
    async with _local_adapters(settings, needs_platform) as adapters:
        runner = PluginRunner(
            settings, lambda: find_plugins(settings), adapters=adapters, ui=_console_ui(output)
        )
        try:
            return await runner.run(
                plugin,
                Call(
                    host="cli",
                    handler_ref=command.handler,
                    input={"flags": flags, "argv": argv},
                    permissions=command.permissions,
                    default_timeout_ms=CLI_TIMEOUT_MS,
                    host_context={"argv": argv, "flags": flags},
                    cwd=Path.cwd(),
                ),
            )
        finally:
            await runner.stop()


@contextlib.asynccontextmanager
async def _local_adapters(settings, wanted: bool) -> AsyncIterator[Any]:
    """The configured adapters, started in this process, so that a command's
    `ctx.platform.llm` (and the others) work without a server; only for a plugin that
    asks for platform services."""
    if not wanted:
        yield None
        return
    from kblabs.platform.standalone import started_adapters

    async with started_adapters(settings) as adapters:
        yield adapters
