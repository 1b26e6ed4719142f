"""The ``search`` capability: regex search in file contents and glob matching of paths."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from kblabs.agent.capabilities.base import (
    MAX_FILE_BYTES,
    SKIP_DIRS,
    BaseCapability,
    CapabilityError,
    Handler,
    Workspace,
    decode_text,
    read_regular_file,
    walk_files,
    want_bool,
    want_int,
    want_str,
)

MAX_RESULTS = 10000
MAX_LINE_CHARS = 2000
MAX_GLOB_RESULTS = 10000


class SearchCapability(BaseCapability):
    name = "search"

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def methods(self) -> Mapping[str, Handler]:
        return {"grep": self.grep, "glob": self.glob}

    # ------------------------------------------------------------------ grep

    async def grep(
        self,
        pattern: Any,
        path: Any = ".",
        glob: Any = None,
        maxResults: Any = 200,
        ignoreCase: Any = False,
    ) -> list[dict[str, Any]]:
        pattern = want_str(pattern, "pattern")
        path = want_str(path, "path", allow_empty=True)
        limit = want_int(maxResults, "maxResults", 1, MAX_RESULTS)
        flags = re.IGNORECASE if want_bool(ignoreCase, "ignoreCase") else 0
        try:
            regex = re.compile(pattern, flags)
        except re.error as exc:
            raise CapabilityError("INVALID_ARGS", f"invalid regular expression: {exc}") from exc
        name_filter = _FileFilter(want_str(glob, "glob")) if glob is not None else None
        return await asyncio.to_thread(self._grep, regex, path, name_filter, limit)

    def _grep(
        self, regex: re.Pattern[str], path: str, name_filter: _FileFilter | None, limit: int
    ) -> list[dict[str, Any]]:
        base = self.workspace.resolve(path)
        if base.is_file():
            candidates: Any = [(base, 0)]
            base = base.parent
        elif base.is_dir():
            candidates = walk_files(base)
        else:
            raise CapabilityError("NOT_FOUND", f"not found: {path}")
        hits: list[dict[str, Any]] = []
        for file, size in candidates:
            if size >= MAX_FILE_BYTES:
                continue
            relative = file.relative_to(base).as_posix()
            if name_filter is not None and not name_filter(relative):
                continue
            try:
                text = decode_text(read_regular_file(file, relative))
            except CapabilityError:
                continue
            if text is None:
                continue
            for number, line in enumerate(text.splitlines(), start=1):
                if regex.search(line):
                    hits.append({"path": relative, "line": number, "text": line[:MAX_LINE_CHARS]})
                    if len(hits) >= limit:
                        return hits
        return hits

    # ------------------------------------------------------------------ glob

    async def glob(self, pattern: Any, path: Any = ".") -> list[str]:
        pattern = want_str(pattern, "pattern")
        path = want_str(path, "path", allow_empty=True)
        parts = re.split(r"[/\\]", pattern)
        if ".." in parts:
            raise CapabilityError("INVALID_ARGS", "glob patterns must not contain '..'")
        if pattern.startswith(("/", "\\")) or PurePosixPath(pattern).is_absolute():
            raise CapabilityError("INVALID_ARGS", "glob patterns must be relative")
        matcher = compile_glob(pattern)
        keep = frozenset(part for part in parts if part in SKIP_DIRS)
        return await asyncio.to_thread(self._glob, matcher, path, keep)

    def _glob(self, matcher: re.Pattern[str], path: str, keep: frozenset[str]) -> list[str]:
        base = self.workspace.resolve(path)
        if not base.is_dir():
            raise CapabilityError("NOT_FOUND", f"not a directory: {path}")
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS or d in keep)
            for name in sorted([*dirnames, *filenames]):
                full = Path(dirpath, name)
                relative = full.relative_to(base).as_posix()
                if not matcher.fullmatch(relative):
                    continue
                if os.path.islink(full) and not self._link_inside(full):
                    continue  # a symlink pointing out of the workspace is not reported
                found.append(relative)
                if len(found) > MAX_GLOB_RESULTS:
                    raise CapabilityError(
                        "TOO_LARGE", f"more than {MAX_GLOB_RESULTS} matches; narrow the pattern"
                    )
        found.sort()
        return found

    def _link_inside(self, link: Path) -> bool:
        try:
            return self.workspace.contains(link.resolve(strict=True))
        except (OSError, RuntimeError):
            return False


class _FileFilter:
    """grep's ``glob``: without a '/', it matches the file name at any depth (like rg -g);
    with one, the path relative to the searched directory."""

    def __init__(self, pattern: str) -> None:
        self.by_name = "/" not in pattern.replace("\\", "/").strip("/")
        self.regex = compile_glob(pattern)

    def __call__(self, relative: str) -> bool:
        subject = relative.rsplit("/", 1)[-1] if self.by_name else relative
        return self.regex.fullmatch(subject) is not None


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A glob over '/'-separated relative paths as a regex.

    ``*`` and ``?`` stay inside one path segment, ``[...]`` is a character class (``[!...]``
    negates), and a ``**`` segment matches any number of directories (including none).
    """
    segments = pattern.replace("\\", "/").strip("/").split("/")
    out: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        out.append(_segment_regex(segment) + ("" if last else "/"))
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as exc:
        raise CapabilityError("INVALID_ARGS", f"invalid glob pattern: {pattern}") from exc


def _segment_regex(segment: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(segment):
        char = segment[index]
        index += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            start = index + 1 if segment[index : index + 1] in ("!", "^") else index
            close = segment.find("]", start + 1)  # a ']' first in the class is literal
            if close == -1:
                out.append(re.escape(char))
                continue
            body = segment[index:close]
            index = close + 1
            if body.startswith(("!", "^")):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
        else:
            out.append(re.escape(char))
    return "".join(out)
