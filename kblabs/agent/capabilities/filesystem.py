"""The ``filesystem`` capability: read, write, list and fetch files inside the workspace."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import stat as stat_mod
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kblabs.agent.capabilities.base import (
    MAX_FILE_BYTES,
    BaseCapability,
    CapabilityError,
    Handler,
    Workspace,
    decode_text,
    iso_utc,
    os_error,
    read_regular_file,
    walk_files,
    want_int,
    want_str,
)

ENCODINGS = ("utf-8", "base64")
MAX_FETCH_FILES = 20000
MAX_FETCH_BYTES = 100 * 1024 * 1024
"""fetchWorkspace refuses (TOO_LARGE) to return more content than this in one answer."""


def _encoding(value: Any) -> str:
    encoding = want_str(value, "encoding").lower()
    if encoding == "utf8":
        encoding = "utf-8"
    if encoding not in ENCODINGS:
        raise CapabilityError(
            "INVALID_ARGS", f"unsupported encoding: {value} (use utf-8 or base64)"
        )
    return encoding


def _process_umask() -> int:
    # read once, at import, on the importing thread: os.umask has no read-only form
    current = os.umask(0)
    os.umask(current)
    return current


_UMASK = _process_umask()


class FilesystemCapability(BaseCapability):
    name = "filesystem"

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def methods(self) -> Mapping[str, Handler]:
        return {
            "readFile": self.read_file,
            "writeFile": self.write_file,
            "listDir": self.list_dir,
            "stat": self.stat,
            "exists": self.exists,
            "fetchWorkspace": self.fetch_workspace,
        }

    # ------------------------------------------------------------------ readFile

    async def read_file(self, path: Any, encoding: Any = "utf-8") -> str:
        path = want_str(path, "path", allow_empty=True)
        enc = _encoding(encoding)
        return await asyncio.to_thread(self._read_file, path, enc)

    def _read_file(self, path: str, encoding: str) -> str:
        data = read_regular_file(self.workspace.resolve(path), path)
        if encoding == "base64":
            return base64.b64encode(data).decode("ascii")
        text = decode_text(data)
        if text is None:
            raise CapabilityError(
                "INVALID_ARGS", f"binary file: {path} (read it with encoding 'base64')"
            )
        return text

    # ------------------------------------------------------------------ writeFile

    async def write_file(self, path: Any, content: Any, encoding: Any = "utf-8") -> dict[str, Any]:
        path = want_str(path, "path")
        content = want_str(content, "content", allow_empty=True)
        enc = _encoding(encoding)
        if enc == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise CapabilityError("INVALID_ARGS", "content is not valid base64") from exc
        else:
            data = content.encode("utf-8")
        return await asyncio.to_thread(self._write_file, path, data)

    def _write_file(self, path: str, data: bytes) -> dict[str, Any]:
        target = self.workspace.resolve(path)
        if target.is_dir():
            raise CapabilityError("INVALID_ARGS", f"is a directory: {path}")
        parent = target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            # the parent was created from a confined path; check nothing swapped it meanwhile
            if not self.workspace.contains(parent.resolve(strict=True)):
                raise CapabilityError("ACCESS_DENIED", f"access denied: {path}")
            try:
                mode = stat_mod.S_IMODE(os.stat(target).st_mode)
            except FileNotFoundError:
                mode = 0o666 & ~_UMASK
            fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp_name, mode)
                os.replace(tmp_name, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
                raise
        except OSError as exc:
            raise os_error(exc, path) from exc
        return {"bytesWritten": len(data)}

    # ------------------------------------------------------------------ listDir / stat / exists

    async def list_dir(self, path: Any = ".") -> list[dict[str, Any]]:
        path = want_str(path, "path", allow_empty=True)
        return await asyncio.to_thread(self._list_dir, path)

    def _list_dir(self, path: str) -> list[dict[str, Any]]:
        target = self.workspace.resolve(path)
        entries: list[dict[str, Any]] = []
        try:
            with os.scandir(target) as scan:
                for entry in scan:
                    info = self._entry_stat(Path(entry.path))
                    entries.append(
                        {
                            "name": entry.name,
                            "isFile": info is not None and stat_mod.S_ISREG(info.st_mode),
                            "isDir": info is not None and stat_mod.S_ISDIR(info.st_mode),
                            "size": info.st_size if info is not None else 0,
                        }
                    )
        except OSError as exc:
            raise os_error(exc, path) from exc
        entries.sort(key=lambda item: item["name"])
        return entries

    def _entry_stat(self, entry: Path) -> os.stat_result | None:
        """An entry's stat; a symlink is followed only if it points inside the workspace."""
        try:
            info = os.lstat(entry)
            if not stat_mod.S_ISLNK(info.st_mode):
                return info
            real = entry.resolve(strict=True)
            return os.stat(real) if self.workspace.contains(real) else None
        except (OSError, RuntimeError):
            return None

    async def stat(self, path: Any) -> dict[str, Any]:
        path = want_str(path, "path", allow_empty=True)
        return await asyncio.to_thread(self._stat, path)

    def _stat(self, path: str) -> dict[str, Any]:
        target = self.workspace.resolve(path)
        try:
            info = os.stat(target)
        except OSError as exc:
            raise os_error(exc, path) from exc
        return {
            "size": info.st_size,
            "isFile": stat_mod.S_ISREG(info.st_mode),
            "isDir": stat_mod.S_ISDIR(info.st_mode),
            "mtime": iso_utc(info.st_mtime),
        }

    async def exists(self, path: Any) -> bool:
        path = want_str(path, "path", allow_empty=True)
        return await asyncio.to_thread(self._exists, path)

    def _exists(self, path: str) -> bool:
        return self.workspace.resolve(path).exists()

    # ------------------------------------------------------------------ fetchWorkspace

    async def fetch_workspace(self, path: Any = ".", maxFiles: Any = 2000) -> list[dict[str, str]]:
        path = want_str(path, "path", allow_empty=True)
        limit = want_int(maxFiles, "maxFiles", 1, MAX_FETCH_FILES)
        return await asyncio.to_thread(self._fetch_workspace, path, limit)

    def _fetch_workspace(self, path: str, limit: int) -> list[dict[str, str]]:
        base = self.workspace.resolve(path)
        if not base.exists():
            raise CapabilityError("NOT_FOUND", f"not found: {path}")
        if not base.is_dir():
            raise CapabilityError("INVALID_ARGS", f"not a directory: {path}")
        files: list[dict[str, str]] = []
        total = 0
        for file, size in walk_files(base):
            if len(files) >= limit:
                break
            if size >= MAX_FILE_BYTES:
                continue
            try:
                data = read_regular_file(file, str(file))
            except CapabilityError:
                continue
            text = decode_text(data)
            if text is None:
                continue
            total += len(data)
            if total > MAX_FETCH_BYTES:
                raise CapabilityError(
                    "TOO_LARGE",
                    f"workspace content exceeds {MAX_FETCH_BYTES // (1024 * 1024)} MiB; "
                    "fetch a subdirectory or lower maxFiles",
                )
            files.append({"path": file.relative_to(base).as_posix(), "content": text})
        return files
