"""`python -m kblabs …`: one parser, one exit-code table (kblabs.errors.ExitCode).

Each command group lives in its own module with `register(subparsers)`; the function it
sets as `handler` takes a CliContext and returns an ExitCode.
"""

from __future__ import annotations

import argparse
import sys

from kblabs.cli import (
    agent_cmd,
    auth_cmd,
    config_cmd,
    marketplace_cmd,
    migrate_cmd,
    mind_cmd,
    plugin_cmd,
    serve_cmd,
    status_cmd,
    version_cmd,
    worker_cmd,
    workflow_cmd,
)
from kblabs.cli.context import CliContext
from kblabs.cli.output import Output
from kblabs.config import ConfigError
from kblabs.errors import ExitCode

COMMANDS = (
    serve_cmd,
    worker_cmd,
    status_cmd,
    config_cmd,
    migrate_cmd,
    auth_cmd,
    agent_cmd,
    plugin_cmd,
    marketplace_cmd,
    workflow_cmd,
    mind_cmd,
    version_cmd,
)


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


LOG_LEVELS = ["trace", "debug", "info", "warn", "warning", "error", "critical", "fatal", "silent"]


def add_global_flags(parser: argparse.ArgumentParser, default: object = None) -> None:
    """The global flags. Sub-commands get them too (default SUPPRESS, so a flag given
    before the command is kept), so `status --json` works like `--json status`."""
    parser.add_argument(
        "--json", action="store_true", default=default or False, help="print one JSON object"
    )
    parser.add_argument("--config", metavar="PATH", default=default, help="kb.config.json to use")
    parser.add_argument(
        "--profile", default=default, help="configuration profile (default: KB_PROFILE)"
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=default,
        help="log level (default: KB_LOG_LEVEL or the config)",
    )


def _leaf_parsers(parser: argparse.ArgumentParser):
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        yield parser
    for action in nested:
        for child in dict.fromkeys(action.choices.values()):
            yield from _leaf_parsers(child)


def build_parser() -> Parser:
    parser = Parser(prog="python -m kblabs", description="KB Labs platform")
    add_global_flags(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for module in COMMANDS:
        module.register(commands)
    for leaf in _leaf_parsers(parser):
        if leaf is not parser:
            add_global_flags(leaf, default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    output = Output(as_json="--json" in argv)
    parser = build_parser()
    plugin_exit = _maybe_plugin_command(parser, argv, output)
    if plugin_exit is not None:
        return plugin_exit
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        output.failure(str(exc), code="USAGE")
        return ExitCode.USAGE
    except SystemExit as exc:  # --help / --version printed and exited
        return int(exc.code or 0)
    output = Output(as_json=args.json)
    context = CliContext(args=args, output=output, argv=list(argv))
    if args.command != "serve":  # serve sets up its own logging from the settings
        quiet_logging(args.log_level)
    try:
        return int(args.handler(context))
    except ConfigError as exc:
        report_config_problems(output, exc)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        output.failure("interrupted", code="INTERRUPTED")
        return ExitCode.INTERRUPTED


def _global_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The global flags wherever they appear, and what is left (a plugin command's own
    words and flags)."""
    globals_only = argparse.ArgumentParser(add_help=False)
    add_global_flags(globals_only)
    try:
        return globals_only.parse_known_args(argv)
    except SystemExit:  # a malformed global flag: let the full parser explain it
        return argparse.Namespace(json=False, config=None, profile=None, log_level=None), argv


def _maybe_plugin_command(parser: Parser, argv: list[str], output: Output) -> int | None:
    """A first word that is no built-in command may be a plugin's command."""
    flags, rest = _global_flags(argv)
    words = [w for w in rest if not w.startswith("-")]
    builtin = {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }
    if not words or words[0] in builtin:
        return None
    from pathlib import Path

    from kblabs.cli.plugin_commands import run_plugin_command
    from kblabs.config import load_settings

    quiet_logging(flags.log_level)
    overrides = {"logging.level": (flags.log_level, "--log-level")} if flags.log_level else None
    try:
        settings = load_settings(
            config_path=Path(flags.config) if flags.config else None,
            profile=flags.profile,
            overrides=overrides,
        )
    except ConfigError as exc:
        report_config_problems(output, exc)
        return ExitCode.USAGE
    if flags.json:
        rest = [*rest, "--json"]
    return run_plugin_command(rest, settings, output)


def quiet_logging(level: str | None) -> None:
    """CLI tools: warnings and errors only, one short line each, on stderr."""
    from loguru import logger

    from kblabs.observability.logging import LOGURU_LEVELS

    logger.remove()
    chosen = (level or "warning").lower()
    chosen = {"warn": "warning", "fatal": "critical"}.get(chosen, chosen)
    if chosen != "silent":
        logger.add(sys.stderr, level=LOGURU_LEVELS[chosen], format="{level}: {message}")


def report_config_problems(output: Output, exc: ConfigError) -> None:
    problems = [p.to_dict() for p in exc.problems]
    if output.as_json:
        output.failure(
            f"{len(problems)} configuration problem(s)", code="CONFIG_INVALID", problems=problems
        )
        return
    for problem in exc.problems:
        output.errors.print(f"[red]config error:[/red] {problem}", markup=True)
