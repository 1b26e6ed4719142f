"""Installing a package with pip, in a subprocess, into a folder of its own.

The platform's own environment is never touched. pip first resolves the package
against the platform's environment with a constraints file pinning every distribution
the platform has (`--dry-run --report`): what the platform already provides is reused,
never installed a second time, and a plugin that needs another version of one of the
platform's dependencies fails to resolve (422 with pip's last lines). Then exactly the
missing distributions are installed with `--no-deps --target <staging folder>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kblabs.errors import KbError
from kblabs.processes import die_with_parent

TAIL_LINES = 15
NOT_FOUND = re.compile(
    r"No matching distribution found for ([A-Za-z0-9_.\-\[\]]+)|"
    r"Could not find a version that satisfies the requirement ([A-Za-z0-9_.\-\[\]]+)"
)
Progress = Callable[[str], None]


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def platform_constraints() -> str:
    """`name==version` for every distribution of the platform's environment."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            pins[canonical(name)] = dist.version
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def requirement_name(spec: str) -> str | None:
    """The project a requirement string names (None for a path to a wheel)."""
    if spec.endswith(".whl") or "/" in spec or os.sep in spec:
        return None
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    return canonical(match.group(1)) if match else None


@dataclass
class PipResult:
    code: int
    tail: list[str]


async def pip_install(
    spec: str,
    target: Path,
    *,
    index_url: str | None,
    timeout_s: float,
    progress: Progress | None = None,
) -> list[str]:
    """Install `spec` (a requirement or a wheel file) into `target`; returns the
    `name==version` of what went there. KbError 404 when the index has no such
    distribution, 422 for any other failure (pip's last lines in `details`), 504 when
    pip outlives `timeout_s` (its whole process group is killed).

    Two pip runs: the first resolves against the platform's environment (so what the
    platform already has is not installed again, and the constraints keep the
    platform's versions), the second installs exactly what it chose into `target`."""
    plan = await _resolve(spec, target, index_url=index_url, timeout_s=timeout_s, progress=progress)
    if not plan:
        return []
    argv = [*_pip("install"), "--no-deps", "--target", str(target), *[url for _, url in plan]]
    result = await _run(argv, timeout_s, progress)
    if result.code != 0:
        raise _failure(spec, result)
    return [name for name, _ in plan]


async def _resolve(
    spec: str, target: Path, *, index_url: str | None, timeout_s: float, progress: Progress | None
) -> list[tuple[str, str]]:
    constraints = target.parent / f"{target.name}.constraints.txt"
    report = target.parent / f"{target.name}.report.json"
    constraints.write_text(platform_constraints())
    argv = [
        *_pip("install"),
        "--dry-run",
        "--report",
        str(report),
        "--constraint",
        str(constraints),
    ]
    if index_url:
        argv += ["--index-url", index_url]
    argv.append(spec)
    try:
        result = await _run(argv, timeout_s, progress)
        if result.code != 0:
            raise _failure(spec, result)
        document = json.loads(report.read_text())
    finally:
        constraints.unlink(missing_ok=True)
        report.unlink(missing_ok=True)
    return [
        (f"{item['metadata']['name']}=={item['metadata']['version']}", item["download_info"]["url"])
        for item in document.get("install", [])
    ]


def _pip(command: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        command,
        "--no-input",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "--progress-bar",
        "off",
    ]


def _failure(spec: str, result: PipResult) -> KbError:
    text = "\n".join(result.tail)
    missing = NOT_FOUND.search(text)
    wanted = requirement_name(spec)
    if missing and wanted:
        named = canonical((missing.group(1) or missing.group(2)).split("[")[0])
        if named == wanted:
            return KbError(
                "NOT_FOUND",
                f"no distribution {spec!r} on the package index",
                404,
                details=result.tail,
            )
    return KbError(
        "INSTALL_FAILED",
        f"pip could not install {spec}: {result.tail[-1] if result.tail else 'no output'}",
        422,
        details=result.tail,
    )


async def _run(argv: list[str], timeout_s: float, progress: Progress | None) -> PipResult:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PIP_NO_INPUT": "1"}
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,  # a timeout kills pip and what it started
        preexec_fn=die_with_parent,  # and pip never outlives us
    )
    tail: list[str] = []

    async def pump() -> None:
        assert process.stdout is not None
        while raw := await process.stdout.readline():
            line = raw.decode(errors="replace").rstrip()
            if not line.strip():
                continue
            tail.append(line)
            del tail[:-TAIL_LINES]
            if progress is not None:
                progress(line)

    try:
        await asyncio.wait_for(pump(), timeout_s)
        code = await process.wait()
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise KbError(
            "INSTALL_TIMEOUT", f"pip did not finish within {timeout_s:.0f} s", 504, details=tail
        ) from None
    return PipResult(code, tail)
