"""The host agent's capability handlers, against real directories, a real git repository
and real processes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import stat
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from kblabs.agent.capabilities import (
    Capability,
    CapabilityError,
    Workspace,
    build_capabilities,
    dispatch,
)
from kblabs.agent.capabilities.base import MAX_FILE_BYTES, BaseCapability, Handler
from kblabs.agent.capabilities.execution import ExecutionCapability
from kblabs.agent.capabilities.shell import DISABLED_MESSAGE
from kblabs.marketplace.lockfile import LockFile
from tests.conftest import base_env, run_cli

pytestmark = pytest.mark.anyio

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace, holding what must never be reachable."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text("top secret\n")
    return out


@pytest.fixture
def ws(tmp_path: Path, outside: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "README.md").write_text("# Project\nhello world\n")
    (root / "src" / "main.py").write_text("import os\n\ndef main():\n    print('Hello')\n")
    (root / "src" / "pkg" / "util.py").write_text("def helper():\n    return 42\n")
    (root / "notes.txt").write_text("TODO: write docs\ntodo: lower case\n")
    return root


@pytest.fixture
def caps(ws: Path) -> dict[str, Capability]:
    return build_capabilities(Workspace([ws]), shell_enabled=True, shell_timeout_ms=10000)


async def call(caps: dict[str, Capability], adapter: str, method: str, *args: Any) -> Any:
    return await dispatch(caps, adapter, method, list(args))


async def fails(
    caps: dict[str, Capability], code: str, adapter: str, method: str, *args: Any
) -> CapabilityError:
    with pytest.raises(CapabilityError) as info:
        await call(caps, adapter, method, *args)
    assert info.value.code == code, info.value.to_dict()
    return info.value


# --------------------------------------------------------------------------- workspace


async def test_workspace_resolves_relative_and_absolute_paths_inside(ws: Path) -> None:
    workspace = Workspace([ws])
    assert workspace.resolve("README.md") == ws.resolve() / "README.md"
    assert workspace.resolve(".") == ws.resolve()
    assert workspace.resolve("src/../README.md") == ws.resolve() / "README.md"
    assert workspace.resolve(str(ws / "src" / "main.py")) == ws.resolve() / "src" / "main.py"
    assert workspace.resolve("new/dir/file.txt") == ws.resolve() / "new" / "dir" / "file.txt"


@pytest.mark.parametrize(
    "path",
    ["..", "../outside/secret.txt", "src/../../outside/secret.txt", "new/../../x"],
)
async def test_workspace_refuses_dotdot_escapes(ws: Path, path: str) -> None:
    with pytest.raises(CapabilityError) as info:
        Workspace([ws]).resolve(path)
    assert info.value.to_dict() == {
        "code": "ACCESS_DENIED",
        "message": f"access denied: {path}",
        "retryable": False,
    }


async def test_workspace_refuses_absolute_paths_outside(ws: Path, outside: Path) -> None:
    for path in [str(outside / "secret.txt"), "/etc/passwd", "/", str(ws.parent)]:
        with pytest.raises(CapabilityError) as info:
            Workspace([ws]).resolve(path)
        assert info.value.code == "ACCESS_DENIED"


async def test_workspace_needs_existing_roots(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Workspace([])
    with pytest.raises(FileNotFoundError):
        Workspace([tmp_path / "missing"])


async def test_second_root_is_reachable_by_absolute_path(ws: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.txt").write_text("second root")
    caps = build_capabilities(Workspace([ws, other]))
    assert await call(caps, "filesystem", "readFile", str(other / "b.txt")) == "second root"
    # relative paths belong to the first root
    await fails(caps, "NOT_FOUND", "filesystem", "readFile", "b.txt")


# --------------------------------------------------------------------------- confinement


async def test_reads_outside_the_workspace_are_denied(
    caps: dict[str, Capability], ws: Path, outside: Path
) -> None:
    os.symlink(outside / "secret.txt", ws / "file-link")
    os.symlink(outside, ws / "dir-link")
    attempts = [
        "../outside/secret.txt",
        str(outside / "secret.txt"),
        "file-link",
        "dir-link/secret.txt",
    ]
    for path in attempts:
        for method in ("readFile", "stat", "exists"):
            error = await fails(caps, "ACCESS_DENIED", "filesystem", method, path)
            assert error.message == f"access denied: {path}"
            assert "top secret" not in error.message
    await fails(caps, "ACCESS_DENIED", "filesystem", "listDir", "dir-link")
    await fails(caps, "ACCESS_DENIED", "filesystem", "fetchWorkspace", "dir-link")
    await fails(caps, "ACCESS_DENIED", "search", "grep", "secret", "dir-link")
    await fails(caps, "ACCESS_DENIED", "search", "glob", "*", "dir-link")


async def test_symlinks_inside_the_workspace_work(caps: dict[str, Capability], ws: Path) -> None:
    os.symlink(ws / "README.md", ws / "readme-link")
    os.symlink(ws / "src", ws / "src-link")
    assert (await call(caps, "filesystem", "readFile", "readme-link")).startswith("# Project")
    assert "def main" in await call(caps, "filesystem", "readFile", "src-link/main.py")


async def test_write_through_symlinked_dir_pointing_out_is_denied(
    caps: dict[str, Capability], ws: Path, outside: Path
) -> None:
    os.symlink(outside, ws / "dir-link")
    before = sorted(p.name for p in outside.iterdir())
    for path in ["dir-link/new.txt", "dir-link/secret.txt", "dir-link/deep/new.txt"]:
        await fails(caps, "ACCESS_DENIED", "filesystem", "writeFile", path, "pwned")
    assert sorted(p.name for p in outside.iterdir()) == before
    assert (outside / "secret.txt").read_text() == "top secret\n"


async def test_write_through_dangling_symlink_pointing_out_is_denied(
    caps: dict[str, Capability], ws: Path, outside: Path
) -> None:
    os.symlink(outside / "created-by-agent.txt", ws / "dangling")
    await fails(caps, "ACCESS_DENIED", "filesystem", "writeFile", "dangling", "pwned")
    await fails(caps, "ACCESS_DENIED", "filesystem", "writeFile", "../outside/x.txt", "pwned")
    await fails(caps, "ACCESS_DENIED", "filesystem", "writeFile", str(outside / "y.txt"), "x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


# --------------------------------------------------------------------------- filesystem


async def test_read_file_text_and_base64(caps: dict[str, Capability], ws: Path) -> None:
    assert await call(caps, "filesystem", "readFile", "README.md") == "# Project\nhello world\n"
    encoded = await call(caps, "filesystem", "readFile", "README.md", "base64")
    assert base64.b64decode(encoded) == b"# Project\nhello world\n"
    # null means "use the default"
    assert await call(caps, "filesystem", "readFile", "README.md", None) == (
        "# Project\nhello world\n"
    )


async def test_read_file_errors(caps: dict[str, Capability], ws: Path) -> None:
    await fails(caps, "NOT_FOUND", "filesystem", "readFile", "missing.txt")
    await fails(caps, "INVALID_ARGS", "filesystem", "readFile", "src")
    await fails(caps, "INVALID_ARGS", "filesystem", "readFile", "README.md", "latin-7")
    await fails(caps, "INVALID_ARGS", "filesystem", "readFile", 42)


async def test_read_binary_file(caps: dict[str, Capability], ws: Path) -> None:
    payload = bytes(range(256)) * 4
    (ws / "image.bin").write_bytes(payload)
    error = await fails(caps, "INVALID_ARGS", "filesystem", "readFile", "image.bin")
    assert "binary file" in error.message
    assert base64.b64decode(await call(caps, "filesystem", "readFile", "image.bin", "base64")) == (
        payload
    )
    (ws / "latin1.txt").write_bytes("café".encode("latin-1"))
    await fails(caps, "INVALID_ARGS", "filesystem", "readFile", "latin1.txt")


async def test_read_too_large_file(caps: dict[str, Capability], ws: Path) -> None:
    with open(ws / "big.log", "wb") as handle:
        handle.truncate(MAX_FILE_BYTES)  # sparse: cheap to make
    error = await fails(caps, "TOO_LARGE", "filesystem", "readFile", "big.log")
    assert "big.log" in error.message
    with open(ws / "just-under.txt", "wb") as handle:
        handle.write(b"a" * (MAX_FILE_BYTES - 1))
    assert len(await call(caps, "filesystem", "readFile", "just-under.txt")) == MAX_FILE_BYTES - 1


async def test_read_fifo_does_not_hang(caps: dict[str, Capability], ws: Path) -> None:
    os.mkfifo(ws / "pipe")
    await fails(caps, "INVALID_ARGS", "filesystem", "readFile", "pipe")


async def test_write_file_creates_parents_and_replaces_atomically(
    caps: dict[str, Capability], ws: Path
) -> None:
    result = await call(caps, "filesystem", "writeFile", "out/deep/a.txt", "héllo")
    assert result == {"bytesWritten": 6}
    assert (ws / "out" / "deep" / "a.txt").read_text() == "héllo"

    os.chmod(ws / "README.md", 0o640)
    await call(caps, "filesystem", "writeFile", "README.md", "replaced")
    assert (ws / "README.md").read_text() == "replaced"
    assert stat.S_IMODE(os.stat(ws / "README.md").st_mode) == 0o640
    assert [p.name for p in ws.iterdir() if p.name.endswith(".tmp")] == []

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(ws / "out" / "deep" / "a.txt").st_mode) == 0o666 & ~umask


async def test_write_file_base64_and_errors(caps: dict[str, Capability], ws: Path) -> None:
    data = bytes([0, 1, 2, 255])
    encoded = base64.b64encode(data).decode()
    assert await call(caps, "filesystem", "writeFile", "b.bin", encoded, "base64") == {
        "bytesWritten": 4
    }
    assert (ws / "b.bin").read_bytes() == data
    await fails(caps, "INVALID_ARGS", "filesystem", "writeFile", "c.bin", "not base64!", "base64")
    await fails(caps, "INVALID_ARGS", "filesystem", "writeFile", "src", "x")
    await fails(caps, "INVALID_ARGS", "filesystem", "writeFile", "README.md/x.txt", "x")
    await fails(caps, "INVALID_ARGS", "filesystem", "writeFile", "x.txt", {"not": "text"})
    await fails(caps, "INVALID_ARGS", "filesystem", "writeFile", "x.txt")


async def test_write_through_symlink_inside_keeps_the_link(
    caps: dict[str, Capability], ws: Path
) -> None:
    os.symlink(ws / "notes.txt", ws / "notes-link")
    await call(caps, "filesystem", "writeFile", "notes-link", "via link")
    assert (ws / "notes-link").is_symlink()
    assert (ws / "notes.txt").read_text() == "via link"


async def test_list_dir(caps: dict[str, Capability], ws: Path, outside: Path) -> None:
    os.symlink(outside, ws / "zz-out")
    entries = await call(caps, "filesystem", "listDir")
    assert [e["name"] for e in entries] == ["README.md", "notes.txt", "src", "zz-out"]
    readme = entries[0]
    assert readme == {"name": "README.md", "isFile": True, "isDir": False, "size": 22}
    assert entries[2]["isDir"] is True and entries[2]["isFile"] is False
    # a symlink pointing out is listed, but nothing about its target is disclosed
    assert entries[3] == {"name": "zz-out", "isFile": False, "isDir": False, "size": 0}
    assert [e["name"] for e in await call(caps, "filesystem", "listDir", "src")] == [
        "main.py",
        "pkg",
    ]
    await fails(caps, "INVALID_ARGS", "filesystem", "listDir", "README.md")
    await fails(caps, "NOT_FOUND", "filesystem", "listDir", "nope")


async def test_stat_and_exists(caps: dict[str, Capability], ws: Path) -> None:
    moment = datetime.fromisoformat("2024-01-02T03:04:05.250+00:00").timestamp()
    os.utime(ws / "README.md", (moment, moment))
    assert await call(caps, "filesystem", "stat", "README.md") == {
        "size": 22,
        "isFile": True,
        "isDir": False,
        "mtime": "2024-01-02T03:04:05.250Z",
    }
    info = await call(caps, "filesystem", "stat", "src")
    assert info["isDir"] is True and info["isFile"] is False
    await fails(caps, "NOT_FOUND", "filesystem", "stat", "missing")
    assert await call(caps, "filesystem", "exists", "README.md") is True
    assert await call(caps, "filesystem", "exists", "missing/deeper") is False
    await fails(caps, "ACCESS_DENIED", "filesystem", "exists", "../nothing-here")


async def test_fetch_workspace_skips_what_it_should(
    caps: dict[str, Capability], ws: Path, outside: Path
) -> None:
    for skipped in ["node_modules/lib", ".git", "dist", ".kb", "src/__pycache__", ".venv/bin"]:
        (ws / skipped).mkdir(parents=True, exist_ok=True)
        (ws / skipped / "skipped.txt").write_text("should not be fetched")
    (ws / "blob.bin").write_bytes(b"\x00\x01\x02")
    with open(ws / "huge.txt", "wb") as handle:
        handle.truncate(MAX_FILE_BYTES)
    os.symlink(outside / "secret.txt", ws / "secret-link")
    os.symlink(outside, ws / "out-link")
    os.mkfifo(ws / "pipe")

    files = await call(caps, "filesystem", "fetchWorkspace")
    assert [f["path"] for f in files] == [
        "README.md",
        "notes.txt",
        "src/main.py",
        "src/pkg/util.py",
    ]
    assert files[0]["content"] == "# Project\nhello world\n"

    limited = await call(caps, "filesystem", "fetchWorkspace", ".", 2)
    assert [f["path"] for f in limited] == ["README.md", "notes.txt"]
    sub = await call(caps, "filesystem", "fetchWorkspace", "src")
    assert [f["path"] for f in sub] == ["main.py", "pkg/util.py"]
    await fails(caps, "INVALID_ARGS", "filesystem", "fetchWorkspace", ".", 0)


# --------------------------------------------------------------------------- git


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, timeout=30
    )
    return done.stdout


def make_repo(repo: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Ada Lovelace")
    git(repo, "config", "user.email", "ada@example.com")
    git(repo, "config", "commit.gpgsign", "false")


@pytest.fixture
def repo(ws: Path) -> Path:
    make_repo(ws)
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "initial commit")
    (ws / "notes.txt").write_text("TODO: write docs\nnew line\n")
    git(ws, "commit", "-q", "-am", "second: notes")
    return ws


@needs_git
async def test_git_status(caps: dict[str, Capability], repo: Path) -> None:
    clean = await call(caps, "git", "status")
    assert clean == {"branch": "main", "files": []}

    (repo / "README.md").write_text("changed\n")
    (repo / "new file.txt").write_text("untracked\n")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    git(repo, "mv", "src/pkg/util.py", "src/pkg/helpers.py")

    status = await call(caps, "git", "status")
    assert status["branch"] == "main"
    by_path = {f["path"]: f for f in status["files"]}
    assert by_path["README.md"] == {"path": "README.md", "index": " ", "worktree": "M"}
    assert by_path["new file.txt"] == {"path": "new file.txt", "index": "?", "worktree": "?"}
    assert by_path["staged.txt"]["index"] == "A"
    assert by_path["src/pkg/helpers.py"]["index"] == "R"
    assert by_path["src/pkg/helpers.py"]["origPath"] == "src/pkg/util.py"

    # a file path narrows status to that file
    only = await call(caps, "git", "status", "README.md")
    assert [f["path"] for f in only["files"]] == ["README.md"]


@needs_git
async def test_git_diff_log_show_branch(caps: dict[str, Capability], repo: Path) -> None:
    (repo / "README.md").write_text("# Project\nhello world\nadded line\n")
    diff = await call(caps, "git", "diff")
    assert "+added line" in diff and "README.md" in diff
    assert await call(caps, "git", "diff", ".", True) == ""
    git(repo, "add", "README.md")
    assert "+added line" in await call(caps, "git", "diff", ".", True)
    assert await call(caps, "git", "diff") == ""

    log = await call(caps, "git", "log")
    assert [entry["subject"] for entry in log] == ["second: notes", "initial commit"]
    assert log[0]["author"] == "Ada Lovelace"
    assert len(log[0]["commit"]) == 40
    assert log[0]["date"].endswith("Z")
    datetime.fromisoformat(log[0]["date"].replace("Z", "+00:00"))
    assert len(await call(caps, "git", "log", ".", 1)) == 1

    shown = await call(caps, "git", "show", "HEAD")
    assert "second: notes" in shown and "+new line" in shown
    assert await call(caps, "git", "show", "HEAD~1:notes.txt") == (
        "TODO: write docs\ntodo: lower case\n"
    )
    assert await call(caps, "git", "currentBranch") == "main"
    git(repo, "checkout", "-q", "--detach", "HEAD")
    assert await call(caps, "git", "currentBranch") == "HEAD"


@needs_git
async def test_git_show_rejects_option_refs(
    caps: dict[str, Capability], repo: Path, tmp_path: Path
) -> None:
    target = tmp_path / "written-by-git"
    for ref in ["-p", "--output=" + str(target), "--help"]:
        error = await fails(caps, "INVALID_ARGS", "git", "show", ref)
        assert "invalid ref" in error.message
    assert not target.exists()
    await fails(caps, "NOT_FOUND", "git", "show", "no-such-branch")


@needs_git
async def test_git_outside_repo_and_outside_workspace(
    caps: dict[str, Capability], ws: Path, outside: Path
) -> None:
    error = await fails(caps, "NOT_FOUND", "git", "status")
    assert "not a git repository" in error.message
    await fails(caps, "NOT_FOUND", "git", "currentBranch", "src")
    make_repo(outside)
    await fails(caps, "ACCESS_DENIED", "git", "status", str(outside))
    await fails(caps, "ACCESS_DENIED", "git", "log", "..")


@needs_git
async def test_git_does_not_discover_a_repository_above_the_workspace(tmp_path: Path) -> None:
    big = tmp_path / "big"
    make_repo(big)
    (big / "private.txt").write_text("outside the workspace\n")
    (big / "sub").mkdir()
    caps = build_capabilities(Workspace([big / "sub"]))
    error = await fails(caps, "NOT_FOUND", "git", "status")
    assert "not a git repository" in error.message


@needs_git
async def test_git_log_of_empty_repository(caps: dict[str, Capability], ws: Path) -> None:
    make_repo(ws)
    assert await call(caps, "git", "log") == []
    assert await call(caps, "git", "currentBranch") == "main"
    status = await call(caps, "git", "status")
    assert status["branch"] == "main"


# --------------------------------------------------------------------------- search


async def test_grep(caps: dict[str, Capability], ws: Path) -> None:
    (ws / "node_modules").mkdir()
    (ws / "node_modules" / "dep.js").write_text("hello from a dependency\n")
    (ws / "blob.bin").write_bytes(b"hello\x00binary")

    hits = await call(caps, "search", "grep", "hello")
    assert hits == [{"path": "README.md", "line": 2, "text": "hello world"}]

    insensitive = await call(caps, "search", "grep", "hello", ".", None, 200, True)
    assert [(h["path"], h["line"]) for h in insensitive] == [("README.md", 2), ("src/main.py", 4)]

    todo = await call(caps, "search", "grep", r"^todo", ".", None, 1, True)
    assert todo == [{"path": "notes.txt", "line": 1, "text": "TODO: write docs"}]

    only_py = await call(caps, "search", "grep", "def ", ".", "*.py")
    assert [h["path"] for h in only_py] == ["src/main.py", "src/pkg/util.py"]
    in_pkg = await call(caps, "search", "grep", "def ", "src", "pkg/*.py")
    assert [h["path"] for h in in_pkg] == ["pkg/util.py"]
    one_file = await call(caps, "search", "grep", "return", "src/pkg/util.py")
    assert one_file == [{"path": "util.py", "line": 2, "text": "    return 42"}]


async def test_grep_invalid_regex(caps: dict[str, Capability]) -> None:
    error = await fails(caps, "INVALID_ARGS", "search", "grep", "(unclosed")
    assert "invalid regular expression" in error.message
    await fails(caps, "INVALID_ARGS", "search", "grep", "x", ".", None, 0)
    await fails(caps, "INVALID_ARGS", "search", "grep", "")


async def test_glob(caps: dict[str, Capability], ws: Path, outside: Path) -> None:
    (ws / "node_modules" / "dep").mkdir(parents=True)
    (ws / "node_modules" / "dep" / "index.py").write_text("")
    os.symlink(outside / "secret.txt", ws / "leak.py")
    os.symlink(ws / "src" / "main.py", ws / "alias.py")

    assert await call(caps, "search", "glob", "**/*.py") == [
        "alias.py",
        "src/main.py",
        "src/pkg/util.py",
    ]
    assert await call(caps, "search", "glob", "*.md") == ["README.md"]
    assert await call(caps, "search", "glob", "src/*") == ["src/main.py", "src/pkg"]
    assert await call(caps, "search", "glob", "*.py", "src/pkg") == ["util.py"]
    assert await call(caps, "search", "glob", "node_modules/**/*.py") == [
        "node_modules/dep/index.py"
    ]
    assert await call(caps, "search", "glob", "[!R]*.txt") == ["notes.txt"]


async def test_glob_rejects_escaping_patterns(caps: dict[str, Capability]) -> None:
    for pattern in ["../*", "src/../../*", "..", "/etc/*"]:
        await fails(caps, "INVALID_ARGS", "search", "glob", pattern)


# --------------------------------------------------------------------------- shell


async def test_shell_is_disabled_by_default(ws: Path) -> None:
    caps = build_capabilities(Workspace([ws]))
    error = await fails(caps, "UNSUPPORTED", "shell", "exec", ["echo", "hi"])
    assert error.message == DISABLED_MESSAGE
    assert "--allow-shell" in error.message


async def test_shell_exec_argv_and_string(caps: dict[str, Capability], ws: Path) -> None:
    result = await call(caps, "shell", "exec", ["echo", "hello; rm -rf /"])
    assert result == {
        "stdout": "hello; rm -rf /\n",
        "stderr": "",
        "exitCode": 0,
        "signal": None,
        "timedOut": False,
        "truncated": False,
    }
    failing = await call(caps, "shell", "exec", "echo oops >&2; exit 3")
    assert (failing["stderr"], failing["exitCode"]) == ("oops\n", 3)

    in_src = await call(caps, "shell", "exec", ["pwd"], {"cwd": "src"})
    assert in_src["stdout"].strip() == str((ws / "src").resolve())
    default_cwd = await call(caps, "shell", "exec", "pwd")
    assert default_cwd["stdout"].strip() == str(ws.resolve())

    env = {"env": {"KB_TEST_VALUE": "v1"}}
    with_env = await call(caps, "shell", "exec", "echo $KB_TEST_VALUE", env)
    assert with_env["stdout"] == "v1\n"


async def test_shell_exec_errors(caps: dict[str, Capability], outside: Path) -> None:
    await fails(caps, "ACCESS_DENIED", "shell", "exec", ["pwd"], {"cwd": str(outside)})
    await fails(caps, "ACCESS_DENIED", "shell", "exec", ["pwd"], {"cwd": ".."})
    await fails(caps, "INVALID_ARGS", "shell", "exec", ["pwd"], {"cwd": "README.md"})
    await fails(caps, "INVALID_ARGS", "shell", "exec", ["pwd"], {"timeoutMs": 10 * 60 * 1000 + 1})
    await fails(caps, "INVALID_ARGS", "shell", "exec", ["pwd"], {"env": {"A": 1}})
    await fails(caps, "INVALID_ARGS", "shell", "exec", [])
    await fails(caps, "INVALID_ARGS", "shell", "exec", "   ")
    await fails(caps, "NOT_FOUND", "shell", "exec", ["kb-no-such-command-xyz"])


async def test_shell_output_is_capped(caps: dict[str, Capability]) -> None:
    result = await call(caps, "shell", "exec", ["head", "-c", "3000000", "/dev/zero"])
    assert result["truncated"] is True
    assert len(result["stdout"]) == 1024 * 1024
    assert result["exitCode"] == 0


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if marker.encode() in cmdline:  # the sleeps and the shell that started them
            found.append(int(entry))
    return found


def wait_until_gone(marker: str, deadline_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + deadline_s
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
async def test_shell_timeout_kills_the_whole_process_tree(caps: dict[str, Capability]) -> None:
    marker = f"{secrets.randbelow(10**6) + 7_000_000}.5"  # a unique sleep duration
    started = time.monotonic()
    result = await call(
        caps, "shell", "exec", f"sleep {marker} & sleep {marker}; echo never", {"timeoutMs": 300}
    )
    assert result["timedOut"] is True
    assert result["exitCode"] is None
    assert "never" not in result["stdout"]
    assert time.monotonic() - started < 10
    assert wait_until_gone(marker) == []


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
async def test_shell_leaves_no_background_process_behind(caps: dict[str, Capability]) -> None:
    marker = f"{secrets.randbelow(10**6) + 8_000_000}.5"
    result = await call(caps, "shell", "exec", f"sleep {marker} & echo started")
    assert result["stdout"] == "started\n"
    assert result["timedOut"] is False and result["exitCode"] == 0
    assert wait_until_gone(marker) == []


# --------------------------------------------------------------------------- execution, dispatch


EXAMPLE = Path(__file__).parents[2] / "examples" / "plugins" / "kb-hello"
HELLO = "@kb-labs/hello"


@pytest.fixture
def kb_project(tmp_path: Path) -> Path:
    """A KB Labs project (the agent's workspace) with a linked copy of kb-hello."""
    root = tmp_path / "kbproject"
    folder = root / "plugins" / "kb-hello"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    linked = run_cli("plugin", "link", str(folder), project=root, env=base_env(root))
    assert linked.returncode == 0, linked.stdout + linked.stderr
    return root


@pytest.fixture
def exec_caps(kb_project: Path) -> dict[str, Capability]:
    return build_capabilities(Workspace([kb_project]))


def execution(handler_ref: str, input: Any = None, **extra: Any) -> dict[str, Any]:
    return {"pluginId": HELLO, "handlerRef": handler_ref, "input": input, **extra}


def worker_children() -> list[int]:
    """Plugin worker processes started by this test process."""
    found = []
    for pid in processes_with("kblabs.plugins.worker"):
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.append(pid)
    return found


async def test_execution_runs_a_declared_handler_of_a_workspace_plugin(
    kb_project: Path, tmp_path: Path
) -> None:
    # the agent's own KB_PROJECT_ROOT / KB_DATA_DIR do not decide where plugins come from
    elsewhere = {"KB_PROJECT_ROOT": str(tmp_path), "KB_DATA_DIR": str(tmp_path / "nope")}
    caps: dict[str, Capability] = {
        "execution": ExecutionCapability(Workspace([kb_project]), environ=elsewhere)
    }
    result = await call(
        caps, "execution", "execute", execution("kb_hello.steps:greet", {"name": "ada"})
    )
    assert result == {"greeting": "hello ada"}
    saved = await call(
        caps,
        "execution",
        "execute",
        execution("kb_hello.handlers:save_greeting", {"body": {"name": "bob"}}),
    )
    assert saved == {"saved": "greetings/bob.txt"}
    assert (kb_project / "greetings" / "bob.txt").read_text() == "hello bob\n"  # cwd = root
    listed = await call(caps, "execution", "discover")
    assert [(p["id"], p["version"], p["workspace"]) for p in listed] == [
        (HELLO, "0.1.0", str(kb_project.resolve()))
    ]
    handlers = listed[0]["handlers"]
    assert {"kind": "workflow", "name": "greet", "handlerRef": "kb_hello.steps:greet"} in handlers
    assert {
        "kind": "rest",
        "name": "POST /greetings",
        "handlerRef": "kb_hello.handlers:save_greeting",
    } in handlers


async def test_execution_unknown_plugin_and_undeclared_handler(
    exec_caps: dict[str, Capability], kb_project: Path
) -> None:
    missing = await fails(
        exec_caps, "PLUGIN_NOT_FOUND", "execution", "execute",
        {"pluginId": "@kb-labs/nope", "handlerRef": "nope.handlers:run"},
    )  # fmt: skip
    assert "@kb-labs/nope" in missing.message and str(kb_project.resolve()) in missing.message
    # importable code the manifest does not declare is never run
    for ref in ("kb_hello.steps:missing", "os:getcwd", "kb_hello.handlers:PluginError"):
        error = await fails(exec_caps, "HANDLER_NOT_FOUND", "execution", "execute", execution(ref))
        assert "kb_hello.steps:greet" in error.message  # the declared ones are listed
    with LockFile.in_data_dir(kb_project / ".kb").update() as entries:  # as `disable` does
        entries[HELLO].enabled = False
    error = await fails(
        exec_caps, "PLUGIN_NOT_FOUND", "execution", "execute", execution("kb_hello.steps:greet")
    )
    assert "disabled" in error.message
    assert await call(exec_caps, "execution", "discover") == []


async def test_execution_enforces_the_manifest_permissions(
    exec_caps: dict[str, Capability], kb_project: Path
) -> None:
    before = sorted(p for p in kb_project.rglob("*") if ".kb" not in p.parts)
    error = await fails(
        exec_caps, "PERMISSION_DENIED", "execution", "execute",
        execution("kb_hello.handlers:save_greeting", {"body": {"name": "../x"}}),
    )  # fmt: skip
    assert "fs.write" in error.message and "greetings/../x.txt" in error.message
    assert error.retryable is False
    assert sorted(p for p in kb_project.rglob("*") if ".kb" not in p.parts) == before
    assert not (kb_project / "x.txt").exists() and not (kb_project / "greetings").exists()
    # no state broker on a host: ctx.api.state fails clearly
    state = await fails(
        exec_caps, "STATE_UNAVAILABLE", "execution", "execute", execution("kb_hello.steps:tick", {})
    )
    assert "host agent" in state.message


async def test_execution_arguments(exec_caps: dict[str, Capability], outside: Path) -> None:
    await fails(exec_caps, "INVALID_ARGS", "execution", "execute", "kb_hello.steps:greet")
    await fails(exec_caps, "INVALID_ARGS", "execution", "execute", {"handlerRef": "a:b"})
    await fails(
        exec_caps, "INVALID_ARGS", "execution", "execute",
        execution("kb_hello.steps:greet", timeoutMs=0),
    )  # fmt: skip
    await fails(
        exec_caps, "ACCESS_DENIED", "execution", "execute",
        execution("kb_hello.steps:greet", cwd=str(outside)),
    )  # fmt: skip
    # exportName completes a module reference, and must agree with a full one
    joined = execution("kb_hello.steps", {"name": "x"}, exportName="greet")
    assert await call(exec_caps, "execution", "execute", joined) == {"greeting": "hello x"}
    await fails(
        exec_caps, "INVALID_ARGS", "execution", "execute",
        execution("kb_hello.steps:greet", exportName="tick"),
    )  # fmt: skip


async def test_execution_is_at_most_once_per_execution_id(
    exec_caps: dict[str, Capability],
) -> None:
    first = execution("kb_hello.steps:greet", {"name": "ada"}, executionId="exec-1")
    assert await call(exec_caps, "execution", "execute", first) == {"greeting": "hello ada"}
    again = {**first, "input": {"name": "bob"}}  # a retry gets the recorded outcome
    assert await call(exec_caps, "execution", "execute", again) == {"greeting": "hello ada"}
    other = execution("kb_hello.steps:tick", {}, executionId="exec-1")
    await fails(exec_caps, "INVALID_ARGS", "execution", "execute", other)
    fresh = {**again, "executionId": "exec-2"}
    assert await call(exec_caps, "execution", "execute", fresh) == {"greeting": "hello bob"}


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
async def test_execution_in_subprocess_mode_timeout_and_cancel(
    exec_caps: dict[str, Capability], kb_project: Path
) -> None:
    config = {"platform": {"execution": {"mode": "subprocess"}}}
    (kb_project / "kb.config.json").write_text(json.dumps(config))
    result = await call(exec_caps, "execution", "execute", execution("kb_hello.steps:greet", {}))
    assert result == {"greeting": "hello world"}
    denied = execution("kb_hello.handlers:save_greeting", {"body": {"name": "../x"}})
    await fails(exec_caps, "PERMISSION_DENIED", "execution", "execute", denied)
    assert not (kb_project / "x.txt").exists()
    slow = execution("kb_hello.handlers:slow", {"query": {"ms": "30000"}}, timeoutMs=500)
    started = time.monotonic()
    await fails(exec_caps, "EXECUTION_TIMEOUT", "execution", "execute", slow)
    assert time.monotonic() - started < 10
    assert worker_children() == []

    # the agent cancels the call's task (gateway `cancel`): the worker group is killed
    running = asyncio.create_task(
        call(exec_caps, "execution", "execute", {**slow, "timeoutMs": 60000, "executionId": "c"})
    )
    deadline = time.monotonic() + 10
    while not worker_children() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert worker_children(), "no worker started"
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert worker_children() == []
    # a cancelled execution is forgotten: the same id may run again
    quick = execution("kb_hello.handlers:slow", {"query": {"ms": "1"}}, executionId="c")
    assert await call(exec_caps, "execution", "execute", quick) == {"slept": True}


async def test_execution_cancel_in_process_reaches_the_handler(
    exec_caps: dict[str, Capability], kb_project: Path
) -> None:
    slow = execution("kb_hello.handlers:slow", {"query": {"ms": "30000"}})
    running = asyncio.create_task(call(exec_caps, "execution", "execute", slow))
    await asyncio.sleep(0.5)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    # the handler saw the cancellation and cleaned up in the project's output folder
    assert (kb_project / ".kb" / "output" / "slow-cancelled").read_text() == "cancelled"


async def test_dispatch_errors(caps: dict[str, Capability]) -> None:
    error = await fails(caps, "UNKNOWN_ADAPTER", "vectorStore", "search")
    assert error.message == "unknown adapter: vectorStore"
    error = await fails(caps, "UNKNOWN_METHOD", "filesystem", "deleteEverything")
    assert error.message == "unknown method: filesystem.deleteEverything"
    error = await fails(caps, "INVALID_ARGS", "filesystem", "stat")
    assert "missing argument 'path'" in error.message
    await fails(caps, "INVALID_ARGS", "filesystem", "stat", "a", "b")
    with pytest.raises(CapabilityError) as info:
        await dispatch(caps, "filesystem", "stat", "README.md")  # type: ignore[arg-type]
    assert info.value.code == "INVALID_ARGS"


class Exploding(BaseCapability):
    name = "exploding"

    def methods(self) -> dict[str, Handler]:
        return {"boom": self.boom, "missing": self.missing}

    async def boom(self) -> None:
        raise ValueError("kaboom\nsecond line of detail")

    async def missing(self) -> None:
        raise FileNotFoundError(2, "No such file or directory", "thing.txt")


async def test_unexpected_exceptions_become_handler_error() -> None:
    caps: dict[str, Capability] = {"exploding": Exploding()}
    error = await fails(caps, "HANDLER_ERROR", "exploding", "boom")
    assert error.to_dict() == {
        "code": "HANDLER_ERROR",
        "message": "ValueError: kaboom",
        "retryable": False,
    }
    assert "Traceback" not in error.message
    missing = await fails(caps, "NOT_FOUND", "exploding", "missing")
    assert missing.message == "not found: thing.txt"


async def test_every_capability_follows_the_protocol(caps: dict[str, Capability]) -> None:
    assert sorted(caps) == ["execution", "filesystem", "git", "search", "shell"]
    for name, capability in caps.items():
        assert isinstance(capability, Capability)
        assert capability.name == name
