"""kb.plugin/3 manifests: what is accepted, and every problem reported with its path."""

from __future__ import annotations

import copy

import pytest

from kblabs.plugins.manifest import validate_manifest

FULL = {
    "schema": "kb.plugin/3",
    "id": "@kb-labs/release",
    "version": "1.2.3-beta.1",
    "configSection": "release",
    "display": {"name": "Release", "tags": ["ci"]},
    "permissions": {
        "fs": {"read": ["src/"], "write": [".kb/output/"]},
        "network": {"fetch": ["https://api.github.com/*"]},
        "env": {"read": ["GITHUB_*"]},
        "platform": {"llm": True, "cache": ["release:"]},
        "shell": {"allow": ["git"]},
        "invoke": {"allow": ["@kb-labs/*"]},
        "quotas": {"timeoutMs": 5000, "memoryMb": 256, "cpuMs": 2000},
    },
    "dependencies": [{"id": "@kb-labs/git", "version": ">=1.0"}],
    "platform": {"requires": ["llm"], "optional": ["cache"]},
    "lifecycle": {"onLoad": "kb_release.hooks:on_load"},
    "cli": {
        "commands": [
            {
                "id": "dry-run",
                "group": "release",
                "handler": "kb_release.cli:dry_run",
                "flags": [{"name": "tag", "alias": "t", "required": True}],
            }
        ]
    },
    "rest": {
        "basePath": "/v1/plugins/release",
        "routes": [
            {
                "method": "POST",
                "path": "/plan",
                "handler": "kb_release.rest:plan",
                "input": {"type": "object"},
                "errors": [{"code": "NO_TAGS", "http": 409}],
                "timeoutMs": 1000,
            },
        ],
    },
    "workflows": {"handlers": [{"id": "plan", "handler": "kb_release.wf:plan"}]},
    "webhooks": {"handlers": [{"event": "github:push", "handler": "kb_release.hooks:push"}]},
    "jobs": {"handlers": [{"id": "tag", "handler": "kb_release.jobs:tag"}]},
    "cron": {
        "schedules": [
            {
                "id": "nightly",
                "schedule": "0 3 * * *",
                "job": {"type": "plugin:job", "payload": {"id": "tag"}},
            }
        ]
    },
    "studio": {
        "version": 2,
        "pages": [
            {"id": "p", "title": "Release", "route": "/release", "entry": "kb_release.studio:page"}
        ],
    },
}


def broken(**changes) -> dict:
    data = copy.deepcopy(FULL)
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return data


def test_a_complete_manifest_is_accepted():
    manifest, problems = validate_manifest(FULL)
    assert problems == []
    assert manifest.id == "@kb-labs/release"
    assert manifest.rest.routes[0].timeout_ms == 1000
    assert manifest.provides() == [
        "cli-command",
        "rest-route",
        "workflow",
        "webhook",
        "job",
        "cron",
        "studio-widget",
    ]


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"schema": "kb.plugin/2"}, "schema"),
        ({"id": "release"}, "id"),
        ({"version": "one"}, "version"),
        ({"rest__routes__0__handler": "./plan.js#default"}, "rest.routes[0].handler"),
        ({"rest__routes__0__method": "FETCH"}, "rest.routes[0].method"),
        ({"rest__routes__0__errors__0__http": 302}, "rest.routes[0].errors[0].http"),
        ({"cli__commands__0__id": "Dry Run"}, "cli.commands[0].id"),
        ({"cli__commands__0__flags__0__alias": "tt"}, "cli.commands[0].flags[0].alias"),
        ({"cron__schedules__0__job__type": "shell"}, "cron.schedules[0].job.type"),
        ({"platform__requires": ["teleporter"]}, "platform.requires[0]"),
        ({"lifecycle__onLoad": "nope"}, "lifecycle.onLoad"),
        ({"permissions__quotas__memoryMb": 1}, "permissions.quotas.memoryMb"),
        ({"rest__routes__0__hander": "x:y"}, "rest.routes[0].hander"),
    ],
)
def test_each_problem_names_its_path(changes, path):
    manifest, problems = validate_manifest(broken(**changes))
    assert manifest is None
    assert path in [p["path"] for p in problems], problems


def test_all_problems_are_reported_together():
    _, problems = validate_manifest(broken(id="x", version="y", schema="z"))
    assert {"id", "version", "schema"} <= {p["path"] for p in problems}


def test_duplicates_are_refused():
    data = copy.deepcopy(FULL)
    data["rest"]["routes"].append(dict(data["rest"]["routes"][0]))
    data["cli"]["commands"].append(dict(data["cli"]["commands"][0]))
    _, problems = validate_manifest(data)
    assert {p["path"] for p in problems} == {"rest.routes[1]", "cli.commands[1].id"}


def test_not_an_object():
    assert validate_manifest([1]) == (
        None,
        [{"path": "", "message": "a manifest is a JSON object"}],
    )
