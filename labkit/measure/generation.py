"""Measuring generation honestly: compiled prefill, static-cache decode (compiled, CUDA graphs), kernel names.
Every timing is a dict with p10/p50/p90 (ms or tok/s) and the repeat count; compile time (the first call: tracing,
code generation, CUDA-graph recording) is recorded apart from the steady state a server sees.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable

import torch

from labkit.measure.prefill import random_input_ids
from labkit.measure.timing import p10_p90, time_callable


def quantiles(values: list[float], unit: str = "ms") -> dict:
    """p10/p50/p90 (the lab's one quantile method, labkit.measure.timing.p10_p90) and the repeat count."""
    if not values:
        raise ValueError("no values to summarise")
    p10, p90 = p10_p90(values)
    return {f"p10_{unit}": p10, f"p50_{unit}": statistics.median(values), f"p90_{unit}": p90, "repeats": len(values)}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _Stopwatch:
    """CUDA events on a GPU, a synchronised perf_counter on a CPU (seconds)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1e3
        else:
            self.seconds = time.perf_counter() - self.t0


def time_cuda(fn: Callable[[], object], *, warmup: int = 3, repeat: int = 30, budget_s: float = 3.0) -> dict:
    """Latency quantiles of `fn()` with CUDA events, one event pair per call (a CPU clock where there is no GPU),
    repeats cut so the timed calls take about `budget_s` (never fewer than 3): slow variants stay affordable."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return time_callable(fn, device=device, warmup=max(warmup, 1), repeat=repeat, budget_s=budget_s).quantiles()


def time_cuda_graph(fn: Callable[[], object], *, calls: int = 20, repeat: int = 20, warmup: int = 3) -> dict:
    """Per-call latency of `fn()` replayed from one CUDA graph holding `calls` calls (launch gaps removed).

    Use it for kernels of a few microseconds, where launching from Python would dominate. `fn` must be
    capturable (no host synchronisation, no CPU tensors) and must already have run once (JIT compilation)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode():
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        _sync()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        graph.replay()
        _sync()
        times = []
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
    del graph
    out = quantiles(times)
    out["calls_per_graph"] = calls
    return out


def first_call_s(fn: Callable[[], object]) -> float:
    """Wall seconds of one synchronised call (for a compiled function's first call: the compile time)."""
    _sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn()
    _sync()
    return time.perf_counter() - t0


def compile_regions(model: torch.nn.Module, **compile_kwargs) -> torch.nn.Module:
    """torch.compile each decoder layer on its own ("regional compilation"): the layers are identical, so one
    compilation serves all of them and compile time drops ~N-layers-fold; the fused kernels are the same."""
    layers = getattr(getattr(model, "model", model), "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no .model.layers to compile region by region")
    for layer in layers:
        layer.compile(**compile_kwargs)
    return model


def compiled_prefill(model: torch.nn.Module, seq_len: int, *, compiled: bool, budget_s: float = 4.0,
                     seed: int = 0) -> dict:
    """Latency of one `seq_len`-token forward (no KV cache, logits of the last position only).

    compiled=True compiles the decoder layers region by region first (`compile_regions`); `compile_s` is the
    first call's wall time minus one steady-state call."""
    ids = random_input_ids(model, seq_len, seed=seed)
    if compiled:
        compile_regions(model)

    def fn():
        return model(input_ids=ids, use_cache=False, logits_to_keep=1)

    first = first_call_s(fn)
    timing = time_cuda(fn, warmup=2, repeat=10, budget_s=budget_s)
    out = {"seq_len": seq_len, "compiled": compiled, "first_call_s": first, **timing,
           "tokens_per_s": seq_len / (timing["p50_ms"] / 1e3)}
    if compiled:
        out["compile_s"] = max(first - timing["p50_ms"] / 1e3, 0.0)
    return out


def static_cache_decode(model: torch.nn.Module, prompt_len: int = 128, new_tokens: int = 136, *,
                        compiled: bool = True, repeat: int = 5, seed: int = 0,
                        compile_mode: str = "reduce-overhead", fullgraph: bool = True,
                        profile_step: bool = False) -> dict:
    """Greedy decoding after a `prompt_len` random prompt, with transformers' StaticCache (fixed-size KV
    tensors, so every decode step has the same shapes and can be compiled and captured in a CUDA graph).

    The prompt is prefilled eagerly (not timed); the `new_tokens` decode steps are timed with CUDA events.
    compiled=True: the decode step is `torch.compile(mode=compile_mode)` ("reduce-overhead": CUDA graphs).
    Returns tokens/s quantiles over `repeat` runs after one warm-up run, whose extra time is `compile_s`.
    profile_step=True adds the CUDA kernels of one steady-state decode step (`kernels`)."""
    from transformers import StaticCache

    device = next(model.parameters()).device
    ids = random_input_ids(model, prompt_len, seed=seed)
    cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens)
    positions = torch.arange(prompt_len + new_tokens, device=device)

    def prefill() -> torch.Tensor:
        cache.reset()
        out = model(input_ids=ids, past_key_values=cache, cache_position=positions[:prompt_len],
                    use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1, keepdim=True)

    def step(tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=tok, past_key_values=cache, cache_position=pos, position_ids=pos[None],
                    use_cache=True)
        return out.logits[:, -1].argmax(-1, keepdim=True)

    run_step = torch.compile(step, mode=compile_mode, fullgraph=fullgraph) if compiled else step

    def decode_run() -> tuple[float, torch.Tensor]:
        tok = prefill()
        _sync()
        out = []
        with _Stopwatch(device) as watch:
            for i in range(new_tokens - 1):  # the prefill produced the first new token
                tok = run_step(tok, positions[prompt_len + i:prompt_len + i + 1]).clone()
                out.append(tok)
        return watch.seconds, torch.cat(out, dim=1)

    with torch.inference_mode():
        t0 = time.perf_counter()
        _, first_tokens = decode_run()
        first = time.perf_counter() - t0
        seconds, tokens = [], None
        for _ in range(repeat):
            s, tokens = decode_run()
            seconds.append(s)
    steps = new_tokens - 1
    rates = [steps / s for s in seconds]
    q = quantiles(rates, unit="tok_s")
    result = {"prompt_len": prompt_len, "new_tokens": new_tokens, "timed_steps": steps, "compiled": compiled,
              "compile_mode": compile_mode if compiled else None, "fullgraph": fullgraph if compiled else None, **q,
              "ms_per_token_p50": 1e3 / q["p50_tok_s"], "first_run_s": first,
              "same_tokens_every_run": bool(torch.equal(first_tokens, tokens))}
    if compiled:
        result["compile_s"] = max(first - statistics.median(seconds), 0.0)
    if profile_step:
        with torch.inference_mode():
            tok = prefill()
            result["kernels"] = cuda_kernels(lambda: run_step(tok, positions[prompt_len:prompt_len + 1]))
    return result


# ---------------------------------------------------------------------------------------------------------------
# kernel truth: which CUDA kernels really ran


_HELPERS = re.compile(r"elementwise_kernel|reduce_kernel|copy_kernel|multi_tensor_apply|CatArray|splitKreduce|"
                      r"index_|scatter|gather|fill_kernel|arange", re.I)
_KERNEL_CLASSES = (
    ("fp8-gemm", re.compile(r"nvjet_sm\d+_qq|e4m3.*gemm|gemm.*e4m3|f8f8|qgmma|fp8.*gemm|gemm.*fp8", re.I)),
    ("int8-gemm", re.compile(r"i8i8|s8s8|imma|gemm_s8|int8pack_mm|_int_mm|igemm|int8.*gemm|gemm.*int8", re.I)),
    ("float-gemm", re.compile(r"gemm|gemv|nvjet|cutlass|xmma|hgmma|cublas|sgemm", re.I)),
)


def classify_kernel(name: str) -> str:
    """The family of a CUDA kernel, by its name:

    labkit-int8  labkit's INT8 weight-only kernel
    attention    flash / fused attention kernels
    fp8-gemm     FP8 matrix kernels (cuBLAS "nvjet ... qq", CUTLASS e4m3)
    int8-gemm    integer matrix kernels (CUTLASS s8 tensor-op, torch's int8 weight kernel)
    int8-fused   a matmul torch.compile generated with the INT8 -> float conversion of its weight fused in
    float-gemm   bf16/fp32 matrix kernels (cuBLAS, CUTLASS, Triton templates)
    other        element-wise, reductions, copies, quantization of activations
    """
    if "_int8_weight_only_kernel" in name:
        return "labkit-int8"
    if re.search(r"flash|fmha|attention|sdpa|cudnn.*(attn|mha)", name, re.I):
        return "attention"
    if name.startswith("triton_"):  # kernels torch.compile generated: a matmul only when "mm" is its own op
        is_mm = re.search(r"(^|_)mm(_|$)", name.split("fused_", 1)[-1]) and "scaled_mm" not in name
        if is_mm and name.startswith(("triton_red_", "triton_tem_")):
            return "int8-fused" if "_to_copy" in name else "float-gemm"
        return "other"
    if _HELPERS.search(name):
        return "other"
    for family, pattern in _KERNEL_CLASSES:
        if pattern.search(name):
            return family
    return "other"


def cuda_kernels(fn: Callable[[], object], warmup: int = 1) -> list[dict]:
    """CUDA kernels launched by one call of `fn()` (after `warmup` calls): name, family, calls, total ms,
    most expensive first. Kernels inside a replayed CUDA graph are seen too (CUPTI records them)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            _sync()
    rows: dict[str, dict] = {}
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = ev.name
        if name.startswith(("Memcpy", "Memset", "cudaMemcpy", "cudaMemset")):
            family = "memory"
        else:
            family = classify_kernel(name)
        row = rows.setdefault(name, {"name": name[:160], "family": family, "calls": 0, "ms": 0.0})
        row["calls"] += 1
        row["ms"] += (ev.device_time if hasattr(ev, "device_time") else ev.cuda_time) / 1e3
    return sorted(rows.values(), key=lambda r: -r["ms"])


def kernel_families(kernels: list[dict]) -> dict[str, float]:
    """Milliseconds per kernel family."""
    out: dict[str, float] = {}
    for k in kernels:
        out[k["family"]] = out.get(k["family"], 0.0) + k["ms"]
    return out


__all__ = [
    "classify_kernel",
    "compile_regions",
    "compiled_prefill",
    "cuda_kernels",
    "first_call_s",
    "kernel_families",
    "quantiles",
    "static_cache_decode",
    "time_cuda",
    "time_cuda_graph",
]
