"""Measurement primitives every benchmark shares: timing, memory (out-of-memory, release, RSS), prefill, decode.

    time_callable(fn, device=..., warmup=3, repeat=10)   median latency with p10/p90 (one quantile method)
    prefill_point(model, seq_len)                         one prefill: latency and peak memory, OOM as data
    decode_tokens_per_s(model, prompt_len, new_tokens)    greedy decode speed with a KV cache
    is_memory_error(err), release_memory(device)          the one OOM test and the one memory release
"""

from labkit.measure.decode import decode_tokens_per_s
from labkit.measure.memory import (
    GIB,
    cuda_peak_gib,
    device_memory_gib,
    error_text,
    is_memory_error,
    peak_rss_gib,
    release_memory,
    reset_peak_rss,
    rss_gib,
)
from labkit.measure.prefill import Point, default_repeats, prefill_callable, prefill_point, random_input_ids
from labkit.measure.timing import Timing, p10_p90, time_callable

__all__ = [
    "GIB", "Point", "Timing", "cuda_peak_gib", "decode_tokens_per_s", "default_repeats", "device_memory_gib",
    "error_text", "is_memory_error", "p10_p90", "peak_rss_gib", "prefill_callable", "prefill_point",
    "random_input_ids", "release_memory", "reset_peak_rss", "rss_gib", "time_callable",
]
