"""`.kb/marketplace.lock` (`schema: "kb.marketplace/2"`): what is installed and enabled.

It is the source of truth for discovery. Every change happens under an exclusive
cross-process lock (`fcntl.flock` on a sidecar file) and is written by atomic replace
(temp file in the same folder, fsync, rename), after copying the previous version to
`.bak`: a crash leaves the old or the new file, never a partial one. The original
raced here; two processes updating it at once must both land.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from kblabs.datadir import atomic_write

SCHEMA = "kb.marketplace/2"
FILE_NAME = "marketplace.lock"


class LockFileError(Exception):
    """The lock file exists but cannot be used; the message says why and where."""


class LockEntry(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    version: str = "0.0.0"
    integrity: str = ""
    resolved_path: str
    installed_at: str = Field(
        default_factory=lambda: (
            datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
    )
    # "builtin": a switched-off plugin shipped with the platform (no files of its own)
    source: Literal["marketplace", "local", "builtin"] = "marketplace"
    primary_kind: str = "plugin"
    provides: list[str] = Field(default_factory=list)
    enabled: bool = True
    signature: str | None = None


class LockFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.guard_path = path.with_name(path.name + ".guard")
        self.backup_path = path.with_name(path.name + ".bak")

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> LockFile:
        return cls(data_dir / FILE_NAME)

    def read(self) -> dict[str, LockEntry]:
        """Entries by id; {} when there is no lock (or one of another schema)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return _parse(text, self.path)

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, LockEntry]]:
        """Hold the lock, hand out the current entries, write them back atomically when
        the block ends without an exception (an exception leaves the file untouched)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.guard_path, "a+") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                entries = self.read()
                yield entries
                self._write(entries)
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)

    def _write(self, entries: dict[str, LockEntry]) -> None:
        document = {
            "schema": SCHEMA,
            "installed": {
                key: entry.model_dump(by_alias=True, exclude_none=True)
                for key, entry in sorted(entries.items())
            },
        }
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        if self.path.exists():
            atomic_write(
                self.backup_path, self.path.read_bytes(), temp_prefix=f".{self.path.name}."
            )
        atomic_write(self.path, text.encode(), temp_prefix=f".{self.path.name}.")


def _parse(text: str, path: Path) -> dict[str, LockEntry]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LockFileError(
            f"{path} is not valid JSON (line {exc.lineno}): restore {path.name}.bak or fix it"
        ) from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        return {}
    installed = document.get("installed")
    if not isinstance(installed, dict):
        raise LockFileError(f"{path}: `installed` must be an object")
    entries: dict[str, LockEntry] = {}
    problems: list[str] = []
    for key, raw in installed.items():
        try:
            entries[key] = LockEntry.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            problems.append(f"installed[{key!r}].{where}: {first['msg']}")
    if problems:
        raise LockFileError(f"{path}: " + "; ".join(problems))
    return entries


def entry_to_dict(entry: LockEntry) -> dict[str, Any]:
    return entry.model_dump(by_alias=True, exclude_none=True)
