"""Latency summaries the bench scripts share."""

from __future__ import annotations

import statistics


def percentiles(values: list[float]) -> tuple[float | None, float | None]:
    """(p50, p99) of `values`, None when there are none."""
    ordered = sorted(values)
    if len(ordered) >= 2:
        cuts = statistics.quantiles(ordered, n=100, method="inclusive")
        return cuts[49], cuts[98]
    return (ordered[0], ordered[0]) if ordered else (None, None)


def spread(values: list[float]) -> dict[str, float | None]:
    """p50/p99/mean/max of millisecond `values`, rounded to the microsecond, and how many."""
    p50, p99 = percentiles(values)
    return {
        "p50_ms": None if p50 is None else round(p50, 3),
        "p99_ms": None if p99 is None else round(p99, 3),
        "mean_ms": round(statistics.fmean(values), 3) if values else None,
        "max_ms": round(max(values), 3) if values else None,
        "count": len(values),
    }
