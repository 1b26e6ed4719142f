"""`serve --dev`: restart the server whenever a source or config file changes.

The parent binds the listening socket once and hands it to each child server as
fd://N, so connections made during a restart wait in the kernel queue instead of being
refused. A child that crashes is restarted after the next change, not in a loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from loguru import logger

import kblabs
from kblabs.config import Settings
from kblabs.errors import ExitCode
from kblabs.server import BindError, ServeOutcome, bind_sockets, failed, hypercorn_config

POLL_INTERVAL_S = 0.5
CONFIG_NAMES = (
    ".env",
    "kb.config.json",
    "kb.config.jsonc",
    ".kb/kb.config.json",
    ".kb/kb.config.jsonc",
)


def watched_files(settings: Settings) -> dict[Path, float]:
    files = list(Path(kblabs.__file__).parent.rglob("*.py"))
    files += [settings.project_root / name for name in CONFIG_NAMES]
    if settings.config_file is not None:
        files.append(settings.config_file)
    stamps = {}
    for path in files:
        try:
            stamps[path] = path.stat().st_mtime
        except OSError:
            continue
    return stamps


def run_with_reload(settings: Settings, child_args: list[str]) -> ServeOutcome:
    try:
        sockets = bind_sockets(hypercorn_config(settings, None))
    except BindError as exc:
        return failed(str(exc))
    listener = sockets.insecure_sockets[0]
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    command = [sys.executable, "-m", "kblabs", *child_args, "--bind", f"fd://{listener.fileno()}"]
    child = _spawn(command, listener.fileno())
    stamps = watched_files(settings)
    logger.info("dev mode: watching {} files; the server restarts on change", len(stamps))
    while not stop["signal"]:
        time.sleep(POLL_INTERVAL_S)
        current = watched_files(settings)
        changed = [p for p in current.keys() | stamps.keys() if current.get(p) != stamps.get(p)]
        stamps = current
        if changed:
            logger.info("{} changed: restarting", changed[0])
            _stop(child, settings)
            child = _spawn(command, listener.fileno())
        elif child.poll() is not None and not getattr(child, "reported", False):
            logger.warning("server exited {}; waiting for a change", child.returncode)
            child.reported = True  # type: ignore[attr-defined]
    code = _stop(child, settings)
    if code in (0, None):
        return ServeOutcome(ExitCode.OK)
    return ServeOutcome(ExitCode.FAILURE, f"the server exited {code}")


def _spawn(command: list[str], fd: int) -> subprocess.Popen:
    # Its own session: Ctrl-C reaches only this parent, which stops the child once.
    return subprocess.Popen(command, pass_fds=(fd,), env=os.environ.copy(), start_new_session=True)


def _stop(child: subprocess.Popen, settings: Settings) -> int | None:
    if child.poll() is not None:
        return child.returncode
    child.send_signal(signal.SIGTERM)
    try:
        return child.wait(timeout=settings.server.graceful_timeout_ms / 1000 + 10)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()
