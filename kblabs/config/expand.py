"""`${VAR}` and `${VAR:-default}` expansion in every string of a config document."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(
    value: Any, environ: Mapping[str, str], path: str = "", unresolved: list | None = None
) -> Any:
    """Return `value` with references replaced. Unresolved references stay as written and
    are appended to `unresolved` as (path, variable name)."""
    if unresolved is None:
        unresolved = []
    if isinstance(value, dict):
        return {
            key: expand(item, environ, f"{path}.{key}" if path else str(key), unresolved)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [expand(item, environ, f"{path}[{i}]", unresolved) for i, item in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if default is not None and not environ.get(name):
                return default  # like the shell's ${VAR:-default}: unset or empty
            if name in environ:
                return environ[name]
            unresolved.append((path, name))
            return match.group(0)

        return _REFERENCE.sub(replace, value)
    return value
