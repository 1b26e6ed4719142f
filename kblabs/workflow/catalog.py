"""The workflows a user can run, from three places (reference workflow §2):

- standalone files `<project>/.kb/workflows/*.yml|yaml|json`: id = the file's `id:` or
  its stem, source `standalone`;
- plugin templates (`workflows.templates[]`, a spec file inside the plugin): id
  `plugin:<pluginId>/<templateId>`, source `plugin`;
- plugin workflow handlers (`workflows.handlers[]`): id `<pluginId>/<handlerId>`,
  source `manifest`; each becomes a one-step workflow whose step calls the handler with
  the run's inputs.

Every entry is runnable. A file that does not validate stays in the catalog with its
problems (status `invalid`), so a typo is reported, never silently dropped. The catalog
is rebuilt on `refresh()` and whenever the plugin registry changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from kblabs.errors import KbError
from kblabs.workflow.spec import Problem, WorkflowSpec, load_spec, validate_spec

SPEC_SUFFIXES = (".yml", ".yaml", ".json")


@dataclass
class CatalogEntry:
    id: str
    source: str  # standalone | plugin | manifest
    spec: WorkflowSpec | None
    path: str | None = None
    plugin_id: str | None = None
    problems: list[Problem] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "active" if self.spec is not None else "invalid"

    def info(self) -> dict[str, Any]:
        """`WorkflowInfo` as the API returns it."""
        spec = self.spec
        data: dict[str, Any] = {
            "id": self.id,
            "name": spec.name if spec else self.id,
            "description": spec.description if spec else None,
            "source": self.source,
            "status": self.status,
            "tags": self.tags,
        }
        if self.plugin_id:
            data["pluginId"] = self.plugin_id
        if self.path:
            data["path"] = self.path
        if spec is not None:
            data["version"] = spec.version
            data["inputs"] = {
                name: declared.model_dump(mode="json", by_alias=True, exclude_none=True)
                for name, declared in spec.inputs.items()
            }
            data["triggers"] = spec.on.model_dump(mode="json", by_alias=True, exclude_none=True)
        else:
            data["problems"] = self.problems
        return data


def _tags(source: str, spec: WorkflowSpec | None, extra: list[str]) -> list[str]:
    tags = [source, *extra]
    if spec is not None and spec.description:
        tags += [word[1:] for word in spec.description.split() if word.startswith("#")]
    return list(dict.fromkeys(tags))


def load_file(
    path: Path, *, entry_id: str | None, source: str, plugin_id: str | None
) -> CatalogEntry:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        unreadable: Problem = {"path": "", "message": f"cannot read {path}: {exc}"}
        spec, problems = None, [unreadable]
    else:
        spec, problems = load_spec(text, source=str(path))
    workflow_id = entry_id or (spec.id if spec and spec.id else path.stem)
    return CatalogEntry(
        id=workflow_id,
        source=source,
        spec=spec,
        path=str(path),
        plugin_id=plugin_id,
        problems=problems,
        tags=_tags(source, spec, [plugin_id] if plugin_id else []),
    )


def handler_spec(plugin_id: str, handler_id: str, describe: str | None) -> WorkflowSpec:
    spec, problems = validate_spec(
        {
            "name": describe or f"{plugin_id}/{handler_id}",
            "version": "1.0.0",
            "on": {"manual": True},
            "jobs": {
                "run": {
                    "runsOn": "local",
                    "steps": [{"id": "handler", "uses": f"plugin:{plugin_id}/{handler_id}"}],
                }
            },
        }
    )
    if spec is None:  # a plugin id our spec grammar refuses: say so, do not crash
        raise KbError("INVALID_HANDLER", f"{plugin_id}/{handler_id}: {problems[0]['message']}", 500)
    return spec


class Catalog:
    def __init__(self, project_root: Path, plugins: Any = None) -> None:
        self.folder = project_root / ".kb" / "workflows"
        self.plugins = plugins  # PluginRegistry | None
        self.entries: dict[str, CatalogEntry] = {}
        self.last_stamp: tuple[tuple[str, float], ...] = ()

    def stamp(self) -> tuple[tuple[str, float], ...]:
        """What the workflow folder holds (names and modification times): a change
        means the catalog should be read again."""
        if not self.folder.is_dir():
            return ()
        found = []
        for path in sorted(self.folder.iterdir()):
            if path.suffix in SPEC_SUFFIXES:
                with contextlib.suppress(OSError):
                    found.append((path.name, path.stat().st_mtime))
        return tuple(found)

    async def refresh(self) -> dict[str, Any]:
        self.last_stamp = await asyncio.to_thread(self.stamp)
        entries = await asyncio.to_thread(self._scan)
        self.entries = {entry.id: entry for entry in entries}
        invalid = [e.id for e in entries if e.spec is None]
        if invalid:
            logger.warning("workflows that do not validate: {}", ", ".join(invalid))
        return {"workflowsLoaded": len(self.entries), "workflowIds": sorted(self.entries)}

    def _scan(self) -> list[CatalogEntry]:
        found: list[CatalogEntry] = []
        if self.folder.is_dir():
            for path in sorted(self.folder.iterdir()):
                if path.suffix in SPEC_SUFFIXES and path.is_file():
                    found.append(
                        load_file(path, entry_id=None, source="standalone", plugin_id=None)
                    )
        for plugin in self.plugins.plugins if self.plugins is not None else []:
            section = plugin.manifest.workflows
            if section is None:
                continue
            for template in section.templates:
                path = (plugin.root / template.path).resolve()
                entry_id = f"plugin:{plugin.id}/{template.id}"
                if not path.is_relative_to(plugin.root.resolve()):
                    found.append(
                        CatalogEntry(
                            entry_id,
                            "plugin",
                            None,
                            plugin_id=plugin.id,
                            problems=[{"path": "", "message": "template path leaves the plugin"}],
                        )
                    )
                    continue
                entry = load_file(path, entry_id=entry_id, source="plugin", plugin_id=plugin.id)
                entry.tags = list(dict.fromkeys([*entry.tags, *template.tags]))
                found.append(entry)
            for handler in section.handlers:
                try:
                    spec = handler_spec(plugin.id, handler.id, handler.describe)
                    problems: list[Problem] = []
                except KbError as exc:
                    spec, problems = None, [{"path": "", "message": exc.message}]
                found.append(
                    CatalogEntry(
                        f"{plugin.id}/{handler.id}",
                        "manifest",
                        spec,
                        plugin_id=plugin.id,
                        problems=problems,
                        tags=["manifest", "plugin", plugin.id],
                    )
                )
        return found

    def get(self, workflow_id: str) -> CatalogEntry:
        entry = self.entries.get(workflow_id)
        if entry is None:
            raise KbError("WORKFLOW_NOT_FOUND", f"Workflow not found: {workflow_id}", 404)
        return entry

    def runnable(self, workflow_id: str) -> WorkflowSpec:
        entry = self.get(workflow_id)
        if entry.spec is None:
            first = entry.problems[0] if entry.problems else {"path": "", "message": "invalid"}
            where = f"{first['path']}: " if first["path"] else ""
            raise KbError(
                "WORKFLOW_INVALID",
                f"{workflow_id} does not validate: {where}{first['message']}",
                422,
                details=entry.problems,
            )
        return entry.spec

    def list(
        self, *, source: str | None = None, status: str | None = None, tags: list[str] | None = None
    ) -> list[dict[str, Any]]:
        chosen = []
        for entry in self.entries.values():
            if source and not (
                entry.source == source or (source == "manifest" and entry.source == "plugin")
            ):
                continue
            if status and entry.status != status:
                continue
            if tags and not set(tags) & set(entry.tags):
                continue
            chosen.append(entry.info())
        return sorted(chosen, key=lambda info: (info["name"].lower(), info["id"]))
