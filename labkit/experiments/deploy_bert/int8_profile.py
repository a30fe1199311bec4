"""Why eager INT8 is slow on a CPU: torch.profiler time by op of the torchao INT8 model, eager vs compiled."""

from __future__ import annotations

import torch

from labkit.experiments.deploy_bert.latency import latency_inputs


def profile_int8(model, batch: int, seq_len: int, vocab: int, top: int = 12,
                 modes: tuple[str, ...] = ("eager", "compiled")) -> dict:
    """torch.profiler self-CPU time by op of the torchao INT8 model, eager vs compiled (freezing), one call each
    after warm-up: eager runs quantize / int-matmul / dequantize as separate ops, compiled runs fused kernels."""
    from torch.profiler import ProfilerActivity, profile

    from labkit.experiments.qat_bert.latency import compile_settings

    unknown = set(modes) - {"eager", "compiled"}
    if unknown:
        raise ValueError(f"modes {sorted(unknown)} are not profiling modes; use 'eager' and/or 'compiled'")
    x = latency_inputs(batch, seq_len, vocab)
    out = {}
    with torch.inference_mode(), compile_settings():
        torch._dynamo.reset()
        for mode in modes:
            fn = model if mode == "eager" else torch.compile(model)
            for _ in range(2):
                fn(**x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn(**x)
            events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
            total = sum(e.self_cpu_time_total for e in events) / 1e3
            events.sort(key=lambda e: -e.self_cpu_time_total)
            out[mode] = {"total_ms": total, "n_ops": sum(e.count for e in events), "distinct_ops": len(events),
                         "top": [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3}
                                 for e in events[:top]]}
    torch._dynamo.reset()
    return out
