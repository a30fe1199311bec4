"""Where INT8 inference spends its time on a CPU: torch.profiler by op of the torchao INT8 model (eager vs
compiled: why eager INT8 is slow), and ORT's profiler by op group of the deployed graphs (the lab's vs the peer's)."""

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


ORT_OP_GROUPS = {
    "integer GEMMs": ("MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger"),
    "activation quantization": ("ReduceMax", "ReduceMin", "Neg", "Max", "Div", "Reciprocal", "QuantizeLinear",
                                "DynamicQuantizeLinear"),
    "Mul (rescale)": ("Mul",),
    "attention (float)": ("MultiHeadAttention", "Attention", "Softmax", "FusedMatMul", "MatMul", "Transpose"),
    "LayerNorm, GELU, adds": ("LayerNormalization", "SkipLayerNormalization", "Gelu", "BiasGelu", "FastGelu", "Add"),
}
"""Operator types by what they do in the BERT graphs; the peer's DynamicQuantizeMatMul quantizes its input inside
the GEMM kernel, so its quantization shows under "integer GEMMs"."""


PROFILED_ORT = ("ort-qat-int8-exact", "ort-qat-int8-unfused", "ort-peer-int8")  # what the bench profiles


def ort_group(op: str) -> str:
    """The ORT_OP_GROUPS group of an operator type ("other" for the rest)."""
    return next((g for g, ops in ORT_OP_GROUPS.items() if op in ops), "other")


def profile_ort(paths: dict[str, str], batch: int, seq_len: int, vocab: int, threads: int = 1, runs: int = 3) -> dict:
    """ORT's profiler on each ONNX file of `paths` ({variant: path}; "ort-peer-int8" with ORT's default session
    options, as in the latency table): ms per run by op group and by op type, on one full-length batch."""
    from labkit.deploy.onnx_runtime import OnnxClassifier, op_times

    out = {}
    for name, path in paths.items():
        default = name == "ort-peer-int8"
        feeds = OnnxClassifier(path, threads=threads, default_options=default).feeds(
            latency_inputs(batch, seq_len, vocab))
        ops = op_times(path, feeds, runs=runs, threads=threads, default_options=default)
        groups = {g: 0.0 for g in [*ORT_OP_GROUPS, "other"]}
        for op, row in ops.items():
            groups[ort_group(op)] += row["ms"]
        out[name] = {"total_ms": sum(groups.values()), "groups": groups, "ops": ops, "batch": batch,
                     "seq_len": seq_len, "threads": threads, "runs": runs}
    return out
