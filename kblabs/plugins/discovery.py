"""From the marketplace lock to loaded manifests, with a diagnostic for every problem.

Discovery reads only the lock (never scans folders). One broken plugin yields a
diagnostic and is skipped; it never stops the others.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kblabs.config import jsonc
from kblabs.marketplace.lockfile import LockEntry, LockFile, LockFileError
from kblabs.plugins.manifest import Manifest, validate_manifest

MANIFEST_FILE = "kb.plugin.json"
ENTRY_POINT_GROUP = "kb_labs.plugins"  # `<name> = <package>`: the package holds the manifest
Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Diagnostic:
    code: str  # PLUGIN_DISABLED, PACKAGE_NOT_FOUND, INTEGRITY_MISMATCH, MANIFEST_INVALID…
    severity: Severity
    plugin_id: str
    message: str
    details: Any = None

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        data["pluginId"] = data.pop("plugin_id")
        return data


@dataclass(frozen=True)
class Discovered:
    manifest: Manifest
    root: Path
    source: str
    lock_key: str

    @property
    def id(self) -> str:
        return self.manifest.id


@dataclass
class Discovery:
    plugins: list[Discovered] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def _sha256(path: Path) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


@dataclass(frozen=True)
class InstalledPlugin:
    """A distribution installed into a folder (pip --target) that declares a plugin."""

    package_dir: Path  # holds kb.plugin.json
    integrity: str  # sha256 of the distribution's METADATA
    distribution: str = ""  # its name, as the package index knows it


def installed_plugins(root: Path) -> list[InstalledPlugin]:
    """Distributions under `root` with a `kb_labs.plugins` entry point whose package
    ships a kb.plugin.json (the entry point's value names the package)."""
    found = []
    for dist in importlib.metadata.distributions(path=[str(root)]):
        for entry in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            package = entry.value.split(":", 1)[0].strip()
            package_dir = (root / package.replace(".", "/")).resolve()
            inside = package_dir.is_relative_to(root.resolve())  # the pointer stays in root
            if inside and (package_dir / MANIFEST_FILE).is_file():
                metadata = (dist.read_text("METADATA") or "").encode()
                digest = base64.b64encode(hashlib.sha256(metadata).digest()).decode()
                name = dist.metadata["Name"] or ""
                found.append(InstalledPlugin(package_dir, f"sha256-{digest}", name))
    return found


def integrity_of(root: Path) -> str:
    """`sha256-<b64>`: of the installed distribution's METADATA, else of the folder's
    pyproject.toml (a link), else of its manifest."""
    installed = installed_plugins(root) if not (root / MANIFEST_FILE).is_file() else []
    if installed:
        return installed[0].integrity
    for name in ("pyproject.toml", MANIFEST_FILE):
        candidate = root / name
        if candidate.is_file():
            return _sha256(candidate)
    return ""


BUILTIN_ROOT = Path(__file__).resolve().parent.parent / "builtin_plugins"


def builtin_roots() -> list[Path]:
    """The folders of the plugins shipped with the platform (`mind`, `commit`)."""
    if not BUILTIN_ROOT.is_dir():
        return []
    return sorted(p for p in BUILTIN_ROOT.iterdir() if (p / MANIFEST_FILE).is_file())


def builtin_manifests() -> dict[str, tuple[Manifest, Path]]:
    """id → (manifest, folder) of every built-in plugin whose manifest is valid."""
    found = {}
    for root in builtin_roots():
        manifest = _read_manifest(root.name, root, [])
        if manifest is not None:
            found[manifest.id] = (manifest, root)
    return found


def discover(lock: LockFile, project_root: Path) -> Discovery:
    result = Discovery()
    try:
        entries = lock.read()
    except LockFileError as exc:
        result.diagnostics.append(Diagnostic("LOCK_INVALID", "error", "*", str(exc)))
        return result
    seen: dict[str, str] = {}
    _add_builtins(entries, result, seen)
    for key, entry in entries.items():
        found = _load_entry(key, entry, project_root, result.diagnostics)
        if found is None:
            continue
        if found.id in seen:
            result.diagnostics.append(
                Diagnostic(
                    "ENTITY_CONFLICT",
                    "error",
                    found.id,
                    f"{found.id} is already provided by lock entry {seen[found.id]!r}; "
                    f"{key!r} is skipped",
                )
            )
            continue
        seen[found.id] = key
        result.plugins.append(found)
    return result


def _add_builtins(entries: dict[str, LockEntry], result: Discovery, seen: dict[str, str]) -> None:
    """Built-in plugins are on unless the lock has an entry of the same id: a disabled one
    (`plugin disable @kb-labs/mind`) switches the built-in off, and any other entry (an
    installed or linked package of that id) replaces it."""
    for manifest, root in builtin_manifests().values():
        entry = entries.get(manifest.id)
        if entry is not None:
            if not entry.enabled and entry.source == "builtin":
                result.diagnostics.append(
                    Diagnostic("PLUGIN_DISABLED", "info", manifest.id, f"{manifest.id} is disabled")
                )
            continue
        seen[manifest.id] = f"builtin:{root.name}"
        result.plugins.append(Discovered(manifest, root, "builtin", manifest.id))


def _load_entry(
    key: str, entry: LockEntry, project_root: Path, diagnostics: list[Diagnostic]
) -> Discovered | None:
    if entry.primary_kind == "adapter":
        return None  # adapters are loaded by the platform, not as plugins
    if entry.source == "builtin":
        return None  # only switches a built-in off (see _add_builtins)
    if not entry.enabled:
        diagnostics.append(Diagnostic("PLUGIN_DISABLED", "info", key, f"{key} is disabled"))
        return None
    root = (project_root / entry.resolved_path).resolve()
    if not root.is_dir():
        diagnostics.append(
            Diagnostic("PACKAGE_NOT_FOUND", "error", key, f"{key}: folder {root} does not exist")
        )
        return None
    actual = integrity_of(root)
    if entry.integrity and actual != entry.integrity:
        if entry.source != "local":
            diagnostics.append(
                Diagnostic(
                    "INTEGRITY_MISMATCH",
                    "error",
                    key,
                    f"{key}: installed files changed since install",
                )
            )
            return None
        diagnostics.append(
            Diagnostic(
                "INTEGRITY_MISMATCH", "warning", key, f"{key}: linked folder changed (reloaded)"
            )
        )
    manifest = _read_manifest(key, root, diagnostics)
    if manifest is None:
        return None
    if manifest.id != key:
        diagnostics.append(
            Diagnostic(
                "ID_MISMATCH",
                "warning",
                manifest.id,
                f"lock key {key!r} differs from manifest id; using {manifest.id!r}",
            )
        )
    return Discovered(manifest, root, entry.source, key)


def manifest_path(root: Path) -> Path:
    """Where a lock entry's manifest is: `<root>/kb.plugin.json` (a linked folder), else
    in the package of a distribution installed under `root`."""
    direct = root / MANIFEST_FILE
    if direct.is_file():
        return direct
    installed = installed_plugins(root)
    return installed[0].package_dir / MANIFEST_FILE if installed else direct


def _read_manifest(key: str, root: Path, diagnostics: list[Diagnostic]) -> Manifest | None:
    path = manifest_path(root)
    try:
        data = jsonc.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        diagnostics.append(
            Diagnostic(
                "MANIFEST_NOT_FOUND",
                "error",
                key,
                f"{key}: no {MANIFEST_FILE} in {root} "
                f"(nor a distribution there with a {ENTRY_POINT_GROUP!r} entry point)",
            )
        )
        return None
    except (OSError, UnicodeDecodeError, jsonc.JsoncError, json.JSONDecodeError) as exc:
        diagnostics.append(
            Diagnostic("MANIFEST_INVALID", "error", key, f"{key}: cannot read {path}: {exc}")
        )
        return None
    manifest, problems = validate_manifest(data)
    if manifest is None:
        first = problems[0]
        where = f"{first['path']}: " if first["path"] else ""
        diagnostics.append(
            Diagnostic(
                "MANIFEST_INVALID",
                "error",
                key,
                f"{key}: {where}{first['message']}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                details=problems,
            )
        )
    return manifest
