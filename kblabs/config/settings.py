"""The validated settings object: everything the process reads from configuration.

Field names are snake_case in Python and camelCase in kb.config.json (aliases). Our own
sections forbid unknown keys so that a typo is reported instead of silently ignored;
the top level accepts other sections because plugins own them (`use_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

Environment = Literal["development", "production", "test"]
LogLevel = Literal["trace", "debug", "info", "warning", "error", "critical", "silent"]

LOG_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical"}


class Section(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    graceful_timeout_ms: int = Field(default=30_000, ge=0)
    drain_delay_ms: int = Field(default=0, ge=0)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Diagnostic routes under /api/v1/debug (slow and failing requests); admin only.
    debug_routes: bool = False
    # Reverse proxies whose X-Forwarded-For is believed (their addresses, exactly).
    trusted_proxies: list[str] = Field(default_factory=list)


class StoreSettings(Section):
    # Default: sqlite+aiosqlite:///<dataDir>/kblabs.db
    url: str | None = None
    busy_timeout_ms: int = Field(default=5_000, ge=5_000)
    echo: bool = False


class LoggingSettings(Section):
    level: LogLevel = "info"
    format: Literal["auto", "json", "pretty"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _normalise_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            lowered = value.strip().lower()
            return LOG_LEVEL_ALIASES.get(lowered, lowered)
        return value


class ObservabilitySettings(Section):
    # Serve /metrics without a token (for a scraper on a private network).
    public_metrics: bool = False
    service_id: str = "kblabs"
    # Analytics events older than this are deleted (checked hourly by the sqlite adapter).
    analytics_retention_days: int = Field(default=90, ge=1)
    # Log records at or above this level are kept in the store for /api/v1/logs
    # ("off": none are kept); records older than logRetentionDays are deleted hourly.
    log_persist_level: Literal["trace", "debug", "info", "warning", "error", "critical", "off"] = (
        "info"
    )
    log_retention_days: int = Field(default=7, ge=1)
    # Recent records held in memory for GET /api/v1/logs/stream; 0 turns the stream off.
    log_buffer_size: int = Field(default=1000, ge=0, le=100_000)

    @field_validator("log_persist_level", mode="before")
    @classmethod
    def _normalise_persist_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            lowered = value.strip().lower()
            return LOG_LEVEL_ALIASES.get(lowered, lowered)
        return value


class CorsSettings(Section):
    allow_origins: list[str] = Field(default_factory=list)


class TierLimits(Section):
    rpm: int | None = Field(default=None, ge=1)  # requests per minute; None: no limit
    rpd: int | None = Field(default=None, ge=1)  # requests per day; None: no limit


def _default_tiers() -> dict[str, TierLimits]:
    # The original's tiers (reference/marketplace-state-config.md §B.3).
    return {
        "free": TierLimits(rpm=10, rpd=1000),
        "pro": TierLimits(rpm=100, rpd=100_000),
        "enterprise": TierLimits(rpm=1000, rpd=None),
    }


class RateLimitSettings(Section):
    """Per-namespace request limits on /api/v1/*, counted in the state broker."""

    enabled: bool = True
    # A local install serves one team: generous by default (the original used "free").
    default_tier: str = "enterprise"
    # Length of the short window that `rpm` counts over; 60 s unless tuning or testing.
    minute_ms: int = Field(default=60_000, ge=1)
    namespaces: dict[str, str] = Field(default_factory=dict)  # namespace → tier
    tiers: dict[str, TierLimits] = Field(default_factory=_default_tiers)

    @model_validator(mode="after")
    def _tiers_exist(self) -> RateLimitSettings:
        known = set(self.tiers)
        for where, tier in [("defaultTier", self.default_tier), *self.namespaces.items()]:
            if tier not in known:
                raise ValueError(f"{where}: unknown tier {tier!r} (known: {sorted(known)})")
        return self


class StaticToken(Section):
    """A fixed bearer token from config; its value must be a ${VAR} reference."""

    token: str = Field(min_length=16)

    @field_validator("token")
    @classmethod
    def _resolved(cls, token: str) -> str:
        if "${" in token:
            raise ValueError("the ${VAR} this token refers to is not set")
        return token

    role: Literal["viewer", "operator", "admin", "machine"] = "viewer"
    namespace_id: str = "default"
    host_id: str | None = None
    label: str = "static token"


class AuthSettings(Section):
    refresh_token_ttl_days: int = Field(default=30, ge=1, le=365)
    # Failed /auth/token attempts before 429, per client id and per remote address.
    max_failures_per_client: int = Field(default=5, ge=1)
    max_failures_per_address: int = Field(default=10, ge=1)
    failure_window_ms: int = Field(default=300_000, ge=1000)
    # How long a rotated-out client secret keeps working.
    secret_rotation_grace_s: int = Field(default=86_400, ge=0)
    static_tokens: list[StaticToken] = Field(default_factory=list)


class StateOptions(Section):
    """platform.adapterOptions.state (see docs/state.md)."""

    url: str | None = None
    prefix: str = Field(default="kb:state:", min_length=1)
    max_connections: int = Field(default=50, ge=1)
    max_value_bytes: int = Field(default=1024 * 1024, ge=1)
    sweep_interval_ms: int = Field(default=30_000, ge=100)


class GatewaySettings(Section):
    """Timings of the host-agent tunnel (protocol 1.0 defaults)."""

    hello_timeout_ms: int = Field(default=5_000, ge=100)
    call_timeout_ms: int = Field(default=30_000, ge=100)
    degraded_after_ms: int = Field(default=40_000, ge=100)
    reconnect_grace_ms: int = Field(default=10_000, ge=0)


class WorkflowSettings(Section):
    """The workflow engine (kblabs.workflow): workers in this process and retention."""

    workers: bool = True  # False: this process serves the API only (`kblabs worker` runs jobs)
    max_parallel_jobs: int = Field(default=4, ge=1, le=64)
    default_retries: int = Field(default=0, ge=0, le=20)
    scheduler: bool = True  # may this process lead the cron scheduler
    retention_days: int = Field(default=30, ge=1)  # run events and logs of finished runs
    lease_seconds: int = Field(default=30, ge=3, le=3600)  # a job's lease; heartbeat at 1/3


ExecutionMode = Literal["in-process", "subprocess"]


class ExecutionSettings(Section):
    """How plugin handlers run (kblabs.plugins.executor). `mode` is the default for
    linked plugins; marketplace-installed ones run in `subprocess` unless `plugins`
    names them; `plugins` maps a plugin id to its own mode."""

    mode: ExecutionMode = "in-process"
    plugins: dict[str, ExecutionMode] = Field(default_factory=dict)
    warm_workers: int = Field(default=2, ge=0, le=32)
    default_timeout_ms: int = Field(default=30_000, ge=100)


class PlatformSettings(Section):
    """The `platform` section; its adapters are interpreted by kblabs.platform."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True
    )
    adapters: dict[str, Any] = Field(default_factory=dict)
    adapter_options: dict[str, Any] = Field(default_factory=dict)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)

    @field_validator("adapter_options")
    @classmethod
    def _state_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        if "state" in options:
            try:
                StateOptions.model_validate(options["state"])
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"state.{where}: {first['msg']}") from None
        return options

    @field_validator("adapters")
    @classmethod
    def _known_state_backend(cls, adapters: dict[str, Any]) -> dict[str, Any]:
        state = adapters.get("state")
        if state is not None and state not in ("memory", "redis"):
            raise ValueError(f'adapters.state must be "memory" or "redis", not {state!r}')
        return adapters


class Profile(Section):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True
    )
    id: str = Field(min_length=1)
    label: str | None = None
    description: str | None = None
    extends: str | None = None
    products: dict[str, dict[str, Any]] = Field(default_factory=dict)
    scopes: list[dict[str, Any]] | None = None


class FileSettings(Section):
    """What kb.config.json may contain (after env overrides are applied)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True
    )
    env: Environment = "development"
    data_dir: str | None = None
    server: ServerSettings = Field(default_factory=ServerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    platform: PlatformSettings = Field(default_factory=PlatformSettings)
    workflow: WorkflowSettings = Field(default_factory=WorkflowSettings)
    profiles: list[Profile] = Field(default_factory=list)


class Settings(BaseModel):
    """The one settings object handed to every module."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    env: Environment
    project_root: Path
    config_file: Path | None
    data_dir: Path
    profile: str
    server: ServerSettings
    store: StoreSettings
    logging: LoggingSettings
    observability: ObservabilitySettings
    cors: CorsSettings
    rate_limits: RateLimitSettings
    auth: AuthSettings
    gateway: GatewaySettings
    platform: PlatformSettings
    workflow: WorkflowSettings = Field(default_factory=WorkflowSettings)
    # products of the active profile, merged along its `extends` chain
    products: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # the whole file after expansion, for sections owned by plugins
    raw: dict[str, Any] = Field(default_factory=dict)
    # where each overridden value came from ("env PORT", "--port", a file path)
    sources: dict[str, str] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def database_url(self) -> str:
        return self.store.url or f"sqlite+aiosqlite:///{self.data_dir / 'kblabs.db'}"
