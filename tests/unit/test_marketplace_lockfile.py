"""The marketplace lock: atomic, concurrent-safe, clear about damage."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from kblabs.marketplace.lockfile import SCHEMA, LockEntry, LockFile, LockFileError


def test_missing_or_foreign_lock_reads_as_empty(tmp_path):
    lock = LockFile(tmp_path / "marketplace.lock")
    assert lock.read() == {}
    lock.path.write_text(json.dumps({"schema": "kb.marketplace/1", "installed": {"a": {}}}))
    assert lock.read() == {}


def test_update_writes_the_documented_shape_and_keeps_a_backup(tmp_path):
    lock = LockFile(tmp_path / ".kb" / "marketplace.lock")
    with lock.update() as entries:
        entries["@kb/demo"] = LockEntry(
            resolved_path="./plugins/demo", source="local", provides=["plugin", "rest-route"]
        )
    text = lock.path.read_text()
    assert text.endswith("\n")
    document = json.loads(text)
    assert document["schema"] == SCHEMA
    entry = document["installed"]["@kb/demo"]
    assert entry["resolvedPath"] == "./plugins/demo" and entry["enabled"] is True
    assert entry["installedAt"].endswith("Z") and entry["version"] == "0.0.0"
    with lock.update() as entries:
        entries["@kb/demo"].enabled = False
    assert json.loads(lock.backup_path.read_text())["installed"]["@kb/demo"]["enabled"] is True
    assert lock.read()["@kb/demo"].enabled is False


def test_a_failed_update_changes_nothing(tmp_path):
    lock = LockFile(tmp_path / "marketplace.lock")
    with lock.update() as entries:
        entries["a"] = LockEntry(resolved_path="./a")
    before = lock.path.read_bytes()
    with pytest.raises(RuntimeError), lock.update() as entries:
        entries.clear()
        raise RuntimeError("install failed half-way")
    assert lock.path.read_bytes() == before


def test_damaged_lock_is_a_clear_error(tmp_path):
    lock = LockFile(tmp_path / "marketplace.lock")
    lock.path.write_text('{"schema": "kb.marketplace/2", "installed": {')
    with pytest.raises(LockFileError, match="not valid JSON"):
        lock.read()
    lock.path.write_text(json.dumps({"schema": SCHEMA, "installed": {"a": {"enabled": 3}}}))
    with pytest.raises(LockFileError, match="resolvedPath"):
        lock.read()


def _writer(path: str, prefix: str, count: int) -> None:
    lock = LockFile(Path(path))
    for i in range(count):
        with lock.update() as entries:
            entries[f"{prefix}-{i}"] = LockEntry(resolved_path=f"./{prefix}/{i}")
            if i % 3 == 0 and f"{prefix}-0" in entries:
                entries[f"{prefix}-0"].enabled = not entries[f"{prefix}-0"].enabled


def test_two_processes_updating_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "marketplace.lock")
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(path, name, 25)) for name in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    entries = LockFile(tmp_path / "marketplace.lock").read()
    assert set(entries) == {f"{p}-{i}" for p in "ab" for i in range(25)}


def _endless_writer(path: str) -> None:
    lock = LockFile(Path(path))
    i = 0
    while True:
        with lock.update() as entries:
            entries[f"e{i % 50}"] = LockEntry(resolved_path="./" + "x" * 2000, version=str(i))
        i += 1


def test_sigkill_mid_write_leaves_a_whole_file(tmp_path):
    path = tmp_path / "marketplace.lock"
    context = multiprocessing.get_context("spawn")
    writer = context.Process(target=_endless_writer, args=(str(path),))
    writer.start()
    deadline = time.monotonic() + 20
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(10)
    assert LockFile(path).read()  # parses: the old or the new version, never partial
