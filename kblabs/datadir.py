"""The data dir: created on first start (0700), and checked to be writable."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path

from kblabs.errors import StartupError

ADMIN_TOKEN_FILE = "admin.token"  # in the data dir: the admin token the server wrote


def ensure_data_dir(path: Path) -> None:
    """Create `path` if needed and prove we can write into it; one clear error if not."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartupError("data-dir", f"cannot create data dir {path}: {exc.strerror}") from exc
    probe = path / f".write-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(
            "data-dir",
            f"data dir {path} is not writable by this user (uid {os.getuid()}): {exc.strerror}",
        ) from exc


def write_secret_file(path: Path, content: str) -> bool:
    """Write `content` to a new file readable only by us; False if it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(content + "\n")
    return True


def atomic_write(path: Path, data: bytes, *, temp_prefix: str = ".tmp-") -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, never a
    part: a temp file in the same folder, fsync, rename, then fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=temp_prefix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
