"""`@kb-labs/commit`: a Conventional Commits message for the staged diff, from the LLM
(tier small), against the OpenAI-compatible server the test runs on loopback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import base_env, run_cli, running_app
from tests.openai_server import OpenAIServer, completion
from tests.openai_server import openai_server as openai_server

pytestmark = pytest.mark.anyio

ROUTE = "/api/v1/plugins/@kb-labs/commit/propose"
GOOD = "feat(greeter): say hello by name\n\nThe greeter now takes a name argument."


def configure_llm(project: Path, server: OpenAIServer) -> None:
    config = {
        "platform": {
            "adapters": {"llm": "openai"},
            "adapterOptions": {
                "llm": {
                    "baseUrl": server.url,
                    "tiers": {"small": "tiny-model", "medium": "mid-model"},
                }
            },
        }
    }
    (project / "kb.config.json").write_text(json.dumps(config))


def git(project: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "HOME": str(project),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        ["git", *args], cwd=project, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def staged_repo(project: Path) -> None:
    git(project, "init", "-q")
    (project / "greeter.py").write_text("def greet():\n    return 'hello'\n")
    git(project, "add", "greeter.py")
    git(project, "commit", "-q", "-m", "chore: start")
    (project / "greeter.py").write_text("def greet(name):\n    return f'hello {name}'\n")
    git(project, "add", "greeter.py")


def test_cli_proposes_and_applies_a_message(project: Path, openai_server: OpenAIServer):
    configure_llm(project, openai_server)
    staged_repo(project)
    env = {
        **base_env(project),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    openai_server.script("chat", completion(f"```\n{GOOD}\n```"), completion(GOOD))

    proposed = run_cli("commit", project=project, env=env)
    assert proposed.returncode == 0, proposed.stderr
    assert proposed.stdout.strip() == GOOD  # fences removed
    [request] = openai_server.requests("chat")
    assert request.body["model"] == "tiny-model"  # tier small
    prompt = json.dumps(request.body["messages"])
    assert "hello {name}" in prompt and "greeter.py" in prompt

    applied = run_cli("commit", "--apply", project=project, env=env)
    assert applied.returncode == 0, applied.stderr
    assert git(project, "log", "-1", "--format=%s").strip() == GOOD.splitlines()[0]

    nothing = run_cli("commit", project=project, env=env)
    assert nothing.returncode == 1 and "NOTHING_STAGED" in nothing.stderr


def test_without_an_llm_the_command_says_how_to_configure_one(project: Path):
    staged_repo(project)
    result = run_cli("commit", project=project)
    assert result.returncode == 1
    assert "LLM_NOT_CONFIGURED" in result.stderr and "platform.adapters.llm" in result.stderr


def test_outside_a_repository(project: Path, openai_server: OpenAIServer):
    configure_llm(project, openai_server)
    result = run_cli("commit", project=project)
    assert result.returncode == 1 and "NOT_A_GIT_REPOSITORY" in result.stderr
    assert openai_server.requests("chat") == []


async def test_rest_route_retries_an_invalid_header_once(
    project: Path, openai_server: OpenAIServer
):
    configure_llm(project, openai_server)
    openai_server.script(
        "chat",
        completion("Updated the greeter to take a name."),  # not Conventional Commits
        completion(GOOD),
        completion("still not a conventional header"),
        completion("nor this"),
    )
    async with running_app(project) as api:
        client = api.client
        diff = "diff --git a/greeter.py b/greeter.py\n+def greet(name):\n"
        fixed = await client.post(ROUTE, json={"diff": diff}, headers=api.auth)
        assert fixed.status_code == 200, fixed.text
        result = fixed.json()["data"]
        assert result["valid"] is True and result["attempts"] == 2
        assert result["subject"] == "feat(greeter): say hello by name"
        retry = openai_server.requests("chat")[1].body["messages"]
        assert "does not follow" in json.dumps(retry)

        stubborn = await client.post(ROUTE, json={"diff": diff}, headers=api.auth)
        assert stubborn.json()["data"]["valid"] is False  # shown, flagged, not hidden

        empty = await client.post(ROUTE, json={"diff": "  "}, headers=api.auth)
        assert empty.status_code == 400 and empty.json()["error"]["code"] == "VALIDATION_ERROR"
        outside = await client.post(ROUTE, json={"path": "../.."}, headers=api.auth)
        assert outside.status_code == 400

        # every LLM call of the plugin is in the usage report, with its tokens
        usage = await client.get("/api/v1/adapters/llm/usage", headers=api.auth)
        assert usage.status_code == 200, usage.text
        report = usage.json()["data"]
        assert report["totalCalls"] == 4 and report["failedCalls"] == 0
        sent = sum(r.body["messages"].__len__() > 0 for r in openai_server.requests("chat"))
        assert sent == 4 and report["promptTokens"] > 0 and report["completionTokens"] > 0
        assert report["byModel"]["tiny-model"]["calls"] == 4
        assert report["byTier"]["small"]["calls"] == 4
