"""One prefill measurement: latency and peak memory of a causal LM's full forward at one sequence length.

What is measured: `model(input_ids, use_cache=False, logits_to_keep=1)` over batch x N random tokens (prefill
without keeping a KV cache; logits of the last token only, so the vocabulary projection does not dominate memory
at long N). On a GPU the peak is torch.cuda.max_memory_allocated with statistics reset first; on a CPU it is this
process's peak RSS since a reset just before the forward passes (honest only in a fresh process).
Out-of-memory is a data point (oom=True), never a crash; other failures are recorded with their message.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from labkit.measure.memory import (
    GIB,
    cuda_peak_gib,
    error_text,
    is_memory_error,
    peak_rss_gib,
    release_memory,
    reset_peak_rss,
    rss_gib,
)
from labkit.measure.timing import time_callable


@dataclass
class Point:
    """One (backend, sequence length) measurement. `ok` False means it failed (see `oom` and `error`)."""

    backend: str
    seq_len: int
    batch_size: int
    ok: bool
    oom: bool = False
    skipped: bool = False
    latency_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    repeats: int = 0
    peak_gib: float | None = None
    memory_kind: str | None = None  # "cuda_max_allocated" | "cpu_peak_rss" | None (not measured)
    baseline_gib: float | None = None  # memory just before the forward passes (weights, runtime)
    tokens_per_s: float | None = None
    device: str = ""
    model: str = ""
    dtype: str = ""
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


MIN_REPEATS = 5  # fewer and p10/p90 are just the extremes of a handful of calls


def default_repeats(seq_len: int, device: torch.device | str) -> tuple[int, int]:
    """(warmup, repeat) by length: at least MIN_REPEATS timed calls at every length, so every point has a spread;
    more at short N, where one call is cheap and noisier."""
    if torch.device(device).type != "cuda":
        return 1, MIN_REPEATS
    if seq_len <= 4096:
        return 2, 10
    return 1, MIN_REPEATS


def random_input_ids(model: torch.nn.Module, seq_len: int, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """batch x seq_len random token ids on the model's device (content does not change speed or memory)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen)
    return ids.to(device)


def prefill_callable(model: torch.nn.Module, input_ids: torch.Tensor) -> Callable[[], object]:
    """The measured call: a full forward without KV cache, logits of the last position only."""
    return lambda: model(input_ids=input_ids, use_cache=False, logits_to_keep=1)


def prefill_point(model: torch.nn.Module, seq_len: int, batch_size: int = 1, *, warmup: int | None = None,
                  repeat: int | None = None, seed: int = 0, backend: str | None = None) -> Point:
    """Latency and peak memory of one prefill at `seq_len`, in this process, with the model as it is.

    `backend` only labels the Point (default: the model's `attn_implementation`). Failures return a failed Point.
    """
    param = next(model.parameters())
    device = param.device
    w, r = default_repeats(seq_len, device)
    warmup, repeat = (w if warmup is None else warmup), (r if repeat is None else repeat)
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    point = Point(backend=backend or model.config._attn_implementation, seq_len=seq_len, batch_size=batch_size,
                  ok=False, device=str(device), model=name, dtype=str(param.dtype).removeprefix("torch."))
    failure: tuple[bool, str] | None = None
    try:
        ids = random_input_ids(model, seq_len, batch_size, seed)
        fn = prefill_callable(model, ids)
        if device.type == "cuda":
            release_memory(device)
            point.baseline_gib = torch.cuda.memory_allocated(device) / GIB
            point.peak_gib = cuda_peak_gib(fn, device)  # also the first warm-up call
            point.memory_kind = "cuda_max_allocated"
            timing = time_callable(fn, device=device, warmup=max(warmup - 1, 0), repeat=repeat)
        else:
            gc.collect()
            point.baseline_gib = rss_gib("VmRSS")
            reset = reset_peak_rss()
            timing = time_callable(fn, device=device, warmup=warmup, repeat=repeat)
            point.peak_gib = peak_rss_gib()
            point.memory_kind = "cpu_peak_rss" if reset else "cpu_peak_rss_since_start"
        point.latency_ms, point.p10_ms, point.p90_ms = timing.median_ms, timing.p10_ms, timing.p90_ms
        point.repeats = timing.repeats
        point.tokens_per_s = batch_size * seq_len / (timing.median_ms / 1e3)
        point.ok = True
    except Exception as err:  # noqa: BLE001 - every failure becomes a recorded point
        failure = (is_memory_error(err), error_text(err))
        del err
    if failure is not None:
        point.oom, point.error = failure
        point.peak_gib = None
        ids = fn = None  # drop references to the failed call's tensors before emptying the cache
        release_memory(device)
    return point
