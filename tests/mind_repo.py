"""A generated code repository for `mind` tests and the benchmark: Python modules, each
defining one uniquely named function among look-alike helpers."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "alpha",
    "beta",
    "gamma",
    "delta",
    "parse",
    "load",
    "save",
    "render",
    "fetch",
    "build",
    "merge",
    "split",
    "index",
    "query",
    "token",
    "cache",
    "store",
    "queue",
    "route",
    "event",
    "user",
    "order",
    "item",
    "price",
    "stock",
)


def function_name(i: int, rnd: random.Random) -> str:
    a, b, c = rnd.sample(WORDS, 3)
    return f"{a}_{b}_{c}_{i}"


def module_text(i: int, rnd: random.Random) -> tuple[str, str]:
    """(source, the name of its unique function)."""
    name = function_name(i, rnd)
    lines = [f'"""Module {i}."""', "", "import os", ""]
    for j in range(rnd.randint(3, 8)):
        x, y = rnd.sample(WORDS, 2)
        lines += [f"def helper_{x}_{y}_{j}(value):", f"    return value + {j}", ""]
    lines += [
        f"def {name}(data):",
        '    """Sum the lengths."""',
        "    total = 0",
        "    for item in data:",
        "        total += len(item)",
        "    return total",
        "",
    ]
    lines += [f"CONSTANT_{j} = {rnd.randint(0, 999)}" for j in range(rnd.randint(2, 6))]
    return "\n".join(lines) + "\n", name


def generate(root: Path, files: int, *, seed: int = 7) -> dict[str, str]:
    """Write `files` modules under `root`; returns {relative path: function name}."""
    rnd = random.Random(seed)
    written = {}
    for i in range(files):
        text, name = module_text(i, rnd)
        relative = f"pkg{i % 20}/mod_{i}.py"
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written[relative] = name
    return written
