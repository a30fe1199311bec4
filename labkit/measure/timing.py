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

    def quantiles(self) -> dict:
        """{"p10_ms", "p50_ms", "p90_ms", "repeats"}: how result rows store a timing."""
        return {"p10_ms": self.p10_ms, "p50_ms": self.median_ms, "p90_ms": self.p90_ms, "repeats": self.repeats}


def p10_p90(times: list[float]) -> tuple[float, float]:
    """10th and 90th percentiles of repeated timings (the lab's one quantile method: inclusive, so a handful of
    repeats stays within the measured range); a single timing is its own percentiles."""
    if len(times) < 2:
        return times[0], times[0]
    q = statistics.quantiles(times, n=10, method="inclusive")
    return q[0], q[-1]


L2_FLUSH_BYTES = 256 * 2**20  # larger than any GPU's L2 (H100: 50 MB), as triton's do_bench uses


def l2_flusher(device: torch.device | str) -> Callable[[], None] | None:
    """A callable that evicts the GPU's L2 cache by writing a 256 MB buffer (None on a CPU).

    Called before each timed call, so a small kernel cannot run from inputs left in L2 by its previous call
    (back-to-back repeats of one small attention call otherwise read everything from cache and look faster
    than they are in a model, where other layers evict it)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    buffer = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    return buffer.zero_


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_callable(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeat: int = 10,
    flush_l2: bool = False,
    between: Callable[[], object] | None = None,
    budget_s: float | None = None,
) -> Timing:
    """Median latency of `fn()` after `warmup` calls: CUDA events on a GPU, a synchronised perf_counter on a CPU.

    flush_l2  on a GPU, evict L2 before every timed call (`l2_flusher`; not timed): for kernel benchmarks
    between   any other untimed call to make before every timed call
    budget_s  fewer repeats (never below 3) when `repeat` calls would take longer, judged from the warm-up calls
    """
    device = torch.device(device)
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    hooks = [h for h in ((l2_flusher(device) if flush_l2 else None), between) if h is not None]
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        _sync(device)
        if budget_s is not None:
            per_call = (time.perf_counter() - t0) / max(warmup, 1)
            repeat = max(min(3, repeat), min(repeat, int(budget_s / max(per_call, 1e-6))))
        times: list[float] = []
        for _ in range(repeat):
            for hook in hooks:
                hook()
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


def interleaved_latency(fns: dict[str, Callable[[object], object]], inputs: dict, *, rounds: int, repeat: int,
                        warmup: int, on_round: Callable[[int], None] | None = None) -> dict[str, dict]:
    """CPU latency (ms) of every `fns[name](x)` for every `inputs[key] = x`: `warmup` calls of each first (any
    compilation included, timed apart as `warmup_s`), then `rounds` rounds, each timing every function `repeat`
    times per input. Rounds are interleaved across the functions, so load from other processes on a shared machine
    hits every one alike. Returns {name: {key: {"p10_ms", "p50_ms", "p90_ms", "n", "warmup_s"}}}."""
    warm_s = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        for x in inputs.values():
            for _ in range(warmup):
                fn(x)
        warm_s[name] = time.perf_counter() - t0
    times: dict[str, dict] = {name: {key: [] for key in inputs} for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            for key, x in inputs.items():
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    fn(x)
                    times[name][key].append((time.perf_counter() - t0) * 1e3)
        if on_round is not None:
            on_round(r)
    return {name: {key: dict(zip(("p10_ms", "p90_ms"), p10_p90(ts)), p50_ms=statistics.median(ts), n=len(ts),
                             warmup_s=warm_s[name]) for key, ts in per.items()} for name, per in times.items()}
