"""The plugin manifest `kb.plugin.json` (`schema: "kb.plugin/3"`), as pydantic models.

Keys are camelCase as in the original. `validate_manifest` collects every problem with
its JSON path instead of stopping at the first, and adds the checks pydantic cannot
express alone: unique command ids and routes, one HTTP status range, handler reference
syntax (`package.module:attribute`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from kblabs.errors import json_path

SCHEMA = "kb.plugin/3"
PLUGIN_ID = r"^@[a-z0-9-]+/[a-z0-9-]+$"
VERSION = r"^\d+\.\d+\.\d+"
COMMAND_ID = r"^[a-z0-9-]+(:[a-z0-9-]+)*$"
HANDLER_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
PLATFORM_SERVICES = (
    "vectorStore",
    "llm",
    "embeddings",
    "cache",
    "storage",
    "logger",
    "analytics",
    "eventBus",
)


class Spec(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def _check_ref(value: str) -> str:
    if not HANDLER_REF.match(value):
        raise ValueError(f"handler must look like package.module:attribute, not {value!r}")
    return value


class WithHandler(Spec):
    handler: str

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str) -> str:
        return _check_ref(value)


# --- permissions (reference §7) ----------------------------------------------------------


class FsPermissions(Spec):
    read: list[str] = Field(default_factory=list)
    write: list[str] = Field(default_factory=list)
    mode: Literal["read", "readWrite"] | None = None  # authoring form: applies to `allow`
    allow: list[str] = Field(default_factory=list)


class Permissions(Spec):
    fs: FsPermissions | None = None
    network: dict[Literal["fetch"], list[str]] | None = None
    env: dict[Literal["read"], list[str]] | None = None
    platform: dict[str, bool | list[str] | dict[str, Any]] | None = None
    shell: dict[Literal["allow"], list[str]] | None = None
    invoke: dict[Literal["allow"], list[str]] | None = None
    state: dict[str, Any] | None = None
    quotas: Quotas | None = None


class Quotas(Spec):
    timeout_ms: int | None = Field(default=None, ge=1)
    memory_mb: int | None = Field(default=None, ge=16)
    cpu_ms: int | None = Field(default=None, ge=1)


# --- sections ------------------------------------------------------------------------------


class Display(Spec):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    author: str | None = None
    homepage: str | None = None
    repository: str | None = None
    tags: list[str] = Field(default_factory=list)
    icon: str | None = None


class Dependency(Spec):
    id: str = Field(pattern=PLUGIN_ID)
    version: str = Field(min_length=1)
    optional: bool = False


class PlatformNeeds(Spec):
    requires: list[Literal[PLATFORM_SERVICES]] = Field(default_factory=list)  # type: ignore[valid-type]
    optional: list[Literal[PLATFORM_SERVICES]] = Field(default_factory=list)  # type: ignore[valid-type]


class Setup(WithHandler):
    describe: str | None = None
    permissions: Permissions | None = None


class Lifecycle(Spec):
    on_load: str | None = None
    on_unload: str | None = None
    on_enable: str | None = None
    on_disable: str | None = None

    @field_validator("on_load", "on_unload", "on_enable", "on_disable")
    @classmethod
    def _refs(cls, value: str | None) -> str | None:
        return None if value is None else _check_ref(value)


class CliFlag(Spec):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    type: Literal["string", "boolean", "number", "array"] = "string"
    alias: str | None = Field(default=None, pattern=r"^[A-Za-z]$")
    default: Any = None
    description: str | None = None
    choices: list[Any] | None = None
    required: bool = False


class CliCommand(WithHandler):
    id: str = Field(pattern=COMMAND_ID)
    group: str | None = Field(default=None, pattern=r"^[a-z0-9-]+$")
    subgroup: str | None = Field(default=None, pattern=r"^[a-z0-9-]+$")
    describe: str | None = None
    flags: list[CliFlag] = Field(default_factory=list)
    permissions: Permissions | None = None


class CliSection(Spec):
    commands: list[CliCommand] = Field(default_factory=list)
    group_meta: list[dict[str, str]] = Field(default_factory=list)


class RouteError(Spec):
    code: str = Field(min_length=1)
    http: int = Field(ge=400, le=599)
    description: str | None = None


class RestRoute(WithHandler):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(pattern=r"^/")
    description: str | None = None
    timeout_ms: int | None = Field(default=None, ge=1)
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    errors: list[RouteError] = Field(default_factory=list)
    security: list[Literal["none", "user", "token", "oauth"]] = Field(default_factory=list)
    permissions: Permissions | None = None


class RestSection(Spec):
    base_path: str | None = Field(default=None, pattern=r"^/")
    defaults: dict[str, Any] = Field(default_factory=dict)
    routes: list[RestRoute] = Field(default_factory=list)


class WsChannel(WithHandler):
    path: str = Field(pattern=r"^/")
    description: str | None = None
    protocol: str | None = None
    input_message: dict[str, Any] | None = None
    output_message: dict[str, Any] | None = None
    permissions: Permissions | None = None
    timeout_ms: int | None = Field(default=None, ge=1)
    max_message_size: int | None = Field(default=None, ge=1)
    auth: Literal["none", "token", "session"] = "token"
    idle_timeout_ms: int | None = Field(default=None, ge=1)


class WsSection(Spec):
    base_path: str | None = Field(default=None, pattern=r"^/")
    defaults: dict[str, Any] = Field(default_factory=dict)
    channels: list[WsChannel] = Field(default_factory=list)


class WorkflowHandler(WithHandler):
    id: str = Field(min_length=1)
    describe: str | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    permissions: Permissions | None = None


class WorkflowTemplate(Spec):
    id: str = Field(min_length=1)
    path: str = Field(min_length=1)
    describe: str | None = None
    tags: list[str] = Field(default_factory=list)


class WorkflowsSection(Spec):
    handlers: list[WorkflowHandler] = Field(default_factory=list)
    templates: list[WorkflowTemplate] = Field(default_factory=list)


class WebhookHandler(WithHandler):
    event: str = Field(min_length=1)
    describe: str | None = None
    input: dict[str, Any] | None = None
    permissions: Permissions | None = None


class WebhooksSection(Spec):
    handlers: list[WebhookHandler] = Field(default_factory=list)


class JobHandler(WithHandler):
    id: str = Field(min_length=1)
    describe: str | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    timeout: int | None = Field(default=None, ge=1)
    max_retries: int = Field(default=3, ge=0)
    retry_backoff: Literal["exp", "lin"] = "exp"
    permissions: Permissions | None = None


class JobsSection(Spec):
    handlers: list[JobHandler] = Field(default_factory=list)
    defaults: dict[str, Any] = Field(default_factory=dict)


class CronJob(Spec):
    type: Literal["plugin:job", "job"]
    payload: Any = None


class CronSchedule(Spec):
    id: str = Field(min_length=1)
    schedule: str = Field(min_length=1)
    job: CronJob
    describe: str | None = None
    enabled: bool = True
    timezone: str = "UTC"
    permissions: Permissions | None = None


class CronSection(Spec):
    schedules: list[CronSchedule] = Field(default_factory=list)


class StudioPage(Spec):
    id: str = Field(min_length=1)
    title: str = Field(min_length=1)
    route: str = Field(pattern=r"^/")
    entry: str = Field(min_length=1)
    icon: str | None = None
    permissions: Permissions | None = None
    order: int | None = None


class StudioSection(Spec):
    version: Literal[2] = 2
    remote_name: str | None = None
    pages: list[StudioPage] = Field(default_factory=list)
    menus: list[dict[str, Any]] = Field(default_factory=list)


class Manifest(Spec):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )
    schema_: Literal["kb.plugin/3"] = Field(alias="schema")
    id: str = Field(pattern=PLUGIN_ID)
    version: str = Field(pattern=VERSION)
    config_section: str | None = None
    display: Display | None = None
    permissions: Permissions | None = None
    dependencies: list[Dependency] = Field(default_factory=list)
    platform: PlatformNeeds | None = None
    setup: Setup | None = None
    lifecycle: Lifecycle | None = None
    cli: CliSection | None = None
    rest: RestSection | None = None
    ws: WsSection | None = None
    workflows: WorkflowsSection | None = None
    webhooks: WebhooksSection | None = None
    jobs: JobsSection | None = None
    cron: CronSection | None = None
    studio: StudioSection | None = None

    def provides(self) -> list[str]:
        """Entity kinds this plugin contributes (for the marketplace's `provides`)."""
        kinds = {
            "cli-command": bool(self.cli and self.cli.commands),
            "rest-route": bool(self.rest and self.rest.routes),
            "ws-channel": bool(self.ws and self.ws.channels),
            "workflow": bool(
                self.workflows and (self.workflows.handlers or self.workflows.templates)
            ),
            "webhook": bool(self.webhooks and self.webhooks.handlers),
            "job": bool(self.jobs and self.jobs.handlers),
            "cron": bool(self.cron and self.cron.schedules),
            "studio-widget": bool(self.studio and self.studio.pages),
            "studio-menu": bool(self.studio and self.studio.menus),
        }
        return [kind for kind, present in kinds.items() if present]


Permissions.model_rebuild()


def _duplicates(values: list[tuple[str, Any]]) -> list[dict[str, str]]:
    seen: dict[Any, str] = {}
    problems = []
    for path, value in values:
        if value in seen:
            problems.append({"path": path, "message": f"duplicate of {seen[value]}"})
        else:
            seen[value] = path
    return problems


def _cross_checks(manifest: Manifest) -> list[dict[str, str]]:
    problems: list[dict[str, str]] = []
    if manifest.cli:
        problems += _duplicates(
            [
                (f"cli.commands[{i}].id", (c.group, c.subgroup, c.id))
                for i, c in enumerate(manifest.cli.commands)
            ]
        )
    if manifest.rest:
        problems += _duplicates(
            [(f"rest.routes[{i}]", (r.method, r.path)) for i, r in enumerate(manifest.rest.routes)]
        )
    for section, attr in (("workflows", "handlers"), ("jobs", "handlers"), ("cron", "schedules")):
        entries = getattr(getattr(manifest, section), attr, None) or []
        problems += _duplicates(
            [(f"{section}.{attr}[{i}].id", e.id) for i, e in enumerate(entries)]
        )
    return problems


def validate_manifest(data: Any) -> tuple[Manifest | None, list[dict[str, str]]]:
    """(manifest, []) when valid, else (None, every problem as {path, message})."""
    if not isinstance(data, dict):
        return None, [{"path": "", "message": "a manifest is a JSON object"}]
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        return None, [
            {
                "path": json_path(e["loc"]),
                "message": "unknown key" if e["type"] == "extra_forbidden" else e["msg"],
            }
            for e in exc.errors()
        ]
    problems = _cross_checks(manifest)
    return (None, problems) if problems else (manifest, [])
