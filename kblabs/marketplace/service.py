"""The marketplace: the only writer of `.kb/marketplace.lock` (ARCHITECTURE §8).

Installed packages live under `<data dir>/plugins/<name>-<version>-<tag>/`, one folder
per install, never in the platform's environment. An install goes to a staging folder
first and the lock switches to the new folder in one atomic write; the previous folder
is removed afterwards. A crash at any point leaves the lock on the old or the new
version (each pointing at a complete folder), and `doctor` reports leftovers.

Every change refreshes the plugin registry of this process; other processes see the
lock change through their registry's watcher within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from kblabs.config import Settings
from kblabs.errors import KbError
from kblabs.marketplace.lockfile import LockEntry, LockFile, LockFileError, entry_to_dict
from kblabs.marketplace.pip import Progress, canonical, pip_install
from kblabs.plugins.discovery import (
    MANIFEST_FILE,
    builtin_manifests,
    installed_plugins,
    integrity_of,
)
from kblabs.plugins.manifest import Manifest, validate_manifest

ADAPTER_GROUP = "kb_labs.adapters"
DEFAULT_TIMEOUT_S = 300.0


@dataclass
class Package:
    """What an install folder holds, as the lock records it."""

    id: str
    version: str
    kind: str  # plugin | adapter
    provides: list[str]
    integrity: str
    distribution: str


def read_manifest(folder: Path) -> tuple[Manifest | None, list[dict[str, str]]]:
    from kblabs.config import jsonc

    path = folder / MANIFEST_FILE
    try:
        data = jsonc.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [{"path": "", "message": f"no {MANIFEST_FILE} in {folder}"}]
    except Exception as exc:
        return None, [{"path": "", "message": f"cannot read {path}: {exc}"}]
    return validate_manifest(data)


def inspect(folder: Path) -> Package:
    """The plugin (entry point `kb_labs.plugins`) or adapter (`kb_labs.adapters`) a
    freshly installed folder provides; 422 when it is neither or its manifest is bad."""
    import importlib.metadata

    plugins = installed_plugins(folder)
    if plugins:
        manifest, problems = read_manifest(plugins[0].package_dir)
        if manifest is None:
            first = problems[0]
            where = f"{first['path']}: " if first["path"] else ""
            raise KbError(
                "MANIFEST_INVALID",
                f"the package's {MANIFEST_FILE} is not valid: {where}{first['message']}",
                422,
                details=problems,
            )
        dist = plugins[0].distribution or manifest.id
        return Package(
            manifest.id,
            manifest.version,
            "plugin",
            ["plugin", *manifest.provides()],
            plugins[0].integrity,
            dist,
        )
    for found in importlib.metadata.distributions(path=[str(folder)]):
        if found.entry_points.select(group=ADAPTER_GROUP):
            name = canonical(found.metadata["Name"] or "")
            return Package(name, found.version, "adapter", ["adapter"], integrity_of(folder), name)
    raise KbError(
        "NOT_A_PLUGIN",
        "the package declares neither a plugin (entry point group kb_labs.plugins with a "
        "kb.plugin.json in its package) nor an adapter (group kb_labs.adapters)",
        422,
    )


def _seconds(value: Any) -> float:
    """`marketplace.installTimeoutS`: a positive number, else the default (and a warning)."""
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    if seconds <= 0:
        logger.warning(
            "marketplace.installTimeoutS must be a positive number of seconds, not {!r}: using {}",
            value,
            DEFAULT_TIMEOUT_S,
        )
        return DEFAULT_TIMEOUT_S
    return seconds


class Marketplace:
    def __init__(self, settings: Settings, registry: Any = None, scope: str = "platform") -> None:
        self.settings = settings
        self.registry = registry  # PluginRegistry of this process, refreshed after changes
        self.scope = scope
        self.root = settings.project_root.resolve()
        self.lock = LockFile.in_data_dir(settings.data_dir)
        self.packages_dir = settings.data_dir / "plugins"
        self.staging_dir = self.packages_dir / ".staging"
        options = settings.raw.get("marketplace") or {}
        self.index_url: str | None = options.get("indexUrl")
        self.timeout_s = _seconds(options.get("installTimeoutS"))
        self._serial = asyncio.Lock()  # one install at a time in this process

    @classmethod
    def for_project(cls, root: Path) -> Marketplace:
        """The marketplace of another project (scope `project`), with its own lock."""
        import os

        from kblabs.config import load_settings

        environ = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
        environ["KB_PROJECT_ROOT"] = str(root)
        return cls(load_settings(environ=environ), None, scope="project")

    # --- reading --------------------------------------------------------------------------

    def entries(self) -> dict[str, LockEntry]:
        try:
            return self.lock.read()
        except LockFileError as exc:
            raise KbError("LOCK_INVALID", str(exc), 500) from None

    def packages(self, kind: str | None = None) -> list[dict[str, Any]]:
        rows = [
            {"id": key, **entry_to_dict(entry), "scope": self.scope}
            for key, entry in sorted(self.entries().items())
            if kind is None or entry.primary_kind == kind
        ]
        return rows

    def _relative(self, folder: Path) -> str:
        folder = folder.resolve()
        return (
            "./" + folder.relative_to(self.root).as_posix()
            if folder.is_relative_to(self.root)
            else str(folder)
        )

    def _folder(self, entry: LockEntry) -> Path:
        return (self.root / entry.resolved_path).resolve()

    # --- install / update / uninstall -----------------------------------------------------

    async def install(self, specs: list[str], progress: Progress | None = None) -> dict[str, Any]:
        if not specs or not all(isinstance(s, str) and s.strip() for s in specs):
            raise KbError("VALIDATION_ERROR", "specs: give at least one package to install", 400)
        installed = []
        async with self._serial:
            for spec in specs:
                installed.append(await self._install_one(spec.strip(), progress))
        await self._refresh()
        return {"installed": installed, "warnings": [], "scope": self.scope}

    async def _install_one(self, spec: str, progress: Progress | None) -> dict[str, Any]:
        if (spec.endswith(".whl") or "/" in spec) and not Path(spec).exists():
            raise KbError("NOT_FOUND", f"no such wheel file: {spec}", 404)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        staging = self.staging_dir / uuid.uuid4().hex[:12]
        staging.mkdir()
        try:
            await pip_install(
                str(Path(spec).resolve()) if Path(spec).exists() else spec,
                staging,
                index_url=self.index_url,
                timeout_s=self.timeout_s,
                progress=progress,
            )
            package = await asyncio.to_thread(inspect, staging)
            if package.kind == "adapter" and self.scope != "platform":
                raise KbError(
                    "MARKETPLACE_ADAPTER_PROJECT_SCOPE",
                    f"{package.id} is an adapter: adapters install at platform scope only",
                    400,
                )
            folder = (
                self.packages_dir
                / f"{canonical(package.distribution)}-{package.version}-{staging.name}"
            )
            staging.rename(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            previous_folder = await asyncio.to_thread(self._record, package, folder, "marketplace")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if previous_folder is not None and previous_folder != folder:
            self._remove_installed(previous_folder)
        if progress:
            progress(f"installed {package.id} {package.version}")
        return {
            "id": package.id,
            "version": package.version,
            "primaryKind": package.kind,
            "provides": package.provides,
            "packageRoot": self._relative(folder),
            "distribution": package.distribution,
            "scope": self.scope,
        }

    def _record(self, package: Package, folder: Path, source: str) -> Path | None:
        """Point the lock at `folder` (keeping `enabled`); returns the folder it held."""
        with self.lock.update() as entries:
            previous = entries.get(package.id)
            entries[package.id] = LockEntry(
                version=package.version,
                integrity=package.integrity,
                resolved_path=self._relative(folder),
                source=source,  # type: ignore[arg-type]
                primary_kind=package.kind,
                provides=package.provides,
                enabled=previous.enabled if previous else True,
                distribution=package.distribution,
            )
        if previous is None or previous.source != "marketplace":
            return None
        return self._folder(previous)

    def _remove_installed(self, folder: Path) -> None:
        """Delete an install folder, only ever one under the packages folder."""
        folder = folder.resolve()
        if (
            folder.is_relative_to(self.packages_dir.resolve())
            and folder != self.packages_dir.resolve()
        ):
            shutil.rmtree(folder, ignore_errors=True)

    async def uninstall(self, package_ids: list[str]) -> None:
        if not package_ids:
            raise KbError("VALIDATION_ERROR", "packageIds: name at least one package", 400)
        async with self._serial:
            removed: list[LockEntry] = []
            with self.lock.update() as entries:
                unknown = [p for p in package_ids if self._key(entries, p) is None]
                if unknown:
                    raise KbError("PACKAGE_NOT_FOUND", f"not installed: {', '.join(unknown)}", 404)
                for package_id in package_ids:
                    key = self._key(entries, package_id)
                    if key is not None:
                        removed.append(entries.pop(key))
            for entry in removed:
                if entry.source == "marketplace":
                    self._remove_installed(self._folder(entry))
        await self._refresh()

    @staticmethod
    def _key(entries: dict[str, LockEntry], package_id: str) -> str | None:
        """A lock key by id, or by the distribution name it was installed from."""
        if package_id in entries:
            return package_id
        wanted = canonical(package_id)
        for key, entry in entries.items():
            if canonical(str(getattr(entry, "distribution", "") or "")) == wanted:
                return key
        return None

    async def update(self, package_ids: list[str] | None = None) -> dict[str, Any]:
        entries = self.entries()
        if not entries:
            return {"installed": [], "warnings": ["No marketplace.lock found"], "scope": self.scope}
        chosen = [k for k in entries if entries[k].source == "marketplace"]
        if package_ids:
            keys = {self._key(entries, p) for p in package_ids} - {None}
            chosen = [k for k in chosen if k in keys]
        specs = [str(getattr(entries[k], "distribution", None) or k) for k in chosen]
        if not specs:
            return {"installed": [], "warnings": ["nothing to update"], "scope": self.scope}
        return await self.install(specs)

    # --- switches, links, sync ------------------------------------------------------------

    async def set_enabled(self, package_id: str, enabled: bool) -> dict[str, Any]:
        builtins = builtin_manifests()
        with self.lock.update() as entries:
            key = self._key(entries, package_id)
            if key is None and package_id in builtins:
                key = package_id  # a built-in is on until the lock says otherwise
                manifest, root = builtins[package_id]
                entries[key] = LockEntry(
                    version=manifest.version, resolved_path=str(root), source="builtin"
                )
            if key is None:
                raise KbError("PACKAGE_NOT_FOUND", f"{package_id} is not installed or linked", 404)
            entries[key].enabled = enabled
            if enabled and entries[key].source == "builtin":
                del entries[key]  # back to the default: nothing to remember
        await self._refresh()
        return {"id": key, "enabled": enabled, "scope": self.scope}

    def _link_folder(self, path: str | Path) -> Path:
        folder = Path(path)
        folder = (folder if folder.is_absolute() else self.root / folder).resolve()
        if not folder.is_relative_to(self.root):
            raise KbError(
                "LINK_OUTSIDE_ROOT",
                f"{folder} is outside the project root {self.root}; link from inside it",
                400,
            )
        if not folder.is_dir():
            raise KbError("NOT_FOUND", f"no folder {folder}", 404)
        return folder

    async def link(self, path: str | Path) -> dict[str, Any]:
        folder = self._link_folder(path)
        manifest, problems = read_manifest(folder)
        if manifest is None:
            first = problems[0]
            where = f"{first['path']}: " if first["path"] else ""
            raise KbError(
                "MANIFEST_INVALID", f"{folder}: {where}{first['message']}", 400, details=problems
            )
        package = Package(
            manifest.id,
            manifest.version,
            "plugin",
            ["plugin", *manifest.provides()],
            integrity_of(folder),
            manifest.id,
        )
        await asyncio.to_thread(self._record, package, folder, "local")
        await self._refresh()
        return {
            "id": manifest.id,
            "version": manifest.version,
            "primaryKind": "plugin",
            "provides": package.provides,
            "packageRoot": self._relative(folder),
            "source": "local",
            "scope": self.scope,
        }

    async def unlink(self, package_id: str) -> bool:
        """Remove a link from the lock (idempotent); no file is deleted."""
        with self.lock.update() as entries:
            key = self._key(entries, package_id)
            entry = entries.get(key) if key else None
            if entry is not None and entry.source != "local":
                raise KbError(
                    "NOT_LINKED", f"{package_id} was installed, not linked: uninstall it", 409
                )
            removed = entries.pop(key, None) is not None if key else False
        await self._refresh()
        return removed

    async def sync(
        self, include: list[str], exclude: list[str] | None = None, auto_enable: bool = False
    ) -> dict[str, Any]:
        """Link every plugin folder matched by `include` (globs under the project root)
        that is not in the lock yet; idempotent."""
        if not include:
            raise KbError("VALIDATION_ERROR", "include: give at least one glob", 400)
        added, skipped = [], []
        candidates: list[Path] = []
        for pattern in include:
            candidates += [
                p.parent for p in sorted(self.root.glob(f"{pattern.rstrip('/')}/{MANIFEST_FILE}"))
            ]
        with self.lock.update() as entries:
            for folder in dict.fromkeys(candidates):
                relative = folder.relative_to(self.root).as_posix()
                if any(fnmatch.fnmatch(relative, e.rstrip("/")) for e in exclude or []):
                    continue
                manifest, problems = read_manifest(folder)
                if manifest is None:
                    skipped.append(
                        {"id": relative, "reason": f"invalid manifest: {problems[0]['message']}"}
                    )
                    continue
                if manifest.id in entries:
                    skipped.append({"id": manifest.id, "reason": "already in lock"})
                    continue
                entries[manifest.id] = LockEntry(
                    version=manifest.version,
                    integrity=integrity_of(folder),
                    resolved_path=self._relative(folder),
                    source="local",
                    provides=["plugin", *manifest.provides()],
                    enabled=auto_enable,
                )
                added.append(
                    {"id": manifest.id, "primaryKind": "plugin", "version": manifest.version}
                )
            total = len(entries)
        await self._refresh()
        return {"added": added, "skipped": skipped, "total": total}

    # --- health ---------------------------------------------------------------------------

    def doctor(self) -> dict[str, Any]:
        issues: list[dict[str, Any]] = []
        try:
            entries = self.lock.read()
        except LockFileError as exc:
            issues.append({"severity": "error", "packageId": "*", "message": str(exc)})
            entries = {}
        if not self.lock.path.exists():
            issues.append(
                {"severity": "info", "packageId": "*", "message": "no marketplace.lock yet"}
            )
        referenced = set()
        for key, entry in entries.items():
            folder = self._folder(entry)
            referenced.add(folder)
            if not folder.is_dir():
                issues.append(
                    {
                        "severity": "error",
                        "packageId": key,
                        "message": f"folder {folder} is missing",
                        "remediation": f"reinstall or unlink {key}",
                    }
                )
                continue
            if entry.integrity and integrity_of(folder) != entry.integrity:
                issues.append(
                    {
                        "severity": "warning",
                        "packageId": key,
                        "message": "installed files changed since install (integrity mismatch)",
                        "remediation": f"update {key}"
                        if entry.source == "marketplace"
                        else "relink it",
                    }
                )
            if not entry.signature:
                issues.append({"severity": "info", "packageId": key, "message": "unsigned package"})
        for leftover in self._leftovers(referenced):
            issues.append(
                {
                    "severity": "warning",
                    "packageId": "*",
                    "message": f"leftover files not referenced by the lock: {leftover}",
                    "remediation": "python -m kblabs marketplace clear-cache",
                }
            )
        ok = not any(i["severity"] == "error" for i in issues)
        return {"ok": ok, "total": len(issues), "issues": issues}

    def _leftovers(self, referenced: set[Path]) -> list[Path]:
        if not self.packages_dir.is_dir():
            return []
        found = [
            p
            for p in sorted(self.packages_dir.iterdir())
            if p.is_dir() and p.resolve() not in referenced
        ]
        staged = [p for p in found if p.name == ".staging"]
        others = [p for p in found if p.name != ".staging"]
        for stage in staged:
            others += [p for p in sorted(stage.iterdir())]
        return others

    def clear_cache(self) -> dict[str, Any]:
        """Remove install leftovers: staging folders and folders no lock entry uses."""
        referenced = {self._folder(e) for e in self.entries().values()}
        removed = []
        for leftover in self._leftovers(referenced):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(str(leftover))
        return {"cleared": removed}

    async def _refresh(self) -> None:
        if self.registry is not None:
            with contextlib.suppress(Exception):
                await self.registry.refresh()
        logger.debug("marketplace lock changed")
