"""Workflow specs (reference workflow.md §3): pydantic models, loading and the checks.

A spec is YAML 1.2 (ruamel.yaml, so `on:`, `yes` and `no` stay strings) or JSON when the
text starts with `{`. Keys are camelCase as in the original. `load_spec` reads text,
`validate_spec` checks already-parsed data; both return `(spec, [])` or `(None, problems)`
where each problem is `{path, message}` with a path like `jobs.build.steps[2].uses`, and
both collect every problem instead of stopping at the first. They never raise for bad
input. `WorkflowSpec.model_validate` alone checks shapes only: the checks that look
across steps and jobs (below) live in `validate_spec`, so always go through it.

Decisions where we differ from the original (its Zod schemas):

- Unknown keys are rejected with their path (`extra="forbid"`); the original silently
  dropped them, so a misspelt `contineOnError` went unnoticed.
- Types are strict: `"yes"` is not a boolean and `"5"` is not a number. For YAML's sake a
  few values are converted: a numeric `version` becomes a string (quote versions: YAML
  reads `1.10` as the number 1.1), numeric/boolean `env` values become strings (`true` →
  `"true"`), `if: true|false` becomes the string, mapping keys are read as strings, YAML
  dates become ISO strings.
- Job ids and step ids match `[A-Za-z0-9_-]{1,64}`. A step without `id` gets one from its
  position: `step-<index>` in `steps`, `<hook>-<index>` in hooks (`pre-0`, `onFailure-1`);
  indexes are 0-based like the paths. Step ids are unique within a job, hooks included.
- `run: <command>` is shorthand for `uses: builtin:shell` + `with.command`; after
  validation `run` is always None. Setting both `run` and `uses` is an error. A step with
  neither is `builtin:noop` (the original failed it at run time).
- `uses` is parsed into `Uses(kind, target)`; the forms are `builtin:shell|noop|approval|
  gate`, `plugin:<pluginId>/<handlerId>` (split on the last `/`, so `@scope/name` ids
  work), `command:<id>` and `workflow:<id>`. Anything else is an error naming the forms.
- `needs` is a string or a list; it must name jobs of the spec and form no cycle.
- `retries` omitted stays None: the engine applies `workflow.defaultRetries`
  (`DEFAULT_JOB_RETRIES` = 0, ARCHITECTURE §8), not the original's 3.
- The `with` of our own step kinds is checked: `builtin:shell` needs exactly one of
  `command`/`run`/`script`; `builtin:gate` routes are `continue`, `fail` or
  `{restartFrom, context?}` where `restartFrom` names the gate itself or an earlier step of
  the same step list; `builtin:approval` takes `title`, `context`, `instructions` and
  `timeoutMs` (its wait limit, no 24 h cap; a step-level `timeoutMs` on an approval is
  refused so there is one meaning); `workflow:<id>` takes `mode: wait|fire-and-forget`
  (default `wait`), `inheritEnv` and `inputs`.
- Additions not in the reference: workflow-level `concurrency` and `priority` (jobs
  inherit the priority), input `enum`, job `continueOnError`, job and step `outputs`
  (name → expression), `builtin:noop`, `command:`. The documented-only trigger shapes
  (`push: {branches}`, a `schedule` list, `webhook: {source, events}`) are refused with a
  message; cron expressions and time zones are checked when loading.
- As in the manifest models (`populate_by_name`), the Python field names (`runs_on`) are
  accepted besides the camelCase keys; files should use camelCase, which is what the cross
  checks read.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypedDict, get_args
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from kblabs.errors import json_path

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"  # env variable and secret names
CATALOG_ID_PATTERN = r"^[A-Za-z0-9@/_:+#.-]{1,256}$"
MAX_TIMEOUT_MS = 24 * 60 * 60 * 1000
DEFAULT_JOB_RETRIES = 0
DEFAULT_MAX_INTERVAL_MS = 60_000  # cap on a retry delay when `maxIntervalMs` is not set
HOOKS = ("pre", "onSuccess", "onFailure", "post")
BUILTINS = ("shell", "noop", "approval", "gate")
SHELL_COMMAND_KEYS = ("command", "run", "script")
MAX_NODES = 100_000  # a document bigger than this (or an alias bomb) is refused

UsesKind = Literal["builtin", "plugin", "command", "workflow"]
Priority = Literal["high", "normal", "low"]
Isolation = Literal["strict", "balanced", "relaxed"]
CatchUp = Literal["none", "latest"]  # fires missed while no scheduler ran: skip, or run the last
USES_FORMS = (
    "builtin:shell, builtin:noop, builtin:approval, builtin:gate, "
    "plugin:<pluginId>/<handlerId>, command:<commandId> or workflow:<workflowId>"
)


def cron_trigger(expression: str, timezone: str) -> CronTrigger:
    """A crontab line: 5 fields (minute hour day month weekday), or 6 with seconds
    first (`*/10 * * * * *`, for tests and short jobs). ValueError names the problem."""
    fields = expression.split()
    if len(fields) == 6:
        second, minute, hour, day, month, weekday = fields
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=weekday,
            timezone=timezone,
        )
    return CronTrigger.from_crontab(expression, timezone=timezone)


class Problem(TypedDict):
    path: str
    message: str


# --- `uses` --------------------------------------------------------------------------------

_ID = re.compile(ID_PATTERN)
_PLUGIN_ID = re.compile(r"^(@[A-Za-z0-9._-]+/)?[A-Za-z0-9._-]+$")
_HANDLER_ID = re.compile(r"^[A-Za-z0-9_.:+#-]+$")
_TARGET_ID = re.compile(r"^[A-Za-z0-9@/_:+#.-]+$")


@dataclass(frozen=True, slots=True)
class Uses:
    """A parsed `uses`: `kind` is builtin/plugin/command/workflow, `target` the rest."""

    kind: UsesKind
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"

    @property
    def plugin_id(self) -> str | None:
        return self.target.rsplit("/", 1)[0] if self.kind == "plugin" else None

    @property
    def handler_id(self) -> str | None:
        return self.target.rsplit("/", 1)[1] if self.kind == "plugin" else None

    def is_builtin(self, name: str) -> bool:
        return self.kind == "builtin" and self.target == name


NOOP = Uses("builtin", "noop")
SHELL = Uses("builtin", "shell")


def parse_uses(value: str) -> Uses:
    """`"plugin:@acme/reports/publish"` → `Uses("plugin", "@acme/reports/publish")`;
    ValueError naming the allowed forms for anything else."""
    kind, sep, target = value.partition(":")
    if not sep or kind not in get_args(UsesKind):
        raise ValueError(f"unknown uses {value!r}: use {USES_FORMS}")
    if kind == "builtin":
        if target not in BUILTINS:
            raise ValueError(
                f"unknown builtin {value!r}: the builtins are "
                + ", ".join(f"builtin:{b}" for b in BUILTINS)
            )
    elif kind == "plugin":
        plugin_id, slash, handler_id = target.rpartition("/")
        if not slash or not _PLUGIN_ID.match(plugin_id) or not _HANDLER_ID.match(handler_id):
            raise ValueError(
                f"{value!r} is not plugin:<pluginId>/<handlerId> "
                "(a scoped id reads plugin:@scope/name/handler)"
            )
    elif not _TARGET_ID.match(target):
        raise ValueError(f"{value!r} is not {kind}:<id> (an id is letters, digits and @/_:+#.-)")
    return Uses(kind, target)  # type: ignore[arg-type]  # kind checked against UsesKind


def _uses(value: Any) -> Uses:
    if isinstance(value, Uses):
        return value
    if not isinstance(value, str):
        raise ValueError(f"uses is a string: {USES_FORMS}")
    return parse_uses(value)


UsesField = Annotated[
    Uses,
    PlainValidator(_uses),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string"}),
]


# --- small field types ---------------------------------------------------------------------


def _matching(pattern: str, rule: str) -> AfterValidator:
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"{rule}, not {value!r}")
        return value

    return AfterValidator(check)


def _scalar_to_str(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _bool_to_str(value: Any) -> Any:
    return ("true" if value else "false") if isinstance(value, bool) else value


def _number_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Id = Annotated[str, _matching(ID_PATTERN, "an id is 1-64 letters, digits, '_' or '-'")]
Name = Annotated[
    str, _matching(NAME_PATTERN, "a name is letters, digits and '_', not starting with a digit")
]
NonEmpty = Annotated[str, Field(min_length=1)]
EnvValue = Annotated[str, BeforeValidator(_scalar_to_str)]
Condition = Annotated[str, BeforeValidator(_bool_to_str)]
TimeoutMs = Annotated[int, Field(ge=1, le=MAX_TIMEOUT_MS)]


class SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=True,
    )


# --- workflow-level pieces -----------------------------------------------------------------


class ExecutionTarget(SpecModel):
    environment_id: NonEmpty | None = None
    workspace_id: NonEmpty | None = None
    namespace: NonEmpty | None = None
    workdir: NonEmpty | None = None


class ScheduleTrigger(SpecModel):
    cron: NonEmpty
    timezone: NonEmpty | None = None  # None: the configured default (UTC)
    catch_up: CatchUp = "none"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            cron_trigger(value, "UTC")
        except Exception as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except Exception:
                raise ValueError(f"unknown time zone {value!r}") from None
        return value


class WebhookTrigger(SpecModel):
    secret: NonEmpty | None = None
    path: NonEmpty | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class Triggers(SpecModel):
    """`on`: at least one of manual, push, webhook, schedule."""

    manual: bool = False
    push: bool = False
    webhook: WebhookTrigger | None = None  # `webhook: true` reads as `{}`
    schedule: ScheduleTrigger | None = None

    @field_validator("push", mode="before")
    @classmethod
    def _push(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise ValueError("push is true or false (branch filters are not supported)")
        return value

    @field_validator("webhook", mode="before")
    @classmethod
    def _webhook(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False or value is None:
            return None
        if isinstance(value, dict):
            return value
        raise ValueError("webhook is true, false or {secret?, path?, headers?}")

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError("schedule is one {cron, timezone?} mapping, not a list")
        return value

    @model_validator(mode="after")
    def _one(self) -> Triggers:
        if not self.kinds:
            raise ValueError(
                "at least one trigger must be defined: manual, push, webhook or schedule"
            )
        return self

    @property
    def kinds(self) -> list[str]:
        present = {
            "manual": self.manual,
            "push": self.push,
            "webhook": self.webhook is not None,
            "schedule": self.schedule is not None,
        }
        return [kind for kind, on in present.items() if on]


def _is_input_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, bool)


class InputSpec(SpecModel):
    type: Literal["string", "number", "boolean"]
    description: str | None = None
    required: bool = False
    enum: list[Any] | None = Field(default=None, min_length=1)
    default: Any = None

    @field_validator("enum")
    @classmethod
    def _enum(cls, value: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        kind = info.data.get("type")
        for item in value or []:
            if kind and not _is_input_type(item, kind):
                raise ValueError(f"enum value {item!r} is not a {kind}")
        return value

    @field_validator("default")
    @classmethod
    def _default(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("type")
        if value is None or not kind:
            return value
        if not _is_input_type(value, kind):
            raise ValueError(f"default {value!r} is not a {kind}")
        enum = info.data.get("enum")
        if enum is not None and value not in enum:
            raise ValueError(f"default {value!r} is not one of the enum values")
        return value


class Phase(SpecModel):
    label: NonEmpty
    description: str | None = None


class ConcurrencySpec(SpecModel):
    group: Annotated[str, Field(min_length=1, max_length=256)]
    cancel_in_progress: bool = False


class RetryPolicy(SpecModel):
    max: int = Field(ge=0)
    backoff: Literal["exp", "lin"] = "exp"
    initial_interval_ms: int = Field(default=1000, gt=0)
    max_interval_ms: int | None = Field(default=None, gt=0)

    @field_validator("max_interval_ms")
    @classmethod
    def _cap(cls, value: int | None, info: ValidationInfo) -> int | None:
        initial = info.data.get("initial_interval_ms")
        if value is not None and initial is not None and value < initial:
            raise ValueError(f"maxIntervalMs ({value}) is below initialIntervalMs ({initial})")
        return value

    def delay_ms(self, failures: int) -> int:
        """Delay before the next attempt after `failures` failures so far (0-based):
        exp `initial·2ⁿ`, lin `initial·(n+1)`, capped by `maxIntervalMs` (else 60 s)."""
        if self.backoff == "exp":
            delay = self.initial_interval_ms * 2 ** min(failures, 62)
        else:
            delay = self.initial_interval_ms * (failures + 1)
        return min(delay, self.max_interval_ms or DEFAULT_MAX_INTERVAL_MS)


class ArtifactSource(SpecModel):
    run_id: NonEmpty
    job_id: NonEmpty | None = None


class ArtifactMerge(SpecModel):
    strategy: Literal["append", "overwrite", "json-merge"]
    from_: list[ArtifactSource] = Field(alias="from", min_length=1)


class JobArtifacts(SpecModel):
    produce: list[NonEmpty] = Field(default_factory=list)
    consume: list[NonEmpty] = Field(default_factory=list)
    merge: ArtifactMerge | None = None


# --- steps ---------------------------------------------------------------------------------


class StepArtifact(SpecModel):
    type: Literal["markdown", "issues", "table", "diff", "log", "json", "link"]
    source: NonEmpty  # a file path or `outputs.<key>`
    label: NonEmpty
    digest: Any = None  # shape not pinned down by the reference; stored for display
    show_in_summary: bool = False


class StepProgress(SpecModel):
    source: NonEmpty
    format: NonEmpty


class ShellWith(SpecModel):
    command: str | None = None
    run: str | None = None
    script: str | None = None
    env: dict[Name, EnvValue] = Field(default_factory=dict)
    timeout: TimeoutMs | None = None  # the engine's default: 300 000 ms
    throw_on_error: bool = False

    @property
    def command_text(self) -> str:
        return self.command or self.run or self.script or ""


class ApprovalWith(SpecModel):
    title: str | None = None
    context: Any = None
    instructions: str | None = None
    timeout_ms: int | None = Field(default=None, ge=1)  # → APPROVAL_TIMEOUT


class GateRoute(SpecModel):
    """A gate route, normalised: `"continue"` → action continue; `{restartFrom, context?}`
    → action restart."""

    action: Literal["continue", "fail", "restart"]
    restart_from: Id | None = None
    context: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, value: Any) -> Any:
        rule = "a route is continue, fail or {restartFrom, context?}"
        if isinstance(value, str):
            if value in ("continue", "fail"):
                return {"action": value}
            raise ValueError(f"{rule}, not {value!r}")
        if isinstance(value, dict) and "action" not in value:
            if "restartFrom" not in value and "restart_from" not in value:
                raise ValueError(f"{rule}: restartFrom is missing")
            return {"action": "restart", **value}
        raise ValueError(rule)


class GateWith(SpecModel):
    decision: NonEmpty  # e.g. `steps.ok.outputs.action`
    routes: dict[str, GateRoute]
    default: Literal["continue", "fail"] | None = None  # None: fail
    max_iterations: int = Field(default=3, ge=1)


class WorkflowCallWith(SpecModel):
    mode: Literal["wait", "fire-and-forget"] = "wait"
    inherit_env: bool = False
    inputs: dict[str, Any] = Field(default_factory=dict)


class StepSpec(SpecModel):
    id: Id
    name: NonEmpty
    uses: UsesField = NOOP
    run: str | None = None  # input shorthand only: always None after validation
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    env: dict[Name, EnvValue] = Field(default_factory=dict)
    secrets: list[Name] = Field(default_factory=list)
    if_: Condition | None = Field(default=None, alias="if")
    timeout_ms: TimeoutMs | None = None
    continue_on_error: bool = False
    outputs: dict[Id, str] = Field(default_factory=dict)  # name → expression
    artifacts: dict[NonEmpty, StepArtifact] = Field(default_factory=dict)
    summary: str | None = None
    phase: str | None = None
    progress: StepProgress | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_defaults_to_id(cls, data: Any) -> Any:
        """`name` may be left out: the step's id names it (the original required it)."""
        if isinstance(data, dict) and data.get("name") is None and isinstance(data.get("id"), str):
            return {**data, "name": data["id"]}
        return data

    @model_validator(mode="before")
    @classmethod
    def _run_shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("run"), str):
            return data
        with_ = {} if data.get("with") is None else data["with"]
        if data.get("uses") is not None or not isinstance(with_, dict):
            return data  # conflicts are reported by validate_spec
        if any(key in with_ for key in SHELL_COMMAND_KEYS):
            return data
        rest = {key: value for key, value in data.items() if key != "run"}
        return {**rest, "uses": str(SHELL), "with": {**with_, "command": data["run"]}}

    def shell(self) -> ShellWith:
        return ShellWith.model_validate(self.with_)

    def approval(self) -> ApprovalWith:
        return ApprovalWith.model_validate(self.with_)

    def gate(self) -> GateWith:
        return GateWith.model_validate(self.with_)

    def workflow_call(self) -> WorkflowCallWith:
        return WorkflowCallWith.model_validate(self.with_)


def _step_id(step: Any, index: int, prefix: str) -> str | None:
    """The id a step has or gets (`<prefix>-<index>`); None when it cannot be told."""
    if not isinstance(step, dict):
        return None
    given = step.get("id")
    if given is None:
        return f"{prefix}-{index}"
    return given if isinstance(given, str) else None


def _with_ids(steps: Any, prefix: str) -> Any:
    if not isinstance(steps, list):
        return steps
    return [
        {**step, "id": _step_id(step, index, prefix)}
        if isinstance(step, dict) and step.get("id") is None
        else step
        for index, step in enumerate(steps)
    ]


class JobHooks(SpecModel):
    """`pre → steps → onSuccess | onFailure → post`."""

    pre: list[StepSpec] = Field(default_factory=list)
    on_success: list[StepSpec] = Field(default_factory=list)
    on_failure: list[StepSpec] = Field(default_factory=list)
    post: list[StepSpec] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _ids(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {
            key: _with_ids(value, key) if key in HOOKS else value for key, value in data.items()
        }


class JobSpec(SpecModel):
    runs_on: Literal["local", "sandbox"] = "local"
    steps: list[StepSpec] = Field(min_length=1)
    needs: list[NonEmpty] = Field(default_factory=list)
    if_: Condition | None = Field(default=None, alias="if")
    env: dict[Name, EnvValue] = Field(default_factory=dict)
    secrets: list[Name] = Field(default_factory=list)
    timeout_ms: TimeoutMs | None = None
    retries: RetryPolicy | None = None  # None: the configured default (0)
    continue_on_error: bool = False
    hooks: JobHooks = Field(default_factory=JobHooks)
    concurrency: ConcurrencySpec | None = None
    priority: Priority | None = None  # None: the workflow's
    target: ExecutionTarget | None = None
    isolation: Isolation | None = None
    artifacts: JobArtifacts | None = None
    outputs: dict[Id, str] = Field(default_factory=dict)  # name → expression

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {**data, "steps": _with_ids(data.get("steps"), "step")} if "steps" in data else data
        if isinstance(data.get("needs"), str):
            data = {**data, "needs": [data["needs"]]}
        return data

    def retry_policy(self, default_max: int = DEFAULT_JOB_RETRIES) -> RetryPolicy:
        return self.retries or RetryPolicy(max=default_max)

    def step(self, step_id: str) -> StepSpec | None:
        """The step (or hook step) with this id."""
        every = [*self.steps, *self.hooks.pre, *self.hooks.on_success]
        every += [*self.hooks.on_failure, *self.hooks.post]
        return next((step for step in every if step.id == step_id), None)


class WorkflowSpec(SpecModel):
    id: (
        Annotated[str, _matching(CATALOG_ID_PATTERN, "an id is letters, digits and @/_:+#.-")]
        | None
    ) = None
    name: NonEmpty
    version: Annotated[str, BeforeValidator(_number_to_str), Field(min_length=1)]
    description: str | None = None
    on: Triggers
    inputs: dict[Id, InputSpec] = Field(default_factory=dict)
    env: dict[Name, EnvValue] = Field(default_factory=dict)
    secrets: list[Name] = Field(default_factory=list)
    concurrency: ConcurrencySpec | None = None
    priority: Priority = "normal"
    target: ExecutionTarget | None = None
    isolation: Isolation | None = None
    phases: dict[NonEmpty, Phase] = Field(default_factory=dict)
    jobs: dict[Id, JobSpec] = Field(min_length=1)

    @field_validator("on", mode="before")
    @classmethod
    def _on(cls, value: Any) -> Any:
        if isinstance(value, str | list):
            raise ValueError("on is a mapping of triggers, e.g. {manual: true}")
        return value

    def job_priority(self, job_id: str) -> Priority:
        return self.jobs[job_id].priority or self.priority

    def to_data(self) -> dict[str, Any]:
        """The spec as plain JSON data (camelCase, canonical: `run` folded into `uses`,
        generated step ids written out); `validate_spec` accepts it back unchanged."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)


# --- checks across steps and jobs ------------------------------------------------------


def _problem(loc: tuple[Any, ...], message: str) -> Problem:
    return {"path": json_path(loc), "message": message}


def _pydantic_problems(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] in ("value_error", "assertion_error") and "error" in error.get(
            "ctx", {}
        ):
            message = str(error["ctx"]["error"])
        else:
            message = error["msg"]
        if loc and loc[-1] == "[key]":
            loc, message = loc[:-1], f"invalid key: {message}"
        problems.append(_problem((*prefix, *loc), message))
    return problems


def _find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Cycles as paths `[a, b, a]` (a needs b needs a), each set of jobs once."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for root in graph:
        if root in state:
            continue
        path = [root]
        stack = [iter(graph[root])]
        state[root] = 1
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                state[path.pop()] = 2
            elif following not in state:
                state[following] = 1
                path.append(following)
                stack.append(iter(graph.get(following, [])))
            elif state[following] == 1:
                cycle = [*path[path.index(following) :], following]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    cycles.append(cycle)
    return cycles


def _needs_problems(jobs: dict[Any, Any]) -> list[Problem]:
    problems: list[Problem] = []
    graph: dict[str, list[str]] = {}
    for job_id, job in jobs.items():
        if not isinstance(job, dict):
            continue
        raw = job.get("needs")
        if isinstance(raw, str):
            entries: list[tuple[tuple[Any, ...], Any]] = [(("needs",), raw)]
        elif isinstance(raw, list):
            entries = [(("needs", index), need) for index, need in enumerate(raw)]
        else:
            entries = []
        edges: list[str] = []
        for loc, need in entries:
            if not isinstance(need, str) or not need:
                continue  # reported by the model
            if need in edges:
                problems.append(_problem(("jobs", job_id, *loc), f"{need!r} is listed twice"))
            elif need not in jobs:
                known = ", ".join(str(key) for key in jobs)
                problems.append(
                    _problem(("jobs", job_id, *loc), f"unknown job {need!r} (jobs: {known})")
                )
            else:
                edges.append(need)
        graph[str(job_id)] = edges
    for cycle in _find_cycles(graph):
        problems.append(
            _problem(("jobs", cycle[0], "needs"), "needs form a cycle: " + " → ".join(cycle))
        )
    return problems


def _step_uses(step: dict[str, Any]) -> Uses | None:
    if isinstance(step.get("run"), str):
        return SHELL
    if step.get("uses") is None:
        return NOOP
    try:
        return _uses(step["uses"])
    except ValueError:
        return None  # reported by the model


def _with_problems(
    loc: tuple[Any, ...], step: dict[str, Any], uses: Uses, ids: list[str | None], index: int
) -> list[Problem]:
    with_ = step.get("with")
    if with_ is None:
        with_ = {}
    if not isinstance(with_, dict):
        return []  # reported by the model
    problems: list[Problem] = []
    if uses.is_builtin("shell"):
        run = step.get("run")
        command_loc: tuple[Any, ...] | None = None
        if isinstance(run, str):
            clash = next((key for key in SHELL_COMMAND_KEYS if key in with_), None)
            if clash:
                return [_problem((*loc, "run"), f"run and with.{clash} are both set; keep one")]
            with_, command_loc = {**with_, "command": run}, (*loc, "run")
        given = [key for key in SHELL_COMMAND_KEYS if with_.get(key) is not None]
        if not given:
            problems.append(
                _problem(
                    (*loc, "with", "command"),
                    "builtin:shell needs a command: set run on the step, or with.command",
                )
            )
        elif len(given) > 1:
            problems.append(
                _problem((*loc, "with", given[1]), f"with.{given[0]} is already the command")
            )
        elif isinstance(with_[given[0]], str) and not with_[given[0]].strip():
            where = command_loc or (*loc, "with", given[0])
            problems.append(_problem(where, "the command is empty"))
        model: type[SpecModel] | None = ShellWith
    elif uses.is_builtin("approval"):
        model = ApprovalWith
        if step.get("timeoutMs") is not None:
            problems.append(
                _problem(
                    (*loc, "timeoutMs"),
                    "an approval's wait limit is with.timeoutMs, not the step's timeoutMs",
                )
            )
    elif uses.is_builtin("gate"):
        model = GateWith
    elif uses.kind == "workflow":
        model = WorkflowCallWith
    else:
        model = None
    if model is None:
        return problems
    try:
        model.model_validate(with_)
    except ValidationError as exc:
        problems += _pydantic_problems(exc, (*loc, "with"))
    routes = with_.get("routes") if model is GateWith else None
    for value, route in routes.items() if isinstance(routes, dict) else ():
        target = route.get("restartFrom") if isinstance(route, dict) else None
        if not isinstance(target, str) or not _ID.match(target):
            continue  # no restart, or reported by the model
        route_loc = (*loc, "with", "routes", value, "restartFrom")
        if target not in ids:
            known = ", ".join(i for i in ids if i)
            problems.append(_problem(route_loc, f"unknown step {target!r} (steps here: {known})"))
        elif ids.index(target) > index:
            problems.append(
                _problem(route_loc, f"step {target!r} comes after this gate; restart goes back")
            )
    return problems


def _job_step_problems(job_id: Any, job: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    hooks = job.get("hooks")
    lists: list[tuple[tuple[Any, ...], str, Any]] = [(("steps",), "step", job.get("steps"))]
    if isinstance(hooks, dict):
        lists += [(("hooks", hook), hook, hooks.get(hook)) for hook in HOOKS]
    first: dict[str, tuple[str, bool]] = {}  # id → (path, generated)
    for list_loc, prefix, steps in lists:
        if not isinstance(steps, list):
            continue
        ids = [_step_id(step, index, prefix) for index, step in enumerate(steps)]
        for index, step in enumerate(steps):
            if not isinstance(step, dict):
                continue
            loc = ("jobs", job_id, *list_loc, index)
            step_id, generated = ids[index], step.get("id") is None
            if step_id is not None and step_id in first:
                where, was_generated = first[step_id]
                note = " (generated there: that step has no id)" if was_generated else ""
                problems.append(
                    _problem(
                        loc if generated else (*loc, "id"),
                        f"duplicate step id {step_id!r}, also used by {where}{note}",
                    )
                )
            elif step_id is not None:
                first[step_id] = (json_path(loc), generated)
            if step.get("run") is not None and step.get("uses") is not None:
                problems.append(
                    _problem(
                        (*loc, "run"),
                        "run and uses are both set: run is shorthand for "
                        "uses: builtin:shell with with.command; keep one",
                    )
                )
                continue
            uses = _step_uses(step)
            if uses is not None:
                problems += _with_problems(loc, step, uses, ids, index)
    return problems


def _semantic_problems(data: dict[str, Any]) -> list[Problem]:
    jobs = data.get("jobs")
    if not isinstance(jobs, dict):
        return []
    problems = _needs_problems(jobs)
    for job_id, job in jobs.items():
        if isinstance(job, dict):
            problems += _job_step_problems(job_id, job)
    return problems


# --- entry points ------------------------------------------------------------------------


class _TooBig(Exception):
    pass


def _plain(value: Any, budget: list[int]) -> Any:
    """YAML-loaded data as JSON-like data: keys as strings, dates as ISO strings."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig
    if isinstance(value, dict):
        return {_key(key): _plain(item, budget) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item, budget) for item in value]
    if isinstance(value, dt.date):  # datetime is a date too
        return value.isoformat()
    return value


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    return _plain(key, [1]) if isinstance(key, dt.date) else str(key)


def validate_spec(data: Any) -> tuple[WorkflowSpec | None, list[Problem]]:
    """(spec, []) when valid, else (None, every problem as {path, message})."""
    if not isinstance(data, dict):
        return None, [{"path": "", "message": "a workflow spec is a mapping (object)"}]
    try:
        data = _plain(data, [MAX_NODES])
    except _TooBig:
        return None, [{"path": "", "message": f"the spec has more than {MAX_NODES} values"}]
    problems: list[Problem] = []
    spec: WorkflowSpec | None = None
    try:
        spec = WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        problems += _pydantic_problems(exc)
    problems += _semantic_problems(data)
    return (None, problems) if problems else (spec, [])


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_text(text: str, *, source: str) -> tuple[Any, list[Problem]]:
    """YAML 1.2, or JSON when the text starts with `{`; (data, []) or (None, [problem])."""
    if not text.strip():
        return None, [{"path": "", "message": f"{source} is empty"}]
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=_reject_duplicates), []
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            return None, [{"path": "", "message": f"{source}: invalid JSON at {where}: {exc.msg}"}]
        except (ValueError, RecursionError) as exc:
            return None, [{"path": "", "message": f"{source}: invalid JSON: {exc}"}]
    yaml = YAML(typ="safe", pure=True)
    yaml.version = (1, 2)
    try:
        return yaml.load(text), []
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = ", ".join(part for part in (exc.context, exc.problem) if part) or "syntax error"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return None, [{"path": "", "message": f"{source}: invalid YAML{where}: {what}"}]
    except (YAMLError, RecursionError, ValueError) as exc:
        return None, [{"path": "", "message": f"{source}: invalid YAML: {exc}"}]


def load_spec(text: str, *, source: str) -> tuple[WorkflowSpec | None, list[Problem]]:
    """Parse and validate a spec file's text; `source` (a file name) appears in syntax
    error messages."""
    data, problems = parse_text(text, source=source)
    if problems:
        return None, problems
    return validate_spec(data)


def topological_order(spec: WorkflowSpec) -> list[list[str]]:
    """Levels of job ids: every job's `needs` are in earlier levels, so the jobs of one
    level may run in parallel. Declaration order within a level."""
    remaining = {job_id: set(job.needs) for job_id, job in spec.jobs.items()}
    done: set[str] = set()
    levels: list[list[str]] = []
    while remaining:
        level = [job_id for job_id, needs in remaining.items() if needs <= done]
        if not level:
            raise ValueError("needs form a cycle or name unknown jobs: " + ", ".join(remaining))
        levels.append(level)
        done.update(level)
        for job_id in level:
            del remaining[job_id]
    return levels
