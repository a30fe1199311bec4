"""Timing primitives shared by every benchmark: warm-up, median of repeats, honest clocks, one quantile method."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class Timing:
    """Latency of repeated calls, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    warmup: int
    device: str
    threads: int

    def as_dict(self) -> dict:
        return asdict(self)


def p10_p90(times: list[float]) -> tuple[float, float]:
    """10th and 90th percentiles of repeated timings (the lab's one quantile method: inclusive, so a handful of
    repeats stays within the measured range); a single timing is its own percentiles."""
    if len(times) < 2:
        return times[0], times[0]
    q = statistics.quantiles(times, n=10, method="inclusive")
    return q[0], q[-1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_callable(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeat: int = 10,
) -> Timing:
    """Median latency of `fn()` after `warmup` calls: CUDA events on a GPU, a synchronised perf_counter on a CPU."""
    device = torch.device(device)
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync(device)
        times: list[float] = []
        for _ in range(repeat):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
    p10, p90 = p10_p90(times)
    return Timing(
        median_ms=statistics.median(times), p10_ms=p10, p90_ms=p90, repeats=repeat, warmup=warmup,
        device=str(device), threads=torch.get_num_threads(),
    )
