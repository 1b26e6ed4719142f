"""Cron: the `workflow_schedules` table and the one process that fires it.

Schedules come from three places: workflows with `on.schedule` (id `workflow:<id>`),
plugin manifests' `cron.schedules` (id `plugin:<pluginId>:<id>`) and the crons API
(any id). The first two are synced from the catalog and the plugin registry; a paused
schedule stays paused across syncs and restarts.

Only the holder of the `workflow-scheduler` lease (a row in `kb_leases`, renewed every
few seconds) runs APScheduler; any process may take over when the holder dies. Each
fire creates a run with the idempotency key `schedule:<id>:<fire time>`, so two leaders
overlapping for a moment still start one run per fire.

Fires missed while nobody led (the server down, or the lease changing hands) are
skipped, as in the original, unless the schedule says `catch_up = "latest"`
(`on.schedule.catchUp`, or `catchUp` of the crons API): then the leader that loads it
finds the fire its predecessor planned (`next_run_at`) in the past and starts the
latest missed fire, once, under that fire's own idempotency key, so a second leader or
a later reload of the same stale row finds that run instead of starting another.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from loguru import logger
from sqlalchemy import delete, insert, select, update

from kblabs.errors import KbError
from kblabs.store import Store
from kblabs.store.tables import leases
from kblabs.store.tables import workflow_schedules as schedules
from kblabs.workflow.journal import aware, iso, now
from kblabs.workflow.spec import cron_trigger

if TYPE_CHECKING:
    from kblabs.workflow.engine import WorkflowEngine

LEASE_NAME = "workflow-scheduler"
LEASE_TTL = timedelta(seconds=15)
TICK_S = 5.0
MISFIRE_GRACE_S = 30  # a fire later than this under a live leader is dropped
CATCH_UP_VALUES = ("none", "latest")
CATCH_UP_STEPS = 10_000  # cron fires stepped through at most, per look-back window


async def hold_lease(store: Store, name: str, owner: str, ttl: timedelta) -> bool:
    """Take or renew a named lease; False while another live owner holds it."""
    stamp = now()
    async with store.write() as conn:
        row = (await conn.execute(select(leases).where(leases.c.name == name))).mappings().first()
        if row is None:
            await conn.execute(
                insert(leases).values(name=name, owner=owner, expires_at=stamp + ttl)
            )
            return True
        expires = row["expires_at"]
        expired = (expires if expires.tzinfo else expires.replace(tzinfo=stamp.tzinfo)) < stamp
        if row["owner"] != owner and not expired:
            return False
        await conn.execute(
            update(leases).where(leases.c.name == name).values(owner=owner, expires_at=stamp + ttl)
        )
        return True


async def drop_lease(store: Store, name: str, owner: str) -> None:
    async with store.write() as conn:
        await conn.execute(delete(leases).where(leases.c.name == name, leases.c.owner == owner))


def schedule_view(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "source": row["source"],
        "schedule": row["cron"],
        "timezone": row["timezone"],
        "enabled": row["enabled"],
        "workflowId": row["workflow_id"],
        "pluginId": row["plugin_id"],
        "jobType": row["job_type"],
        "payload": row["payload"],
        "lastRun": iso(row["last_run_at"]),
        "lastRunId": row["last_run_id"],
        "nextRun": iso(row["next_run_at"]),
        "catchUp": row["catch_up"],
    }


class Scheduler:
    def __init__(self, engine: WorkflowEngine) -> None:
        self.engine = engine
        self.store = engine.store
        self.leading = False
        self._aps: AsyncIOScheduler | None = None
        self._loaded: dict[str, tuple[str, str, bool]] = {}  # id → (cron, tz, enabled)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sync()
        if self.engine.options.scheduler:
            self._task = asyncio.create_task(self._lead(), name="workflow-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._stop_aps()
        if self.leading:
            with contextlib.suppress(Exception):
                await drop_lease(self.store, LEASE_NAME, self.engine.owner)
            self.leading = False

    # --- the schedules table ---------------------------------------------------------------

    async def sync(self) -> None:
        """Schedules declared by workflows and plugins, written to the table; the ones
        whose declaration disappeared are removed (API schedules are left alone)."""
        declared: dict[str, dict[str, Any]] = {}
        for entry in self.engine.catalog.entries.values():
            trigger = entry.spec.on.schedule if entry.spec else None
            if trigger is not None:
                declared[f"workflow:{entry.id}"] = {
                    "source": "workflow",
                    "workflow_id": entry.id,
                    "cron": trigger.cron,
                    "timezone": trigger.timezone or "UTC",
                    "catch_up": trigger.catch_up,
                }
        for plugin, cron in self.engine.plugins.cron_schedules() if self.engine.plugins else []:
            declared[f"plugin:{plugin.id}:{cron.id}"] = {
                "source": "plugin",
                "plugin_id": plugin.id,
                "job_type": _plugin_job_type(plugin.id, cron.job.payload),
                "payload": cron.job.payload,
                "cron": cron.schedule,
                "timezone": cron.timezone,
                "declared_enabled": cron.enabled,
            }
        async with self.store.write() as conn:
            existing = {
                row["id"]: row
                for row in (
                    await conn.execute(
                        select(schedules).where(schedules.c.source.in_(("workflow", "plugin")))
                    )
                ).mappings()
            }
            for schedule_id in set(existing) - set(declared):
                await conn.execute(delete(schedules).where(schedules.c.id == schedule_id))
            for schedule_id, values in declared.items():
                enabled = values.pop("declared_enabled", True)
                if schedule_id in existing:
                    await conn.execute(
                        update(schedules).where(schedules.c.id == schedule_id).values(**values)
                    )
                else:
                    await conn.execute(
                        insert(schedules).values(
                            id=schedule_id,
                            tenant_id="default",
                            enabled=enabled,
                            priority=1,
                            created_at=now(),
                            **values,
                        )
                    )

    async def list(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """The schedules of one namespace, or (None) of all of them."""
        query = select(schedules).order_by(schedules.c.id)
        if tenant_id is not None:
            query = query.where(schedules.c.tenant_id == tenant_id)
        async with self.store.engine.connect() as conn:
            return [schedule_view(row) for row in (await conn.execute(query)).mappings()]

    async def get(self, schedule_id: str, tenant_id: str | None = None) -> Any:
        """The schedule's row; with `tenant_id`, another namespace's is not found either."""
        async with self.store.engine.connect() as conn:
            row = (
                (await conn.execute(select(schedules).where(schedules.c.id == schedule_id)))
                .mappings()
                .first()
            )
        if row is None or (tenant_id is not None and row["tenant_id"] != tenant_id):
            raise KbError("CRON_NOT_FOUND", f"Cron job not found: {schedule_id}", 404)
        return row

    async def create(
        self,
        schedule_id: str,
        cron: str,
        job_type: str,
        *,
        payload: Any = None,
        timezone: str = "UTC",
        enabled: bool = True,
        tenant_id: str = "default",
        catch_up: str = "none",
    ) -> dict[str, Any]:
        try:
            cron_trigger(cron, timezone)
        except (ValueError, LookupError) as exc:
            raise KbError("VALIDATION_ERROR", f"schedule {cron!r}: {exc}", 400) from None
        if catch_up not in CATCH_UP_VALUES:
            raise KbError("VALIDATION_ERROR", "catchUp: must be 'none' or 'latest'", 400)
        if schedule_id.startswith(("workflow:", "plugin:")):
            raise KbError("VALIDATION_ERROR", "ids starting workflow: or plugin: are reserved", 400)
        async with self.store.write() as conn:
            taken = (
                await conn.execute(select(schedules.c.id).where(schedules.c.id == schedule_id))
            ).first()
            if taken:
                raise KbError("CRON_EXISTS", f"a cron job {schedule_id!r} exists already", 409)
            await conn.execute(
                insert(schedules).values(
                    id=schedule_id,
                    source="api",
                    tenant_id=tenant_id,
                    job_type=job_type,
                    payload=payload,
                    cron=cron,
                    timezone=timezone,
                    enabled=enabled,
                    priority=1,
                    created_at=now(),
                    catch_up=catch_up,
                )
            )
        return schedule_view(await self.get(schedule_id))

    async def remove(self, schedule_id: str) -> bool:
        row = await self.get(schedule_id)
        if row["source"] != "api":
            raise KbError(
                "CRON_DECLARED",
                f"{schedule_id} is declared by a {row['source']}; pause it instead",
                409,
            )
        async with self.store.write() as conn:
            await conn.execute(delete(schedules).where(schedules.c.id == schedule_id))
        return True

    async def set_enabled(self, schedule_id: str, enabled: bool) -> None:
        await self.get(schedule_id)
        # Pausing forgets the planned fire: fires skipped while paused are not missed
        # ones, so a schedule resumed while no process leads has nothing to catch up.
        values: dict[str, Any] = {"enabled": enabled}
        if not enabled:
            values["next_run_at"] = None
        async with self.store.write() as conn:
            await conn.execute(
                update(schedules).where(schedules.c.id == schedule_id).values(**values)
            )

    # --- firing ----------------------------------------------------------------------------

    async def fire(self, schedule_id: str, scheduled: datetime | None = None) -> str:
        """Start the schedule's run now; `scheduled` (a cron fire) makes it idempotent."""
        row = await self.get(schedule_id)
        payload = {"cronJobId": schedule_id, "scheduledAt": iso(scheduled) if scheduled else None}
        trigger = {"type": "schedule" if scheduled else "manual", "payload": payload}
        key = f"schedule:{schedule_id}:{iso(scheduled)}" if scheduled else None
        if row["workflow_id"]:
            run_id, _ = await self.engine.create_run(
                row["workflow_id"], trigger=trigger, tenant_id=row["tenant_id"], idempotency_key=key
            )
        else:
            run_id, _ = await self.engine.start_job(
                row["job_type"],
                row["payload"],
                trigger=trigger,
                tenant_id=row["tenant_id"],
                idempotency_key=key,
            )
        async with self.store.write() as conn:
            await conn.execute(
                update(schedules)
                .where(schedules.c.id == schedule_id)
                .values(last_run_at=now(), last_run_id=run_id)
            )
        return run_id

    async def _fired(self, schedule_id: str) -> None:
        fire_time = self._fire_time(schedule_id, now())
        try:
            run_id = await self.fire(schedule_id, fire_time)
            logger.info("cron {} fired: run {}", schedule_id, run_id)
        except Exception as exc:  # a broken schedule must not stop the others
            logger.warning("cron {} could not start its run: {}", schedule_id, exc)
        job = self._aps.get_job(schedule_id) if self._aps else None
        if job is not None:
            async with self.store.write() as conn:
                await conn.execute(
                    update(schedules)
                    .where(schedules.c.id == schedule_id)
                    .values(next_run_at=_utc(job.next_run_time))
                )

    def _fire_time(self, schedule_id: str, stamp: datetime) -> datetime:
        """The scheduled time of the fire running at `stamp`, in UTC to the second: the
        name of the fire in its idempotency key. Read from the trigger, not the clock, so
        it is the same however late the job runs (within the grace) and the same a
        catch-up of that fire would use."""
        job = self._aps.get_job(schedule_id) if self._aps else None
        since = stamp - timedelta(seconds=MISFIRE_GRACE_S + 1)
        scheduled = latest_fire(job.trigger, since, stamp) if job is not None else None
        if scheduled is None:  # not loaded any more: the clock, cut to the cron's unit
            with_seconds = len(self._loaded.get(schedule_id, ("",))[0].split()) == 6
            scheduled = stamp if with_seconds else stamp.replace(second=0)
        return scheduled.astimezone(UTC).replace(microsecond=0)

    # --- leadership --------------------------------------------------------------------------

    async def _lead(self) -> None:
        while True:
            try:
                leading = await hold_lease(self.store, LEASE_NAME, self.engine.owner, LEASE_TTL)
                if leading and not self.leading:
                    logger.info("this process now runs the workflow scheduler")
                if not leading and self.leading:
                    logger.warning("workflow scheduler lease lost; stopping cron here")
                    self._stop_aps()
                self.leading = leading
                if leading:
                    await self._reload()
            except Exception as exc:
                logger.opt(exception=exc).warning("workflow scheduler tick failed: {}", exc)
            await asyncio.sleep(TICK_S)

    async def _reload(self) -> None:
        """Bring APScheduler's jobs in line with the table (cheap when nothing changed)."""
        async with self.store.engine.connect() as conn:
            rows = {row["id"]: row for row in (await conn.execute(select(schedules))).mappings()}
        wanted = {
            key: (row["cron"], row["timezone"], bool(row["enabled"])) for key, row in rows.items()
        }
        if self._aps is None:
            self._aps = AsyncIOScheduler(timezone="UTC")
            self._aps.start()
            self._loaded = {}
        for schedule_id in set(self._loaded) - set(wanted):
            with contextlib.suppress(Exception):
                self._aps.remove_job(schedule_id)
            self._loaded.pop(schedule_id)
        next_runs: dict[str, datetime | None] = {}
        for schedule_id, (cron, tz, enabled) in wanted.items():
            if self._loaded.get(schedule_id) == (cron, tz, enabled):
                continue
            with contextlib.suppress(Exception):
                self._aps.remove_job(schedule_id)
            self._loaded[schedule_id] = (cron, tz, enabled)
            if not enabled:
                next_runs[schedule_id] = None
                continue
            try:
                trigger = cron_trigger(cron, tz)
            except (ValueError, LookupError) as exc:
                logger.warning("cron {}: bad schedule {!r}: {}", schedule_id, cron, exc)
                continue
            if rows[schedule_id]["catch_up"] == "latest":
                # before the job is added: its first fire is the next one, whatever was missed
                await self._catch_up(schedule_id, trigger, rows[schedule_id]["next_run_at"])
            job = self._aps.add_job(
                self._fired,
                trigger,
                args=[schedule_id],
                id=schedule_id,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=MISFIRE_GRACE_S,
            )
            next_runs[schedule_id] = _utc(job.next_run_time)
        if next_runs:
            async with self.store.write() as conn:
                for schedule_id, when in next_runs.items():
                    await conn.execute(
                        update(schedules)
                        .where(schedules.c.id == schedule_id)
                        .values(next_run_at=when)
                    )

    async def _catch_up(
        self, schedule_id: str, trigger: CronTrigger, planned: datetime | None
    ) -> None:
        """`catch_up = "latest"`: `planned` is the fire the previous leader scheduled; if
        it has passed, nobody fired it (a live leader moves `next_run_at` on after each
        fire), so start the latest fire since then, once, whatever the downtime."""
        if planned is None:  # new, or paused since: nothing was missed
            return
        missed = latest_fire(trigger, aware(planned), now())
        if missed is None:
            return
        # in UTC, as `_fired` names a fire: the key a live leader would have used
        fire_time = missed.astimezone(UTC).replace(microsecond=0)
        try:
            await self.fire(schedule_id, fire_time)
        except Exception as exc:  # a broken schedule must not stop the others
            logger.warning(
                "cron {} could not catch up the fire of {}: {}", schedule_id, iso(fire_time), exc
            )
            return
        logger.info(
            "cron {}: caught up the fire of {} missed while no scheduler ran",
            schedule_id,
            iso(fire_time),
        )

    def _stop_aps(self) -> None:
        if self._aps is not None:
            with contextlib.suppress(Exception):
                self._aps.shutdown(wait=False)
            self._aps = None
            self._loaded = {}


def _utc(when: datetime | None) -> datetime | None:
    """Stored in UTC: SQLite keeps no zone, and readers take stored times as UTC."""
    from datetime import UTC

    return when.astimezone(UTC) if when is not None else None


def latest_fire(trigger: CronTrigger, since: datetime, until: datetime) -> datetime | None:
    """The last fire time of `trigger` in [since, until], or None.

    Cron has no "previous fire", so this looks back from `until` over a window doubling
    from one second and steps forward through the first window holding a fire: a long
    downtime of a frequent schedule costs a few dozen steps, not one per missed fire.
    """
    span = timedelta(seconds=1)
    while True:
        start = max(since, until - span)
        first = trigger.get_next_fire_time(None, start)
        if first is not None and first <= until:
            return _last_fire_until(trigger, first, until)
        if start == since:
            return None
        span *= 2


def _last_fire_until(trigger: CronTrigger, fire: datetime, until: datetime) -> datetime:
    for _ in range(CATCH_UP_STEPS):
        following = trigger.get_next_fire_time(fire, fire)
        if following is None or following > until:
            break
        fire = following
    return fire


def _plugin_job_type(plugin_id: str, payload: Any) -> str:
    """A manifest cron entry names a job handler of its plugin: `{jobId}` (or
    `{handler}`) in its payload."""
    job_id = None
    if isinstance(payload, dict):
        job_id = payload.get("jobId") or payload.get("handler") or payload.get("id")
    return f"plugin:{plugin_id}/{job_id}" if job_id else f"plugin:{plugin_id}"
