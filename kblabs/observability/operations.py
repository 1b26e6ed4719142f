"""Per-operation counters for /observability/health's `topOperations`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OperationStat:
    count: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    errors: int = 0


class OperationStats:
    """Bounded by the number of route templates and operation names, not by requests."""

    def __init__(self) -> None:
        self._stats: dict[str, OperationStat] = {}
        self.requests_total = 0
        self.errors_total = 0

    def record(self, operation: str, duration_ms: float, error: bool) -> None:
        stat = self._stats.setdefault(operation, OperationStat())
        stat.count += 1
        stat.total_ms += duration_ms
        stat.max_ms = max(stat.max_ms, duration_ms)
        stat.errors += int(error)

    def record_request(self, operation: str, duration_ms: float, status: int) -> None:
        self.requests_total += 1
        self.errors_total += int(status >= 500)
        self.record(operation, duration_ms, status >= 500)

    def top(self, limit: int = 5) -> list[dict[str, object]]:
        ranked = sorted(self._stats.items(), key=lambda item: item[1].count, reverse=True)
        chosen = ranked[:limit]
        # Keep at least one non-HTTP operation visible when there is any.
        if not any(not name.startswith("http ") for name, _ in chosen):
            other = next((item for item in ranked if not item[0].startswith("http ")), None)
            if other is not None and chosen:
                chosen[-1] = other
        return [
            {
                "operation": name,
                "count": stat.count,
                "avgDurationMs": round(stat.total_ms / stat.count, 3),
                "maxDurationMs": round(stat.max_ms, 3),
                "errorCount": stat.errors,
            }
            for name, stat in chosen
        ]
