"""Discovery from the lock: good plugins load, each broken one is a diagnostic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kblabs.marketplace.lockfile import LockEntry, LockFile
from kblabs.plugins.discovery import discover, integrity_of
from kblabs.plugins.handlers import HandlerError, import_handler


def from_lock(found):
    """The plugins the lock brought (the built-ins are always there besides)."""
    return [p for p in found.plugins if p.source != "builtin"]


def plugin_folder(root: Path, name: str, manifest: dict | str, module: str | None = None) -> Path:
    folder = root / "plugins" / name
    package = folder / name.replace("-", "_")
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if module is not None:
        (package / "handlers.py").write_text(module)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (folder / "kb.plugin.json").write_text(text)
    (folder / "pyproject.toml").write_text(f'[project]\nname = "{name}"\n')
    return folder


def manifest(plugin_id: str, handler: str) -> dict:
    return {
        "schema": "kb.plugin/3",
        "id": plugin_id,
        "version": "0.1.0",
        "rest": {"routes": [{"method": "GET", "path": "/hi", "handler": handler}]},
    }


def link(lock: LockFile, key: str, folder: Path, project: Path, **extra) -> None:
    with lock.update() as entries:
        entries[key] = LockEntry(
            resolved_path="./" + str(folder.relative_to(project)),
            source="local",
            integrity=integrity_of(folder),
            **extra,
        )


def test_good_and_broken_plugins_side_by_side(tmp_path):
    lock = LockFile(tmp_path / ".kb" / "marketplace.lock")
    good = plugin_folder(
        tmp_path,
        "kb-good",
        manifest("@kb/good", "kb_good.handlers:hi"),
        "def hi(ctx, input):\n    return {'hi': True}\n",
    )
    bad = plugin_folder(tmp_path, "kb-bad", {"schema": "kb.plugin/3", "id": "nope"})
    broken_json = plugin_folder(tmp_path, "kb-json", "{ not json")
    link(lock, "@kb/good", good, tmp_path)
    link(lock, "@kb/bad", bad, tmp_path)
    link(lock, "@kb/json", broken_json, tmp_path)
    link(lock, "@kb/off", good, tmp_path, enabled=False)
    with lock.update() as entries:
        entries["@kb/gone"] = LockEntry(resolved_path="./plugins/missing")
    result = discover(lock, tmp_path)
    assert [p.id for p in from_lock(result)] == ["@kb/good"]
    codes = {d.plugin_id: d.code for d in result.diagnostics}
    assert codes == {
        "@kb/bad": "MANIFEST_INVALID",
        "@kb/json": "MANIFEST_INVALID",
        "@kb/off": "PLUGIN_DISABLED",
        "@kb/gone": "PACKAGE_NOT_FOUND",
    }
    invalid = next(d for d in result.diagnostics if d.plugin_id == "@kb/bad")
    assert {p["path"] for p in invalid.details} >= {"id", "version"}


def test_integrity_and_conflicts(tmp_path):
    lock = LockFile(tmp_path / ".kb" / "marketplace.lock")
    folder = plugin_folder(tmp_path, "kb-one", manifest("@kb/one", "kb_one.handlers:hi"))
    link(lock, "@kb/one", folder, tmp_path)
    link(lock, "@kb/one-again", folder, tmp_path)  # same manifest id twice
    (folder / "pyproject.toml").write_text("changed")
    result = discover(lock, tmp_path)
    assert [p.lock_key for p in from_lock(result)] == ["@kb/one"]
    codes = sorted(d.code for d in result.diagnostics)
    assert "ENTITY_CONFLICT" in codes and "INTEGRITY_MISMATCH" in codes
    with lock.update() as entries:
        entries["@kb/one"].source = "marketplace"
        del entries["@kb/one-again"]
    assert from_lock(discover(lock, tmp_path)) == []  # installed files changed: refused


def test_handlers_resolve_or_say_why(tmp_path):
    folder = plugin_folder(
        tmp_path,
        "kb-h",
        manifest("@kb/h", "kb_h.handlers:hi"),
        "def hi(ctx, input):\n    return 1\nclass Box:\n    def execute(s): ...\n",
    )
    assert import_handler("kb_h.handlers:hi", folder)(None, None) == 1
    assert import_handler("kb_h.handlers:Box", folder)
    with pytest.raises(HandlerError) as missing:
        import_handler("kb_h.handlers:nope", folder)
    assert missing.value.code == "HANDLER_NOT_FOUND"
    (folder / "kb_h" / "broken.py").write_text("raise RuntimeError('at import')\n")
    with pytest.raises(HandlerError) as broken:
        import_handler("kb_h.broken:x", folder)
    assert broken.value.code == "MODULE_IMPORT_FAILED" and "at import" in broken.value.message


def installed_plugin(target: Path, plugin_id: str, package: str = "kb_demo") -> None:
    """What `pip install --target <target>` leaves for a plugin distribution."""
    (target / package).mkdir(parents=True)
    (target / package / "__init__.py").write_text("")
    (target / package / "handlers.py").write_text("async def hi(ctx, input):\n    return 'hi'\n")
    (target / package / "kb.plugin.json").write_text(
        json.dumps(manifest(plugin_id, f"{package}.handlers:hi"))
    )
    info = target / f"{package}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[kb_labs.plugins]\ndemo = {package}\n")


def test_an_installed_distribution_is_found_through_its_entry_point(tmp_path):
    lock = LockFile(tmp_path / ".kb" / "marketplace.lock")
    target = tmp_path / ".kb" / "plugins" / "kb-demo"
    installed_plugin(target, "@acme/demo")
    integrity = integrity_of(target)
    assert integrity.startswith("sha256-")
    with lock.update() as entries:
        entries["@acme/demo"] = LockEntry(
            resolved_path="./.kb/plugins/kb-demo", source="marketplace", integrity=integrity
        )
    found = discover(lock, tmp_path)
    assert [p.id for p in from_lock(found)] == ["@acme/demo"], found.diagnostics
    plugin = from_lock(found)[0]
    assert plugin.root == target.resolve() and plugin.source == "marketplace"
    assert callable(import_handler("kb_demo.handlers:hi", plugin.root))

    # the installed files changed behind the marketplace's back: refused, with a code
    metadata = target / "kb_demo-0.1.0.dist-info" / "METADATA"
    metadata.write_text(metadata.read_text() + "Summary: tampered\n")
    again = discover(lock, tmp_path)
    assert from_lock(again) == []
    assert [d.code for d in again.diagnostics] == ["INTEGRITY_MISMATCH"]


def test_an_install_folder_without_a_plugin_says_what_it_looked_for(tmp_path):
    lock = LockFile(tmp_path / ".kb" / "marketplace.lock")
    (tmp_path / "empty").mkdir()
    with lock.update() as entries:
        entries["@acme/none"] = LockEntry(resolved_path="./empty", source="marketplace")
    found = discover(lock, tmp_path)
    assert from_lock(found) == []
    (diagnostic,) = found.diagnostics
    assert diagnostic.code == "MANIFEST_NOT_FOUND" and "kb_labs.plugins" in diagnostic.message
