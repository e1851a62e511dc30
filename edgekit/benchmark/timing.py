"""Latency and throughput of a zero-argument invoke, the way TFLite's benchmark_model
reports them: the first (cold) call apart, then warm-up, then N timed calls."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    cold_ms: float  # the first call after loading
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    runs: int
    warmup: int


def measure_latency(invoke: Callable[[], object], warmup: int, runs: int) -> Latency:
    clock = time.perf_counter_ns
    start = clock()
    invoke()
    cold = (clock() - start) / 1e6
    for _ in range(warmup):
        invoke()
    samples = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = clock()
        invoke()
        samples[i] = clock() - start
    return summarize(cold, samples / 1e6, warmup)


def summarize(cold_ms: float, samples_ms, warmup: int) -> Latency:
    """The figures of timed runs (ms), wherever they were timed (here, or in Node for TF.js)."""
    samples = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    return Latency(
        cold_ms=float(cold_ms), mean_ms=float(samples.mean()), p50_ms=float(p50), p90_ms=float(p90),
        p99_ms=float(p99), min_ms=float(samples.min()), max_ms=float(samples.max()),
        std_ms=float(samples.std()), runs=len(samples), warmup=warmup,
    )


def measure_throughput(invoke: Callable[[], object], rows_per_call: int, min_seconds: float = 0.3,
                       min_calls: int = 3) -> float:
    """Rows per second over at least `min_calls` calls and `min_seconds` (after one warm call)."""
    invoke()
    calls = 0
    start = time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        invoke()
        calls += 1
    return rows_per_call * calls / (time.perf_counter() - start)
