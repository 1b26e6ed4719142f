"""The ``git`` capability: read-only git queries, run with the ``git`` binary.

Never through a shell; the working directory is confined by the workspace and repository
discovery stops at the workspace root (``GIT_CEILING_DIRECTORIES``), so a workspace
inside a bigger repository does not expose the rest of it. Options that could run
repository-configured programs (external diff, textconv, fsmonitor) are switched off.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kblabs.agent.capabilities.base import (
    MAX_FILE_BYTES,
    BaseCapability,
    CapabilityError,
    Handler,
    Workspace,
    run_process,
    want_bool,
    want_int,
    want_str,
)

GIT_TIMEOUT_S = 30.0
MAX_LOG_LIMIT = 1000
NO_COMMITS = "the repository has no commits yet"
SAFE_CONFIG = (
    "-c",
    "core.fsmonitor=false",
    "-c",
    "color.ui=false",
    "-c",
    "core.quotePath=false",
)


class GitCapability(BaseCapability):
    name = "git"

    def __init__(self, workspace: Workspace, *, timeout_s: float = GIT_TIMEOUT_S) -> None:
        self.workspace = workspace
        self.timeout_s = timeout_s

    def methods(self) -> Mapping[str, Handler]:
        return {
            "status": self.status,
            "diff": self.diff,
            "log": self.log,
            "show": self.show,
            "currentBranch": self.current_branch,
        }

    # ------------------------------------------------------------------ methods

    async def status(self, path: Any = ".") -> dict[str, Any]:
        cwd, spec = await self._locate(path)
        out = await self._git(cwd, path, ["status", "--porcelain=v1", "-b", "-z", *spec])
        return parse_status(out)

    async def diff(self, path: Any = ".", staged: Any = False) -> str:
        cached = ["--cached"] if want_bool(staged, "staged") else []
        cwd, spec = await self._locate(path)
        args = ["diff", "--no-ext-diff", "--no-textconv", "--no-color", *cached, *spec]
        return await self._git(cwd, path, args)

    async def log(self, path: Any = ".", limit: Any = 20) -> list[dict[str, str]]:
        count = want_int(limit, "limit", 1, MAX_LOG_LIMIT)
        cwd, spec = await self._locate(path)
        fmt = "--format=%H%x1f%an%x1f%aI%x1f%s%x1e"
        try:
            out = await self._git(cwd, path, ["log", f"-n{count}", fmt, *spec])
        except CapabilityError as exc:
            if exc.code == "NOT_FOUND" and exc.message.startswith(NO_COMMITS):
                return []
            raise
        return parse_log(out)

    async def show(self, ref: Any, path: Any = ".") -> str:
        ref = want_str(ref, "ref")
        if ref.startswith("-"):
            raise CapabilityError("INVALID_ARGS", f"invalid ref: {ref}")
        cwd, _spec = await self._locate(path)
        args = ["show", "--no-ext-diff", "--no-textconv", "--no-color", "--end-of-options", ref]
        return await self._git(cwd, path, args)

    async def current_branch(self, path: Any = ".") -> str:
        cwd, _spec = await self._locate(path)
        branch = await self._git(cwd, path, ["symbolic-ref", "--short", "-q", "HEAD"], ok=(0, 1))
        return branch.strip() or "HEAD"  # exit 1, empty output: a detached HEAD

    # ------------------------------------------------------------------ plumbing

    async def _locate(self, path: Any) -> tuple[Path, list[str]]:
        """The directory to run in and, when ``path`` names a file, a pathspec for it."""
        shown = want_str(path, "path", allow_empty=True)
        target = await asyncio.to_thread(self.workspace.resolve, shown)
        if await asyncio.to_thread(target.is_dir):
            return target, []
        if await asyncio.to_thread(target.exists):
            return target.parent, ["--", target.name]
        raise CapabilityError("NOT_FOUND", f"not found: {shown}")

    async def _git(self, cwd: Path, shown: str, args: list[str], ok: tuple[int, ...] = (0,)) -> str:
        binary = shutil.which("git")
        if binary is None:
            raise CapabilityError("UNSUPPORTED", "git is not installed on this host")
        root = self.workspace.root_of(cwd) or cwd
        result = await run_process(
            [binary, "--no-pager", *SAFE_CONFIG, *args],
            cwd=cwd,
            env=_git_env(root),
            timeout_s=self.timeout_s,
            max_output=MAX_FILE_BYTES,
        )
        if result.timed_out:
            raise CapabilityError(
                "TIMEOUT", f"git {args[0]} timed out after {self.timeout_s:g} s", retryable=True
            )
        if result.stdout_truncated:
            raise CapabilityError(
                "TOO_LARGE", f"git {args[0]} output exceeds {MAX_FILE_BYTES} bytes"
            )
        stderr = result.stderr.decode("utf-8", "replace").strip()
        if result.returncode not in ok:
            raise _git_error(args[0], shown, stderr)
        return result.stdout.decode("utf-8", "replace")


def _git_env(root: Path) -> dict[str, str]:
    # drop GIT_DIR, GIT_WORK_TREE & co: they would point git somewhere we did not confine
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(
        {
            "GIT_CEILING_DIRECTORIES": str(root.parent),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_OPTIONAL_LOCKS": "0",
            "GIT_PAGER": "cat",
            "PAGER": "cat",
            "LC_ALL": "C",
        }
    )
    return env


def _git_error(command: str, shown: str, stderr: str) -> CapabilityError:
    lowered = stderr.lower()
    first = next((line for line in stderr.splitlines() if line.strip()), "")
    first = first.removeprefix("fatal: ").removeprefix("error: ")[:300]
    if "not a git repository" in lowered:
        return CapabilityError("NOT_FOUND", f"not a git repository (inside the workspace): {shown}")
    if "does not have any commits" in lowered:
        return CapabilityError("NOT_FOUND", f"{NO_COMMITS}: {shown}")
    if "unknown revision" in lowered or "bad revision" in lowered or "bad object" in lowered:
        return CapabilityError("NOT_FOUND", f"unknown revision: {first}")
    return CapabilityError("HANDLER_ERROR", f"git {command} failed: {first or 'no message'}")


def parse_status(out: str) -> dict[str, Any]:
    """``git status --porcelain=v1 -b -z`` → ``{branch, files: [{path, index, worktree}]}``."""
    records = out.split("\0")
    branch: str | None = None
    files: list[dict[str, str]] = []
    index = 0
    while index < len(records):
        record = records[index]
        index += 1
        if not record:
            continue
        if record.startswith("## "):
            branch = _parse_branch(record[3:])
            continue
        entry = {"path": record[3:], "index": record[0], "worktree": record[1]}
        if record[0] in "RC" and index < len(records):  # renames/copies: the source follows
            entry["origPath"] = records[index]
            index += 1
        files.append(entry)
    return {"branch": branch, "files": files}


def _parse_branch(header: str) -> str | None:
    for prefix in ("No commits yet on ", "Initial commit on "):
        if header.startswith(prefix):
            return header[len(prefix) :]
    if header.startswith("HEAD (no branch)"):
        return None
    return header.split("...", 1)[0].split(" [", 1)[0]


def parse_log(out: str) -> list[dict[str, str]]:
    commits: list[dict[str, str]] = []
    for record in out.split("\x1e"):
        record = record.strip("\n")
        if not record:
            continue
        sha, author, date, subject = [*record.split("\x1f"), "", "", ""][:4]
        commits.append({"commit": sha, "author": author, "date": _utc(date), "subject": subject})
    return commits


def _utc(value: str) -> str:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
