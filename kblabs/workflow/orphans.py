"""Shell-step processes left behind by a worker that died (SIGKILL, OOM, power cut).

Each shell step runs in its own process group, and its shell dies with its worker
(PR_SET_PDEATHSIG); but what the shell started (a `sleep`, a build) would live on while
the job runs again elsewhere. So every worker process notes the process groups it runs
in `<data dir>/run/steps-<host>-<pid>.pgids` (group id and its leader's start time), and
the reaper of any process on the same host kills the groups of a worker that is gone.

A group id could be reused by the system only once every process of the old group has
ended, so a live group whose leader is missing, or whose leader started when ours did,
is ours to kill; a leader with another start time is someone else's and is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path


def _ledger(data_dir: Path, pid: int | None = None) -> Path:
    host = socket.gethostname()
    return data_dir / "run" / f"steps-{host}-{pid or os.getpid()}.pgids"


def _stat(pid: int) -> tuple[int, int] | None:
    """(process group, start time in clock ticks) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[2]), int(fields[19])


def record(data_dir: Path, pgid: int) -> None:
    stat = _stat(pgid)
    if stat is None:
        return
    path = _ledger(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as ledger:
        ledger.write(f"{pgid} {stat[1]}\n")


def forget(data_dir: Path, pgid: int) -> None:
    path = _ledger(data_dir)
    with contextlib.suppress(OSError):
        kept = [line for line in path.read_text().splitlines() if line.split()[0] != str(pgid)]
        path.write_text("".join(f"{line}\n" for line in kept))


def _members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[0] == pgid:
                found.append(int(entry))
    return found


def reap(data_dir: Path) -> list[int]:
    """Kill the step groups of dead workers of this host; returns the groups killed."""
    folder = data_dir / "run"
    prefix = f"steps-{socket.gethostname()}-"
    killed: list[int] = []
    if not folder.is_dir():
        return killed
    for path in folder.glob(f"{prefix}*.pgids"):
        owner = int(path.stem.removeprefix(prefix))
        if owner == os.getpid() or Path(f"/proc/{owner}").exists():
            continue  # that worker is alive: its steps are its business
        for line in path.read_text().splitlines():
            pgid, started = (int(part) for part in line.split())
            leader = _stat(pgid)
            if leader is not None and leader[1] != started:
                continue  # the id belongs to another group now
            if _members(pgid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                    killed.append(pgid)
        path.unlink(missing_ok=True)
    return killed
