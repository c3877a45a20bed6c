"""Write throughput and latency as one node's HTTP API saw them, per second.

Each second of the last few minutes is one bucket: how many writes (PUT and
DELETE on /v1/kv/...) this node answered, how many of them failed with a 5xx
or no answer at all, and a histogram of their latencies. Histogram bins are
fixed (bin i holds latencies up to LATENCY_BASE_MS * 2 ** (i / 2) ms), so the
dashboard can add up the buckets of several nodes and read percentiles off
the sum. Every write a client makes is answered by exactly one node, so the
sum over the nodes is the cluster's client-visible write load.
"""
from __future__ import annotations

import math
from collections import deque

LATENCY_BASE_MS = 0.25
LATENCY_BINS = 48  # the last bin is open-ended; 0.25 ms * 2**23.5 is about 50 minutes
KEEP_SECONDS = 300


def latency_bin(ms: float) -> int:
    """The histogram bin of a latency in milliseconds."""
    if ms <= LATENCY_BASE_MS:
        return 0
    return min(LATENCY_BINS - 1, math.ceil(2 * math.log2(ms / LATENCY_BASE_MS)))


def bin_upper_ms(i: int) -> float:
    return LATENCY_BASE_MS * 2 ** (i / 2)


class _Bucket:
    __slots__ = ("sec", "ok", "failed", "hist")

    def __init__(self, sec: int) -> None:
        self.sec = sec
        self.ok = 0
        self.failed = 0
        self.hist: dict[int, int] = {}

    def to_wire(self) -> list:
        return [self.sec, self.ok, self.failed, {str(k): v for k, v in sorted(self.hist.items())}]


class WriteStats:
    """Per-second write counts and latency histograms for the last `keep_s` seconds."""

    def __init__(self, keep_s: int = KEEP_SECONDS) -> None:
        self.keep_s = keep_s
        self._buckets: deque[_Bucket] = deque()
        self.total_ok = 0
        self.total_failed = 0

    def record(self, now_s: float, latency_ms: float, ok: bool) -> None:
        sec = int(now_s)
        if not self._buckets or self._buckets[-1].sec < sec:
            self._buckets.append(_Bucket(sec))
            while self._buckets and self._buckets[0].sec <= sec - self.keep_s:
                self._buckets.popleft()
        bucket = self._buckets[-1]
        if bucket.sec > sec:  # the wall clock stepped back: count it in the newest second
            sec = bucket.sec
        if ok:
            bucket.ok += 1
            self.total_ok += 1
        else:
            bucket.failed += 1
            self.total_failed += 1
        b = latency_bin(latency_ms)
        bucket.hist[b] = bucket.hist.get(b, 0) + 1

    def since(self, after_sec: int | None, now_s: float) -> list[list]:
        """Buckets of seconds after `after_sec` (all kept ones if None), oldest first.

        Seconds without writes have no bucket; the reader treats them as zero.
        """
        horizon = int(now_s) - self.keep_s
        low = horizon if after_sec is None else max(horizon, after_sec)
        return [b.to_wire() for b in self._buckets if b.sec > low]
