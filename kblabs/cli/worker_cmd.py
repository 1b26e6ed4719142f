"""`worker`: run workflow jobs without HTTP. Any number of workers (and servers) may
share one database: jobs are claimed with leases, so none runs twice at once."""

from __future__ import annotations

import asyncio
import signal

from kblabs.cli.context import CliContext
from kblabs.errors import ExitCode, StartupError


def register(commands) -> None:
    parser = commands.add_parser(
        "worker", help="run workflow jobs (no HTTP); several may share the database"
    )
    parser.add_argument("--jobs", type=int, metavar="N", help="jobs run at once (default 4)")
    parser.add_argument("--no-scheduler", action="store_true", help="never lead the cron scheduler")
    parser.add_argument(
        "--no-migrate", action="store_true", help="refuse to start if the database is behind"
    )
    parser.set_defaults(handler=run)


def run(ctx: CliContext) -> ExitCode:
    args = ctx.args
    if args.jobs is not None:
        if args.jobs < 1:
            ctx.output.failure("--jobs must be at least 1", code="USAGE")
            return ExitCode.USAGE
        ctx.overrides["workflow.maxParallelJobs"] = (args.jobs, "--jobs")
    if args.no_scheduler:
        ctx.overrides["workflow.scheduler"] = (False, "--no-scheduler")
    settings = ctx.settings()

    from kblabs.observability.logging import configure_logging

    configure_logging(settings)
    try:
        return asyncio.run(_work(settings, migrate=not args.no_migrate))
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


async def _work(settings, *, migrate: bool) -> ExitCode:
    from loguru import logger

    from kblabs.app import worker_components
    from kblabs.lifecycle import Lifecycle
    from kblabs.sdnotify import notify

    lifecycle = Lifecycle(worker_components(settings, migrate=migrate))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await lifecycle.start()
    except StartupError as exc:
        logger.error("worker could not start: {}", exc.message)
        return ExitCode.FAILURE
    jobs = settings.workflow.max_parallel_jobs
    logger.info(
        "workflow worker ready: {} job(s) at once, database {}",
        jobs,
        settings.store.url or settings.data_dir,
    )
    notify("READY=1")
    await stop.wait()
    notify("STOPPING=1")
    logger.info("worker stopping: jobs in progress go back to the queue")
    await lifecycle.stop()
    return ExitCode.OK
