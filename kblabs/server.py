"""Running the app under Hypercorn: binding, signals, graceful drain, sd_notify.

SIGTERM or SIGINT: /ready flips to 503, systemd hears STOPPING=1, after the optional
drain delay the listening sockets close (new connections are refused), in-flight
requests get up to the graceful timeout, then components stop in reverse order.
A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from dataclasses import dataclass

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import LifespanFailureError, wrap_app
from loguru import logger

from kblabs.app import create_app, public_url
from kblabs.config import Settings
from kblabs.errors import ExitCode
from kblabs.sdnotify import notify


class BindError(Exception):
    pass


def hypercorn_config(settings: Settings, bind: str | None) -> Config:
    config = Config()
    config.bind = [bind or _host_port(settings)]
    config.graceful_timeout = settings.server.graceful_timeout_ms / 1000
    config.startup_timeout = 600  # first start may run long migrations
    config.shutdown_timeout = 300  # components drain their own work (bounded by them)
    config.accesslog = None  # kblabs.http.middleware logs each request
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 5
    return config


def _host_port(settings: Settings) -> str:
    host = settings.server.host
    return f"[{host}]:{settings.server.port}" if ":" in host else f"{host}:{settings.server.port}"


def bind_sockets(config: Config) -> Sockets:
    """Bind (or adopt fd://N) and listen now, so connections queue during startup."""
    try:
        sockets = config.create_sockets()
    except OSError as exc:
        where = ", ".join(config.bind)
        if exc.errno == errno.EADDRINUSE:
            raise BindError(
                f"{where} is already in use (another kblabs or another program); "
                "stop it or choose another --port"
            ) from exc
        if exc.errno == errno.EACCES:
            raise BindError(f"not allowed to bind {where} (ports below 1024 need root)") from exc
        if exc.errno == errno.EBADF:
            raise BindError(f"{where}: no such file descriptor was passed in") from exc
        raise BindError(f"cannot bind {where}: {exc.strerror or exc}") from exc
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
    return sockets


def listening_address(sockets: Sockets) -> str | None:
    for sock in sockets.insecure_sockets:
        name = sock.getsockname()
        if isinstance(name, tuple):
            host = f"[{name[0]}]" if ":" in name[0] else name[0]
            return f"http://{host}:{name[1]}"
        return f"unix:{name}"
    return None


@dataclass(frozen=True)
class ServeOutcome:
    code: ExitCode
    error: str | None = None  # the one line that says what went wrong
    error_code: str = "START_FAILED"


def failed(message: str) -> ServeOutcome:
    logger.error("cannot start: {}", message)
    return ServeOutcome(ExitCode.FAILURE, message)


def serve(settings: Settings, *, migrate: bool = True, bind: str | None = None) -> ServeOutcome:
    config = hypercorn_config(settings, bind)
    try:
        sockets = bind_sockets(config)
    except BindError as exc:
        return failed(str(exc))
    app = create_app(settings, migrate=migrate)
    address = listening_address(sockets) or public_url(settings)
    app.state.runtime.auth.public_url = address

    def on_ready() -> None:
        notify("READY=1")
        logger.info(
            "kblabs ready on {} (env {}, data {})", address, settings.env, settings.data_dir
        )

    app.state.on_ready.append(on_ready)
    return asyncio.run(_serve(app, config, sockets, settings))


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """Connections cut at the graceful timeout end in CancelledError, which Python 3.11's
    stream callbacks report as an error with a traceback; it is expected, so say less."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        logger.warning("a connection was cut off while stopping (graceful timeout reached)")
        return
    loop.default_exception_handler(context)


async def _serve(app, config: Config, sockets: Sockets, settings: Settings) -> ServeOutcome:
    runtime = app.state.runtime
    stop_requested = asyncio.Event()
    serving = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop_requested.is_set():
            logger.warning("second {}: stopping without waiting", signal.Signals(signum).name)
            if serving is not None:
                serving.cancel()
            return
        logger.info("{} received: draining", signal.Signals(signum).name)
        stop_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.set_exception_handler(_quiet_cancellations)

    async def shutdown_trigger() -> None:
        await stop_requested.wait()
        runtime.lifecycle.begin_draining()
        notify("STOPPING=1")
        await asyncio.sleep(settings.server.drain_delay_ms / 1000)
        for drain in app.state.on_drain:  # long-lived sockets would hold the drain
            try:
                await drain()
            except Exception as exc:
                logger.warning("draining: {}", exc)

    try:
        await worker_serve(
            wrap_app(app, config.wsgi_max_body_size, "asgi"),
            config,
            sockets=sockets,
            shutdown_trigger=shutdown_trigger,
        )
    except LifespanFailureError:
        return failed(str(runtime.lifecycle.startup_error or "startup failed"))
    except asyncio.CancelledError:
        return ServeOutcome(
            ExitCode.FAILURE, "stopped by a second signal without draining", "FORCED_STOP"
        )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    logger.info("stopped cleanly")
    return ServeOutcome(ExitCode.OK)
