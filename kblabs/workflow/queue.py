"""The job queue: `workflow_jobs` rows claimed with a lease (ARCHITECTURE §6).

- claim: one queued, due, uncancelled job whose concurrency group is free, taken in a
  `BEGIN IMMEDIATE` transaction (SQLite's single writer makes it atomic; on PostgreSQL
  the conditional UPDATE re-checks the row), with a fresh lease token.
- heartbeat: extends the lease only while the token still matches; a False answer
  means another process took the job over (our lease expired) and our work is void.
- reap: jobs whose lease expired go back to the queue without spending a retry; the
  step that was running is queued again (it runs again from its start).
- Every write a worker makes about its job is fenced with `lease_token`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from kblabs.store import Store
from kblabs.store.tables import workflow_jobs as jobs
from kblabs.store.tables import workflow_runs as runs
from kblabs.store.tables import workflow_steps as steps
from kblabs.workflow.journal import add_event, now

LEASE = timedelta(seconds=30)
# Built once: making an alias copies every column, which per claim costs more than the
# query itself.
BUSY = jobs.alias("busy")
OTHER = runs.alias("other")
ACTIVE_RUN = ("queued", "running")


@dataclass(frozen=True)
class Lease:
    job_id: str
    run_id: str
    token: str
    owner: str


def fenced(lease: Lease) -> Any:
    """WHERE clause: this job, still ours."""
    return and_(jobs.c.id == lease.job_id, jobs.c.lease_token == lease.token)


class JobQueue:
    def __init__(self, store: Store, owner: str, lease: timedelta = LEASE) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease

    def _claimable(self, stamp: datetime) -> Any:
        """Queued, due, not cancelled; its job-level group has no running job, and its
        run's group has no other running run (one active run per group)."""
        busy = BUSY
        job_group_busy = exists().where(
            busy.c.concurrency_group == jobs.c.concurrency_group,
            busy.c.status == "running",
            busy.c.id != jobs.c.id,
        )
        other = OTHER
        run_group_busy = exists().where(
            other.c.concurrency_group == runs.c.concurrency_group,
            other.c.status == "running",
            other.c.id != runs.c.id,
        )
        return and_(
            jobs.c.status == "queued",
            jobs.c.available_at <= stamp,
            jobs.c.cancel_requested.is_(False),
            ~and_(jobs.c.concurrency_group.is_not(None), job_group_busy),
            ~and_(runs.c.concurrency_group.is_not(None), run_group_busy),
        )

    async def claim(self) -> Lease | None:
        stamp = now()
        if not await self._anything_due(stamp):  # a read: idle polls take no write lock
            return None
        token = uuid.uuid4().hex
        async with self.store.write() as conn:
            candidate = (
                await conn.execute(
                    select(jobs.c.id, jobs.c.run_id, jobs.c.started_at)
                    .select_from(jobs.join(runs, runs.c.id == jobs.c.run_id))
                    .where(self._claimable(stamp))
                    .order_by(jobs.c.priority, jobs.c.available_at)
                    .limit(1)
                )
            ).first()
            if candidate is None:
                return None
            taken = await conn.execute(
                update(jobs)
                .where(jobs.c.id == candidate.id, jobs.c.status == "queued")
                .values(
                    status="running",
                    lease_owner=self.owner,
                    lease_token=token,
                    lease_expires_at=stamp + self.lease,
                    attempt=jobs.c.attempt + 1,
                    started_at=candidate.started_at or stamp,
                )
            )
            if taken.rowcount != 1:
                return None
            await _mark_run_running(conn, candidate.run_id, stamp)
            await add_event(
                conn,
                candidate.run_id,
                "job.started",
                {"jobName": candidate.id.split(":", 1)[1], "worker": self.owner},
                job_id=candidate.id,
            )
        return Lease(candidate.id, candidate.run_id, token, self.owner)

    async def _anything_due(self, stamp: datetime) -> bool:
        async with self.store.engine.connect() as conn:
            found = await conn.execute(
                select(jobs.c.id)
                .select_from(jobs.join(runs, runs.c.id == jobs.c.run_id))
                .where(self._claimable(stamp))
                .limit(1)
            )
            return found.first() is not None

    async def heartbeat(self, lease: Lease) -> bool:
        async with self.store.write() as conn:
            result = await conn.execute(
                update(jobs)
                .where(fenced(lease), jobs.c.status == "running")
                .values(lease_expires_at=now() + self.lease)
            )
        return result.rowcount == 1

    async def cancel_requested(self, lease: Lease) -> bool:
        async with self.store.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(jobs.c.cancel_requested, runs.c.cancel_requested.label("run_cancel"))
                    .select_from(jobs.join(runs, runs.c.id == jobs.c.run_id))
                    .where(jobs.c.id == lease.job_id)
                )
            ).first()
        return row is None or bool(row.cancel_requested or row.run_cancel)

    async def release(self, lease: Lease) -> None:
        """Give a job back at shutdown: queued at once for another worker, the step
        that was running runs again."""
        async with self.store.write() as conn:
            released = await conn.execute(
                update(jobs)
                .where(fenced(lease), jobs.c.status == "running")
                .values(
                    status="queued",
                    lease_owner=None,
                    lease_token=None,
                    lease_expires_at=None,
                    available_at=now(),
                )
            )
            if released.rowcount == 1:
                await conn.execute(
                    update(steps)
                    .where(steps.c.job_id == lease.job_id, steps.c.status == "running")
                    .values(status="queued", started_at=None)
                )
                await add_event(
                    conn,
                    lease.run_id,
                    "job.interrupted",
                    {"jobName": lease.job_id.split(":", 1)[1], "reason": "worker stopped"},
                    job_id=lease.job_id,
                )

    async def reap(self) -> list[str]:
        """Re-queue jobs whose lease expired (their worker died or hung)."""
        stamp = now()
        async with self.store.write() as conn:
            expired = (
                await conn.execute(
                    select(jobs.c.id, jobs.c.run_id, jobs.c.cancel_requested).where(
                        jobs.c.status == "running", jobs.c.lease_expires_at < stamp
                    )
                )
            ).all()
            for job_id, run_id, cancelled in expired:
                if cancelled:  # its run was cancelled meanwhile: close it, do not re-run it
                    await _close_cancelled(conn, job_id, run_id, stamp)
                    continue
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status == "running")
                    .values(
                        status="queued",
                        lease_owner=None,
                        lease_token=None,
                        lease_expires_at=None,
                        available_at=stamp,
                    )
                )
                await conn.execute(  # the interrupted step runs again
                    update(steps)
                    .where(steps.c.job_id == job_id, steps.c.status == "running")
                    .values(status="queued", started_at=None)
                )
                await add_event(
                    conn,
                    run_id,
                    "job.interrupted",
                    {"jobName": job_id.split(":", 1)[1], "reason": "lease expired"},
                    job_id=job_id,
                )
        return [job_id for job_id, _, _ in expired]

    async def depth(self) -> tuple[int, float | None]:
        """(queued jobs, age in seconds of the oldest due one) for the metrics."""
        from sqlalchemy import func

        stamp = now()
        async with self.store.engine.connect() as conn:
            count, oldest = (
                await conn.execute(
                    select(func.count(), func.min(jobs.c.available_at)).where(
                        jobs.c.status == "queued", jobs.c.available_at <= stamp
                    )
                )
            ).one()
        age = (stamp - _aware(oldest)).total_seconds() if oldest is not None else None
        return int(count), age


async def _close_cancelled(
    conn: AsyncConnection, job_id: str, run_id: str, stamp: datetime
) -> None:
    await conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id)
        .values(
            status="cancelled",
            finished_at=stamp,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )
    )
    for before, after in (("running", "cancelled"), ("queued", "skipped")):
        await conn.execute(
            update(steps)
            .where(steps.c.job_id == job_id, steps.c.status == before)
            .values(status=after, finished_at=stamp)
        )
    await add_event(
        conn, run_id, "job.cancelled", {"jobName": job_id.split(":", 1)[1]}, job_id=job_id
    )


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def _mark_run_running(conn: AsyncConnection, run_id: str, stamp: datetime) -> None:
    started = await conn.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.status == "queued")
        .values(status="running", started_at=stamp)
    )
    if started.rowcount == 1:
        await add_event(conn, run_id, "run.started", {"status": "running"})
