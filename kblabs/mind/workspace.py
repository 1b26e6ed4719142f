"""Which files of a folder `mind` reads: `.gitignore` respected, binaries and large files
skipped, never leaving the folder.

A workspace is anything with `files()` and `read()`: `LocalWorkspace` is a folder on
this machine (walked and read in a worker thread), `HostWorkspace` a folder of a
connected host agent's workspace, fetched through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kblabs.mind.ignore import IgnoreRules

# Never indexed, whatever .gitignore says: version control, the platform's own data, and
# installed or generated trees nobody searches (any folder holding a pyvenv.cfg counts
# as a virtualenv too).
ALWAYS_SKIPPED = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".kb",
        "__pycache__",
        "node_modules",
        ".venv",
        ".tox",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
    }
)
DEFAULT_MAX_FILE_BYTES = 512 * 1024
BINARY_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the workspace root, `/`-separated
    size: int


@dataclass
class Listing:
    files: list[SourceFile] = field(default_factory=list)
    skipped_large: list[str] = field(default_factory=list)
    ignored: int = 0  # files and folders left out by .gitignore


class Workspace(Protocol):
    root: str

    async def files(self) -> Listing: ...

    async def read(self, path: str) -> bytes: ...


def looks_binary(data: bytes) -> bool:
    """Git's rule: a NUL byte near the start means binary."""
    return b"\0" in data[:BINARY_SNIFF_BYTES]


class LocalWorkspace:
    def __init__(self, root: Path, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.path = root.resolve()
        self.root = str(self.path)
        self.max_file_bytes = max_file_bytes

    async def files(self) -> Listing:
        return await asyncio.to_thread(self._walk)

    async def read(self, path: str) -> bytes:
        return await asyncio.to_thread(self._read, path)

    def _read(self, path: str) -> bytes:
        target = (self.path / path).resolve()
        if not target.is_relative_to(self.path):  # a symlink pointing out of the folder
            raise PermissionError(f"{path} leaves the workspace")
        return target.read_bytes()

    def _walk(self) -> Listing:
        listing = Listing()
        rules = IgnoreRules()
        for folder, dirs, names in os.walk(self.path):
            relative = Path(folder).relative_to(self.path).as_posix()
            relative = "" if relative == "." else relative
            if ".gitignore" in names:
                with contextlib.suppress(OSError):  # unreadable: as if absent
                    rules.add(relative, (Path(folder) / ".gitignore").read_text("utf-8", "replace"))
            kept = []
            for name in sorted(dirs):
                path = f"{relative}/{name}" if relative else name
                full = os.path.join(folder, name)
                if name in ALWAYS_SKIPPED or os.path.islink(full):
                    continue
                if os.path.exists(os.path.join(full, "pyvenv.cfg")):
                    continue
                if rules.ignored(path, is_dir=True):
                    listing.ignored += 1
                    continue
                kept.append(name)
            dirs[:] = kept  # os.walk descends only into these
            for name in sorted(names):
                path = f"{relative}/{name}" if relative else name
                if rules.ignored(path, is_dir=False):
                    listing.ignored += 1
                    continue
                full = os.path.join(folder, name)
                try:
                    if os.path.islink(full) and not Path(full).resolve().is_relative_to(self.path):
                        continue
                    size = os.stat(full).st_size
                except OSError:
                    continue  # vanished or unreadable: not ours to report
                if size > self.max_file_bytes:
                    listing.skipped_large.append(path)
                    continue
                listing.files.append(SourceFile(path, size))
        return listing


HostCall = Callable[..., Awaitable[Any]]
"""call(capability, method, *args) on one host agent (`ctx.api.hosts.call` bound to it)."""
HOST_MAX_FILES = 20_000  # the agent's fetchWorkspace limit


class HostWorkspace:
    """A folder of a host agent's workspace (a developer's laptop), fetched through the
    gateway in one `filesystem.fetchWorkspace` call: text files only, each under the
    agent's size limit, at most `HOST_MAX_FILES`. `.gitignore` rules are applied here to
    what arrived, so the index holds the same files as for a local folder."""

    def __init__(
        self,
        call: HostCall,
        host_id: str,
        path: str = ".",
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        self.call = call
        self.path = path
        self.root = f"host:{host_id}:{path}"
        self.max_file_bytes = max_file_bytes
        self._content: dict[str, bytes] = {}

    async def files(self) -> Listing:
        fetched = await self.call("filesystem", "fetchWorkspace", self.path, HOST_MAX_FILES)
        texts = {entry["path"]: entry["content"] for entry in fetched}
        rules = IgnoreRules()
        ignores = sorted((p for p in texts if p.rsplit("/", 1)[-1] == ".gitignore"), key=_depth)
        for path in ignores:
            rules.add(path.rpartition("/")[0], texts[path])
        listing = Listing()
        for path in sorted(texts):
            parts = path.split("/")
            if any(part in ALWAYS_SKIPPED for part in parts[:-1]):
                continue
            folders = ["/".join(parts[:n]) for n in range(1, len(parts))]
            if any(rules.ignored(f, is_dir=True) for f in folders) or rules.ignored(path, False):
                listing.ignored += 1
                continue
            data = texts[path].encode("utf-8")
            if len(data) > self.max_file_bytes:
                listing.skipped_large.append(path)
                continue
            self._content[path] = data
            listing.files.append(SourceFile(path, len(data)))
        return listing

    async def read(self, path: str) -> bytes:
        try:
            return self._content[path]
        except KeyError:
            raise FileNotFoundError(path) from None


def _depth(path: str) -> int:
    return path.count("/")
