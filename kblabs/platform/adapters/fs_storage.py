"""storage → "fs": files under one base folder (default `<data dir>/storage`).

A storage path is relative and `/`-separated. Every path is checked before any I/O:
no absolute paths, no `..` segments, no backslashes or NUL bytes, and the real location
(symlinks resolved) must stay inside the base folder, so a symlink pointing out is
refused, not followed. Writes go to a temporary file in the same folder and are renamed
over the target, so a reader sees the old or the new content, never a half-written file.
File I/O runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import builtins
import os
from pathlib import Path

from kblabs.datadir import atomic_write
from kblabs.errors import KbError
from kblabs.platform.options import AdapterOptions

TEMP_PREFIX = ".kb-tmp-"


class FsStorageOptions(AdapterOptions):
    # A relative folder is resolved against the project root. Default: <data dir>/storage.
    base_dir: str | None = None


class StoragePathError(KbError):
    """A path that would leave the storage folder, or is not a valid storage path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__("STORAGE_PATH_INVALID", f"storage path {path!r}: {reason}", 400)
        self.path = path


class FsStorage:
    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.root = base_dir.resolve()

    async def start(self) -> None:
        await asyncio.to_thread(self.base_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
        self.root = self.base_dir.resolve(strict=True)

    # --- paths -----------------------------------------------------------------------

    def resolve(self, path: str, *, allow_empty: bool = False) -> Path:
        """The real location of `path` inside the base folder, or StoragePathError."""
        parts = _parts(path)
        if not parts and not allow_empty:
            raise StoragePathError(path, "is empty")
        target = self.root.joinpath(*parts).resolve()  # follows the symlinks that exist
        if target != self.root and not target.is_relative_to(self.root):
            raise StoragePathError(path, "leads outside the storage folder (a symlink?)")
        return target

    def _key(self, target: Path) -> str:
        return target.relative_to(self.root).as_posix()

    # --- operations ------------------------------------------------------------------

    async def read(self, path: str) -> bytes | None:
        target = self.resolve(path)
        return await asyncio.to_thread(_read, target)

    async def write(self, path: str, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"storage.write needs bytes, not {type(data).__name__}")
        target = self.resolve(path)
        if target == self.root:
            raise StoragePathError(path, "is the storage folder itself")
        await asyncio.to_thread(_atomic_write, target, bytes(data))

    async def delete(self, path: str) -> bool:
        target = self.resolve(path)
        return await asyncio.to_thread(_delete, target)

    async def exists(self, path: str) -> bool:
        target = self.resolve(path)
        return await asyncio.to_thread(target.is_file)

    async def list(self, prefix: str = "") -> list[str]:
        parts = _parts(prefix)
        # Walk only the folder the prefix names: `a/b/` → a/b, `a/b/fi` → a/b.
        folder = parts if prefix.endswith("/") else parts[:-1]
        wanted = "/".join(parts) + ("/" if parts and prefix.endswith("/") else "")
        start = self.resolve("/".join(folder), allow_empty=True)
        keys = await asyncio.to_thread(self._walk, start)
        return sorted(key for key in keys if key.startswith(wanted))

    def _walk(self, start: Path) -> builtins.list[str]:
        found = []
        for folder, _dirs, files in os.walk(start):  # does not follow directory symlinks
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    continue
                real = (Path(folder) / name).resolve()
                if real.is_relative_to(self.root) and real.is_file():
                    found.append(self._key(Path(folder) / name))
        return found


def _parts(path: str) -> list[str]:
    """The segments of a storage path, refusing anything that could name another place."""
    if not isinstance(path, str):
        raise StoragePathError(str(path), "must be a string")
    if "\x00" in path or "\\" in path:
        raise StoragePathError(path, "must not contain NUL bytes or backslashes")
    if path.startswith("/"):
        raise StoragePathError(path, "must be relative, not absolute")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise StoragePathError(path, "must not contain '..'")
    return parts


def _read(target: Path) -> bytes | None:
    try:
        return target.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _delete(target: Path) -> bool:
    try:
        target.unlink()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    return True


def _atomic_write(target: Path, data: bytes) -> None:
    atomic_write(target, data, temp_prefix=TEMP_PREFIX)
