"""`serve`: run the whole platform on one port."""

from __future__ import annotations

import os

from kblabs.cli.context import CliContext
from kblabs.errors import ExitCode


def register(commands) -> None:
    parser = commands.add_parser("serve", help="run the platform (HTTP, workers, scheduler)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 4000)")
    parser.add_argument(
        "--bind",
        metavar="fd://N",
        help="listen on an inherited socket (fd://N, systemd socket activation) or a Unix "
        "socket (unix:PATH), instead of --host/--port",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="development mode: debug logging, diagnostic routes, restart on file changes",
    )
    parser.add_argument(
        "--no-reload", action="store_true", help="with --dev: do not restart on file changes"
    )
    parser.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not migrate the database; refuse to start if it is behind",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        metavar="SECONDS",
        help="how long in-flight requests may finish after SIGTERM (30)",
    )
    parser.add_argument(
        "--drain-delay",
        type=float,
        metavar="SECONDS",
        help="keep accepting for this long after /ready turns 503 (0)",
    )
    parser.set_defaults(handler=run)


def run(ctx: CliContext) -> ExitCode:
    args = ctx.args
    seconds = {"graceful_timeout": args.graceful_timeout, "drain_delay": args.drain_delay}
    millis = {k: None if v is None else int(v * 1000) for k, v in seconds.items()}
    flags = (
        ("server.host", args.host, "--host"),
        ("server.port", args.port, "--port"),
        ("server.gracefulTimeoutMs", millis["graceful_timeout"], "--graceful-timeout"),
        ("server.drainDelayMs", millis["drain_delay"], "--drain-delay"),
    )
    for path, value, flag in flags:
        if value is not None:
            ctx.overrides[path] = (value, flag)
    if args.dev:
        ctx.overrides["env"] = ("development", "--dev")
        ctx.overrides["server.debugRoutes"] = (True, "--dev")
        if not args.log_level:
            ctx.overrides["logging.level"] = ("debug", "--dev")
    if args.bind and not args.bind.startswith(("fd://", "unix:")):
        ctx.output.failure(
            "--bind takes fd://N or unix:PATH; use --host/--port for an address", code="USAGE"
        )
        return ExitCode.USAGE
    settings = ctx.settings()

    from kblabs.observability.logging import configure_logging
    from kblabs.server import serve

    if args.json:
        settings = settings.model_copy(
            update={"logging": settings.logging.model_copy(update={"format": "json"})}
        )
    configure_logging(settings)
    from loguru import logger

    for warning in settings.warnings:
        logger.warning("config: {}", warning)
    if args.dev and not args.no_reload and not args.bind:
        from kblabs.devreload import run_with_reload

        if args.json:  # children log JSON lines; only this parent prints the result object
            os.environ["KB_LOG_FORMAT"] = "json"
        child_args = [arg for arg in ctx.argv if arg != "--json"]
        outcome = run_with_reload(settings, [*child_args, "--no-reload"])
    else:
        outcome = serve(settings, migrate=not args.no_migrate, bind=args.bind)
    if args.json:  # the log lines went to stderr; stdout gets the one result object
        if outcome.error:
            ctx.output.failure(outcome.error, code=outcome.error_code, exitCode=int(outcome.code))
        else:
            ctx.output.result({"ok": True, "exitCode": int(outcome.code)}, lambda c: None)
    return outcome.code
