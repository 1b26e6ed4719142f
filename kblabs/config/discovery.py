"""Finding the project root, its kb.config file and its .env."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

CONFIG_CANDIDATES = (
    ".kb/kb.config.jsonc",
    ".kb/kb.config.json",
    "kb.config.jsonc",
    "kb.config.json",
)
ROOT_VARIABLES = ("KB_PROJECT_ROOT", "KB_LABS_WORKSPACE_ROOT", "KB_LABS_REPO_ROOT")


def config_file_in(root: Path) -> Path | None:
    for candidate in CONFIG_CANDIDATES:
        path = root / candidate
        if path.is_file():
            return path
    return None


def find_project_root(environ: Mapping[str, str], cwd: Path) -> tuple[Path, Path | None]:
    """(project root, config file or None). The environment wins; otherwise walk up from
    `cwd` to the first folder holding a config file; otherwise `cwd` with no file."""
    for name in ROOT_VARIABLES:
        if environ.get(name):
            root = Path(environ[name]).expanduser().resolve()
            return root, config_file_in(root)
    start = cwd.resolve()
    for folder in (start, *start.parents):
        found = config_file_in(folder)
        if found is not None:
            return folder, found
    return start, None


def root_for_explicit_file(path: Path) -> Path:
    """A file given with --config: its folder is the root, or the folder above `.kb/`."""
    folder = path.resolve().parent
    return folder.parent if folder.name == ".kb" else folder
