"""`python -m kblabs workflow …` against a real server process: catalog, runs that
succeed and fail, --wait/--follow, show, logs, approvals, cancel, errors, --json shapes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, base_env, free_port, run_cli

pytestmark = pytest.mark.live

WORKFLOWS = {
    "hello": """
name: Hello
version: "1"
on: {manual: true}
inputs:
  who: {type: string, default: world}
jobs:
  build:
    steps:
      - id: one
        name: Say hello
        run: echo "hello ${{ inputs.who }}"; echo "to stderr" >&2
      - id: two
        run: echo second
""",
    "broken": """
name: Broken
version: "1"
on: {manual: true}
jobs:
  build:
    steps:
      - id: boom
        run: echo "about to fail"; exit 3
      - id: never
        run: echo never
""",
    "gated": """
name: Gated
version: "1"
on: {manual: true}
jobs:
  ship:
    steps:
      - id: ok
        name: Approve
        uses: builtin:approval
        with: {title: "Ship it?"}
      - id: after
        run: echo shipped
""",
}


@pytest.fixture
def server(live_server_factory, project: Path) -> LiveServer:
    folder = project / ".kb" / "workflows"
    folder.mkdir(parents=True)
    for name, text in WORKFLOWS.items():
        (folder / f"{name}.yml").write_text(text)
    return live_server_factory().start()


def cli(server: LiveServer, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The CLI as a user runs it in the project: server from KB_GATEWAY_URL, token from
    the data dir's admin.token."""
    environ = base_env(server.project, KB_GATEWAY_URL=server.url, **env)
    return run_cli(*args, project=server.project, env=environ, timeout=60)


def cli_json(server: LiveServer, *args: str, code: int = 0) -> dict:
    result = cli(server, "--json", *args)
    assert result.returncode == code, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # exactly one JSON object
    return json.loads(lines[0])


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_list(server: LiveServer) -> None:
    result = cli(server, "workflow", "list")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["id", "name", "source", "status"]
    assert ["hello", "Hello", "standalone", "active"] in rows
    assert ["gated", "Gated", "standalone", "active"] in rows

    listed = cli_json(server, "workflow", "list", "--source", "standalone")
    assert listed["ok"] is True and listed["total"] == 3
    assert {w["id"] for w in listed["workflows"]} == {"hello", "broken", "gated"}
    assert {"id", "name", "source", "status"} <= set(listed["workflows"][0])
    from_plugins = cli_json(server, "workflow", "list", "--source", "manifest")["workflows"]
    assert {w["id"] for w in from_plugins} == {"@kb-labs/mind/index", "@kb-labs/mind/query"}


def test_run_wait_success_then_show_logs_runs(server: LiveServer) -> None:
    result = cli(server, "workflow", "run", "hello", "--input", "who=cli", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    run_id = lines[0].strip()
    assert len(run_id) == 36
    assert "build/one: success" in result.stdout  # progress, one line per change off a TTY
    assert lines[-1].startswith(f"run {run_id} success")

    shown = cli(server, "workflow", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert f"run {run_id}" in shown.stdout and "hello" in shown.stdout
    assert "build  success" in shown.stdout
    assert "one (Say hello)  success" in shown.stdout and "two  success" in shown.stdout

    run = cli_json(server, "workflow", "show", run_id)["run"]
    assert run["id"] == run_id and run["status"] == "success"
    assert run["inputs"] == {"who": "cli"}
    assert [s["stepId"] for s in run["jobs"][0]["steps"]] == ["one", "two"]

    logs = cli(server, "workflow", "logs", run_id)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == [
        "build/one | hello cli",
        "build/one | to stderr",
        "build/two | second",
    ]
    only_two = cli(server, "workflow", "logs", run_id, "--job", "build", "--step", "two")
    assert only_two.stdout.splitlines() == ["build/two | second"]
    logged = cli_json(server, "workflow", "logs", run_id, "--step", "one")
    assert logged["ok"] is True and logged["runId"] == run_id and logged["status"] == "success"
    assert [(line["message"], line["stream"]) for line in logged["logs"]] == [
        ("hello cli", "stdout"),
        ("to stderr", "stderr"),
    ]
    missing = cli(server, "workflow", "logs", run_id, "--step", "nope")
    assert missing.returncode == 1
    assert f"STEP_NOT_FOUND: run {run_id} has no step nope" in missing.stderr

    waited = cli_json(server, "workflow", "run", "hello", "--wait")
    assert waited["ok"] is True and waited["status"] == "success" and waited["created"] is True
    assert waited["run"]["id"] == waited["runId"] and "logs" not in waited

    runs = cli(server, "workflow", "runs", "--workflow", "hello")
    assert runs.returncode == 0, runs.stderr
    assert run_id in runs.stdout and waited["runId"] in runs.stdout
    assert "2 of 2 run(s)" in runs.stdout
    listed = cli_json(server, "workflow", "runs", "--limit", "1")
    assert listed["ok"] is True and listed["total"] == 2 and len(listed["runs"]) == 1
    assert listed["runs"][0]["id"] == waited["runId"]  # newest first


def test_run_without_wait_prints_the_id_and_follow_prints_logs(server: LiveServer) -> None:
    started = cli(server, "workflow", "run", "hello")
    assert started.returncode == 0, started.stderr
    assert len(started.stdout.strip()) == 36 and "\n" not in started.stdout.strip()
    shape = cli_json(server, "workflow", "run", "hello", "--idempotency-key", "k-1")
    assert shape == {"ok": True, "runId": shape["runId"], "status": "queued", "created": True}
    again = cli_json(server, "workflow", "run", "hello", "--idempotency-key", "k-1")
    assert again["runId"] == shape["runId"] and again["created"] is False

    followed = cli(server, "workflow", "run", "hello", "--inputs-json", '{"who": "f"}', "--follow")
    assert followed.returncode == 0, followed.stdout + followed.stderr
    out = followed.stdout.splitlines()
    assert [line for line in out if " | " in line] == [
        "build/one | hello f",
        "build/one | to stderr",
        "build/two | second",
    ]
    assert out[-1].startswith(f"run {out[0]} success")

    streamed = cli_json(server, "workflow", "run", "hello", "--follow")
    assert streamed["ok"] is True and streamed["status"] == "success"
    assert [line["message"] for line in streamed["logs"]] == ["hello world", "to stderr", "second"]

    bad_input = cli(server, "workflow", "run", "hello", "--input", "no-equals-sign")
    assert bad_input.returncode == 2
    assert "USAGE: --input takes KEY=VALUE" in bad_input.stderr
    unknown = cli(server, "workflow", "run", "hello", "--input", "nope=1")
    assert unknown.returncode == 1
    assert "VALIDATION_ERROR: inputs.nope: unknown input" in unknown.stderr


def test_failing_run_exits_1(server: LiveServer) -> None:
    result = cli(server, "workflow", "run", "broken", "--wait")
    assert result.returncode == 1, result.stdout + result.stderr
    run_id = result.stdout.splitlines()[0]
    assert "build/boom: failed" in result.stdout
    last = result.stdout.splitlines()[-1]
    assert last.startswith(f"run {run_id} failed") and "exitCode: 3" in last

    failed = cli_json(server, "workflow", "run", "broken", "--follow", code=1)
    assert failed["ok"] is False and failed["status"] == "failed"
    assert failed["error"]["code"] == "RUN_FAILED"
    assert "exitCode: 3" in failed["error"]["message"]
    assert [line["message"] for line in failed["logs"]] == ["about to fail"]
    steps = failed["run"]["jobs"][0]["steps"]
    assert [s["stepId"] for s in steps] == ["boom", "never"]
    assert steps[0]["status"] == "failed" and steps[1]["status"] != "success"

    shown = cli(server, "workflow", "show", run_id)
    assert "boom  failed" in shown.stdout and "Step handler reported failure" in shown.stdout


def test_approvals_approve_and_reject(server: LiveServer) -> None:
    env = base_env(server.project, KB_GATEWAY_URL=server.url)
    command = [sys.executable, "-m", "kblabs", "--json", "workflow", "run", "gated"]
    waiter = subprocess.Popen(
        [*command, "--idempotency-key", "ship-1", "--wait"],
        env=env,
        cwd=server.project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = cli_json(server, "workflow", "run", "gated", "--idempotency-key", "ship-1")[
            "runId"
        ]
        pending = wait_for(
            lambda: cli_json(server, "workflow", "approvals", run_id)["pending"],
            what="a pending approval",
        )
        assert pending[0]["stepId"] == "ok" and pending[0]["title"] == "Ship it?"
        assert pending[0]["jobId"] == f"{run_id}:ship"
        table = cli(server, "workflow", "approvals", run_id)
        assert table.stdout.splitlines()[1].split()[:4] == ["ship", "ok", "Ship", "it?"]

        approved = cli(server, "workflow", "approve", run_id, "ship", "ok", "--comment", "lgtm")
        assert approved.returncode == 0, approved.stderr
        assert approved.stdout.strip() == f"approved ship/ok of run {run_id}"
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0, out + err
    final = json.loads(out)
    assert final["ok"] is True and final["runId"] == run_id and final["status"] == "success"
    step = final["run"]["jobs"][0]["steps"][0]
    assert step["outputs"] == {"approved": True, "action": "approve", "comment": "lgtm"}
    nothing = cli(server, "workflow", "approvals", run_id)
    assert "nothing waiting for approval" in nothing.stdout

    twice = cli_json(server, "workflow", "approve", run_id, "ship", "ok", code=1)
    assert twice["error"]["code"] == "STEP_NOT_WAITING" and twice["httpStatus"] == 409

    second = cli_json(server, "workflow", "run", "gated")["runId"]
    wait_for(
        lambda: cli_json(server, "workflow", "approvals", second)["pending"],
        what="a pending approval",
    )
    rejected = cli_json(server, "workflow", "reject", second, "ship", "ok", "--comment", "no")
    assert rejected == {
        "ok": True,
        "runId": second,
        "jobId": "ship",
        "stepId": "ok",
        "action": "reject",
        "resolved": True,
    }
    done = wait_for(
        lambda: cli_json(server, "workflow", "show", second)["run"]["status"] == "failed",
        what="the rejected run to fail",
    )
    assert done


def test_cancel_and_rerun(server: LiveServer) -> None:
    run_id = cli_json(server, "workflow", "run", "gated")["runId"]
    wait_for(
        lambda: cli_json(server, "workflow", "approvals", run_id)["pending"],
        what="a pending approval",
    )
    cancelled = cli(server, "workflow", "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"cancelled run {run_id}"
    status = wait_for(
        lambda: cli_json(server, "workflow", "show", run_id)["run"]["status"] == "cancelled",
        what="the run to be cancelled",
    )
    assert status
    waited = cli(server, "workflow", "rerun", run_id, "--wait", "--timeout", "3")
    assert waited.returncode == 1  # waits for an approval nobody gives
    rerun_id = waited.stdout.splitlines()[0]
    assert rerun_id != run_id
    assert f"TIMEOUT: run {rerun_id} is still running after 3 s" in waited.stderr

    again = cli(server, "workflow", "cancel", run_id)
    assert again.returncode == 1
    assert again.stderr.strip() == 'RUN_NOT_CANCELLABLE: Cannot cancel run with status "cancelled"'
    shape = cli_json(server, "workflow", "cancel", rerun_id)
    assert shape == {"ok": True, "cancelled": True, "runId": rerun_id}
    rerun = cli_json(server, "workflow", "rerun", rerun_id)
    assert rerun["ok"] is True and rerun["rerunOf"] == rerun_id and rerun["status"] == "queued"
    cli_json(server, "workflow", "cancel", rerun["runId"])


def test_inputs_from_a_json_file(server: LiveServer) -> None:
    inputs = server.project / "inputs.json"
    inputs.write_text(json.dumps({"who": "a file"}))
    waited = cli_json(server, "workflow", "run", "hello", "--input", f"@{inputs}", "--wait")
    assert waited["status"] == "success" and waited["run"]["inputs"] == {"who": "a file"}
    later_wins = cli_json(
        server, "workflow", "run", "hello", "--input", f"@{inputs}", "--input", "who=pair"
    )
    assert cli_json(server, "workflow", "show", later_wins["runId"])["run"]["inputs"] == {
        "who": "pair"
    }
    inputs.write_text("[1, 2]")
    for bad, said in (
        (f"@{inputs}", "must hold a JSON object of inputs"),
        ("@no-such-file.json", "cannot read it"),
    ):
        refused = cli(server, "workflow", "run", "hello", "--input", bad)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert said in refused.stderr


def test_crons_list_trigger_pause_resume_delete(server: LiveServer) -> None:
    empty = cli(server, "workflow", "crons")
    assert empty.returncode == 0, empty.stderr
    assert "no cron schedules" in empty.stdout
    body = {"id": "tidy", "schedule": "0 4 * * *", "jobType": "builtin:noop", "catchUp": "latest"}
    created = httpx.post(f"{server.url}/api/v1/crons", json=body, headers=server.auth)
    assert created.status_code == 201, created.text

    listed = cli(server, "workflow", "crons")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0][:4] == ["id", "schedule", "timezone", "state"]
    assert rows[1][:8] == ["tidy", "0", "4", "*", "*", "*", "UTC", "enabled"]
    assert "latest" in rows[1]
    (tidy,) = cli_json(server, "workflow", "crons")["crons"]
    assert tidy["id"] == "tidy" and tidy["catchUp"] == "latest"

    paused = cli(server, "workflow", "crons", "pause", "tidy")
    assert paused.returncode == 0 and paused.stdout.strip() == "paused tidy", paused.stderr
    assert cli_json(server, "workflow", "crons")["crons"][0]["enabled"] is False
    triggered = cli_json(server, "workflow", "crons", "trigger", "tidy")
    assert triggered["triggered"] is True
    run = cli_json(server, "workflow", "show", triggered["runId"])["run"]
    assert run["trigger"]["type"] == "manual"
    resumed = cli(server, "workflow", "crons", "resume", "tidy")
    assert resumed.stdout.strip() == "resumed tidy", resumed.stderr
    deleted = cli(server, "workflow", "crons", "delete", "tidy")
    assert deleted.stdout.strip() == "deleted tidy", deleted.stderr
    assert cli_json(server, "workflow", "crons")["crons"] == []

    no_id = cli(server, "workflow", "crons", "pause")
    assert no_id.returncode == 2 and "crons pause needs the schedule's ID" in no_id.stderr
    unknown = cli(server, "workflow", "crons", "trigger", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "CRON_NOT_FOUND: Cron job not found: nope"
    wrong = cli(server, "workflow", "crons", "explode", "tidy")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr


def test_server_errors_are_code_and_message(server: LiveServer) -> None:
    shown = cli(server, "workflow", "show", "no-such-run")
    assert shown.returncode == 1
    assert shown.stdout == ""
    assert shown.stderr.strip() == "RUN_NOT_FOUND: Run not found: no-such-run"
    assert cli_json(server, "workflow", "logs", "no-such-run", code=1) == {
        "ok": False,
        "error": {"code": "RUN_NOT_FOUND", "message": "Run not found: no-such-run"},
        "httpStatus": 404,
    }
    started = cli(server, "workflow", "run", "nope")
    assert started.returncode == 1
    assert started.stderr.strip() == "WORKFLOW_NOT_FOUND: Workflow not found: nope"

    refused = cli(server, "workflow", "list", KB_TOKEN="kbk_not-a-token")  # env beats the file
    assert refused.returncode == 1 and refused.stderr.startswith("UNAUTHORIZED: ")
    flag = run_cli(
        "workflow",
        "list",
        "--url",
        server.url,
        "--token",
        server.token,
        project=server.project,
        env=base_env(server.project, KB_TOKEN="kbk_not-a-token"),
    )
    assert flag.returncode == 0, flag.stderr  # --token beats the environment


def test_server_gone_while_following_exits_4(server: LiveServer) -> None:
    run_id = cli_json(server, "workflow", "run", "gated")["runId"]
    env = base_env(server.project, KB_GATEWAY_URL=server.url)
    waiter = subprocess.Popen(
        [sys.executable, "-m", "kblabs", "workflow", "logs", run_id, "--follow"],
        env=env,
        cwd=server.project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # connected to the event stream
        assert waiter.poll() is None
        server.stop(signal.SIGKILL)  # gone at once (SIGTERM would drain the stream first)
        out, err = waiter.communicate(timeout=40)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 4, out + err
    assert f"error: cannot reach {server.url}" in err


def test_unreachable_and_no_token(project: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("workflow", "list", "--url", url, "--token", "t", project=project)
    assert result.returncode == 4
    assert result.stderr.startswith(f"error: cannot reach {url}: ConnectError")
    assert len(result.stderr.strip().splitlines()) == 1
    shaped = run_cli("--json", "workflow", "runs", "--url", url, "--token", "t", project=project)
    assert shaped.returncode == 4
    body = json.loads(shaped.stdout)
    assert body["ok"] is False and body["error"]["code"] == "UNREACHABLE" and body["url"] == url

    no_token = run_cli("--json", "workflow", "list", "--url", url, project=project)
    assert no_token.returncode == 2
    error = json.loads(no_token.stdout)["error"]
    assert error["code"] == "NO_TOKEN" and "admin.token" in error["message"]
