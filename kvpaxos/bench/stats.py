"""Latency percentiles and per-operation summaries."""
from __future__ import annotations

import math
from typing import Iterable

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(latencies_s: Iterable[float], duration_s: float, ops_per_sample: int = 1) -> dict:
    """count, ops/s and latency percentiles in milliseconds of one kind of operation.

    ops_per_sample > 1 for batches: each latency sample is one request carrying
    that many operations, and ops_s counts operations.
    """
    values = sorted(latencies_s)
    n = len(values)
    out = {
        "count": n,
        "ops_s": round(n * ops_per_sample / duration_s, 1) if duration_s > 0 else 0.0,
        "mean_ms": round(1000 * sum(values) / n, 3) if n else 0.0,
        "max_ms": round(1000 * values[-1], 3) if n else 0.0,
    }
    for name, pct in PERCENTILES:
        out[f"{name}_ms"] = round(1000 * percentile(values, pct), 3)
    return out


def median(values: list[float]) -> float:
    return percentile(sorted(values), 50.0)
