#!/usr/bin/env python
"""Marketplace bench: install and uninstall of the example plugin wheel, against a bare
`pip install` of the same wheel.

Measured in one run, offline, on one machine:

1. Setup: `examples/plugins/kb-hello` is built into a wheel `kb_hello-<version>-py3-none-
   any.whl` with `tests/marketplace_fixtures.build_wheel` (standard library only: package
   `kb_hello` with the example's modules, its kb.plugin.json moved into the package, and
   the entry point `[kb_labs.plugins] hello = kb_hello`), and served by
   `tests/marketplace_fixtures.SimpleIndex`, a PEP 503 index on 127.0.0.1. This process
   then runs with `pip_env()` as its environment (no `PIP_*` variable,
   `PIP_CONFIG_FILE=/dev/null`, no pip cache), so every pip, the marketplace's and the
   baseline's, sees only that index.
2. N rounds (default 5, after one unmeasured warm-up round), in each, alternating which
   goes first:
   - install: `Marketplace.install(["kb-hello"])` in process, in a fresh temp project
     whose kb.config.json names the index (`marketplace.indexUrl`); that is two pip
     subprocesses (a `--dry-run --report` resolution against the platform's environment
     with a constraints file pinning its distributions, then `--no-deps --target
     <staging>`), reading the installed folder, and the lock written atomically under
     its file lock; checked: the lock entry `@kb-labs/hello` and the folder's
     kb.plugin.json;
   - uninstall: `Marketplace.uninstall(["@kb-labs/hello"])` right after (the lock entry
     removed, the folder deleted); checked: the lock is empty and the folder is gone;
   - baseline: `python -m pip install --no-deps --target <empty dir> --index-url <index>
     kb-hello` in a subprocess (one pip run, nothing around it); checked: the target
     holds kb_hello/handlers.py.
Reported: median, min and max wall time of each, and the ratios of the medians
install/baseline and uninstall/baseline. The install runs pip twice, so a ratio around
2 is what the design costs; absolute times depend on the machine and its load, the
ratios much less.

The exit code is 1 only when the setup fails (the wheel cannot be built, the index does
not start); failed rounds are reported and counted, not fatal.

Usage: python bench/marketplace.py [--rounds 5] [--warmup 1] [--timeout 300] [--json]

The standard library and kblabs, plus tests/marketplace_fixtures.py from this
repository (standard library too, but it imports pytest for its fixture: run from the
project's dev virtualenv).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.marketplace_fixtures import (  # noqa: E402 - after the sys.path entry
    PLUGIN_ENTRY_POINT_GROUP,
    SimpleIndex,
    build_wheel,
    check_offline,
    pip_env,
)

EXAMPLE_PLUGIN = REPO_ROOT / "examples" / "plugins" / "kb-hello"
DISTRIBUTION = "kb-hello"
PACKAGE = "kb_hello"
PLUGIN_ID = "@kb-labs/hello"


class SetupFailed(Exception):
    pass


# --- setup -----------------------------------------------------------------------------


def build_example_wheel(out_dir: Path) -> Path:
    """The example plugin as an installable wheel: the package's modules, kb.plugin.json
    inside the package, and the `kb_labs.plugins` entry point naming the package."""
    project = tomllib.loads((EXAMPLE_PLUGIN / "pyproject.toml").read_text())["project"]
    manifest = json.loads((EXAMPLE_PLUGIN / "kb.plugin.json").read_text())
    if manifest.get("id") != PLUGIN_ID:
        raise SetupFailed(f"the example's id is {manifest.get('id')!r}, not {PLUGIN_ID!r}")
    files: dict[str, str | bytes] = {
        f"{PACKAGE}/{path.relative_to(EXAMPLE_PLUGIN / PACKAGE).as_posix()}": path.read_bytes()
        for path in sorted((EXAMPLE_PLUGIN / PACKAGE).rglob("*.py"))
        if "__pycache__" not in path.parts
    }
    files[f"{PACKAGE}/kb.plugin.json"] = (EXAMPLE_PLUGIN / "kb.plugin.json").read_bytes()
    return build_wheel(
        out_dir,
        project["name"],
        project["version"],
        files=files,
        entry_points={PLUGIN_ENTRY_POINT_GROUP: {"hello": PACKAGE}},
        metadata_extra=f"Summary: {project.get('description', '')}\n",
    )


# --- the three operations --------------------------------------------------------------


def settings_for(root: Path) -> Any:
    from kblabs.config import load_settings

    environ = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    environ["KB_PROJECT_ROOT"] = str(root)
    return load_settings(environ=environ)


async def marketplace_round(work: Path, index_url: str, timeout_s: float) -> dict[str, Any]:
    """Install then uninstall in a fresh project; wall times in seconds."""
    from loguru import logger

    from kblabs.marketplace.service import Marketplace

    logger.disable("kblabs")  # its debug line per lock change would interleave the report

    root = Path(tempfile.mkdtemp(prefix="project-", dir=work))
    config = {"marketplace": {"indexUrl": index_url, "installTimeoutS": timeout_s}}
    (root / "kb.config.json").write_text(json.dumps(config))
    market = Marketplace(settings_for(root))
    started = time.perf_counter()
    result = await market.install([DISTRIBUTION])
    install_s = time.perf_counter() - started
    [item] = result["installed"]
    folder = root / item["packageRoot"]
    if item["id"] != PLUGIN_ID or not (folder / PACKAGE / "kb.plugin.json").is_file():
        raise RuntimeError(f"install gave {item} without {PACKAGE}/kb.plugin.json")
    if PLUGIN_ID not in market.entries():
        raise RuntimeError("the lock has no entry for the installed plugin")
    started = time.perf_counter()
    await market.uninstall([PLUGIN_ID])
    uninstall_s = time.perf_counter() - started
    if market.entries() or folder.exists():
        raise RuntimeError("uninstall left the lock entry or the folder behind")
    shutil.rmtree(root, ignore_errors=True)
    return {"install_s": install_s, "uninstall_s": uninstall_s, "version": item["version"]}


def baseline_round(work: Path, index_url: str, timeout_s: float) -> dict[str, Any]:
    """A bare `pip install --no-deps --target <empty dir>` of the same wheel."""
    target = Path(tempfile.mkdtemp(prefix="target-", dir=work))
    args = ["install", "--no-deps", "--target", str(target), "--index-url", index_url]
    args.append(DISTRIBUTION)
    check_offline(args)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or not (target / PACKAGE / "handlers.py").is_file():
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"pip exited {done.returncode}: {' | '.join(tail)}")
    shutil.rmtree(target, ignore_errors=True)
    return {"baseline_s": elapsed}


# --- the run ---------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median_s": None, "min_s": None, "max_s": None}
    return {
        "median_s": round(statistics.median(values), 4),
        "min_s": round(min(values), 4),
        "max_s": round(max(values), 4),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value is not None and base else None


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="kb-bench-marketplace-"))
    try:
        try:
            wheel = build_example_wheel(work / "wheels")
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise SetupFailed(f"cannot build the example wheel: {exc}") from exc
        wheel_bytes = wheel.stat().st_size
        environ = pip_env()  # this process and every pip it starts: the local index only
        os.environ.clear()
        os.environ.update(environ)
        try:
            index = SimpleIndex(wheel.parent).start()
        except OSError as exc:
            raise SetupFailed(f"cannot start the local index: {exc}") from exc
        samples: dict[str, list[float]] = {"install": [], "uninstall": [], "baseline": []}
        errors: list[str] = []
        try:
            for n in range(args.warmup + args.rounds):
                warm = n < args.warmup
                say(f"{'warm-up' if warm else 'round'} {n + 1 - (0 if warm else args.warmup)}")
                order = ("baseline", "marketplace") if n % 2 else ("marketplace", "baseline")
                for what in order:
                    try:
                        if what == "baseline":
                            got = baseline_round(work, index.url, args.timeout)
                        else:
                            got = asyncio.run(marketplace_round(work, index.url, args.timeout))
                    except Exception as exc:  # reported, not fatal
                        errors.append(f"round {n + 1} {what}: {type(exc).__name__}: {exc}")
                        continue
                    if not warm:
                        for key, value in got.items():
                            if key.endswith("_s"):
                                samples[key.removesuffix("_s")].append(value)
        finally:
            index.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stats = {name: summary(values) for name, values in samples.items()}
    base = stats["baseline"]["median_s"]
    return {
        "bench": "marketplace",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "wheel": wheel.name,
        "wheel_bytes": wheel_bytes,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "samples": {name: [round(v, 4) for v in values] for name, values in samples.items()},
        "stats": stats,
        "ratios": {
            "install/baseline": ratio(stats["install"]["median_s"], base),
            "uninstall/baseline": ratio(stats["uninstall"]["median_s"], base),
        },
        "errors": errors,
    }


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(result: dict[str, Any]) -> None:
    print(
        f"marketplace bench: {result['wheel']} ({result['wheel_bytes']} bytes), "
        f"{result['rounds']} round(s) after {result['warmup']} warm-up, "
        f"python {result['python']} on {result['machine']} ({result['cpus']} CPUs)"
    )
    print()
    print(f"{'operation':<44} {'median s':>9} {'min s':>8} {'max s':>8} {'n':>3}")
    labels = {
        "install": "marketplace install (in process, 2 pip runs)",
        "uninstall": "marketplace uninstall (in process)",
        "baseline": "baseline: pip install --no-deps --target",
    }
    for name, label in labels.items():
        s = result["stats"][name]
        print(
            f"{label:<44} {fmt(s['median_s'], '9.3f')} {fmt(s['min_s'], '8.3f')} "
            f"{fmt(s['max_s'], '8.3f')} {len(result['samples'][name]):>3}"
        )
    print()
    print("ratios of the medians to the baseline:")
    for name, value in result["ratios"].items():
        print(f"  {name:<20} {fmt(value, '.3f')}x")
    if result["errors"]:
        print()
        print(f"{len(result['errors'])} failed step(s):")
        for error in result["errors"]:
            print(f"  {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (1)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds any one pip run may take (300)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be at least 1 and --warmup at least 0")
    try:
        result = run_bench(args)
    except SetupFailed as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}, indent=2))
        print(f"setup failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
