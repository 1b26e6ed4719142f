"""Several worker processes on one SQLite database: every job runs exactly once, and a
worker killed mid-step loses nothing (its job is re-queued and finishes elsewhere)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import base_env

pytestmark = pytest.mark.live

COUNTED = """
name: Counted
version: 1
on: {manual: true}
inputs:
  n: {type: number, required: true}
jobs:
  a:
    steps:
      - run: echo "a ${{ inputs.n }} $KB_WORKER_NAME" >> "$LEDGER"
  b:
    steps:
      - run: echo "b ${{ inputs.n }} $KB_WORKER_NAME" >> "$LEDGER"
"""

SLOW = """
name: Slow
version: 1
on: {manual: true}
jobs:
  main:
    steps:
      - id: first
        run: echo "first $KB_WORKER_NAME" >> "$LEDGER"
      - id: slow
        run: |
          echo "slow-start $KB_WORKER_NAME" >> "$LEDGER"
          sleep 3
          echo "slow-end $KB_WORKER_NAME" >> "$LEDGER"
"""


def start_worker(project: Path, name: str, env: dict[str, str]) -> subprocess.Popen:
    log = open(project / f"worker-{name}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "kblabs", "worker", "--jobs", "2"],
        env={**env, "KB_WORKER_NAME": name},
        cwd=project,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_ready(project: Path, *names: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        log = project / f"worker-{name}.log"
        while "workflow worker ready" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)


def wait_all(server, run_ids: list[str], timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [
            httpx.get(f"{server.url}/api/v1/runs/{run_id}", headers=server.auth).json()["data"][
                "run"
            ]
            for run_id in run_ids
        ]
        if all(run["status"] not in ("queued", "running") for run in runs):
            return runs
        if time.monotonic() > deadline:
            logs = {
                p.name: p.read_text(errors="replace")[-2000:]
                for p in server.project.glob("worker-*.log")
            }
            raise AssertionError(
                f"runs not finished: {runs}\nserver: {server.log()[-3000:]}\n{logs}"
            )
        time.sleep(0.2)


@pytest.fixture
def setup(live_server_factory, project):
    folder = project / ".kb" / "workflows"
    folder.mkdir(parents=True)
    (folder / "counted.yml").write_text(COUNTED)
    (folder / "slow.yml").write_text(SLOW)
    ledger = project / "ledger.txt"
    ledger.touch()
    extra = {"LEDGER": str(ledger), "KB_WORKFLOW_LEASE_SECONDS": "3"}
    server = live_server_factory(KB_WORKFLOW_WORKERS="false", **extra).start()
    env = base_env(project, KB_LOG_LEVEL="info", **extra)
    workers: list[subprocess.Popen] = []
    yield server, env, ledger, workers
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_two_workers_share_the_queue_and_run_every_job_once(setup, project):
    server, env, ledger, workers = setup
    workers += [start_worker(project, "w1", env), start_worker(project, "w2", env)]
    wait_ready(project, "w1", "w2")
    runs_wanted = 200
    run_ids = [
        httpx.post(
            f"{server.url}/api/v1/workflows/counted/runs",
            json={"inputs": {"n": n}},
            headers=server.auth,
        ).json()["data"]["runId"]
        for n in range(runs_wanted)
    ]
    runs = wait_all(server, run_ids, timeout=180)
    assert {run["status"] for run in runs} == {"success"}
    lines = ledger.read_text().split("\n")[:-1]
    done = sorted((line.split()[0], int(line.split()[1])) for line in lines)
    assert done == sorted((job, n) for job in "ab" for n in range(runs_wanted))  # once each
    by_worker = {line.split()[2] for line in lines}
    assert by_worker == {"w1", "w2"}, "both workers should have taken jobs"
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0


def test_a_worker_killed_mid_step_loses_nothing(setup, project):
    server, env, ledger, workers = setup
    doomed = start_worker(project, "doomed", env)
    workers.append(doomed)
    wait_ready(project, "doomed")
    run_id = httpx.post(f"{server.url}/api/v1/workflows/slow/runs", headers=server.auth).json()[
        "data"
    ]["runId"]
    deadline = time.monotonic() + 20
    while "slow-start doomed" not in ledger.read_text():
        assert time.monotonic() < deadline, "the worker never started the slow step"
        time.sleep(0.05)
    doomed.kill()  # SIGKILL: no chance to give the job back
    doomed.wait()
    workers.append(start_worker(project, "rescuer", env))
    (run,) = wait_all(server, [run_id], timeout=40)
    assert run["status"] == "success"
    job = run["jobs"][0]
    assert job["attempt"] == 2 and job["failures"] == 0  # re-queued, no retry spent
    lines = ledger.read_text().split("\n")[:-1]
    assert lines.count("first doomed") == 1 and "first rescuer" not in lines  # not re-run
    assert "slow-end rescuer" in lines  # the interrupted step ran again, to its end
    assert "slow-end doomed" not in lines  # the killed worker's command died with it
    events = httpx.get(f"{server.url}/api/v1/runs/{run_id}/logs", headers=server.auth).json()[
        "data"
    ]
    assert events["runId"] == run_id


CRASHY = """
name: Crashy
version: 1
on: {manual: true}
inputs:
  n: {type: number, required: true}
jobs:
  main:
    steps:
      - id: one
        run: echo "one ${{ inputs.n }}" >> "$LEDGER"
      - id: two
        run: |
          echo "two-start ${{ inputs.n }}" >> "$LEDGER"
          sleep 1
          echo "two-end ${{ inputs.n }}" >> "$LEDGER"
      - id: three
        run: echo "three ${{ inputs.n }}" >> "$LEDGER"
"""


def test_twenty_runs_survive_a_server_sigkill(live_server_factory, project):
    """The issue's crash test: 20 runs, SIGKILL mid-way, restart: every run ends
    success, no completed step ran again, an interrupted step ran at most twice."""
    folder = project / ".kb" / "workflows"
    folder.mkdir(parents=True)
    (folder / "crashy.yml").write_text(CRASHY)
    ledger = project / "ledger.txt"
    ledger.touch()
    env = {"LEDGER": str(ledger), "KB_WORKFLOW_LEASE_SECONDS": "3"}
    first = live_server_factory(**env).start()
    run_ids = [
        httpx.post(
            f"{first.url}/api/v1/workflows/crashy/runs",
            json={"inputs": {"n": n}},
            headers=first.auth,
        ).json()["data"]["runId"]
        for n in range(20)
    ]
    deadline = time.monotonic() + 30
    while ledger.read_text().count("two-end") < 4:  # mid-way: some done, some running
        assert time.monotonic() < deadline, ledger.read_text()
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    second = live_server_factory(**env).start()
    runs = wait_all(second, run_ids, timeout=120)
    assert {run["status"] for run in runs} == {"success"}
    lines = ledger.read_text().split("\n")[:-1]
    marks = {"one": ["one"], "two": ["two-start", "two-end"], "three": ["three"]}
    reran = 0
    for run in runs:
        n = run["inputs"]["n"]
        for step in run["jobs"][0]["steps"]:
            count = lines.count(f"{marks[step['stepId']][0]} {n}")
            # a step recorded as done before the crash (attempt 1) never ran again; one
            # cut off by the crash ran again once: at most twice in total (it may have
            # been cut off before its command even started)
            seen = (n, step["stepId"], count, step["attempt"])
            assert 1 <= count <= step["attempt"] <= 2, seen
            if step["attempt"] == 1:
                assert count == 1, seen
            reran += step["attempt"] - 1
        assert lines.count(f"two-end {n}") >= 1
    assert reran >= 1, "the crash should have interrupted at least one step"
    assert second.stop() == 0


def test_two_schedulers_create_one_run_per_fire(setup, project):
    """A per-second schedule while two processes may lead the scheduler: every fire
    time gets exactly one run."""
    server, env, _, workers = setup
    workers.append(start_worker(project, "w1", env))
    wait_ready(project, "w1")
    body = {"id": "every-second", "schedule": "* * * * * *", "jobType": "builtin:noop"}
    created = httpx.post(f"{server.url}/api/v1/crons", json=body, headers=server.auth)
    assert created.status_code == 201, created.text
    time.sleep(12)  # the leader loads it within 5 s, then ~7 fires
    httpx.post(f"{server.url}/api/v1/crons/every-second/pause", headers=server.auth)
    time.sleep(1)
    jobs = httpx.get(
        f"{server.url}/api/v1/jobs", params={"limit": 500}, headers=server.auth
    ).json()["data"]["jobs"]
    fires = [job["trigger"]["payload"]["scheduledAt"] for job in jobs]
    assert len(fires) >= 4, fires
    assert len(fires) == len(set(fires)), "a fire time got two runs"


ORPHANING = """
name: Orphaning
version: 1
on: {manual: true}
jobs:
  main:
    steps:
      - run: |
          sleep 60 &
          echo $! > "$LEDGER"
          wait
"""


def test_what_a_killed_worker_started_is_reaped(setup, project):
    """A step's background child outlives its shell; when the worker is SIGKILLed, the
    reaper of another process on this host kills the whole step process group."""
    server, env, ledger, workers = setup
    (project / ".kb" / "workflows" / "orphaning.yml").write_text(ORPHANING)
    httpx.post(f"{server.url}/api/v1/workflows/refresh", headers=server.auth)
    doomed = start_worker(project, "doomed", env)
    workers.append(doomed)
    wait_ready(project, "doomed")
    run_id = httpx.post(
        f"{server.url}/api/v1/workflows/orphaning/runs", headers=server.auth
    ).json()["data"]["runId"]
    deadline = time.monotonic() + 20
    while not ledger.read_text().strip():
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    sleeper = int(ledger.read_text().split()[0])
    doomed.kill()
    doomed.wait()

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return False
        return state != "Z"

    deadline = time.monotonic() + 10  # the server's reaper runs every 2 s
    while alive(sleeper):
        assert time.monotonic() < deadline, "the orphaned sleep is still running"
        time.sleep(0.1)
    httpx.post(f"{server.url}/api/v1/runs/{run_id}/cancel", headers=server.auth)
    leftovers = list((project / ".kb" / "run").glob(f"*-{doomed.pid}.pgids"))
    assert leftovers == [], "the dead worker's ledger should be gone"
