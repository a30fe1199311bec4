"""Notebook 01's CPU latency: every variant timed in interleaved rounds, eager and torch.compile'd alike."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from labkit.measure.timing import p10_p90
from labkit.quant.kernel_evidence import matmul_evidence



def latency_inputs(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full-length batch (every position a real token), so every variant does the same work."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab_size, (batch_size, seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def compile_model(model: nn.Module):
    """torch.compile; call it (compile, warm up, run) inside `compile_settings()` so every variant gets the
    same inductor settings."""
    return torch.compile(model)


def compile_settings():
    """Inductor freezing for every compiled variant alike: weights become constants, so on x86 the FP32
    Linears use packed MKL GEMMs and torchao's INT8 pattern is lowered to oneDNN's qlinear kernel.
    (Set as a config patch around compilation: passing `options={"freezing": True}` to torch.compile
    did not trigger the oneDNN INT8 lowering in torch 2.13, only the plain `_int_mm` path.)"""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    stack = contextlib.ExitStack()
    stack.enter_context(inductor_config.patch(freezing=True))
    # every variant x batch size is one more compiled entry of the same forward(); past dynamo's default
    # limit (8) the extra ones would silently run eager, so raise it for this measurement
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    stack.enter_context(dynamo_config.patch(**{limit: 64}))
    return stack


def measure_latency(
    models: dict[str, nn.Module], cfg, vocab_size: int, compiled: bool = False,
    progress: tqdm | None = None, modes: dict[str, str] | None = None,
) -> dict[str, dict[int, dict]]:
    """Median latency (ms) per variant and batch size. Rounds are interleaved across variants, so load
    from other processes on a shared machine hits every variant alike; `warmup` calls (and, compiled,
    the compilation) happen before any timed call.

    `modes` (variant -> "w8a8" / "w8" / "float"): after warm-up, one call per variant at the largest batch is
    profiled and judged (labkit.quant.kernel_evidence); the evidence is in that batch's entry under "matmul"."""
    inputs = {b: latency_inputs(b, cfg.latency_seq_len, vocab_size, cfg.seed) for b in cfg.latency_batch_sizes}
    fns, compile_s = {}, {}
    settings = compile_settings() if compiled else contextlib.nullcontext()
    if compiled:
        torch._dynamo.reset()
    with torch.inference_mode(), settings:
        for name, model in models.items():
            fn = compile_model(model) if compiled else model
            t0 = time.perf_counter()
            for b, x in inputs.items():
                for _ in range(cfg.latency_warmup):
                    fn(**x)
            compile_s[name] = time.perf_counter() - t0
            fns[name] = fn
            if progress is not None:
                progress.set_postfix_str(f"{'compiled' if compiled else 'eager'} warm-up {name}")
        evidence = {}
        if modes:
            b_max = max(inputs)
            for name, fn in fns.items():
                if name in modes:
                    ev = matmul_evidence(models[name], lambda fn=fn: fn(**inputs[b_max]), modes[name])
                    evidence[name] = ev.as_dict() | {"summary": str(ev)}
        times = {n: {b: [] for b in inputs} for n in models}
        for r in range(cfg.latency_rounds):
            for name, fn in fns.items():
                for b, x in inputs.items():
                    for _ in range(cfg.latency_repeat):
                        t0 = time.perf_counter()
                        fn(**x)
                        times[name][b].append((time.perf_counter() - t0) * 1e3)
            if progress is not None:
                progress.set_postfix_str(f"{'compiled' if compiled else 'eager'} round {r + 1}/{cfg.latency_rounds}")
    out = {}
    for name, per_b in times.items():
        out[name] = {}
        for b, ts in per_b.items():
            p10, p90 = p10_p90(ts)
            out[name][b] = {"median_ms": statistics.median(ts), "p10_ms": p10, "p90_ms": p90, "n": len(ts),
                            "warmup_s": compile_s[name]}
            if name in evidence and b == max(per_b):
                out[name][b]["matmul"] = evidence[name]
    del fns
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    return out
