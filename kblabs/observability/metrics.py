"""Prometheus metrics: one registry per app, the canonical families, process gauges.

Modules add their own families to `Metrics.registry`. Route labels are route templates
("/api/v1/runs/{runId}"), never raw paths, so the number of series stays bounded.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from kblabs.observability.looplag import LoopLagSampler

disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

HEALTH_VALUES = {"healthy": 2, "degraded": 1, "unhealthy": 0}


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        # ru_maxrss is the peak, in KiB on Linux: the best available elsewhere.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CpuPercent:
    """CPU use of this process since the previous reading (100 = one full core)."""

    def __init__(self) -> None:
        self._last_wall = time.monotonic()
        self._last_cpu = time.process_time()
        self._last_value = 0.0

    def __call__(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        elapsed = wall - self._last_wall
        if elapsed < 0.05:
            return self._last_value
        value = max(0.0, (cpu - self._last_cpu) / elapsed * 100)
        self._last_wall, self._last_cpu, self._last_value = wall, cpu, value
        return value


class Metrics:
    def __init__(self, loop_lag: LoopLagSampler) -> None:
        self.registry = CollectorRegistry()
        # Set by the app once the lifecycle exists (components need the registry first).
        self.health: Callable[[], str] = lambda: "healthy"
        labels = ["method", "route", "status"]
        self.http_requests = Counter(
            "http_requests", "HTTP requests served", labels, registry=self.registry
        )
        self.http_errors = Counter(
            "http_errors", "HTTP responses with status >= 400", labels, registry=self.registry
        )
        self.http_duration = Histogram(
            "http_request_duration_ms",
            "HTTP request duration in milliseconds",
            ["method", "route"],
            buckets=DURATION_BUCKETS_MS,
            registry=self.registry,
        )
        self.active_operations = Gauge(
            "service_active_operations", "Requests being served now", registry=self.registry
        )
        self.restarts = Gauge(
            "service_restarts_total",
            "Times this service was started again on the same database (persisted)",
            registry=self.registry,
        )
        self.cpu_percent = CpuPercent()
        self._gauge("process_rss_bytes", "Resident memory of this process", rss_bytes)
        self._gauge("process_cpu_percent", "CPU use since the previous scrape", self.cpu_percent)
        self._gauge("process_event_loop_lag_ms", "Mean event-loop lag over 10 s", loop_lag.mean_ms)
        self._gauge(
            "service_health_status",
            "2 healthy, 1 degraded, 0 unhealthy",
            lambda: HEALTH_VALUES.get(self.health(), 0),
        )

    def _gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def observe_request(self, method: str, route: str, status: int, duration_ms: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        if status >= 400:
            self.http_errors.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(duration_ms)

    def family_names(self) -> list[str]:
        """Names as exposed: counters carry their `_total` suffix."""
        return sorted(
            f"{m.name}_total" if m.type == "counter" else m.name for m in self.registry.collect()
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
