"""kb.config.json + environment + .env + profiles + flags → one validated `Settings`.

Precedence: CLI flag > environment > .env (never overrides the environment) >
kb.config.json > defaults. Every problem is collected and raised together in a
`ConfigError`; loading never fails with a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError

from kblabs.config import jsonc
from kblabs.config.discovery import ROOT_VARIABLES, find_project_root, root_for_explicit_file
from kblabs.config.expand import expand
from kblabs.config.problems import ConfigError, ConfigProblem
from kblabs.config.profiles import check_profiles, resolve_products
from kblabs.config.secrets import literal_secrets
from kblabs.config.settings import FileSettings, Settings

# Environment variables → JSON path in the config document. The first set name wins.
ENV_OVERRIDES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("KB_ENV", "NODE_ENV"), "env"),
    (("KB_DATA_DIR",), "dataDir"),
    (("KB_LOG_LEVEL", "LOG_LEVEL"), "logging.level"),
    (("KB_LOG_FORMAT",), "logging.format"),
    (("KB_HOST",), "server.host"),
    (("KB_PORT", "PORT"), "server.port"),
    (("KB_GRACEFUL_TIMEOUT_MS",), "server.gracefulTimeoutMs"),
    (("KB_DEBUG_ROUTES",), "server.debugRoutes"),
    (("KB_DATABASE_URL",), "store.url"),
    (("KB_PUBLIC_METRICS",), "observability.publicMetrics"),
)


def effective_environ(project_root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` plus the project's .env, whose values never override the environment."""
    merged = dict(environ)
    dotenv_file = project_root / ".env"
    if dotenv_file.is_file():
        for key, value in dotenv_values(dotenv_file).items():
            if value is not None and key not in merged:
                merged[key] = value
    return merged


def load_settings(
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    config_path: Path | None = None,
    profile: str | None = None,
    overrides: Mapping[str, tuple[Any, str]] | None = None,
) -> Settings:
    """Load and validate. `overrides` maps a JSON path to (value, source), e.g.
    {"server.port": (8080, "--port")}."""
    environ = dict(os.environ if environ is None else environ)
    root, found_file = _locate(environ, cwd or Path.cwd(), config_path)
    environ = effective_environ(root, environ)
    problems: list[ConfigProblem] = []
    warnings: list[str] = []

    config_file = config_path.resolve() if config_path is not None else found_file
    source = str(config_file) if config_file else "defaults"
    document = _read_document(config_file, problems) if config_file else {}

    env_name = _peek_environment(environ, overrides, document)
    production = env_name == "production"
    _check_literal_secrets(document, source, production, problems, warnings)
    unresolved: list[tuple[str, str]] = []
    document = expand(document, environ, unresolved=unresolved)
    for path, name in unresolved:
        message = f"${{{name}}} is not set in the environment or .env"
        if production:
            problems.append(ConfigProblem(source, path, message))
        else:
            warnings.append(f"{source}: {path}: {message} (kept as written)")

    sources: dict[str, str] = {}
    for names, path in ENV_OVERRIDES:
        for name in names:
            if environ.get(name, "") != "":
                _set_path(document, path, environ[name])
                sources[path] = f"env {name}"
                break
    for path, (value, flag) in (overrides or {}).items():
        _set_path(document, path, value)
        sources[path] = flag

    file_settings = _validate(document, source, sources, problems)
    if file_settings is None:
        raise ConfigError(problems)

    profile_problems = check_profiles(file_settings.profiles, source)
    problems.extend(profile_problems)
    active, profile_source = _active_profile(profile, environ)
    known = {p.id for p in file_settings.profiles}
    if profile_source and active not in known:
        listed = ", ".join(sorted(known)) or "none defined"
        problems.append(
            ConfigProblem(profile_source, "profile", f"unknown profile {active!r} ({listed})")
        )
    if problems:
        raise ConfigError(problems)

    data_dir = Path(file_settings.data_dir or ".kb").expanduser()
    return Settings(
        env=file_settings.env,
        project_root=root,
        config_file=config_file,
        data_dir=data_dir if data_dir.is_absolute() else (root / data_dir).resolve(),
        profile=active,
        server=file_settings.server,
        store=file_settings.store,
        logging=file_settings.logging,
        observability=file_settings.observability,
        cors=file_settings.cors,
        platform=file_settings.platform,
        products=resolve_products(file_settings.profiles, active),
        raw=document,
        sources=sources,
        warnings=warnings,
    )


def _locate(
    environ: Mapping[str, str], cwd: Path, config_path: Path | None
) -> tuple[Path, Path | None]:
    if config_path is None:
        return find_project_root(environ, cwd)
    if any(environ.get(name) for name in ROOT_VARIABLES):
        root, _ = find_project_root(environ, cwd)
        return root, config_path
    return root_for_explicit_file(config_path), config_path


def _read_document(path: Path, problems: list[ConfigProblem]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(ConfigProblem(str(path), "", "file not found"))
        raise ConfigError(problems) from None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(ConfigProblem(str(path), "", f"cannot read: {exc}"))
        raise ConfigError(problems) from None
    try:
        document = jsonc.loads(text)
    except jsonc.JsoncError as exc:
        problems.append(
            ConfigProblem(
                str(path), "", f"invalid JSON at line {exc.line}, column {exc.column}: {exc.reason}"
            )
        )
        raise ConfigError(problems) from None
    if not isinstance(document, dict):
        problems.append(ConfigProblem(str(path), "", "the top level must be a JSON object"))
        raise ConfigError(problems)
    return document


def _peek_environment(
    environ: Mapping[str, str],
    overrides: Mapping[str, tuple[Any, str]] | None,
    document: dict[str, Any],
) -> str:
    if overrides and "env" in overrides:
        return str(overrides["env"][0])
    return environ.get("KB_ENV") or environ.get("NODE_ENV") or str(document.get("env", ""))


def _check_literal_secrets(
    document: dict[str, Any],
    source: str,
    production: bool,
    problems: list[ConfigProblem],
    warnings: list[str],
) -> None:
    for path in literal_secrets(document):
        message = "looks like a secret written literally; reference it as ${VAR} instead"
        if production:
            problems.append(ConfigProblem(source, path, message + " (refused in production)"))
        else:
            warnings.append(f"{source}: {path}: {message}")


def _validate(
    document: dict[str, Any],
    source: str,
    sources: dict[str, str],
    problems: list[ConfigProblem],
) -> FileSettings | None:
    try:
        return FileSettings.model_validate(document)
    except ValidationError as exc:
        for error in exc.errors():
            path = _json_path(error["loc"])
            origin = next(
                (src for key, src in sources.items() if path == key or path.startswith(key + ".")),
                source,
            )
            problems.append(ConfigProblem(origin, path, _message(error)))
        return None


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (check the spelling; see docs/config.md)"
    message = error["msg"]
    if error["type"] not in ("missing",) and "input" in error:
        message += f" (got {error['input']!r})"
    return message


def _json_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _set_path(document: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = document
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


def _active_profile(cli_profile: str | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """(profile id, where it was asked for — "" when it is the implicit default)."""
    if cli_profile:
        return cli_profile, "--profile"
    if environ.get("KB_PROFILE"):
        return environ["KB_PROFILE"], "env KB_PROFILE"
    return "default", ""
