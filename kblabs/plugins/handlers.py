"""Resolving `package.module:attribute` handler references to callables."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kblabs.errors import KbError


class HandlerError(KbError):
    pass


def _origin(module: Any) -> str:
    return getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), "")


def _prefer(root: Path, package: str) -> None:
    """Make `root` win the import of `package`: first on sys.path, and a same-named
    package imported earlier from somewhere else (another plugin) is forgotten."""
    entry = str(root)
    if not sys.path or sys.path[0] != entry:
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
    loaded = sys.modules.get(package)
    origin = _origin(loaded) if loaded is not None else ""
    if origin and not Path(origin).resolve().is_relative_to(root.resolve()):
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


def import_handler(ref: str, root: Path | None = None) -> Callable[..., Any]:
    """The callable behind `ref`. `root` (a linked plugin's folder) is importable first.
    Raises HandlerError with MODULE_IMPORT_FAILED or HANDLER_NOT_FOUND."""
    module_name, _, attribute = ref.partition(":")
    if root is not None:
        _prefer(root, module_name.split(".")[0])
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # the plugin's own import-time failure, whatever it is
        raise HandlerError(
            "MODULE_IMPORT_FAILED",
            f"importing {module_name} failed: {type(exc).__name__}: {exc}",
            500,
        ) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise HandlerError("HANDLER_NOT_FOUND", f"{ref}: no attribute {part!r}", 500)
        target = getattr(target, part)
    if not callable(target) and not callable(getattr(target, "execute", None)):
        raise HandlerError("HANDLER_NOT_FOUND", f"{ref} is not callable", 500)
    return target
