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
from pydantic import TypeAdapter, ValidationError

from kblabs.config import jsonc
from kblabs.config.discovery import ROOT_VARIABLES, find_project_root, root_for_explicit_file
from kblabs.config.expand import expand
from kblabs.config.problems import ConfigError, ConfigProblem
from kblabs.config.profiles import check_profiles, resolve_products
from kblabs.config.secrets import literal_secrets
from kblabs.config.settings import FileSettings, Profile, Settings
from kblabs.errors import json_path

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
    (("KB_TENANT_DEFAULT_TIER",), "rateLimits.defaultTier"),
    (("KB_RATE_LIMITS_ENABLED",), "rateLimits.enabled"),
    (("KB_EXECUTION_MODE", "EXECUTION_MODE"), "platform.execution.mode"),
    (("KB_WORKFLOW_WORKERS",), "workflow.workers"),
    (("KB_WORKFLOW_LEASE_SECONDS",), "workflow.leaseSeconds"),
    (("KB_WORKFLOW_MAX_PARALLEL_JOBS", "WORKFLOW_CONCURRENCY"), "workflow.maxParallelJobs"),
    (("KB_WORKFLOW_DEFAULT_RETRIES", "WORKFLOW_DEFAULT_JOB_RETRIES"), "workflow.defaultRetries"),
)


def dotenv_only(project_root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The project's .env values that the environment does not already set."""
    dotenv_file = project_root / ".env"
    if not dotenv_file.is_file():
        return {}
    return {
        key: value
        for key, value in dotenv_values(dotenv_file).items()
        if value is not None and key not in environ
    }


def effective_environ(project_root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` plus the project's .env, whose values never override the environment."""
    return {**dotenv_only(project_root, environ), **environ}


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
    from_dotenv = dotenv_only(root, environ)
    environ = {**from_dotenv, **environ}
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
                sources[path] = f".env {name}" if name in from_dotenv else f"env {name}"
                break
    for path, (value, flag) in (overrides or {}).items():
        _set_path(document, path, value)
        sources[path] = flag

    file_settings = _validate(document, source, sources, problems)
    profiles = file_settings.profiles if file_settings else _profiles_alone(document)
    active, profile_source = _active_profile(profile, environ, from_dotenv)
    if profiles is not None:
        problems.extend(_profile_problems(profiles, source, active, profile_source))
    if file_settings is None or problems:
        raise ConfigError(problems)

    data_dir = Path(file_settings.data_dir or ".kb").expanduser()
    store = file_settings.store
    if store.url:
        store = store.model_copy(update={"url": _anchor_sqlite(store.url, root)})
    return Settings(
        env=file_settings.env,
        project_root=root,
        config_file=config_file,
        data_dir=data_dir if data_dir.is_absolute() else (root / data_dir).resolve(),
        profile=active,
        server=file_settings.server,
        store=store,
        logging=file_settings.logging,
        observability=file_settings.observability,
        cors=file_settings.cors,
        rate_limits=file_settings.rate_limits,
        auth=file_settings.auth,
        gateway=file_settings.gateway,
        workflow=file_settings.workflow,
        platform=file_settings.platform,
        products=resolve_products(file_settings.profiles, active),
        raw=document,
        sources=sources,
        warnings=warnings,
    )


def _profiles_alone(document: dict[str, Any]) -> list[Profile] | None:
    """The profiles when the rest of the document is invalid, so that their problems are
    reported in the same run; None when the profiles themselves do not validate."""
    try:
        return TypeAdapter(list[Profile]).validate_python(document.get("profiles", []))
    except ValidationError:
        return None


def _profile_problems(
    profiles: list[Profile], source: str, active: str, profile_source: str
) -> list[ConfigProblem]:
    problems = check_profiles(profiles, source)
    known = {p.id for p in profiles}
    if profile_source and active not in known:
        listed = ", ".join(sorted(known)) or "none defined"
        problems.append(
            ConfigProblem(profile_source, "profile", f"unknown profile {active!r} ({listed})")
        )
    return problems


def _anchor_sqlite(url: str, root: Path) -> str:
    """A relative SQLite path is relative to the project root, not the working dir."""
    if not url.startswith("sqlite"):
        return url
    # here, not at the top: SQLAlchemy costs every CLI command ~0.2 s to import
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # pydantic accepted a string; the store reports a bad URL clearly
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return url
    if Path(database).is_absolute() or database.startswith("file:"):
        return url
    return parsed.set(database=str(root / database)).render_as_string(hide_password=False)


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
    named = environ.get("KB_ENV") or environ.get("NODE_ENV")
    return named or str(expand(document.get("env", ""), environ))


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
            path = json_path(error["loc"])
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


def _active_profile(
    cli_profile: str | None, environ: Mapping[str, str], from_dotenv: Mapping[str, str]
) -> tuple[str, str]:
    """(profile id, where it was asked for — "" when it is the implicit default)."""
    if cli_profile:
        return cli_profile, "--profile"
    if environ.get("KB_PROFILE"):
        origin = ".env" if "KB_PROFILE" in from_dotenv else "env"
        return environ["KB_PROFILE"], f"{origin} KB_PROFILE"
    return "default", ""
