"""Timing and peak-memory primitives shared by every benchmark: warm-up, median of repeats, honest clocks."""

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
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) >= 2 else [times[0]] * 9
    return Timing(
        median_ms=statistics.median(times), p10_ms=q[0], p90_ms=q[-1], repeats=repeat, warmup=warmup,
        device=str(device), threads=torch.get_num_threads(),
    )


def cuda_peak_gib(fn: Callable[[], object], device: torch.device | str = "cuda") -> float:
    """Peak GPU memory allocated (GiB) while running `fn()` once, statistics reset just before."""
    device = torch.device(device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def is_oom(err: BaseException) -> bool:
    """True for out-of-memory errors from CUDA or the CPU allocator."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    if isinstance(err, MemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)
