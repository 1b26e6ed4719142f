"""Plugin permission checks: every kind denied before I/O, allowed cases allowed."""

from __future__ import annotations

import os

import pytest

from kblabs.plugins.manifest import Permissions
from kblabs.plugins.permissions import Guard, PermissionDenied, effective


def guard(tmp_path, **spec) -> Guard:
    cwd = tmp_path / "ws"
    (cwd / "src").mkdir(parents=True)
    (cwd / ".kb" / "output").mkdir(parents=True)
    return Guard(
        effective(Permissions.model_validate(spec)), "@kb/demo", cwd, cwd / ".kb" / "output"
    )


def denied(call, *args) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as caught:
        call(*args)
    assert caught.value.status == 403 and caught.value.code == "PERMISSION_DENIED"
    return caught.value


def test_files_inside_the_workspace_are_readable_but_secrets_never(tmp_path):
    g = guard(tmp_path)
    assert g.check_read("src/app.py") == g.cwd / "src" / "app.py"
    for secret in (
        ".env",
        ".env.local",
        "deploy.pem",
        "id.key",
        "node_modules/x/index.js",
        ".git/config",
        "my-credentials.json",
    ):
        error = denied(g.check_read, secret)
        assert error.permission == "fs.read" and error.resource == secret


def test_reads_outside_need_a_grant_on_a_path_boundary(tmp_path):
    shared = tmp_path / "shared"
    (shared / "docs").mkdir(parents=True)
    (tmp_path / "shared-evil").mkdir()
    g = guard(tmp_path, fs={"read": [str(shared)]})
    assert g.check_read(shared / "docs" / "a.md")
    denied(g.check_read, tmp_path / "shared-evil" / "x")  # a prefix but not the same folder
    denied(g.check_read, "../outside.txt")
    denied(g.check_read, "/etc/passwd")


def test_writes_go_to_outdir_or_granted_paths_only(tmp_path):
    g = guard(tmp_path, fs={"write": ["dist/"]})
    assert g.check_write(".kb/output/report.md")
    assert g.check_write("dist/app.js")
    denied(g.check_write, "src/app.py")
    rw = guard(tmp_path / "second", fs={"mode": "readWrite", "allow": ["src/"]})
    assert rw.check_write("src/app.py")


def test_symlinks_are_followed_before_checking(tmp_path):
    g = guard(tmp_path)
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    os.symlink(outside, g.cwd / "link.txt")
    denied(g.check_read, "link.txt")


def test_environment_allowlist(tmp_path):
    g = guard(tmp_path, env={"read": ["GITHUB_*", "HOME"]})
    assert g.env_allowed("GITHUB_TOKEN") and g.env_allowed("HOME") and g.env_allowed("CI")
    assert not g.env_allowed("AWS_SECRET_ACCESS_KEY")


def test_network_by_host_or_url_glob(tmp_path):
    g = guard(tmp_path, network={"fetch": ["api.github.com", "https://example.org/api/*"]})
    g.check_fetch("https://api.github.com/repos")
    g.check_fetch("https://example.org/api/v1")
    denied(g.check_fetch, "https://example.org/admin")
    denied(g.check_fetch, "https://evil.test/")
    denied(guard(tmp_path / "n").check_fetch, "https://api.github.com/")


def test_shell_allowlist_and_blocklist(tmp_path):
    g = guard(tmp_path, shell={"allow": ["git", "*"]})
    g.check_shell(["git", "status"])
    denied(g.check_shell, "rm -rf /")
    strict = guard(tmp_path / "s", shell={"allow": ["git"]})
    strict.check_shell("git log -1")
    denied(strict.check_shell, ["curl", "x"])
    denied(guard(tmp_path / "none").check_shell, ["git"])  # no list: shell is off


def test_invoke_and_platform(tmp_path):
    g = guard(
        tmp_path,
        invoke={"allow": ["@kb/git*"]},
        platform={"llm": True, "cache": ["demo:"], "analytics": False},
    )
    g.check_invoke("@kb/git-tools")
    denied(g.check_invoke, "@kb/deploy")
    g.check_platform("llm")
    g.check_platform("cache", "demo:key")
    denied(g.check_platform, "cache", "other:key")
    denied(g.check_platform, "analytics")
    denied(g.check_platform, "eventBus")


def test_handler_sections_replace_plugin_sections():
    plugin = Permissions.model_validate({"env": {"read": ["A"]}, "shell": {"allow": ["git"]}})
    handler = Permissions.model_validate({"env": {"read": ["B"]}})
    merged = effective(plugin, handler)
    assert merged.env == ("B",) and merged.shell == ("git",)
