"""Config loading: discovery, precedence, .env, expansion, profiles, problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kblabs.config import ConfigError, load_settings
from kblabs.config.secrets import REDACTED, redact
from tests.conftest import base_env


def write_config(root: Path, document: dict | str, name: str = "kb.config.json") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def problems_of(**kwargs) -> list:
    with pytest.raises(ConfigError) as caught:
        load_settings(**kwargs)
    return caught.value.problems


def test_no_config_file_gives_embedded_defaults(project):
    settings = load_settings(environ=base_env(project))
    assert settings.config_file is None
    assert settings.env == "development"
    assert settings.server.host == "127.0.0.1" and settings.server.port == 4000
    assert settings.data_dir == project / ".kb"
    assert settings.database_url == f"sqlite+aiosqlite:///{project / '.kb' / 'kblabs.db'}"


def test_project_root_is_found_by_walking_up(project):
    write_config(project, {"server": {"port": 4100}}, ".kb/kb.config.jsonc")
    nested = project / "a" / "b"
    nested.mkdir(parents=True)
    env = {k: v for k, v in base_env(project).items() if k != "KB_PROJECT_ROOT"}
    settings = load_settings(environ=env, cwd=nested)
    assert settings.project_root == project
    assert settings.config_file == project / ".kb" / "kb.config.jsonc"
    assert settings.server.port == 4100


def test_precedence_flag_over_env_over_dotenv_over_file(project):
    write_config(
        project, {"server": {"port": 1111, "host": "0.0.0.0"}, "logging": {"level": "error"}}
    )
    (project / ".env").write_text("KB_PORT=2222\nKB_LOG_LEVEL=debug\nKB_HOST='10.0.0.1'\n")
    env = base_env(project, KB_PORT="3333")
    settings = load_settings(environ=env)
    assert settings.server.port == 3333  # environment beats .env
    assert settings.logging.level == "debug"  # .env beats the file
    assert settings.server.host == "10.0.0.1"  # quotes stripped
    assert settings.sources["server.port"] == "env KB_PORT"
    flagged = load_settings(environ=env, overrides={"server.port": (4444, "--port")})
    assert flagged.server.port == 4444
    assert flagged.sources["server.port"] == "--port"


def test_port_falls_back_to_plain_PORT(project):
    assert load_settings(environ=base_env(project, PORT="5005")).server.port == 5005


def test_variables_are_expanded_with_defaults(project):
    write_config(project, {"store": {"url": "${DB_URL}"}, "x": {"y": "${MISSING:-fallback}"}})
    settings = load_settings(environ=base_env(project, DB_URL="sqlite+aiosqlite:///x.db"))
    assert settings.store.url == f"sqlite+aiosqlite:///{project / 'x.db'}"  # root-relative
    assert settings.raw["x"]["y"] == "fallback"
    empty = load_settings(environ=base_env(project, DB_URL="x", MISSING=""))
    assert empty.raw["x"]["y"] == "fallback"  # like the shell: empty counts as unset


def test_unresolved_variable_warns_in_development_and_fails_in_production(project):
    path = write_config(project, {"platform": {"adapterOptions": {"llm": {"url": "${NOPE}"}}}})
    settings = load_settings(environ=base_env(project))
    assert any("NOPE" in w for w in settings.warnings)
    problems = problems_of(environ=base_env(project, KB_ENV="production"))
    assert [(p.source, p.path) for p in problems] == [
        (str(path), "platform.adapterOptions.llm.url")
    ]
    assert "${NOPE}" in problems[0].message


def test_every_problem_is_reported_with_its_path(project):
    path = write_config(
        project,
        {"server": {"port": "many", "hots": "x"}, "logging": {"level": "loud"}},
    )
    problems = problems_of(environ=base_env(project))
    found = {(p.source, p.path) for p in problems}
    assert found == {
        (str(path), "server.port"),
        (str(path), "server.hots"),
        (str(path), "logging.level"),
    }
    assert "unknown key" in next(p.message for p in problems if p.path == "server.hots")


def test_bad_environment_value_names_the_variable(project):
    problems = problems_of(environ=base_env(project, KB_PORT="eighty"))
    assert [(p.source, p.path) for p in problems] == [("env KB_PORT", "server.port")]


def test_syntax_error_names_file_line_and_column(project):
    path = write_config(project, '{\n  "server": {\n    "port": 4000 "host": "x"\n  }\n}')
    problems = problems_of(environ=base_env(project))
    assert problems[0].source == str(path)
    assert "line 3" in problems[0].message


def test_top_level_must_be_an_object(project):
    write_config(project, "[1, 2]")
    assert "JSON object" in problems_of(environ=base_env(project))[0].message


PROFILES = [
    {"id": "base", "products": {"mind": {"topK": 5, "model": "a"}}},
    {"id": "default", "extends": "base", "products": {"mind": {"model": "b"}}},
    {"id": "prod", "extends": "default", "products": {"commit": {"tier": "small"}}},
]


def test_profiles_merge_along_extends(project):
    write_config(project, {"profiles": PROFILES})
    settings = load_settings(environ=base_env(project), profile="prod")
    assert settings.profile == "prod"
    assert settings.products == {"mind": {"topK": 5, "model": "b"}, "commit": {"tier": "small"}}
    assert load_settings(environ=base_env(project)).products["mind"]["model"] == "b"


def test_unknown_profile_is_an_error_naming_where_it_was_asked(project):
    write_config(project, {"profiles": PROFILES})
    problems = problems_of(environ=base_env(project, KB_PROFILE="staging"))
    assert [(p.source, p.path) for p in problems] == [("env KB_PROFILE", "profile")]
    assert "staging" in problems[0].message


def test_extends_cycle_and_unknown_parent_are_errors(project):
    path = write_config(
        project,
        {
            "profiles": [
                {"id": "a", "extends": "b"},
                {"id": "b", "extends": "a"},
                {"id": "c", "extends": "ghost"},
            ]
        },
    )
    problems = problems_of(environ=base_env(project))
    by_path = {p.path: p.message for p in problems}
    assert set(by_path) == {"profiles[0].extends", "profiles[1].extends", "profiles[2].extends"}
    assert "cycle" in by_path["profiles[0].extends"]
    assert "ghost" in by_path["profiles[2].extends"]
    assert all(p.source == str(path) for p in problems)


def test_literal_secret_is_refused_in_production_and_warned_in_development(project):
    write_config(
        project,
        {
            "platform": {"adapterOptions": {"llm": {"apiKey": "sk-live-123", "url": "x"}}},
            "myPlugin": {"jwtSecret": "${JWT}"},
        },
    )
    dev = load_settings(environ=base_env(project, JWT="s"))
    assert any("apiKey" in w for w in dev.warnings)
    problems = problems_of(environ=base_env(project, KB_ENV="production", JWT="s"))
    assert [p.path for p in problems] == ["platform.adapterOptions.llm.apiKey"]


def test_redaction_hides_secret_looking_values():
    found: list[str] = []
    shown = redact({"a": {"apiKey": "x", "keep": "y", "list": [{"password": "p"}]}}, found=found)
    assert shown == {"a": {"apiKey": REDACTED, "keep": "y", "list": [{"password": REDACTED}]}}
    assert found == ["a.apiKey", "a.list[0].password"]


def test_data_dir_from_environment_and_relative_paths(project, tmp_path):
    settings = load_settings(environ=base_env(project, KB_DATA_DIR=str(tmp_path / "d")))
    assert settings.data_dir == tmp_path / "d"
    write_config(project, {"dataDir": "var/data"})
    assert load_settings(environ=base_env(project)).data_dir == project / "var" / "data"


def test_explicit_config_file_that_does_not_exist(project):
    problems = problems_of(environ=base_env(project), config_path=project / "nope.json")
    assert problems[0].message == "file not found"


def test_node_env_is_the_fallback_for_kb_env(project):
    assert load_settings(environ=base_env(project, NODE_ENV="production")).is_production
    assert not load_settings(
        environ=base_env(project, NODE_ENV="production", KB_ENV="development")
    ).is_production


def test_log_redaction_hides_tokens():
    from kblabs.observability.logging import redact_text

    text = redact_text(
        "GET /x?access_token=abc123&b=1 Authorization: Bearer eyJ.x.y password=hunter2"
    )
    assert "abc123" not in text and "eyJ" not in text and "hunter2" not in text
    assert "b=1" in text


def test_passwords_inside_urls_are_redacted():
    found: list[str] = []
    shown = redact({"store": {"url": "postgresql+asyncpg://kb:s3cr3t@db/kb"}}, found=found)
    assert shown["store"]["url"] == f"postgresql+asyncpg://kb:{REDACTED}@db/kb"
    assert found == ["store.url"]
    assert redact({"u": "https://example.org/a:b@c"}) == {"u": "https://example.org/a:b@c"}


def test_environment_named_through_a_variable_is_honoured(project):
    write_config(project, {"env": "${DEPLOY_ENV}", "x": {"apiToken": "literal"}})
    problems = problems_of(environ=base_env(project, DEPLOY_ENV="production"))
    assert [p.path for p in problems] == ["x.apiToken"]


def test_literal_default_of_a_secret_reference_is_refused_in_production(project):
    write_config(
        project,
        {"llm": {"apiKey": "${OPENAI_API_KEY:-sk-live-1}"}, "db": {"password": "${DB_PASSWORD}"}},
    )
    problems = problems_of(environ=base_env(project, KB_ENV="production", DB_PASSWORD="p"))
    assert [p.path for p in problems] == ["llm.apiKey"]


def test_profile_problems_are_reported_with_schema_problems(project):
    write_config(project, {"server": {"port": "x"}, "profiles": [{"id": "a", "extends": "ghost"}]})
    paths = {p.path for p in problems_of(environ=base_env(project, KB_PROFILE="zzz"))}
    assert paths == {"server.port", "profiles[0].extends", "profile"}


def test_values_from_dotenv_are_labelled_as_such(project):
    (project / ".env").write_text("KB_PORT=4321\n")
    settings = load_settings(environ=base_env(project))
    assert settings.sources["server.port"] == ".env KB_PORT"


def test_everything_under_a_secret_key_is_redacted():
    shown = redact(
        {
            "credentials": {"user": "u", "pass": "p"},
            "tokens": ["a", "b"],
            "dbPasswd": "x",
            "port": 1,
        }
    )
    assert shown == {
        "credentials": {"user": REDACTED, "pass": REDACTED},
        "tokens": [REDACTED, REDACTED],
        "dbPasswd": REDACTED,
        "port": 1,
    }


def test_unknown_state_backend_is_a_config_error(project):
    write_config(project, {"platform": {"adapters": {"state": "memcached"}}})
    problems = problems_of(environ=base_env(project))
    assert [p.path for p in problems] == ["platform.adapters"]
    assert "memcached" in problems[0].message


def test_state_options_are_validated(project):
    write_config(project, {"platform": {"adapterOptions": {"state": {"maxValueBytes": "big"}}}})
    problems = problems_of(environ=base_env(project))
    assert [p.path for p in problems] == ["platform.adapterOptions"]
    assert "maxValueBytes" in problems[0].message


def test_static_tokens_come_from_the_environment(project):
    config = {"auth": {"staticTokens": [{"token": "${STUDIO_TOKEN}", "role": "operator"}]}}
    write_config(project, config)
    production = base_env(project, KB_ENV="production", STUDIO_TOKEN="s" * 32)
    settings = load_settings(environ=production)
    assert settings.auth.static_tokens[0].role == "operator"
    problems = problems_of(environ=base_env(project))  # unset: never a usable bearer
    assert [p.path for p in problems] == ["auth.staticTokens[0].token"]
    write_config(project, {"auth": {"staticTokens": [{"token": "literal-token-123456"}]}})
    literal = problems_of(environ=base_env(project, KB_ENV="production"))
    assert [p.path for p in literal] == ["auth.staticTokens[0].token"]
