"""Adapters installed through the marketplace (lock entries of kind `adapter`).

A distribution provides adapters through entry points in the group `kb_labs.adapters`,
each named `<token>.<name>` and pointing at a factory:

    [project.entry-points."kb_labs.adapters"]
    "cache.redis" = "kb_redis_cache:create"

After `python -m kblabs marketplace install kb-redis-cache`, the configuration
`"platform": {"adapters": {"cache": "redis"}}` builds it with
`create(token, options, context)`: `options` is the raw `platform.adapterOptions.cache`
(or None) and `context` the registry's AdapterContext. A built-in of the same name wins.

Adapters run in the server process, like the built-ins (they are installed at platform
scope only, by an admin), so the package's install folder is put on `sys.path` when one
of its adapters is configured, and only then.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kblabs.errors import StartupError
from kblabs.marketplace.lockfile import LockFile, LockFileError

GROUP = "kb_labs.adapters"


@dataclass(frozen=True)
class InstalledAdapter:
    token: str
    name: str
    package: str  # the lock key
    folder: Path
    entry_point: importlib.metadata.EntryPoint

    def load(self) -> Callable[..., Any]:
        """The factory; its import errors stop the start with the package named."""
        if str(self.folder) not in sys.path:
            sys.path.append(str(self.folder))
        try:
            factory = self.entry_point.load()
        except Exception as exc:
            raise StartupError(
                "adapters",
                f"{self.token} adapter {self.name!r} from {self.package}: importing "
                f"{self.entry_point.value} failed: {type(exc).__name__}: {exc}",
            ) from exc
        if not callable(factory):
            raise StartupError(
                "adapters", f"{self.package}: {self.entry_point.value} is not callable"
            )
        return factory


def installed_adapters(
    data_dir: Path, project_root: Path
) -> dict[tuple[str, str], InstalledAdapter]:
    """(token, name) → the enabled installed adapter; {} without a lock."""
    try:
        entries = LockFile.in_data_dir(data_dir).read()
    except LockFileError:
        return {}  # the plugin registry reports a broken lock; adapters are then built-in only
    found: dict[tuple[str, str], InstalledAdapter] = {}
    for key, entry in entries.items():
        if entry.primary_kind != "adapter" or not entry.enabled:
            continue
        folder = (project_root / entry.resolved_path).resolve()
        for dist in importlib.metadata.distributions(path=[str(folder)]):
            for point in dist.entry_points.select(group=GROUP):
                token, _, name = point.name.partition(".")
                if token and name:
                    adapter = InstalledAdapter(token, name, key, folder, point)
                    found.setdefault((token, name), adapter)
    return found
