"""What every capability shares: the error type, workspace confinement, argument binding,
the workspace walker and the subprocess runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import stat as stat_mod
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

MAX_FILE_BYTES = 5 * 1024 * 1024
"""Files of this size or more are refused by readFile and skipped by walks."""

SKIP_DIRS = frozenset({"node_modules", ".git", "dist", ".kb", "__pycache__", ".venv"})
"""Directory names that walks (fetchWorkspace, grep, glob) never descend into."""

BINARY_SNIFF_BYTES = 8192

ERROR_CODES = frozenset(
    {
        "ACCESS_DENIED",
        "NOT_FOUND",
        "INVALID_ARGS",
        "UNKNOWN_ADAPTER",
        "UNKNOWN_METHOD",
        "UNSUPPORTED",
        "TIMEOUT",
        "TOO_LARGE",
        "HANDLER_ERROR",
    }
)


class CapabilityError(Exception):
    """A failed call, sent back to the gateway as ``error{code, message, retryable}``."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}

    def __repr__(self) -> str:
        return f"CapabilityError({self.code!r}, {self.message!r}, retryable={self.retryable})"


@runtime_checkable
class Capability(Protocol):
    name: str

    async def call(self, method: str, args: list[Any]) -> Any: ...


# --------------------------------------------------------------------------- workspace


class Workspace:
    """The configured workspace roots; every path a call names must resolve inside one.

    Resolution follows symlinks the way the OS would (``os.path.realpath``): strictly for
    paths that exist; for new paths the existing ancestors are resolved and the missing
    tail is appended, so a write through a symlinked directory is judged by where the
    directory really is. The resolved path is what handlers then operate on.
    """

    def __init__(self, roots: list[Path]) -> None:
        if not roots:
            raise ValueError("a workspace needs at least one root directory")
        resolved: list[Path] = []
        for root in roots:
            real = Path(root).expanduser().resolve(strict=True)
            if not real.is_dir():
                raise ValueError(f"workspace root is not a directory: {root}")
            resolved.append(real)
        self.roots: list[Path] = resolved

    def resolve(self, path: str) -> Path:
        if not isinstance(path, str):
            raise CapabilityError("INVALID_ARGS", "path must be a string")
        if "\x00" in path:
            raise CapabilityError("INVALID_ARGS", "path contains a NUL byte")
        candidate = Path(path or ".")
        if not candidate.is_absolute():
            candidate = self.roots[0] / candidate
        try:
            if os.path.lexists(candidate):
                try:
                    resolved = candidate.resolve(strict=True)
                except FileNotFoundError:
                    # a dangling symlink: judge it by where it points (a write would go there)
                    resolved = candidate.resolve(strict=False)
            else:
                # a new path: existing ancestors resolved, the missing tail appended
                resolved = candidate.resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # symlink loops, unreadable components
            raise CapabilityError("INVALID_ARGS", f"cannot resolve path: {path}") from exc
        if self.root_of(resolved) is None:
            raise CapabilityError("ACCESS_DENIED", f"access denied: {path}")
        return resolved

    def root_of(self, resolved: Path) -> Path | None:
        """The root a resolved path lies in (the outermost one if roots nest), else None."""
        inside = [root for root in self.roots if resolved.is_relative_to(root)]
        return min(inside, key=lambda root: len(root.parts)) if inside else None

    def contains(self, resolved: Path) -> bool:
        return self.root_of(resolved) is not None


# --------------------------------------------------------------------------- arguments

Handler = Callable[..., Awaitable[Any]]


def bind_args(handler: Handler, method: str, args: Sequence[Any]) -> list[Any]:
    """Positional JSON args → call args; ``null`` (or a missing trailing arg) → the default."""
    params = list(inspect.signature(handler).parameters.values())
    if len(args) > len(params):
        raise CapabilityError(
            "INVALID_ARGS", f"{method} takes at most {len(params)} arguments, got {len(args)}"
        )
    bound: list[Any] = []
    for index, param in enumerate(params):
        value = args[index] if index < len(args) else None
        if value is not None:
            bound.append(value)
        elif param.default is not inspect.Parameter.empty:
            bound.append(param.default)
        else:
            raise CapabilityError("INVALID_ARGS", f"{method}: missing argument '{param.name}'")
    return bound


def want_str(value: Any, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise CapabilityError("INVALID_ARGS", f"'{name}' must be a string")
    if not value and not allow_empty:
        raise CapabilityError("INVALID_ARGS", f"'{name}' must not be empty")
    return value


def want_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise CapabilityError("INVALID_ARGS", f"'{name}' must be an integer")
    number = int(value)
    if not low <= number <= high:
        raise CapabilityError("INVALID_ARGS", f"'{name}' must be between {low} and {high}")
    return number


def want_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise CapabilityError("INVALID_ARGS", f"'{name}' must be true or false")
    return value


class BaseCapability:
    """Method table + argument binding; subclasses list their methods in ``methods()``."""

    name: str = ""

    def methods(self) -> Mapping[str, Handler]:
        raise NotImplementedError

    async def call(self, method: str, args: list[Any]) -> Any:
        handler = self.methods().get(method)
        if handler is None:
            raise CapabilityError("UNKNOWN_METHOD", f"unknown method: {self.name}.{method}")
        if not isinstance(args, list):
            raise CapabilityError("INVALID_ARGS", "args must be a list")
        return await handler(*bind_args(handler, method, args))


# --------------------------------------------------------------------------- helpers


def os_error(exc: OSError, path: str) -> CapabilityError:
    """An OSError as the error the caller sees, naming ``path`` as the caller wrote it."""
    if isinstance(exc, FileNotFoundError):
        return CapabilityError("NOT_FOUND", f"not found: {path}")
    if isinstance(exc, PermissionError):
        return CapabilityError("ACCESS_DENIED", f"permission denied: {path}")
    if isinstance(exc, IsADirectoryError):
        return CapabilityError("INVALID_ARGS", f"is a directory: {path}")
    if isinstance(exc, NotADirectoryError | FileExistsError):
        return CapabilityError("INVALID_ARGS", f"not a directory: {path}")
    return CapabilityError("HANDLER_ERROR", f"{exc.strerror or type(exc).__name__}: {path}")


def iso_utc(timestamp: float) -> str:
    """A POSIX timestamp as ISO-8601 UTC with a ``Z`` (millisecond precision)."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def looks_binary(head: bytes) -> bool:
    return b"\x00" in head[:BINARY_SNIFF_BYTES]


def decode_text(data: bytes) -> str | None:
    """UTF-8 text, or None when the bytes are binary (a NUL byte, or not valid UTF-8)."""
    if looks_binary(data):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_regular_file(path: Path, shown: str) -> bytes:
    """The bytes of a regular file below ``MAX_FILE_BYTES``.

    Opened non-blocking so a FIFO cannot hang the thread; directories, devices, sockets
    and FIFOs → INVALID_ARGS; too big → TOO_LARGE; OS errors → the mapped error.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error(exc, shown) from exc
    with os.fdopen(fd, "rb") as handle:
        try:
            info = os.fstat(fd)
            if stat_mod.S_ISDIR(info.st_mode):
                raise CapabilityError("INVALID_ARGS", f"is a directory: {shown}")
            if not stat_mod.S_ISREG(info.st_mode):
                raise CapabilityError("INVALID_ARGS", f"not a regular file: {shown}")
            if info.st_size >= MAX_FILE_BYTES:
                raise CapabilityError("TOO_LARGE", too_large(shown, info.st_size))
            data = handle.read(MAX_FILE_BYTES)
        except OSError as exc:
            raise os_error(exc, shown) from exc
    if len(data) >= MAX_FILE_BYTES:  # grew while we looked
        raise CapabilityError("TOO_LARGE", too_large(shown, len(data)))
    return data


def too_large(path: str, size: int) -> str:
    return f"file too large: {path} ({size} bytes; the limit is {MAX_FILE_BYTES - 1} bytes)"


def walk_files(base: Path) -> Iterator[tuple[Path, int]]:
    """Regular files under ``base`` (sorted, depth-first) with their size.

    Never follows symlinks (to files or directories), never descends into ``SKIP_DIRS``
    and never yields FIFOs, sockets or devices.
    """
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for filename in sorted(filenames):
            full = Path(dirpath, filename)
            try:
                info = os.lstat(full)
            except OSError:
                continue
            if stat_mod.S_ISREG(info.st_mode):
                yield full, info.st_size


# --------------------------------------------------------------------------- subprocesses

EXIT_POLL_S = 0.05
PIPE_GRACE_S = 2.0
"""How long to wait for pipes to close once the process group is dead."""


@dataclass
class _Sink:
    limit: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            room = self.limit - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            if len(chunk) > room:
                self.truncated = True


@dataclass
class ProcessResult:
    stdout: bytes
    stderr: bytes
    returncode: int | None
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool


async def _main_exited(
    proc: asyncio.subprocess.Process, waiter: asyncio.Task[int], timeout_s: float
) -> bool:
    """Wait until the main process has exited (True) or the timeout passed (False).

    ``Process.wait()`` (Python 3.11) also waits for the pipes to close, which a background
    child holding stdout would delay until the timeout, so the exit status is polled too.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while proc.returncode is None and not waiter.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.wait({waiter}, timeout=min(EXIT_POLL_S, remaining))
    return True


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    max_output: int,
) -> ProcessResult:
    """Run ``argv`` (never through a shell unless argv says so) in a new session.

    On timeout, and in every case once the main process has exited, the whole process
    group is killed with SIGKILL, so nothing the command started outlives the call (a
    process that calls ``setsid`` itself escapes; its pipes are abandoned after a grace).
    Each stream is capped at ``max_output`` bytes; the rest is read and discarded.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd),
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Sink(max_output), _Sink(max_output)
    readers = [
        asyncio.create_task(out.drain(proc.stdout)),
        asyncio.create_task(err.drain(proc.stderr)),
    ]
    waiter = asyncio.create_task(proc.wait())
    tasks = [*readers, waiter]
    timed_out = False
    try:
        timed_out = not await _main_exited(proc, waiter, timeout_s)
        kill_group(proc.pid)
        _done, pending = await asyncio.wait(tasks, timeout=PIPE_GRACE_S)
        for task in pending:
            task.cancel()
    except BaseException:
        kill_group(proc.pid)
        for task in tasks:
            task.cancel()
        raise
    return ProcessResult(
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        returncode=None if timed_out else proc.returncode,
        timed_out=timed_out,
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
    )
