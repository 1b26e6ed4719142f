"""The CLI as a user runs it: exit codes, one JSON object, no tracebacks."""

from __future__ import annotations

import json

import pytest

from tests.conftest import base_env, run_cli

BROKEN_CONFIGS = {
    "json syntax": ('{"server": {"port": 4000 "host": "x"}}', {}, "line 1"),
    "wrong type": ('{"server": {"gracefulTimeoutMs": "lots"}}', {}, "server.gracefulTimeoutMs"),
    "unknown profile": ('{"profiles": [{"id": "default"}]}', {"KB_PROFILE": "nope"}, "profile"),
    "extends cycle": (
        '{"profiles": [{"id": "a", "extends": "b"}, {"id": "b", "extends": "a"}]}',
        {},
        "profiles[0].extends",
    ),
    "unresolved variable in production": (
        '{"store": {"url": "${KB_TEST_UNSET_DB}"}}',
        {"KB_ENV": "production"},
        "store.url",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
@pytest.mark.parametrize("command", [["config", "validate"], ["serve", "--port", "0"]])
def test_broken_config_exits_2_naming_file_and_path(project, case, command):
    text, env, path = BROKEN_CONFIGS[case]
    config = project / "kb.config.json"
    config.write_text(text)
    result = run_cli(*command, project=project, env=base_env(project, **env), timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert str(config) in output or "KB_PROFILE" in output
    assert path in output
    assert "Traceback" not in output


def test_validate_json_reports_every_problem_as_one_object(project):
    (project / "kb.config.json").write_text('{"server": {"port": "x", "nope": 1}}')
    result = run_cli("--json", "config", "validate", project=project)
    assert result.returncode == 2
    payload = json.loads(result.stdout)  # exactly one JSON document on stdout
    assert payload["ok"] is False and payload["error"]["code"] == "CONFIG_INVALID"
    assert {p["path"] for p in payload["problems"]} == {"server.port", "server.nope"}


def test_validate_ok_and_show_redacts_secrets(project):
    (project / "kb.config.json").write_text(
        '{"platform": {"adapterOptions": {"llm": {"apiKey": "${MY_KEY}"}}}}'
    )
    env = base_env(project, MY_KEY="sk-very-secret")
    assert run_cli("config", "validate", project=project, env=env).returncode == 0
    shown = run_cli("--json", "config", "show", project=project, env=env)
    assert shown.returncode == 0
    assert "sk-very-secret" not in shown.stdout
    payload = json.loads(shown.stdout)
    assert payload["redacted"] == ["platform.adapterOptions.llm.apiKey"]


def test_config_path(project):
    result = run_cli("--json", "config", "path", project=project)
    payload = json.loads(result.stdout)
    assert payload["projectRoot"] == str(project)
    assert payload["dataDir"] == str(project / ".kb")


def test_usage_error_exits_2_and_json_is_one_object(project):
    result = run_cli("--json", "status", "--nope", project=project)
    assert result.returncode == 2
    assert json.loads(result.stdout)["error"]["code"] == "USAGE"


def test_migrate_check_exit_codes(project):
    pending = run_cli("--json", "migrate", "check", project=project)
    assert pending.returncode == 3, pending.stderr
    assert json.loads(pending.stdout)["pending"] is True
    assert not (project / ".kb" / "kblabs.db").exists()  # checking created nothing
    upgrade = run_cli("migrate", "upgrade", project=project)
    assert upgrade.returncode == 0, upgrade.stderr
    current = json.loads(run_cli("--json", "migrate", "current", project=project).stdout)
    assert current["current"] == current["heads"]
    assert run_cli("migrate", "check", project=project).returncode == 0
    history = json.loads(run_cli("--json", "migrate", "history", project=project).stdout)
    assert current["heads"][0] in {r["revision"] for r in history["revisions"]}


def test_status_unreachable_exits_4(project):
    result = run_cli("--json", "status", "--url", "http://127.0.0.1:9", project=project)
    assert result.returncode == 4
    assert json.loads(result.stdout)["error"]["code"] == "UNREACHABLE"


def test_version(project):
    result = run_cli("--json", "version", project=project)
    assert result.returncode == 0
    assert json.loads(result.stdout)["version"]


def test_global_flags_work_after_the_command_too(project):
    result = run_cli("status", "--url", "http://127.0.0.1:9", "--json", project=project)
    assert result.returncode == 4
    assert json.loads(result.stdout)["error"]["code"] == "UNREACHABLE"
