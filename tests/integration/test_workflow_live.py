"""The workflow engine on a real server process (`python -m kblabs serve`), where timing,
child processes and restarts matter: cancelling kills the step's processes, the SSE
stream is live and resumable, approvals and interrupted jobs survive a restart.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.live

TERMINAL = frozenset({"success", "failed", "cancelled", "skipped", "dlq"})
TERMINAL_EVENTS = frozenset({"run.finished", "run.failed", "run.cancelled", "run.skipped"})
LEASE_S = 9  # KB_WORKFLOW_LEASE_SECONDS for the crash tests (default 30); heartbeats every 3 s,
# so a dead worker's lease runs out 6-9 s after the kill: room for a slow second start
REAP_EVERY_S = 2  # kblabs.workflow.engine.REAP_EVERY_S


# --- helpers ---------------------------------------------------------------------------------


def workflow(jobs: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "name": "live workflow",
        "version": "1.0.0",
        "on": {"manual": True},
        **top,
        "jobs": jobs,
    }


def write_workflow(project: Path, stem: str, spec: dict[str, Any]) -> None:
    """`.kb/workflows/<stem>.yml` (JSON, which is YAML 1.2); the server reads it at start."""
    folder = project / ".kb" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.yml").write_text(json.dumps(spec, indent=2))


def poll(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Call `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def alive(pid: int) -> bool:
    """Is the process there (a zombie nobody reaped yet counts as gone)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def not_a_process(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


class Client:
    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, headers=server.auth, timeout=10)

    def start(self, workflow_id: str, inputs: dict[str, Any] | None = None) -> str:
        answer = self.http.post(
            f"/api/v1/workflows/{workflow_id}/runs", json={"inputs": inputs or {}}
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["data"]["runId"]

    def run(self, run_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/api/v1/runs/{run_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]["run"]

    def until(
        self, run_id: str, check: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ):
        last: dict[str, Any] = {}

        def probe() -> dict[str, Any] | None:
            last["run"] = self.run(run_id)
            return last["run"] if check(last["run"]) else None

        try:
            return poll(probe, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last state:\n{last.get('run')}") from None

    def finished(self, run_id: str, timeout: float = 15) -> dict[str, Any]:
        return self.until(run_id, lambda run: run["status"] in TERMINAL, timeout, "a final status")

    def step_status(self, run_id: str, job: str, step: str, status: str, timeout: float = 15):
        return self.until(
            run_id, lambda run: step_of(run, job, step)["status"] == status, timeout, status
        )

    def close(self) -> None:
        self.http.close()


def events_only(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stream without its interleaved log lines."""
    return [frame for frame in frames if frame["data"]["type"] != "log.appended"]


def job_of(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(job for job in run["jobs"] if job["jobName"] == name)


def step_of(run: dict[str, Any], job: str, step_id: str) -> dict[str, Any]:
    return next(step for step in job_of(run, job)["steps"] if step["stepId"] == step_id)


def sse(
    server: LiveServer,
    run_id: str,
    last_event_id: tuple[int, int] | int | None = None,
    stop_after: Callable | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Read `GET /runs/{id}/events`: (events as {id, event, data}, whether the server
    closed the stream). `stop_after(event)` true makes us hang up after that event."""
    headers = dict(server.auth)
    if last_event_id is not None:
        headers["Last-Event-ID"] = (
            ".".join(map(str, last_event_id))
            if isinstance(last_event_id, tuple)
            else str(last_event_id)
        )
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    timeout = httpx.Timeout(10, read=20)
    with httpx.stream(
        "GET", f"{server.url}/api/v1/runs/{run_id}/events", headers=headers, timeout=timeout
    ) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                key, _, value = line.partition(":")
                fields[key] = value.lstrip(" ")
                continue
            if "data" in fields:
                event = {
                    # `<event seq>.<log seq>`
                    "id": tuple(int(p) for p in fields["id"].split("."))
                    if "id" in fields
                    else None,
                    "event": fields.get("event"),
                    "data": json.loads(fields["data"]),
                }
                events.append(event)
                if stop_after is not None and stop_after(event):
                    return events, False
            fields = {}
    return events, True


@pytest.fixture
def make_client() -> Iterator[Callable[[LiveServer], Client]]:
    clients: list[Client] = []

    def make(server: LiveServer) -> Client:
        clients.append(Client(server))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_kills_the_running_step_processes_within_two_seconds(
    live_server_factory, project, make_client
):
    shell_pid, child_pid = project / "shell.pid", project / "child.pid"
    write_workflow(
        project,
        "sleepy",
        workflow(
            {
                "exec": {"steps": [{"id": "nap", "run": f"echo $$ > {shell_pid}; exec sleep 60"}]},
                "tree": {
                    "steps": [
                        {"id": "nap", "run": f"sleep 60 & echo $! > {child_pid}; wait"},
                    ]
                },
                "later": {"needs": ["exec"], "steps": [{"run": "echo never > later.txt"}]},
            }
        ),
    )
    server = live_server_factory().start()
    api = make_client(server)
    run_id = api.start("sleepy")
    pids = poll(
        lambda: (a := read_pid(shell_pid)) and (b := read_pid(child_pid)) and (a, b),
        10,
        "both steps to write their pid",
    )
    assert all(alive(pid) for pid in pids)

    answer = api.http.post(f"/api/v1/runs/{run_id}/cancel")
    cancelled_at = time.monotonic()
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == {"cancelled": True, "runId": run_id}
    poll(lambda: not any(alive(pid) for pid in pids), 2.0, "the sleep processes to die")
    # The exec'd sleep is the server's own child: killed and reaped, so the pid is free.
    # The background sleep was re-parented to init when its shell died; it is dead, and
    # may stay a zombie until init reaps it (which `alive` counts as gone).
    poll(lambda: not_a_process(pids[0]), 2.0 - (time.monotonic() - cancelled_at), "reaping")
    assert time.monotonic() - cancelled_at <= 2.0
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)

    run = api.until(
        run_id,
        lambda r: all(job["status"] == "cancelled" for job in r["jobs"]),
        5,
        "every job cancelled",
    )
    assert run["status"] == "cancelled"
    again = api.http.post(f"/api/v1/runs/{run_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["message"] == 'Cannot cancel run with status "cancelled"'
    unknown = api.http.post("/api/v1/runs/00000000-0000-0000-0000-000000000000/cancel")
    assert unknown.status_code == 404
    time.sleep(1.5)  # the watcher's cancel check runs every second: nothing flips back
    run = api.run(run_id)
    assert run["status"] == "cancelled"
    assert {job["status"] for job in run["jobs"]} == {"cancelled"}
    assert not (project / "later.txt").exists()
    assert server.stop() == 0


# --- SSE -------------------------------------------------------------------------------------


STEPPED = workflow(
    {
        "first": {
            "steps": [
                {"id": "hello", "run": "sleep 1; echo one; echo two >&2"},
                {"id": "pause", "run": "sleep 1.5; echo three"},
            ]
        },
        "second": {"needs": "first", "steps": [{"id": "bye", "run": "echo four"}]},
    }
)


def test_sse_streams_live_events_and_resumes_with_last_event_id(
    live_server_factory, project, make_client
):
    write_workflow(project, "stepped", STEPPED)
    server = live_server_factory().start()
    api = make_client(server)
    run_id = api.start("stepped")

    # Hang up while the run is still going (just after the slow step started) ...
    first_all, closed = sse(
        server,
        run_id,
        stop_after=lambda e: (
            e["data"]["type"] == "step.started" and e["data"]["stepId"].endswith(":main:1")
        ),
    )
    first = events_only(first_all)
    assert not closed
    snapshot = first[0]
    assert snapshot["event"] == "workflow.event"
    assert snapshot["data"]["type"] == "run.snapshot"
    assert snapshot["data"]["runId"] == run_id
    assert snapshot["data"]["payload"]["id"] == run_id
    assert snapshot["data"]["payload"]["status"] in ("queued", "running")
    assert [job["jobName"] for job in snapshot["data"]["payload"]["jobs"]] == ["first", "second"]
    assert api.run(run_id)["status"] == "running"

    # ... and come back: exactly the events after the last one we saw, until the end.
    last_seen = first_all[-1]["id"]
    rest_all, closed = sse(server, run_id, last_event_id=last_seen)
    rest = events_only(rest_all)
    assert closed, "the server closes the stream after the run's terminal event"
    assert rest and rest[0]["data"]["type"] != "run.snapshot"
    assert rest[-1]["data"]["type"] == "run.finished"
    assert rest[-1]["data"]["payload"]["status"] == "success"

    ids = [event["id"][0] for event in first + rest]  # the event part of each id
    assert first[0]["id"][0] <= first[1]["id"][0]  # the snapshot carries the seq it covers
    assert ids[1:] == sorted(set(ids[1:])), "sequence numbers increase without repeats"
    assert rest[0]["id"][0] > last_seen[0]

    # Everything since the start, replayed: the live stream missed nothing and doubled
    # nothing (the events the snapshot covered came before it).
    everything_all, closed = sse(server, run_id, last_event_id=(0, 0))
    assert closed
    everything = events_only(everything_all)
    covered = [e for e in everything if e["id"][0] <= snapshot["id"][0]]
    assert [e["id"][0] for e in everything] == [e["id"][0] for e in covered] + ids[1:]
    assert [e["data"] for e in everything if e["id"][0] > snapshot["id"][0]] == [
        e["data"] for e in (first + rest)[1:]
    ]
    types = [e["data"]["type"] for e in everything]
    assert types[0] == "run.created" and types[-1] == "run.finished"
    assert types.count("job.started") == 2 and types.count("step.succeeded") == 3
    assert types.index("job.succeeded") < len(types) - 1
    for event in everything:
        if event["data"]["type"].startswith("step."):
            assert event["data"]["jobId"] and event["data"]["stepId"]
        assert event["data"]["timestamp"]

    # A new subscriber to a finished run gets the snapshot and the end of the stream.
    late, closed = sse(server, run_id)
    assert closed and len(late) == 1
    assert late[0]["data"]["type"] == "run.snapshot"
    assert late[0]["data"]["payload"]["status"] == "success"
    assert late[0]["id"][0] == everything[-1]["id"][0]
    assert server.stop() == 0


def test_sse_carries_log_lines(live_server_factory, project, make_client):
    write_workflow(project, "stepped", STEPPED)
    server = live_server_factory().start()
    api = make_client(server)
    run_id = api.start("stepped")
    api.finished(run_id)
    events, _ = sse(server, run_id, last_event_id=0)
    logs = [e["data"]["payload"] for e in events if e["data"]["type"] == "log.appended"]
    assert [(p["message"], p["stream"], p["level"]) for p in logs if p["stream"] == "stdout"] == [
        ("one", "stdout", "info"),
        ("three", "stdout", "info"),
        ("four", "stdout", "info"),
    ]
    assert any(p["message"] == "two" and p["level"] == "error" for p in logs)


def test_sse_and_logs_of_a_running_step(live_server_factory, project, make_client):
    """Lines of a step still running are readable (batched, not held to the step's end)."""
    write_workflow(
        project,
        "drip",
        workflow({"j": {"steps": [{"id": "d", "run": "echo early; sleep 2; echo late"}]}}),
    )
    server = live_server_factory().start()
    api = make_client(server)
    run_id = api.start("drip")

    def early() -> list[str] | None:
        answer = api.http.get(f"/api/v1/runs/{run_id}/logs").json()["data"]["logs"]
        return [line["message"] for line in answer] or None

    assert poll(early, 1.8, "the first line while the step sleeps") == ["early"]
    assert api.run(run_id)["status"] == "running"
    api.finished(run_id)
    logs = api.http.get(f"/api/v1/runs/{run_id}/logs").json()["data"]["logs"]
    assert [line["message"] for line in logs] == ["early", "late"]
    assert server.stop() == 0


# --- restarts --------------------------------------------------------------------------------

APPROVAL = workflow(
    {
        "release": {
            "steps": [
                {"id": "before", "run": "echo before >> trace.txt"},
                {"id": "review", "uses": "builtin:approval", "with": {"title": "Ship it?"}},
                {
                    "id": "after",
                    "run": "echo 'after ${{ steps.review.outputs.comment }}' >> trace.txt",
                },
            ]
        }
    }
)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_approval_pending_across_a_restart_can_be_resolved(
    live_server_factory, project, make_client, sig
):
    write_workflow(project, "gated", APPROVAL)
    write_workflow(project, "quick", workflow({"j": {"steps": [{"run": "true"}]}}))
    first = live_server_factory(KB_WORKFLOW_MAX_PARALLEL_JOBS="1").start()
    api = make_client(first)
    run_id = api.start("gated")
    api.step_status(run_id, "release", "review", "waiting_approval")
    # one worker only, and it is free while the approval waits
    assert api.finished(api.start("quick"), timeout=5)["status"] == "success"
    first.stop(sig)

    second = live_server_factory(KB_WORKFLOW_MAX_PARALLEL_JOBS="1").start()
    api = make_client(second)
    run = api.run(run_id)
    assert run["status"] == "running"
    assert step_of(run, "release", "review")["status"] == "waiting_approval"
    pending = api.http.get(f"/api/v1/runs/{run_id}/approvals").json()["data"]["pending"]
    assert [(p["stepId"], p["title"]) for p in pending] == [("review", "Ship it?")]

    answer = api.http.post(
        f"/api/v1/runs/{run_id}/approvals/resolve",
        json={"jobId": "release", "stepId": "review", "action": "approve", "comment": "go"},
    )
    assert answer.status_code == 200, answer.text
    run = api.finished(run_id)
    assert run["status"] == "success", run
    assert step_of(run, "release", "review")["outputs"]["approved"] is True
    assert (project / "trace.txt").read_text().splitlines() == ["before", "after go"]
    assert second.stop() == 0


def interrupted_workflow(trace: Path, pid_file: Path, seconds: float) -> dict[str, Any]:
    return workflow(
        {
            "main": {
                "steps": [
                    {"id": "first", "run": f"echo first >> {trace}"},
                    {
                        "id": "slow",
                        "run": f"echo slow-start >> {trace}; echo $$ > {pid_file}; "
                        f"sleep {seconds}; echo slow-end >> {trace}",
                    },
                    {"id": "last", "run": f"echo last >> {trace}"},
                ]
            }
        }
    )


def test_graceful_stop_mid_step_requeues_the_job_for_the_next_server(
    live_server_factory, project, make_client
):
    trace, pid_file = project / "trace.txt", project / "slow.pid"
    write_workflow(project, "interrupted", interrupted_workflow(trace, pid_file, 2))
    first = live_server_factory(KB_WORKFLOW_LEASE_SECONDS=str(LEASE_S)).start()
    api = make_client(first)
    run_id = api.start("interrupted")
    api.step_status(run_id, "main", "slow", "running")
    step_pid = poll(lambda: read_pid(pid_file), 5, "the slow step's pid")
    assert first.stop(signal.SIGTERM) == 0
    assert not alive(step_pid), "a stopping server takes its step processes with it"

    second = live_server_factory().start()
    api = make_client(second)
    run = api.finished(run_id, timeout=20)
    assert run["status"] == "success", run
    main = job_of(run, "main")
    assert main["attempt"] == 2 and main["failures"] == 0  # no retry budget spent
    assert step_of(run, "main", "first")["attempt"] == 1
    assert trace.read_text().splitlines() == [
        "first",
        "slow-start",
        "slow-start",
        "slow-end",
        "last",
    ]
    events = api.http.get(f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": "0"}).text
    assert '"job.interrupted"' in events
    assert second.stop() == 0


def test_crash_mid_step_the_reaper_requeues_after_the_lease(
    live_server_factory, project, make_client
):
    """SIGKILL: nobody releases the job; the next server's reaper re-queues it once the
    dead worker's lease (5 s here, KB_WORKFLOW_LEASE_SECONDS) has expired."""
    trace, pid_file = project / "trace.txt", project / "slow.pid"
    write_workflow(project, "interrupted", interrupted_workflow(trace, pid_file, 3))
    write_workflow(project, "quick", workflow({"j": {"steps": [{"run": "true"}]}}))
    first = live_server_factory(KB_WORKFLOW_LEASE_SECONDS=str(LEASE_S)).start()
    api = make_client(first)
    run_id = api.start("interrupted")
    api.step_status(run_id, "main", "slow", "running")
    step_pid = poll(lambda: read_pid(pid_file), 5, "the slow step's pid")
    killed_at = time.monotonic()
    first.stop(signal.SIGKILL)

    second = live_server_factory(KB_WORKFLOW_LEASE_SECONDS=str(LEASE_S)).start()
    # the new server's reaper kills what the dead one's steps left running
    poll(lambda: not alive(step_pid), 5, "the orphaned step process to be reaped")
    api = make_client(second)
    run = api.run(run_id)
    assert run["status"] == "running"  # a restart never fails runs
    assert job_of(run, "main")["status"] == "running"  # still leased by the dead server
    # the new server works meanwhile
    assert api.finished(api.start("quick"), timeout=5)["status"] == "success"

    run = api.finished(run_id, timeout=LEASE_S + 2 * REAP_EVERY_S + 10)
    assert time.monotonic() - killed_at >= LEASE_S - 1  # not before the lease ran out
    assert run["status"] == "success", run
    main = job_of(run, "main")
    assert main["attempt"] == 2 and main["failures"] == 0
    assert step_of(run, "main", "first")["attempt"] == 1
    lines = trace.read_text().splitlines()
    assert lines == ["first", "slow-start", "slow-start", "slow-end", "last"]
    events = api.http.get(f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": "0"}).text
    assert "lease expired" in events
    assert second.stop() == 0
