"""Prometheus families of the workflow engine, read from the database.

Counts come from the tables, not from this process's memory, so every process that
serves /metrics shows the same figures however many workers share the database. A
background refresh (every few seconds) keeps scrapes free of I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select

from kblabs.store.tables import workflow_runs as runs
from kblabs.workflow.journal import now

if TYPE_CHECKING:
    from kblabs.workflow.engine import WorkflowEngine

DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)


class WorkflowMetrics(Collector):
    def __init__(self, engine: WorkflowEngine, registry: CollectorRegistry) -> None:
        self.engine = engine
        self.snapshot: dict[str, Any] = {"runs": {}, "jobs": {}, "due": 0, "oldest": None}
        self._since: datetime = now()
        self.durations = Histogram(
            "workflow_run_duration_seconds",
            "Duration of finished workflow runs (observed as they finish)",
            ["status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        registry.register(self)

    async def refresh(self) -> None:
        counts = await self.engine.counts()
        due, oldest = await self.engine.queue.depth()
        self.snapshot = {
            "runs": counts["runs"],
            "jobs": counts["jobs"],
            "due": due,
            "oldest": oldest,
        }
        stamp = now()
        async with self.engine.store.engine.connect() as conn:
            finished = (
                await conn.execute(
                    select(runs.c.status, runs.c.duration_ms).where(
                        runs.c.finished_at > self._since, runs.c.finished_at <= stamp
                    )
                )
            ).all()
        self._since = stamp
        for status, duration_ms in finished:
            if duration_ms is not None:
                self.durations.labels(status).observe(duration_ms / 1000)

    def collect(self) -> Iterator[Metric]:
        for family, key, documentation in (
            ("workflow_runs", "runs", "Workflow runs by status"),
            ("workflow_jobs", "jobs", "Workflow jobs by status"),
        ):
            counter = CounterMetricFamily(family, documentation, labels=["status"])
            for status, count in sorted(self.snapshot[key].items()):
                counter.add_metric([status], count)
            yield counter
        yield GaugeMetricFamily(
            "workflow_queue_depth", "Jobs queued and due now", value=self.snapshot["due"]
        )
        yield GaugeMetricFamily(
            "workflow_queue_oldest_age_seconds",
            "How long the oldest due job has waited (0 when none)",
            value=self.snapshot["oldest"] or 0,
        )
        yield GaugeMetricFamily(
            "workflow_jobs_running_here",
            "Jobs running in this process",
            value=len(self.engine.active),
        )
