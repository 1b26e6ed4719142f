"""What a plugin handler may touch, checked before any I/O (reference §7).

Effective permissions = plugin ← handler: a section the handler declares replaces the
plugin's whole section. A denial raises `PermissionDenied` (HTTP 403
`PERMISSION_DENIED`, CLI exit 1) naming the permission and the resource.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kblabs.errors import KbError
from kblabs.plugins.context import env_allowed
from kblabs.plugins.manifest import Permissions, Quotas

# Never readable or writable, whatever the manifest says.
DENIED_NAMES = ("node_modules", ".git", ".ssh")
DENIED_GLOBS = (".env", ".env.*", "*credentials*", "*password*", "*.pem", "*.key", "*.secret")
SYSTEM_PREFIXES = ("/etc/", "/usr/", "/var/", "/proc/", "/sys/", "/root/")
SHELL_BLOCKLIST = ("rm -rf /", "mkfs", "dd if=", ":(){", "chmod -R 777 /", "chown -R", "> /dev/sd")


class PermissionDenied(KbError):
    def __init__(self, permission: str, resource: str, plugin_id: str) -> None:
        super().__init__(
            "PERMISSION_DENIED",
            f"{plugin_id}: {permission} not allowed for {resource}",
            403,
            details={"permission": permission, "resource": resource, "pluginId": plugin_id},
        )
        self.permission = permission
        self.resource = resource


@dataclass(frozen=True)
class Effective:
    fs_read: tuple[str, ...] = ()
    fs_write: tuple[str, ...] = ()
    network: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    shell: tuple[str, ...] = ()
    invoke: tuple[str, ...] = ()
    state_namespaces: tuple[str, ...] = ()
    platform: dict[str, Any] = field(default_factory=dict)
    quotas: Quotas | None = None


def effective(plugin: Permissions | None, handler: Permissions | None = None) -> Effective:
    """Merge plugin and handler permissions: handler sections replace plugin sections."""
    merged: dict[str, Any] = {}
    for spec in (plugin, handler):
        if spec is not None:
            merged.update({k: getattr(spec, k) for k in spec.model_fields_set})
    fs = merged.get("fs")
    read, write = (list(fs.read), list(fs.write)) if fs else ([], [])
    if fs and fs.allow:
        read += fs.allow
        if fs.mode == "readWrite":
            write += fs.allow
    return Effective(
        fs_read=tuple(read),
        fs_write=tuple(write),
        network=tuple((merged.get("network") or {}).get("fetch", [])),
        env=tuple((merged.get("env") or {}).get("read", [])),
        shell=tuple((merged.get("shell") or {}).get("allow", [])),
        invoke=tuple((merged.get("invoke") or {}).get("allow", [])),
        state_namespaces=tuple((merged.get("state") or {}).get("namespaces", [])),
        platform=dict(merged.get("platform") or {}),
        quotas=merged.get("quotas"),
    )


class Guard:
    """Checks for one handler call: paths relative to `cwd`; `outdir` always writable."""

    def __init__(self, perms: Effective, plugin_id: str, cwd: Path, outdir: Path) -> None:
        self.perms = perms
        self.plugin_id = plugin_id
        self.cwd = cwd.resolve()
        self.outdir = outdir.resolve()

    def _deny(self, permission: str, resource: str) -> PermissionDenied:
        return PermissionDenied(permission, resource, self.plugin_id)

    # --- files ---------------------------------------------------------------------------

    def _resolve(self, path: str | Path) -> Path:
        candidate = Path(path)
        candidate = candidate if candidate.is_absolute() else self.cwd / candidate
        return Path(os.path.realpath(candidate))

    def _always_denied(self, resolved: Path) -> bool:
        inside = resolved.is_relative_to(self.cwd) or resolved.is_relative_to(self.outdir)
        if not inside and str(resolved).startswith(SYSTEM_PREFIXES):
            return True
        base = self.cwd if resolved.is_relative_to(self.cwd) else None
        parts = resolved.relative_to(base).parts if base else resolved.parts
        if any(part in DENIED_NAMES for part in parts):
            return True
        return any(fnmatch.fnmatch(resolved.name, pattern) for pattern in DENIED_GLOBS)

    def _matches(self, resolved: Path, patterns: tuple[str, ...]) -> bool:
        for pattern in patterns:
            if any(ch in pattern for ch in "*?["):
                # globs match the path relative to cwd; `*` may cross "/" as in fnmatch
                inside = resolved.is_relative_to(self.cwd)
                relative = resolved.relative_to(self.cwd).as_posix() if inside else str(resolved)
                if fnmatch.fnmatch(relative, pattern.rstrip("/")):
                    return True
                continue
            root = self._resolve(pattern.rstrip("/") or ".")
            if resolved == root or resolved.is_relative_to(root):  # path boundary, not prefix
                return True
        return False

    def check_read(self, path: str | Path) -> Path:
        resolved = self._resolve(path)
        if self._always_denied(resolved):
            raise self._deny("fs.read", str(path))
        allowed = (
            resolved.is_relative_to(self.cwd)
            or resolved.is_relative_to(self.outdir)
            or self._matches(resolved, self.perms.fs_read + self.perms.fs_write)
        )
        if not allowed:
            raise self._deny("fs.read", str(path))
        return resolved

    def check_write(self, path: str | Path) -> Path:
        resolved = self._resolve(path)
        if self._always_denied(resolved):
            raise self._deny("fs.write", str(path))
        if not (
            resolved.is_relative_to(self.outdir) or self._matches(resolved, self.perms.fs_write)
        ):
            raise self._deny("fs.write", str(path))
        return resolved

    # --- environment, network, shell, invoke, platform -------------------------------------

    def env_allowed(self, name: str) -> bool:
        return env_allowed(name, self.perms.env)

    def check_fetch(self, url: str) -> None:
        host = (urlsplit(url).hostname or "").lower()
        for pattern in self.perms.network:
            if pattern == "*" or fnmatch.fnmatch(url, pattern):
                return
            if "://" not in pattern and fnmatch.fnmatch(host, pattern.lower()):
                return
        raise self._deny("network.fetch", url)

    def check_shell(self, argv: list[str] | str) -> None:
        words = shlex.split(argv) if isinstance(argv, str) else list(argv)
        command = " ".join(words)
        if not words or not self.perms.shell:
            raise self._deny("shell", command or "(empty)")
        if any(blocked in command for blocked in SHELL_BLOCKLIST):
            raise self._deny("shell", command)
        program = os.path.basename(words[0])
        if "*" not in self.perms.shell and program not in self.perms.shell:
            raise self._deny("shell", command)

    def check_invoke(self, target: str) -> None:
        for pattern in self.perms.invoke:
            if (
                pattern == "*"
                or target == pattern
                or (pattern.endswith("*") and target.startswith(pattern[:-1]))
            ):
                return
        raise self._deny("invoke", target)

    def check_state(self, namespace: str) -> None:
        """A plugin's own state namespace is always open; others need
        `state.namespaces`."""
        if namespace != self.plugin_id and namespace not in self.perms.state_namespaces:
            raise self._deny("state", namespace)

    def check_platform(self, service: str, resource: str | None = None) -> None:
        """A platform service: flag true, or a list of allowed prefixes (cache keys,
        storage paths, model names); missing or false is a denial."""
        grant = self.perms.platform.get(service)
        if grant is True:
            return
        if (
            isinstance(grant, list)
            and resource is not None
            and any(resource.startswith(prefix) for prefix in grant)
        ):
            return
        if isinstance(grant, dict) and resource is not None:
            allowed = next((v for v in grant.values() if isinstance(v, list)), [])
            if any(resource.startswith(prefix) for prefix in allowed):
                return
        raise self._deny(f"platform.{service}", resource or service)
