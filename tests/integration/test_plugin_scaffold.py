"""`plugin new`: the folder it writes validates, and its own tests pass as generated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import run_cli

FILES = {
    "README.md",
    "kb.plugin.json",
    "pyproject.toml",
    "setup.py",
    "my_plugin/__init__.py",
    "my_plugin/handlers.py",
    "tests/test_plugin.py",
}


def outside_env() -> dict[str, str]:
    """The environment of a plugin author's shell: no KB_* settings of ours."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KB_")}


def test_new_plugin_validates_and_its_generated_tests_pass(project, tmp_path):
    folder = tmp_path / "my-plugin"
    created = run_cli("plugin", "new", "@acme/my-plugin", "--dir", str(folder), project=project)
    assert created.returncode == 0, created.stderr
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == FILES
    assert f"python -m kblabs plugin link {folder}" in created.stdout
    assert "python -m kblabs my-plugin hello" in created.stdout

    manifest = json.loads((folder / "kb.plugin.json").read_text())
    assert manifest["id"] == "@acme/my-plugin"
    assert manifest["permissions"] == {"env": {"read": ["MY_PLUGIN_*"]}}
    assert manifest["cli"]["commands"][0]["group"] == "my-plugin"

    validated = run_cli("--json", "plugin", "validate", str(folder), project=project)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert json.loads(validated.stdout)["provides"] == ["cli-command", "rest-route", "workflow"]

    generated = subprocess.run(
        [sys.executable, "-m", "pytest", str(folder / "tests"), "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=outside_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "7 passed" in generated.stdout


def test_default_folder_and_scope(project):
    result = run_cli("--json", "plugin", "new", "my-plugin", project=project)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload.keys() == {"ok", "data"} and payload["ok"] is True
    data = payload["data"]
    assert data["id"] == "@local/my-plugin"
    assert data["path"] == str(project / "my-plugin")
    assert set(data["files"]) == FILES
    assert data["next"] == [
        "python -m kblabs plugin link my-plugin",
        "python -m kblabs my-plugin hello --name you",
        "python -m pytest my-plugin/tests",
    ]
    assert (project / "my-plugin" / "my_plugin" / "handlers.py").is_file()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("My-Plugin", "lowercase"),
        ("@acme", "no name after the scope"),
        ("@acme/a/b", "lowercase"),
        ("1plugin", "start with a letter"),
        ("my--plugin", "double"),
        ("class", "Python keyword"),
        ("config", "built-in command"),
        ("json", "already taken"),
    ],
)
def test_bad_names_exit_2_naming_the_problem(project, name, problem):
    result = run_cli("plugin", "new", name, project=project)
    assert result.returncode == 2
    assert problem in result.stderr
    assert list(project.iterdir()) == []
    as_json = run_cli("--json", "plugin", "new", name, project=project)
    assert json.loads(as_json.stdout)["error"]["code"] == "PLUGIN_NAME_INVALID"


def test_a_folder_that_is_not_empty_needs_force(project):
    folder = project / "plugins" / "hello-there"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "kb.plugin.json").write_text("{}")
    args = ("plugin", "new", "hello-there", "--dir", str(folder))

    refused = run_cli("--json", *args, project=project)
    assert refused.returncode == 1
    error = json.loads(refused.stdout)["error"]
    assert error["code"] == "PLUGIN_DIR_EXISTS" and "--force" in error["message"]
    assert (folder / "kb.plugin.json").read_text() == "{}"

    forced = run_cli(*args, "--force", project=project)
    assert forced.returncode == 0, forced.stderr
    assert json.loads((folder / "kb.plugin.json").read_text())["id"] == "@local/hello-there"
    assert (folder / "notes.txt").read_text() == "mine"  # files it did not write stay

    empty = project / "empty"
    empty.mkdir()
    assert (
        run_cli("plugin", "new", "empty-ok", "--dir", str(empty), project=project).returncode == 0
    )


def test_the_build_ships_the_manifest_in_the_package(project, tmp_path):
    """What `pip install` of the generated folder gets (setup.py's build_py hook and the
    entry point), built with this environment's setuptools, no network, no `wheel`."""
    pytest.importorskip("setuptools")
    folder = tmp_path / "shipped"
    assert (
        run_cli("plugin", "new", "shipped", "--dir", str(folder), project=project).returncode == 0
    )
    lib, meta = tmp_path / "lib", tmp_path / "meta"
    meta.mkdir()
    built = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "-d", str(lib), "egg_info", "-e", str(meta)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    shipped = {p.relative_to(lib).as_posix() for p in lib.rglob("*")}
    assert shipped == {
        "shipped",
        "shipped/__init__.py",
        "shipped/handlers.py",
        "shipped/kb.plugin.json",
    }
    entry_points = (meta / "shipped.egg-info" / "entry_points.txt").read_text()
    assert "[kb_labs.plugins]\nshipped = shipped" in entry_points
