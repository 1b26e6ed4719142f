"""The job queue: `workflow_jobs` rows claimed with a lease (ARCHITECTURE §6).

- claim: one queued, due, uncancelled job whose concurrency group is free, taken in a
  `BEGIN IMMEDIATE` transaction with a fresh lease token. SQLite's single writer makes
  that atomic. On PostgreSQL the conditional UPDATE re-checks its own row, but not the
  group: two claims at once would each see the group free and take two of its jobs, so
  claims take a transaction-scoped advisory lock first and run one at a time.
- heartbeat: extends the lease only while the token still matches; a False answer
  means another process took the job over (our lease expired) and our work is void.
- reap: jobs whose lease expired go back to the queue without spending a retry; the
  step that was running is queued again (it runs again from its start).
- Every write a worker makes about its job is fenced with `lease_token`.

Each of these is one synchronous function run by the store in one go (one hop to its
thread on SQLite, see `Store.transaction`); the claim also reads what the worker needs
to start the job (the run, its jobs and steps), so starting costs no second trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, select, text, update
from sqlalchemy.engine import Connection

from kblabs.store import Store
from kblabs.store.service import begin_write
from kblabs.store.tables import workflow_jobs as jobs
from kblabs.store.tables import workflow_runs as runs
from kblabs.store.tables import workflow_steps as steps
from kblabs.workflow.journal import Tx, aware, in_tx, now, write

LEASE = timedelta(seconds=30)
ACTIVE_RUN = ("queued", "running")
# PostgreSQL advisory lock key held while claiming (any constant the app uses nowhere else)
CLAIM_LOCK_KEY = 0x6B62_776F_726B  # "kbwork"
CLAIM_LOCK = text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=CLAIM_LOCK_KEY)


@dataclass(frozen=True)
class Lease:
    job_id: str
    run_id: str
    token: str
    owner: str


@dataclass
class Claim:
    """A claimed job: its lease, and the rows read in the claiming transaction."""

    lease: Lease
    run: Any = None  # the run row
    job: Any = None  # the job row
    jobs: list[Any] = field(default_factory=list)  # every job row of the run
    steps: list[dict[str, Any]] = field(default_factory=list)  # every step row of the run


def fenced(lease: Lease) -> Any:
    """WHERE clause: this job, still ours."""
    return and_(jobs.c.id == lease.job_id, jobs.c.lease_token == lease.token)


def _claimable(job: Any = jobs, run: Any = runs) -> Any:
    """Queued, due (`b_now`), not cancelled; its job-level group has no running job, and
    its run's group has no other running run (one active run per group)."""
    busy = jobs.alias("busy")
    job_group_busy = exists().where(
        busy.c.concurrency_group == job.c.concurrency_group,
        busy.c.status == "running",
        busy.c.id != job.c.id,
    )
    other = runs.alias("other")
    run_group_busy = exists().where(
        other.c.concurrency_group == run.c.concurrency_group,
        other.c.status == "running",
        other.c.id != run.c.id,
    )
    return and_(
        job.c.status == "queued",
        job.c.available_at <= bindparam("b_now"),
        job.c.cancel_requested.is_(False),
        ~and_(job.c.concurrency_group.is_not(None), job_group_busy),
        ~and_(run.c.concurrency_group.is_not(None), run_group_busy),
    )


# Built once, with bound parameters: building a statement (and an alias, which copies
# every column) costs more than running it.
_JOINED = jobs.join(runs, runs.c.id == jobs.c.run_id)
ANYTHING_DUE = select(jobs.c.id).select_from(_JOINED).where(_claimable()).limit(1)
CANDIDATE = (
    select(jobs.c.id, jobs.c.run_id, jobs.c.started_at)
    .select_from(_JOINED)
    .where(_claimable())
    .order_by(jobs.c.priority, jobs.c.available_at)
    .limit(1)
)
_LEASED = {  # what taking a job writes (with its started_at)
    "status": "running",
    "lease_owner": bindparam("b_owner"),
    "lease_token": bindparam("b_token"),
    "lease_expires_at": bindparam("b_expires"),
    "attempt": jobs.c.attempt + 1,
}
TAKE = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_job"), jobs.c.status == "queued")
    .values(**_LEASED, started_at=bindparam("b_started"))
)
MARK_RUN_RUNNING = (
    update(runs)
    .where(runs.c.id == bindparam("b_run"), runs.c.status == "queued")
    .values(status="running", started_at=bindparam("b_stamp"))
)
# Where the database has UPDATE … RETURNING (SQLite 3.35+, PostgreSQL): the candidate is
# chosen and taken in one statement that hands back the job row, and a run that starts
# hands back its row too.
_CAND, _CAND_RUN = jobs.alias("cand"), runs.alias("cand_run")
TAKE_NEXT = (
    update(jobs)
    .where(
        jobs.c.id
        == select(_CAND.c.id)
        .select_from(_CAND.join(_CAND_RUN, _CAND_RUN.c.id == _CAND.c.run_id))
        .where(_claimable(_CAND, _CAND_RUN))
        .order_by(_CAND.c.priority, _CAND.c.available_at)
        .limit(1)
        .scalar_subquery(),
        jobs.c.status == "queued",
    )
    .values(**_LEASED, started_at=func.coalesce(jobs.c.started_at, bindparam("b_stamp")))
    .returning(*jobs.c)
)
START_RUN = MARK_RUN_RUNNING.returning(*runs.c)
RUN = select(runs).where(runs.c.id == bindparam("b_run"))
JOBS_OF_RUN = select(jobs).where(jobs.c.run_id == bindparam("b_run"))
STEPS_OF_RUN = (
    select(steps)
    .where(steps.c.run_id == bindparam("b_run"))
    .order_by(steps.c.job_id, steps.c.section, steps.c.idx)
)
# this job, still running under our lease token
_STILL_OURS = and_(
    jobs.c.id == bindparam("b_job"),
    jobs.c.lease_token == bindparam("b_token"),
    jobs.c.status == "running",
)
NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_token": None, "lease_expires_at": None}
HEARTBEAT = update(jobs).where(_STILL_OURS).values(lease_expires_at=bindparam("b_expires"))
CANCEL_FLAGS = (
    select(jobs.c.cancel_requested, runs.c.cancel_requested.label("run_cancel"))
    .select_from(_JOINED)
    .where(jobs.c.id == bindparam("b_job"))
)
_REQUEUED: dict[str, Any] = {"status": "queued", **NO_LEASE, "available_at": bindparam("b_stamp")}
RELEASE = update(jobs).where(_STILL_OURS).values(**_REQUEUED)
REQUEUE_RUNNING_STEPS = (  # the interrupted step runs again
    update(steps)
    .where(steps.c.job_id == bindparam("b_job"), steps.c.status == "running")
    .values(status="queued", started_at=None)
)
EXPIRED = select(jobs.c.id, jobs.c.run_id, jobs.c.cancel_requested).where(
    jobs.c.status == "running", jobs.c.lease_expires_at < bindparam("b_now")
)
REQUEUE_EXPIRED = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_job"), jobs.c.status == "running")
    .values(**_REQUEUED)
)
CLOSE_CANCELLED = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_job"))
    .values(status="cancelled", finished_at=bindparam("b_stamp"), **NO_LEASE)
)


class JobQueue:
    def __init__(self, store: Store, owner: str, lease: timedelta = LEASE) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease

    async def claim(self, *, expected: bool = False) -> Claim | None:
        """A job for this worker, or None. `expected`: there is likely work (the worker
        just finished a job, or was woken for new work), so the read that keeps idle
        polls from taking the write lock is skipped."""
        token = uuid.uuid4().hex
        claiming = asyncio.ensure_future(self.store.run_sync(self._claim, token, expected))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # the claim runs on in the store's thread; a job it took goes back at once
            with contextlib.suppress(Exception):
                claim = await claiming
                if claim is not None:
                    await self.release(claim.lease)
            raise

    def _claim(self, conn: Connection, token: str, expected: bool) -> Claim | None:
        stamp = now()
        if not expected:  # a read first: idle polls take no write lock
            due = conn.execute(ANYTHING_DUE, {"b_now": stamp}).first()
            conn.rollback()
            if due is None:
                return None
        with begin_write(conn):
            return in_tx(conn, self._take, stamp, token)

    def _take(self, tx: Tx, stamp: datetime, token: str) -> Claim | None:
        if tx.conn.dialect.name == "postgresql":
            tx.execute(CLAIM_LOCK)  # released at commit: group checks see earlier claims
        if tx.conn.dialect.update_returning:
            return self._take_returning(tx, stamp, token)
        candidate = tx.execute(CANDIDATE, {"b_now": stamp}).first()
        if candidate is None:
            return None
        taken = tx.execute(
            TAKE,
            {
                "b_job": candidate.id,
                "b_owner": self.owner,
                "b_token": token,
                "b_expires": stamp + self.lease,
                "b_started": candidate.started_at or stamp,
            },
        )
        if taken.rowcount != 1:
            return None
        if tx.execute(MARK_RUN_RUNNING, {"b_run": candidate.run_id, "b_stamp": stamp}).rowcount:
            tx.event(candidate.run_id, "run.started", {"status": "running"})
        tx.event(
            candidate.run_id,
            "job.started",
            {"jobName": candidate.id.split(":", 1)[1], "worker": self.owner},
            job_id=candidate.id,
        )
        claim = Claim(Lease(candidate.id, candidate.run_id, token, self.owner))
        claim.run = tx.execute(RUN, {"b_run": candidate.run_id}).mappings().one()
        claim.jobs = list(tx.execute(JOBS_OF_RUN, {"b_run": candidate.run_id}).mappings())
        claim.job = next(row for row in claim.jobs if row["id"] == candidate.id)
        claim.steps = [
            dict(row) for row in tx.execute(STEPS_OF_RUN, {"b_run": candidate.run_id}).mappings()
        ]
        return claim

    def _take_returning(self, tx: Tx, stamp: datetime, token: str) -> Claim | None:
        """`_take` in fewer statements (UPDATE … RETURNING)."""
        params = {
            "b_now": stamp,
            "b_owner": self.owner,
            "b_token": token,
            "b_expires": stamp + self.lease,
            "b_stamp": stamp,
        }
        job = tx.execute(TAKE_NEXT, params).mappings().first()
        if job is None:
            return None
        job_id, run_id = job["id"], job["run_id"]
        claim = Claim(Lease(job_id, run_id, token, self.owner), job=job)
        claim.run = tx.execute(START_RUN, {"b_run": run_id, "b_stamp": stamp}).mappings().first()
        if claim.run is not None:
            tx.event(run_id, "run.started", {"status": "running"})
        else:  # running already (another of its jobs started it)
            claim.run = tx.execute(RUN, {"b_run": run_id}).mappings().one()
        tx.event(
            run_id,
            "job.started",
            {"jobName": job_id.split(":", 1)[1], "worker": self.owner},
            job_id=job_id,
        )
        # a run's jobs are the ones of its spec snapshot: with one, it is this one
        if len((claim.run["spec"] or {}).get("jobs") or {}) == 1:
            claim.jobs = [job]
        else:
            claim.jobs = list(tx.execute(JOBS_OF_RUN, {"b_run": run_id}).mappings())
            claim.job = next(row for row in claim.jobs if row["id"] == job_id)
        claim.steps = [dict(row) for row in tx.execute(STEPS_OF_RUN, {"b_run": run_id}).mappings()]
        return claim

    async def heartbeat(self, lease: Lease) -> bool:
        params = {"b_job": lease.job_id, "b_token": lease.token, "b_expires": now() + self.lease}
        return await write(self.store, _rowcount_is_one, HEARTBEAT, params)

    async def cancel_requested(self, lease: Lease) -> bool:
        row = await self.store.run_sync(_first, CANCEL_FLAGS, {"b_job": lease.job_id})
        return row is None or bool(row.cancel_requested or row.run_cancel)

    async def release(self, lease: Lease) -> None:
        """Give a job back at shutdown: queued at once for another worker, the step
        that was running runs again."""
        await write(self.store, _release, lease)

    async def reap(self) -> list[str]:
        """Re-queue jobs whose lease expired (their worker died or hung)."""
        return await write(self.store, _reap)

    async def depth(self) -> tuple[int, float | None]:
        """(queued jobs, age in seconds of the oldest due one) for the metrics."""
        stamp = now()
        async with self.store.engine.connect() as conn:
            count, oldest = (
                await conn.execute(
                    select(func.count(), func.min(jobs.c.available_at)).where(
                        jobs.c.status == "queued", jobs.c.available_at <= stamp
                    )
                )
            ).one()
        age = (stamp - aware(oldest)).total_seconds() if oldest is not None else None
        return int(count), age


def _rowcount_is_one(tx: Tx, statement: Any, params: dict[str, Any]) -> bool:
    return bool(tx.execute(statement, params).rowcount == 1)


def _first(conn: Connection, statement: Any, params: dict[str, Any]) -> Any:
    return conn.execute(statement, params).first()


def _release(tx: Tx, lease: Lease) -> None:
    released = tx.execute(
        RELEASE, {"b_job": lease.job_id, "b_token": lease.token, "b_stamp": now()}
    )
    if released.rowcount == 1:
        tx.execute(REQUEUE_RUNNING_STEPS, {"b_job": lease.job_id})
        tx.event(
            lease.run_id,
            "job.interrupted",
            {"jobName": lease.job_id.split(":", 1)[1], "reason": "worker stopped"},
            job_id=lease.job_id,
        )


def _reap(tx: Tx) -> list[str]:
    stamp = now()
    expired = tx.execute(EXPIRED, {"b_now": stamp}).all()
    for job_id, run_id, cancelled in expired:
        if cancelled:  # its run was cancelled meanwhile: close it, do not re-run it
            _close_cancelled(tx, job_id, run_id, stamp)
            continue
        tx.execute(REQUEUE_EXPIRED, {"b_job": job_id, "b_stamp": stamp})
        tx.execute(REQUEUE_RUNNING_STEPS, {"b_job": job_id})  # the interrupted step runs again
        tx.event(
            run_id,
            "job.interrupted",
            {"jobName": job_id.split(":", 1)[1], "reason": "lease expired"},
            job_id=job_id,
        )
    return [job_id for job_id, _, _ in expired]


def _close_cancelled(tx: Tx, job_id: str, run_id: str, stamp: datetime) -> None:
    from kblabs.workflow.transitions import close_steps

    tx.execute(CLOSE_CANCELLED, {"b_job": job_id, "b_stamp": stamp})
    close_steps(tx, job_id, "cancelled")
    tx.event(run_id, "job.cancelled", {"jobName": job_id.split(":", 1)[1]}, job_id=job_id)
