"""`config validate|show|path`."""

from __future__ import annotations

from typing import Any

from kblabs.cli.context import CliContext
from kblabs.config import Settings
from kblabs.config.secrets import redact, redact_url_password
from kblabs.errors import ExitCode


def register(commands) -> None:
    parser = commands.add_parser("config", help="check and inspect configuration")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    validate = actions.add_parser("validate", help="report every problem; exit 2 if any")
    validate.add_argument("--file", metavar="PATH", help="the file to check (like --config)")
    validate.set_defaults(handler=run_validate)
    actions.add_parser("show", help="the effective settings, secrets redacted").set_defaults(
        handler=run_show
    )
    actions.add_parser("path", help="where config, .env and data live").set_defaults(
        handler=run_path
    )


def run_validate(ctx: CliContext) -> ExitCode:
    if ctx.args.file:
        ctx.args.config = ctx.args.file
    settings = ctx.settings()  # ConfigError → main reports every problem, exit 2
    source = str(settings.config_file) if settings.config_file else "no config file (defaults)"
    payload = {"ok": True, "file": source, "env": settings.env, "warnings": settings.warnings}

    def human(console) -> None:
        console.print(
            f"[green]config OK[/green]: {source} (env {settings.env}, profile {settings.profile})",
            markup=True,
        )
        for warning in settings.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}", markup=True)

    ctx.output.result(payload, human)
    return ExitCode.OK


def effective_document(settings: Settings) -> dict[str, Any]:
    document = dict(settings.raw)
    sections = (
        "server",
        "store",
        "logging",
        "observability",
        "cors",
        "rate_limits",
        "auth",
        "platform",
    )
    for section in sections:
        model = getattr(settings, section)
        document[model.model_config["alias_generator"](section)] = model.model_dump(by_alias=True)
    document.update(env=settings.env, dataDir=str(settings.data_dir), profile=settings.profile)
    return document


def run_show(ctx: CliContext) -> ExitCode:
    settings = ctx.settings()
    redacted: list[str] = []
    shown = redact(effective_document(settings), found=redacted)
    payload = {"ok": True, "config": shown, "redacted": redacted, "sources": settings.sources}

    def human(console) -> None:
        import json

        from rich.syntax import Syntax

        console.print(Syntax(json.dumps(shown, indent=2, default=str), "json"))
        for path, source in settings.sources.items():
            console.print(f"[dim]{path} from {source}[/dim]", markup=True)

    ctx.output.result(payload, human)
    return ExitCode.OK


def run_path(ctx: CliContext) -> ExitCode:
    settings = ctx.settings()
    dotenv = settings.project_root / ".env"
    paths = {
        "projectRoot": str(settings.project_root),
        "configFile": str(settings.config_file) if settings.config_file else None,
        "dotenv": str(dotenv) if dotenv.is_file() else None,
        "dataDir": str(settings.data_dir),
        "database": redact_url_password(settings.database_url),
    }

    def human(console) -> None:
        for key, value in paths.items():
            console.print(f"{key:12} {value or '-'}")

    ctx.output.result({"ok": True, **paths}, human)
    return ExitCode.OK
