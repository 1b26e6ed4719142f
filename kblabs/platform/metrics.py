"""Prometheus families for the adapters, read from their `stats()` at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kblabs.platform.registry import AdapterRegistry

# (token, key in the adapter's stats()) → (family name, kind, help)
STATS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("cache", "entries"): ("platform_cache_entries", "gauge", "Entries in the memory cache"),
    ("cache", "hits"): ("platform_cache_hits", "counter", "Cache gets that found a value"),
    ("cache", "misses"): ("platform_cache_misses", "counter", "Cache gets that found nothing"),
    ("cache", "evictions"): (
        "platform_cache_evictions",
        "counter",
        "Entries evicted because the cache was full",
    ),
    ("eventBus", "subscriptions"): (
        "platform_event_bus_subscriptions",
        "gauge",
        "Live event bus subscriptions",
    ),
    ("eventBus", "published"): ("platform_event_bus_published", "counter", "Events published"),
    ("eventBus", "handlerErrors"): (
        "platform_event_bus_handler_errors",
        "counter",
        "Subscriber calls that raised or timed out",
    ),
    ("analytics", "buffered"): (
        "platform_analytics_buffered_events",
        "gauge",
        "Analytics events waiting to be written",
    ),
    ("analytics", "written"): (
        "platform_analytics_written_events",
        "counter",
        "Analytics events written to the store",
    ),
    ("analytics", "dropped"): (
        "platform_analytics_dropped_events",
        "counter",
        "Analytics events dropped (invalid, or the buffer was full)",
    ),
    ("analytics", "failedFlushes"): (
        "platform_analytics_failed_flushes",
        "counter",
        "Analytics writes that failed and will be retried",
    ),
}


class AdapterCollector(Collector):
    def __init__(self, registry: AdapterRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "platform_adapter_info", "The adapter serving each token", labels=["token", "adapter"]
        )
        for token, name in self.registry.configured().items():
            info.add_metric([token, name], 1)
        yield info
        for (token, key), (family, kind, documentation) in STATS.items():
            read = getattr(self.registry.get(token), "stats", None)
            value = read().get(key) if read is not None else None
            if value is None:
                continue
            if kind == "counter":
                yield CounterMetricFamily(family, documentation, value=value)
            else:
                yield GaugeMetricFamily(family, documentation, value=value)
