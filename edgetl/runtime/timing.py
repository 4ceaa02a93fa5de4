"""One timer for every latency edgetl reports (export verification, --auto, optimize --compare, benchmark)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

# Export verification, --auto and optimize --compare time each file this way: 30 batch-1 calls after
# warm-up, or fewer (at least 5) when a file is so slow that 30 calls would take over 1 second (an int16x8
# file's reference kernels at 224: 5 calls of about 215 ms, on one core while the other waits; at 5 s this was a
# fifth of its verification). Medians of 5 such calls were within 4% of 10 calls' (216-226 against 217 ms, three
# runs each). `edgetl benchmark` times at length instead.
QUICK_RUNS = 30
QUICK_SECONDS = 1.0


def time_calls(fn: Callable[[], object], *, warmup: int = 2, min_runs: int = 5, max_runs: int | None = None,
               min_seconds: float = 0.0, max_seconds: float = float("inf")) -> list[float]:
    """Per-call wall times in seconds, after `warmup` untimed calls.

    Stops at `max_runs` calls, or once at least `min_runs` calls took `min_seconds` in all, or at
    `max_seconds` whatever the count.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        if (max_runs is not None and len(times) >= max_runs) or (len(times) >= min_runs and elapsed >= min_seconds) \
                or elapsed >= max_seconds:
            return times


def median_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of a call (a batch-1 inference), timed the quick way used in reports."""
    times = time_calls(fn, warmup=2, min_runs=5, max_runs=QUICK_RUNS, min_seconds=QUICK_SECONDS)
    return round(statistics.median(times) * 1000.0, 3)


def latency_stats(times: Sequence[float]) -> dict[str, float | int]:
    """p50, p90, mean, min, max and stdev in milliseconds, and the number of runs."""
    import numpy as np

    ms = np.asarray(times, dtype=np.float64) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "stdev_ms": float(statistics.pstdev(ms.tolist())), "runs": len(ms)}


def cpu_name() -> str:
    """This machine's CPU as the OS names it (/proc/cpuinfo's model name), for labelling latencies."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
