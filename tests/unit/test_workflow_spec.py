"""Workflow specs: what is accepted (YAML 1.2 and JSON), the defaults, and every problem
reported with its exact path, all of them at once."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kblabs.workflow.spec import (
    DEFAULT_JOB_RETRIES,
    RetryPolicy,
    Uses,
    WorkflowSpec,
    load_spec,
    parse_text,
    parse_uses,
    topological_order,
    validate_spec,
)

CI_YAML = """\
name: ci
version: 1.2
description: "Lint, test, build and ship #ci"
on:
  manual: true
  push: true
  webhook: { path: /hooks/ci, headers: { X-Source: github } }
  schedule: { cron: "0 3 * * 1-5", timezone: Europe/Berlin }
inputs:
  channel: { type: string, enum: [stable, beta], default: beta, description: Release channel }
  dryRun: { type: boolean, default: true }
  shards: { type: number, required: true }
env: { PYTHONUNBUFFERED: 1, CI: true, LANG: C.UTF-8 }
secrets: [DEPLOY_TOKEN]
concurrency: { group: "ci-${{ inputs.channel }}", cancelInProgress: true }
priority: high
phases:
  check: { label: Checks }
  ship: { label: Ship, description: Build and release }
jobs:
  lint:
    runsOn: local
    steps:
      - name: Ruff
        run: ruff check .
        phase: check
  test:
    runsOn: local
    timeoutMs: 600000
    retries: { max: 2 }
    steps:
      - id: unit
        name: Unit tests
        run: pytest -q
        env: { PYTEST_ADDOPTS: "-x" }
        continueOnError: true
        outputs: { passed: "${{ steps.unit.outputs.exitCode == 0 }}" }
        artifacts:
          junit: { type: table, source: reports/junit.xml, label: JUnit, showInSummary: true }
  build:
    runsOn: sandbox
    needs: [lint, test]
    priority: low
    concurrency: { group: build }
    artifacts: { produce: [dist] }
    hooks:
      pre: [{ name: Clean, run: rm -rf dist }]
      onFailure: [{ name: Notify, uses: "plugin:@acme/notify/slack", with: { to: "#ci" } }]
    outputs: { wheel: "${{ steps.pack.outputs.path }}" }
    steps:
      - { id: pack, name: Package, uses: "command:build", with: { flags: { sdist: false } } }
  release:
    runsOn: local
    needs: build
    if: "${{ inputs.dryRun != true }}"
    steps:
      - { id: smoke, name: Smoke, uses: "builtin:noop" }
      - id: ok
        name: Approve release
        uses: builtin:approval
        with: { title: "Ship ${{ needs.build.outputs.wheel }}?", timeoutMs: 172800000 }
      - name: Route
        uses: builtin:gate
        with:
          decision: steps.ok.outputs.action
          routes:
            approve: continue
            reject: fail
            retry: { restartFrom: smoke, context: { again: true } }
          maxIterations: 2
      - name: Publish
        uses: plugin:@acme/pypi/publish
        with: { channel: "${{ inputs.channel }}" }
      - name: Docs
        uses: workflow:docs-site
        with: { mode: fire-and-forget, inputs: { ref: main } }
"""

CI_JSON_DATA: dict[str, Any] = {
    "name": "ci",
    "version": 1.2,
    "description": "Lint, test, build and ship #ci",
    "on": {
        "manual": True,
        "push": True,
        "webhook": {"path": "/hooks/ci", "headers": {"X-Source": "github"}},
        "schedule": {"cron": "0 3 * * 1-5", "timezone": "Europe/Berlin"},
    },
    "inputs": {
        "channel": {
            "type": "string",
            "enum": ["stable", "beta"],
            "default": "beta",
            "description": "Release channel",
        },
        "dryRun": {"type": "boolean", "default": True},
        "shards": {"type": "number", "required": True},
    },
    "env": {"PYTHONUNBUFFERED": 1, "CI": True, "LANG": "C.UTF-8"},
    "secrets": ["DEPLOY_TOKEN"],
    "concurrency": {"group": "ci-${{ inputs.channel }}", "cancelInProgress": True},
    "priority": "high",
    "phases": {
        "check": {"label": "Checks"},
        "ship": {"label": "Ship", "description": "Build and release"},
    },
    "jobs": {
        "lint": {
            "runsOn": "local",
            "steps": [{"name": "Ruff", "run": "ruff check .", "phase": "check"}],
        },
        "test": {
            "runsOn": "local",
            "timeoutMs": 600000,
            "retries": {"max": 2},
            "steps": [
                {
                    "id": "unit",
                    "name": "Unit tests",
                    "run": "pytest -q",
                    "env": {"PYTEST_ADDOPTS": "-x"},
                    "continueOnError": True,
                    "outputs": {"passed": "${{ steps.unit.outputs.exitCode == 0 }}"},
                    "artifacts": {
                        "junit": {
                            "type": "table",
                            "source": "reports/junit.xml",
                            "label": "JUnit",
                            "showInSummary": True,
                        }
                    },
                }
            ],
        },
        "build": {
            "runsOn": "sandbox",
            "needs": ["lint", "test"],
            "priority": "low",
            "concurrency": {"group": "build"},
            "artifacts": {"produce": ["dist"]},
            "hooks": {
                "pre": [{"name": "Clean", "run": "rm -rf dist"}],
                "onFailure": [
                    {"name": "Notify", "uses": "plugin:@acme/notify/slack", "with": {"to": "#ci"}}
                ],
            },
            "outputs": {"wheel": "${{ steps.pack.outputs.path }}"},
            "steps": [
                {
                    "id": "pack",
                    "name": "Package",
                    "uses": "command:build",
                    "with": {"flags": {"sdist": False}},
                }
            ],
        },
        "release": {
            "runsOn": "local",
            "needs": "build",
            "if": "${{ inputs.dryRun != true }}",
            "steps": [
                {"id": "smoke", "name": "Smoke", "uses": "builtin:noop"},
                {
                    "id": "ok",
                    "name": "Approve release",
                    "uses": "builtin:approval",
                    "with": {
                        "title": "Ship ${{ needs.build.outputs.wheel }}?",
                        "timeoutMs": 172800000,
                    },
                },
                {
                    "name": "Route",
                    "uses": "builtin:gate",
                    "with": {
                        "decision": "steps.ok.outputs.action",
                        "routes": {
                            "approve": "continue",
                            "reject": "fail",
                            "retry": {"restartFrom": "smoke", "context": {"again": True}},
                        },
                        "maxIterations": 2,
                    },
                },
                {
                    "name": "Publish",
                    "uses": "plugin:@acme/pypi/publish",
                    "with": {"channel": "${{ inputs.channel }}"},
                },
                {
                    "name": "Docs",
                    "uses": "workflow:docs-site",
                    "with": {"mode": "fire-and-forget", "inputs": {"ref": "main"}},
                },
            ],
        },
    },
}

BASE: dict[str, Any] = {
    "name": "w",
    "version": "1",
    "on": {"manual": True},
    "jobs": {
        "a": {"runsOn": "local", "steps": [{"name": "s", "run": "true"}]},
        "b": {
            "runsOn": "local",
            "needs": ["a"],
            "steps": [{"id": "x", "name": "x", "uses": "builtin:noop"}],
        },
    },
}


def ci_spec() -> WorkflowSpec:
    spec, problems = load_spec(CI_YAML, source="ci.yml")
    assert problems == []
    assert spec is not None
    return spec


# --- valid specs ---------------------------------------------------------------------------


def test_a_realistic_ci_workflow_in_yaml() -> None:
    spec = ci_spec()
    assert (spec.name, spec.version, spec.priority) == ("ci", "1.2", "high")
    assert spec.on.kinds == ["manual", "push", "webhook", "schedule"]
    assert spec.on.schedule is not None and spec.on.schedule.timezone == "Europe/Berlin"
    assert spec.on.webhook is not None and spec.on.webhook.headers == {"X-Source": "github"}
    assert spec.inputs["channel"].enum == ["stable", "beta"]
    assert spec.inputs["shards"].required and spec.inputs["shards"].default is None
    assert spec.env == {"PYTHONUNBUFFERED": "1", "CI": "true", "LANG": "C.UTF-8"}
    assert spec.concurrency is not None and spec.concurrency.cancel_in_progress

    lint = spec.jobs["lint"].steps[0]
    assert lint.id == "step-0"  # generated from the position
    assert lint.uses == Uses("builtin", "shell") and lint.run is None
    assert lint.with_ == {"command": "ruff check ."}
    assert lint.shell().command_text == "ruff check ."

    test = spec.jobs["test"]
    assert test.retries == RetryPolicy(max=2)  # backoff exp, 1000 ms
    assert test.steps[0].continue_on_error and test.steps[0].env == {"PYTEST_ADDOPTS": "-x"}
    assert test.steps[0].artifacts["junit"].show_in_summary

    build = spec.jobs["build"]
    assert build.needs == ["lint", "test"]
    assert [s.id for s in build.hooks.pre] == ["pre-0"]
    assert [s.id for s in build.hooks.on_failure] == ["onFailure-0"]
    notify = build.hooks.on_failure[0].uses
    assert (notify.kind, notify.plugin_id, notify.handler_id) == ("plugin", "@acme/notify", "slack")
    assert build.steps[0].uses == Uses("command", "build")
    assert build.outputs == {"wheel": "${{ steps.pack.outputs.path }}"}
    assert build.step("pre-0") is build.hooks.pre[0]

    release = spec.jobs["release"]
    assert release.needs == ["build"]  # a string reads as a list
    assert release.if_ == "${{ inputs.dryRun != true }}"
    assert [s.id for s in release.steps] == ["smoke", "ok", "step-2", "step-3", "step-4"]
    assert release.steps[1].approval().timeout_ms == 172800000
    gate = release.steps[2].gate()
    assert gate.max_iterations == 2 and gate.default is None
    assert {k: r.action for k, r in gate.routes.items()} == {
        "approve": "continue",
        "reject": "fail",
        "retry": "restart",
    }
    assert gate.routes["retry"].restart_from == "smoke"
    assert release.steps[4].workflow_call().mode == "fire-and-forget"
    assert str(release.steps[3].uses) == "plugin:@acme/pypi/publish"

    assert spec.job_priority("build") == "low" and spec.job_priority("lint") == "high"
    assert topological_order(spec) == [["lint", "test"], ["build"], ["release"]]


def test_the_same_workflow_as_json_gives_the_same_spec() -> None:
    spec, problems = load_spec(json.dumps(CI_JSON_DATA, indent=2), source="ci.json")
    assert problems == []
    assert spec == ci_spec()


def test_to_data_round_trips_in_canonical_form() -> None:
    spec = ci_spec()
    data = spec.to_data()
    again, problems = validate_spec(json.loads(json.dumps(data)))
    assert problems == [] and again == spec
    lint = data["jobs"]["lint"]["steps"][0]
    assert lint == {
        "id": "step-0",
        "name": "Ruff",
        "uses": "builtin:shell",
        "with": {"command": "ruff check ."},
        "phase": "check",
    }


def test_defaults() -> None:
    spec, problems = validate_spec(copy.deepcopy(BASE))
    assert problems == [] and spec is not None
    assert spec.priority == "normal" and spec.env == {} and spec.inputs == {}
    assert spec.on.kinds == ["manual"] and spec.concurrency is None
    job = spec.jobs["b"]
    assert job.retries is None and DEFAULT_JOB_RETRIES == 0
    assert job.retry_policy() == RetryPolicy(max=0, backoff="exp", initial_interval_ms=1000)
    assert job.retry_policy(default_max=3).max == 3
    assert job.priority is None and spec.job_priority("b") == "normal"
    assert job.continue_on_error is False and job.timeout_ms is None and job.if_ is None
    assert job.hooks.pre == [] and job.outputs == {} and job.artifacts is None
    step = job.steps[0]
    assert step.continue_on_error is False and step.timeout_ms is None and step.with_ == {}

    bare, problems = validate_spec(
        {**BASE, "jobs": {"a": {"runsOn": "local", "steps": [{"name": "nothing"}]}}}
    )
    assert problems == [] and bare is not None
    assert bare.jobs["a"].steps[0].uses == Uses("builtin", "noop")  # neither uses nor run

    gate_data = {"decision": "inputs.go", "routes": {"true": "continue"}}
    only_gate = {"name": "g", "uses": "builtin:gate", "with": gate_data}
    spec, problems = validate_spec(
        {**BASE, "jobs": {"a": {"runsOn": "local", "steps": [only_gate]}}}
    )
    assert problems == [] and spec is not None
    gate = spec.jobs["a"].steps[0].gate()
    assert gate.max_iterations == 3 and gate.default is None

    call = {"name": "c", "uses": "workflow:child"}
    spec, _ = validate_spec({**BASE, "jobs": {"a": {"runsOn": "local", "steps": [call]}}})
    assert spec is not None
    assert spec.jobs["a"].steps[0].workflow_call().mode == "wait"


def test_schedule_catch_up_is_none_unless_latest_is_asked_for() -> None:
    spec = ci_spec()
    assert spec.on.schedule is not None and spec.on.schedule.catch_up == "none"
    doc = mutate((("on", "schedule"), {"cron": "0 3 * * *", "catchUp": "latest"}))
    latest, problems = validate_spec(doc)
    assert problems == [] and latest is not None and latest.on.schedule is not None
    assert latest.on.schedule.catch_up == "latest"
    assert latest.to_data()["on"]["schedule"]["catchUp"] == "latest"


def test_retry_delays() -> None:
    exp = RetryPolicy(max=5)
    delays = [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
    assert [exp.delay_ms(n) for n in range(8)] == delays
    lin = RetryPolicy(max=5, backoff="lin", initial_interval_ms=500, max_interval_ms=1200)
    assert [lin.delay_ms(n) for n in range(4)] == [500, 1000, 1200, 1200]
    assert exp.delay_ms(10_000) == 60000


def test_yaml_1_2_on_yes_and_no_are_strings() -> None:
    text = """\
name: yaml12
version: 1.10
on: { manual: true }
env: { ANSWER: yes, SWITCH: off, COUNTRY: NO }
jobs:
  a:
    runsOn: local
    steps:
      - { name: s, uses: builtin:noop, with: { on: yes, flag: no, real: true, day: 2024-05-01 } }
"""
    data, problems = parse_text(text, source="y.yml")
    assert problems == [] and "on" in data and True not in data
    spec, problems = load_spec(text, source="y.yml")
    assert problems == [] and spec is not None
    assert spec.on.manual is True
    assert spec.env == {"ANSWER": "yes", "SWITCH": "off", "COUNTRY": "NO"}
    assert spec.jobs["a"].steps[0].with_ == {
        "on": "yes",
        "flag": "no",
        "real": True,
        "day": "2024-05-01",  # YAML dates become ISO strings
    }
    assert spec.version == "1.1"  # a YAML number: quote versions

    _, problems = load_spec(text.replace("manual: true", "manual: yes"), source="y.yml")
    assert problems == [{"path": "on.manual", "message": "Input should be a valid boolean"}]


def test_boolean_and_numeric_keys_read_as_strings() -> None:
    step = {
        "name": "g",
        "uses": "builtin:gate",
        "with": {"decision": "inputs.go", "routes": {True: "continue", False: "fail"}},
    }
    spec, problems = validate_spec({**BASE, "jobs": {"7": {"runsOn": "local", "steps": [step]}}})
    assert problems == [] and spec is not None
    assert set(spec.jobs["7"].steps[0].gate().routes) == {"true", "false"}


# --- uses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "target", "plugin_id", "handler_id"),
    [
        ("builtin:shell", "builtin", "shell", None, None),
        ("builtin:noop", "builtin", "noop", None, None),
        ("builtin:approval", "builtin", "approval", None, None),
        ("builtin:gate", "builtin", "gate", None, None),
        (
            "plugin:@acme/reports/publish",
            "plugin",
            "@acme/reports/publish",
            "@acme/reports",
            "publish",
        ),
        ("plugin:reports/publish", "plugin", "reports/publish", "reports", "publish"),
        (
            "plugin:@kb-labs/release/plan.v2",
            "plugin",
            "@kb-labs/release/plan.v2",
            "@kb-labs/release",
            "plan.v2",
        ),
        ("command:release:dry-run", "command", "release:dry-run", None, None),
        ("workflow:nightly", "workflow", "nightly", None, None),
        ("workflow:plugin:@acme/x/tpl", "workflow", "plugin:@acme/x/tpl", None, None),
    ],
)
def test_uses_forms(
    text: str, kind: str, target: str, plugin_id: str | None, handler_id: str | None
) -> None:
    uses = parse_uses(text)
    assert (uses.kind, uses.target, uses.plugin_id, uses.handler_id) == (
        kind,
        target,
        plugin_id,
        handler_id,
    )
    assert str(uses) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unknown uses ''"),
        ("shell", "unknown uses 'shell': use builtin:shell, builtin:noop"),
        ("Builtin:shell", "unknown uses"),
        ("docker:alpine", "unknown uses 'docker:alpine'"),
        ("builtin:", "unknown builtin 'builtin:': the builtins are builtin:shell"),
        ("builtin:sleep", "unknown builtin"),
        ("plugin:@acme/reports", "is not plugin:<pluginId>/<handlerId>"),
        ("plugin:noslash", "is not plugin:<pluginId>/<handlerId>"),
        ("plugin:@acme/x/", "is not plugin:<pluginId>/<handlerId>"),
        ("plugin:/h", "is not plugin:<pluginId>/<handlerId>"),
        ("command:", "is not command:<id>"),
        ("workflow:has space", "is not workflow:<id>"),
    ],
)
def test_bad_uses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        parse_uses(text)
    assert message in str(info.value)


# --- every problem with its path -----------------------------------------------------------

DELETE = object()


def mutate(*changes: tuple[tuple[Any, ...], Any]) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for path, value in changes:
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return doc


def b_steps(*steps: dict[str, Any]) -> tuple[tuple[Any, ...], Any]:
    return (("jobs", "b", "steps"), list(steps))


GATE = {"name": "g", "uses": "builtin:gate"}


def gate_with(**routes: Any) -> dict[str, Any]:
    return {**GATE, "with": {"decision": "steps.x.outputs.action", "routes": routes}}


ERROR_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # workflow
    ("no name", mutate((("name",), DELETE)), "name", "Field required"),
    ("empty name", mutate((("name",), "")), "name", "at least 1 character"),
    ("boolean version", mutate((("version",), True)), "version", "valid string"),
    ("unknown top key", mutate((("tags",), ["x"])), "tags", "unknown key"),
    ("bad workflow id", mutate((("id",), "has space")), "id", "an id is letters"),
    ("no on", mutate((("on",), DELETE)), "on", "Field required"),
    ("empty on", mutate((("on",), {})), "on", "at least one trigger must be defined"),
    ("on as a word", mutate((("on",), "push")), "on", "on is a mapping of triggers"),
    ("manual yes", mutate((("on", "manual"), "yes")), "on.manual", "valid boolean"),
    (
        "push branches",
        mutate((("on", "push"), {"branches": ["main"]})),
        "on.push",
        "branch filters",
    ),
    (
        "schedule list",
        mutate((("on", "schedule"), [{"cron": "* * * * *"}])),
        "on.schedule",
        "not a list",
    ),
    (
        "bad cron",
        mutate((("on", "schedule"), {"cron": "61 * * * *"})),
        "on.schedule.cron",
        "invalid cron expression '61 * * * *'",
    ),
    (
        "cron fields",
        mutate((("on", "schedule"), {"cron": "* * *"})),
        "on.schedule.cron",
        "Wrong number of fields",
    ),
    (
        "bad zone",
        mutate((("on", "schedule"), {"cron": "* * * * *", "timezone": "Mars/Base"})),
        "on.schedule.timezone",
        "unknown time zone 'Mars/Base'",
    ),
    (
        "bad catch-up",
        mutate((("on", "schedule"), {"cron": "* * * * *", "catchUp": "sometimes"})),
        "on.schedule.catchUp",
        "Input should be 'none' or 'latest'",
    ),
    (
        "webhook source",
        mutate((("on", "webhook"), {"source": "github"})),
        "on.webhook.source",
        "unknown key",
    ),
    ("webhook word", mutate((("on", "webhook"), "yes")), "on.webhook", "webhook is true, false or"),
    (
        "input type",
        mutate((("inputs",), {"n": {"type": "int"}})),
        "inputs.n.type",
        "Input should be 'string', 'number' or 'boolean'",
    ),
    (
        "input no type",
        mutate((("inputs",), {"n": {"default": 1}})),
        "inputs.n.type",
        "Field required",
    ),
    (
        "input default type",
        mutate((("inputs",), {"n": {"type": "number", "default": "3"}})),
        "inputs.n.default",
        "default '3' is not a number",
    ),
    (
        "input bool is no number",
        mutate((("inputs",), {"n": {"type": "number", "default": True}})),
        "inputs.n.default",
        "is not a number",
    ),
    (
        "default outside enum",
        mutate((("inputs",), {"n": {"type": "string", "enum": ["a"], "default": "b"}})),
        "inputs.n.default",
        "not one of the enum values",
    ),
    (
        "enum type",
        mutate((("inputs",), {"n": {"type": "boolean", "enum": [1]}})),
        "inputs.n.enum",
        "enum value 1 is not a boolean",
    ),
    (
        "empty enum",
        mutate((("inputs",), {"n": {"type": "string", "enum": []}})),
        "inputs.n.enum",
        "at least 1 item",
    ),
    (
        "input name",
        mutate((("inputs",), {"bad name": {"type": "string"}})),
        "inputs.bad name",
        "invalid key: an id is",
    ),
    ("env list value", mutate((("env",), {"A": [1]})), "env.A", "valid string"),
    ("env name", mutate((("env",), {"1A": "x"})), "env.1A", "invalid key: a name is"),
    ("secret name", mutate((("secrets",), ["has-dash"])), "secrets[0]", "a name is letters"),
    (
        "empty group",
        mutate((("concurrency",), {"group": ""})),
        "concurrency.group",
        "at least 1 character",
    ),
    (
        "long group",
        mutate((("concurrency",), {"group": "g" * 257})),
        "concurrency.group",
        "at most 256",
    ),
    ("priority", mutate((("priority",), "urgent")), "priority", "'high', 'normal' or 'low'"),
    (
        "isolation",
        mutate((("isolation",), "none")),
        "isolation",
        "'strict', 'balanced' or 'relaxed'",
    ),
    ("target key", mutate((("target",), {"host": "x"})), "target.host", "unknown key"),
    (
        "phase label",
        mutate((("phases",), {"p": {"label": ""}})),
        "phases.p.label",
        "at least 1 character",
    ),
    ("no jobs", mutate((("jobs",), {})), "jobs", "at least 1 item"),
    # jobs
    (
        "job id",
        mutate((("jobs", "bad id!"), {"runsOn": "local", "steps": [{"name": "s"}]})),
        "jobs.bad id!",
        "invalid key: an id is 1-64 letters",
    ),
    ("runsOn", mutate((("jobs", "a", "runsOn"), "cloud")), "jobs.a.runsOn", "'local' or 'sandbox'"),
    ("no steps", mutate((("jobs", "a", "steps"), [])), "jobs.a.steps", "at least 1 item"),
    (
        "step as text",
        mutate((("jobs", "a", "steps"), ["echo hi"])),
        "jobs.a.steps[0]",
        "valid dictionary",
    ),
    (
        "job timeout",
        mutate((("jobs", "a", "timeoutMs"), 86_400_001)),
        "jobs.a.timeoutMs",
        "less than or equal to 86400000",
    ),
    (
        "job timeout text",
        mutate((("jobs", "a", "timeoutMs"), "5")),
        "jobs.a.timeoutMs",
        "valid integer",
    ),
    (
        "retries max",
        mutate((("jobs", "a", "retries"), {"max": -1})),
        "jobs.a.retries.max",
        "greater than or equal to 0",
    ),
    (
        "retries no max",
        mutate((("jobs", "a", "retries"), {"backoff": "lin"})),
        "jobs.a.retries.max",
        "Field required",
    ),
    (
        "backoff",
        mutate((("jobs", "a", "retries"), {"max": 1, "backoff": "fib"})),
        "jobs.a.retries.backoff",
        "'exp' or 'lin'",
    ),
    (
        "interval",
        mutate((("jobs", "a", "retries"), {"max": 1, "initialIntervalMs": 0})),
        "jobs.a.retries.initialIntervalMs",
        "greater than 0",
    ),
    (
        "cap below initial",
        mutate(
            (("jobs", "a", "retries"), {"max": 1, "initialIntervalMs": 5000, "maxIntervalMs": 100})
        ),
        "jobs.a.retries.maxIntervalMs",
        "below initialIntervalMs",
    ),
    ("retries number", mutate((("jobs", "a", "retries"), 3)), "jobs.a.retries", "valid dictionary"),
    (
        "job continueOnError",
        mutate((("jobs", "a", "continueOnError"), "no")),
        "jobs.a.continueOnError",
        "valid boolean",
    ),
    (
        "unknown need",
        mutate((("jobs", "b", "needs"), ["zz"])),
        "jobs.b.needs[0]",
        "unknown job 'zz' (jobs: a, b)",
    ),
    (
        "unknown need string",
        mutate((("jobs", "b", "needs"), "zz")),
        "jobs.b.needs",
        "unknown job 'zz'",
    ),
    (
        "need twice",
        mutate((("jobs", "b", "needs"), ["a", "a"])),
        "jobs.b.needs[1]",
        "'a' is listed twice",
    ),
    (
        "need empty",
        mutate((("jobs", "b", "needs"), [""])),
        "jobs.b.needs[0]",
        "at least 1 character",
    ),
    (
        "hook name",
        mutate((("jobs", "a", "hooks"), {"always": []})),
        "jobs.a.hooks.always",
        "unknown key",
    ),
    (
        "merge from",
        mutate((("jobs", "a", "artifacts"), {"merge": {"strategy": "append", "from": []}})),
        "jobs.a.artifacts.merge.from",
        "at least 1 item",
    ),
    (
        "merge strategy",
        mutate(
            (("jobs", "a", "artifacts"), {"merge": {"strategy": "zip", "from": [{"runId": "r"}]}})
        ),
        "jobs.a.artifacts.merge.strategy",
        "'append', 'overwrite' or 'json-merge'",
    ),
    (
        "job concurrency",
        mutate((("jobs", "a", "concurrency"), {"cancelInProgress": True})),
        "jobs.a.concurrency.group",
        "Field required",
    ),
    (
        "job output name",
        mutate((("jobs", "a", "outputs"), {"a b": "x"})),
        "jobs.a.outputs.a b",
        "invalid key",
    ),
    # steps
    (
        "uses word",
        mutate(b_steps({"name": "s", "uses": "shell"})),
        "jobs.b.steps[0].uses",
        "unknown uses 'shell': use builtin:shell",
    ),
    (
        "uses builtin",
        mutate(b_steps({"name": "s", "uses": "builtin:sleep"})),
        "jobs.b.steps[0].uses",
        "unknown builtin 'builtin:sleep'",
    ),
    (
        "uses plugin",
        mutate(b_steps({"name": "s", "uses": "plugin:@acme/reports"})),
        "jobs.b.steps[0].uses",
        "is not plugin:<pluginId>/<handlerId>",
    ),
    (
        "uses number",
        mutate(b_steps({"name": "s", "uses": 5})),
        "jobs.b.steps[0].uses",
        "uses is a string",
    ),
    (
        "step id",
        mutate(b_steps({"id": "has space", "name": "s"})),
        "jobs.b.steps[0].id",
        "an id is 1-64 letters",
    ),
    (
        "step id long",
        mutate(b_steps({"id": "x" * 65, "name": "s"})),
        "jobs.b.steps[0].id",
        "an id is 1-64",
    ),
    ("step name", mutate(b_steps({"id": "s", "name": ""})), "jobs.b.steps[0].name", "at least 1"),
    (
        "step typo",
        mutate(b_steps({"name": "s", "contineOnError": True})),
        "jobs.b.steps[0].contineOnError",
        "unknown key",
    ),
    (
        "step continueOnError",
        mutate(b_steps({"name": "s", "continueOnError": "yes"})),
        "jobs.b.steps[0].continueOnError",
        "valid boolean",
    ),
    (
        "step timeout",
        mutate(b_steps({"name": "s", "timeoutMs": 0})),
        "jobs.b.steps[0].timeoutMs",
        "greater than or equal to 1",
    ),
    (
        "step with list",
        mutate(b_steps({"name": "s", "with": ["x"]})),
        "jobs.b.steps[0].with",
        "valid dictionary",
    ),
    (
        "run with list",
        mutate((("jobs", "a", "steps", 0, "with"), [])),
        "jobs.a.steps[0].with",
        "valid dictionary",
    ),
    (
        "step if list",
        mutate(b_steps({"name": "s", "if": ["x"]})),
        "jobs.b.steps[0].if",
        "valid string",
    ),
    (
        "step artifact type",
        mutate(
            b_steps({"name": "s", "artifacts": {"r": {"type": "pdf", "source": "a", "label": "A"}}})
        ),
        "jobs.b.steps[0].artifacts.r.type",
        "'markdown', 'issues'",
    ),
    (
        "step progress",
        mutate(b_steps({"name": "s", "progress": {"source": "x"}})),
        "jobs.b.steps[0].progress.format",
        "Field required",
    ),
    (
        "run and uses",
        mutate((("jobs", "a", "steps", 0, "uses"), "builtin:shell")),
        "jobs.a.steps[0].run",
        "run and uses are both set",
    ),
    (
        "run and command",
        mutate((("jobs", "a", "steps", 0, "with"), {"command": "ls"})),
        "jobs.a.steps[0].run",
        "run and with.command are both set",
    ),
    (
        "run blank",
        mutate((("jobs", "a", "steps", 0, "run"), "  ")),
        "jobs.a.steps[0].run",
        "the command is empty",
    ),
    (
        "run number",
        mutate((("jobs", "a", "steps", 0, "run"), 5)),
        "jobs.a.steps[0].run",
        "valid string",
    ),
    (
        "shell without command",
        mutate(b_steps({"name": "s", "uses": "builtin:shell"})),
        "jobs.b.steps[0].with.command",
        "builtin:shell needs a command",
    ),
    (
        "shell empty command",
        mutate(b_steps({"name": "s", "uses": "builtin:shell", "with": {"command": ""}})),
        "jobs.b.steps[0].with.command",
        "the command is empty",
    ),
    (
        "shell two commands",
        mutate(
            b_steps({"name": "s", "uses": "builtin:shell", "with": {"command": "a", "script": "b"}})
        ),
        "jobs.b.steps[0].with.script",
        "with.command is already the command",
    ),
    (
        "shell with key",
        mutate(
            b_steps({"name": "s", "uses": "builtin:shell", "with": {"command": "a", "cwd": "/"}})
        ),
        "jobs.b.steps[0].with.cwd",
        "unknown key",
    ),
    (
        "shell run key",
        mutate((("jobs", "a", "steps", 0, "with"), {"cwd": "/"})),
        "jobs.a.steps[0].with.cwd",
        "unknown key",
    ),
    (
        "shell timeout",
        mutate(b_steps({"name": "s", "run": "x", "with": {"timeout": -1}})),
        "jobs.b.steps[0].with.timeout",
        "greater than or equal to 1",
    ),
    (
        "duplicate step id",
        mutate(b_steps({"id": "x", "name": "a"}, {"id": "x", "name": "b"})),
        "jobs.b.steps[1].id",
        "duplicate step id 'x', also used by jobs.b.steps[0]",
    ),
    (
        "duplicate generated id",
        mutate(b_steps({"name": "a"}, {"id": "step-0", "name": "b"})),
        "jobs.b.steps[1].id",
        "also used by jobs.b.steps[0] (generated there",
    ),
    (
        "duplicate in hooks",
        mutate((("jobs", "b", "hooks"), {"post": [{"id": "x", "name": "p"}]})),
        "jobs.b.hooks.post[0].id",
        "duplicate step id 'x', also used by jobs.b.steps[0]",
    ),
    (
        "hook step",
        mutate((("jobs", "b", "hooks"), {"pre": [{"name": "p", "uses": "nope"}]})),
        "jobs.b.hooks.pre[0].uses",
        "unknown uses 'nope'",
    ),
    (
        "approval step timeout",
        mutate(b_steps({"name": "s", "uses": "builtin:approval", "timeoutMs": 5})),
        "jobs.b.steps[0].timeoutMs",
        "an approval's wait limit is with.timeoutMs",
    ),
    (
        "approval timeout",
        mutate(b_steps({"name": "s", "uses": "builtin:approval", "with": {"timeoutMs": 0}})),
        "jobs.b.steps[0].with.timeoutMs",
        "greater than or equal to 1",
    ),
    (
        "approval key",
        mutate(b_steps({"name": "s", "uses": "builtin:approval", "with": {"approvers": ["x"]}})),
        "jobs.b.steps[0].with.approvers",
        "unknown key",
    ),
    (
        "gate decision",
        mutate(b_steps({**GATE, "with": {"routes": {}}})),
        "jobs.b.steps[0].with.decision",
        "Field required",
    ),
    (
        "gate routes",
        mutate(b_steps({**GATE, "with": {"decision": "d"}})),
        "jobs.b.steps[0].with.routes",
        "Field required",
    ),
    (
        "gate route word",
        mutate(b_steps(gate_with(r="contine"))),
        "jobs.b.steps[0].with.routes.r",
        "a route is continue, fail or {restartFrom, context?}, not 'contine'",
    ),
    (
        "gate route no target",
        mutate(b_steps(gate_with(r={"context": {}}))),
        "jobs.b.steps[0].with.routes.r",
        "restartFrom is missing",
    ),
    (
        "gate route key",
        mutate(b_steps({"id": "x", "name": "x"}, gate_with(r={"restartFrom": "x", "goto": 1}))),
        "jobs.b.steps[1].with.routes.r.goto",
        "unknown key",
    ),
    (
        "gate unknown target",
        mutate(b_steps({"id": "x", "name": "x"}, gate_with(r={"restartFrom": "nope"}))),
        "jobs.b.steps[1].with.routes.r.restartFrom",
        "unknown step 'nope' (steps here: x, step-1)",
    ),
    (
        "gate later target",
        mutate(b_steps(gate_with(r={"restartFrom": "y"}), {"id": "y", "name": "y"})),
        "jobs.b.steps[0].with.routes.r.restartFrom",
        "step 'y' comes after this gate",
    ),
    (
        "gate target in other list",
        mutate((("jobs", "b", "hooks"), {"post": [gate_with(r={"restartFrom": "x"})]})),
        "jobs.b.hooks.post[0].with.routes.r.restartFrom",
        "unknown step 'x'",
    ),
    (
        "gate iterations",
        mutate(
            b_steps({**gate_with(), "with": {"decision": "d", "routes": {}, "maxIterations": 0}})
        ),
        "jobs.b.steps[0].with.maxIterations",
        "greater than or equal to 1",
    ),
    (
        "gate default",
        mutate(
            b_steps({**gate_with(), "with": {"decision": "d", "routes": {}, "default": "restart"}})
        ),
        "jobs.b.steps[0].with.default",
        "'continue' or 'fail'",
    ),
    (
        "workflow mode",
        mutate(b_steps({"name": "s", "uses": "workflow:child", "with": {"mode": "async"}})),
        "jobs.b.steps[0].with.mode",
        "'wait' or 'fire-and-forget'",
    ),
    (
        "workflow key",
        mutate(b_steps({"name": "s", "uses": "workflow:child", "with": {"depth": 3}})),
        "jobs.b.steps[0].with.depth",
        "unknown key",
    ),
]


@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_each_error_names_its_path(doc: dict[str, Any], path: str, message: str) -> None:
    spec, problems = validate_spec(doc)
    assert spec is None
    matching = [p for p in problems if p["path"] == path]
    assert matching, problems
    assert any(message in p["message"] for p in matching), problems


def test_every_problem_is_reported_at_once() -> None:
    doc = mutate(
        (("version",), None),
        (("jobs", "a", "steps", 0, "uses"), "builtin:shell"),
        (("jobs", "b", "needs"), ["a", "ghost"]),
        (("jobs", "b", "steps"), [{"name": "s", "uses": "docker:x"}, gate_with(r="maybe")]),
        (("jobs", "c"), {"runsOn": "local", "needs": "c", "steps": [{"name": "c"}]}),
    )
    spec, problems = validate_spec(doc)
    assert spec is None
    assert {p["path"] for p in problems} == {
        "version",
        "jobs.a.steps[0].run",
        "jobs.b.needs[1]",
        "jobs.b.steps[0].uses",
        "jobs.b.steps[1].with.routes.r",
        "jobs.c.needs",
    }


# --- needs: cycles and order -----------------------------------------------------------------


def jobs_with_needs(needs: dict[str, list[str]]) -> dict[str, Any]:
    return {
        **BASE,
        "jobs": {
            job: {"runsOn": "local", "needs": deps, "steps": [{"name": "s"}]}
            for job, deps in needs.items()
        },
    }


def test_a_cycle_is_refused_with_its_path() -> None:
    spec, problems = validate_spec(
        jobs_with_needs({"a": ["c"], "b": ["a"], "c": ["b"], "d": ["a"]})
    )
    assert spec is None
    assert problems == [{"path": "jobs.a.needs", "message": "needs form a cycle: a → c → b → a"}]


def test_a_job_needing_itself_is_a_cycle() -> None:
    _, problems = validate_spec(jobs_with_needs({"a": ["a"]}))
    assert problems == [{"path": "jobs.a.needs", "message": "needs form a cycle: a → a"}]


def test_separate_cycles_are_each_reported() -> None:
    _, problems = validate_spec(
        jobs_with_needs({"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"], "e": []})
    )
    assert [p["message"] for p in problems] == [
        "needs form a cycle: a → b → a",
        "needs form a cycle: c → d → c",
    ]


def test_topological_levels() -> None:
    spec, problems = validate_spec(
        jobs_with_needs(
            {
                "deploy": ["build", "docs"],
                "build": ["lint", "test"],
                "docs": [],
                "lint": [],
                "test": ["lint"],
            }
        )
    )
    assert problems == [] and spec is not None
    assert topological_order(spec) == [["docs", "lint"], ["test"], ["build"], ["deploy"]]


# --- text: syntax errors and hostile input ---------------------------------------------------


def test_yaml_syntax_error_has_line_and_column() -> None:
    spec, problems = load_spec("name: x\non: {manual: true]\n", source="bad.yml")
    assert spec is None
    assert problems == [
        {
            "path": "",
            "message": "bad.yml: invalid YAML at line 2, column 18: "
            "while parsing a flow mapping, expected ',' or '}', but got ']'",
        }
    ]


def test_yaml_duplicate_key_is_an_error() -> None:
    _, problems = load_spec("name: x\nname: y\n", source="dup.yml")
    assert len(problems) == 1
    assert problems[0]["message"].startswith("dup.yml: invalid YAML at line 2, column 1:")
    assert "duplicate key" in problems[0]["message"]


def test_json_errors() -> None:
    _, problems = load_spec('{"name": "x",\n "jobs": }', source="w.json")
    assert problems == [
        {
            "path": "",
            "message": "w.json: invalid JSON at line 2, column 10: Expecting value",
        }
    ]
    _, problems = load_spec('{"name": "x", "name": "y"}', source="w.json")
    assert problems == [{"path": "", "message": "w.json: invalid JSON: duplicate key 'name'"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "w.yml is empty"),
        ("  \n", "w.yml is empty"),
        ("- a\n- b\n", "a workflow spec is a mapping (object)"),
        ("just text", "a workflow spec is a mapping (object)"),
        (
            "a: 1\n---\nb: 2\n",
            "w.yml: invalid YAML at line 2, column 1: expected a single document",
        ),
        ("a: *nowhere\n", "w.yml: invalid YAML at line 1"),
        ("a: !!python/object:os.system x\n", "w.yml: invalid YAML at line 1"),
        ("\x00", "w.yml: invalid YAML"),
    ],
)
def test_bad_documents(text: str, message: str) -> None:
    spec, problems = load_spec(text, source="w.yml")
    assert spec is None and len(problems) == 1
    assert problems[0]["path"] == "" and problems[0]["message"].startswith(message)


def test_an_alias_bomb_is_refused() -> None:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 7):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]")
    _, problems = load_spec("\n".join(lines) + "\n", source="bomb.yml")
    assert problems == [{"path": "", "message": "the spec has more than 100000 values"}]


WRONG_VALUES: list[Any] = [None, 0, 1.5, "x", "", [], [1], {}, {"k": 1}, True]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


def test_no_wrong_value_anywhere_makes_validation_raise() -> None:
    checked = 0
    for path in _paths(CI_JSON_DATA):
        for wrong in WRONG_VALUES:
            doc = copy.deepcopy(CI_JSON_DATA)
            node: Any = doc
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = wrong
            spec, problems = validate_spec(doc)  # must not raise
            assert (spec is None) == bool(problems)
            assert all(isinstance(p["path"], str) and p["message"] for p in problems)
            checked += 1
    assert checked > 1000


def test_json_schema_is_available() -> None:
    schema = WorkflowSpec.model_json_schema(by_alias=True)
    assert {"name", "version", "on", "jobs"} <= set(schema["required"])
