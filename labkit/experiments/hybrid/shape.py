"""The speed-and-memory half on a real shape with random weights (llama-2-7b): bf16 + FA2 against 8-bit
feed-forward + FA2. Random weights have the real speed and memory; their outputs mean nothing.

Modes: bf16; w8 / w8a8 (torchao INT8 weight-only / dynamic activations); w8-labkit (INT8 weight-only on labkit's
Triton kernel, `labkit.quant.int8_linear`); fp8 (FP8 row-wise weights and activations, GPUs >= 8.9)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from labkit.attention.backends import check_backend, set_backend
from labkit.experiments.hybrid.checks import check_hybrid
from labkit.experiments.hybrid.config import FEED_FORWARD
from labkit.measure.decode import decode_tokens_per_s
from labkit.measure.memory import GIB, error_text, is_memory_error, release_memory
from labkit.measure.prefill import prefill_point
from labkit.models import build_from_shape
from labkit.quant.kernel_evidence import SHAPE_MODE_CLAIMS
from labkit.quant.ptq import quantize_dynamic_int8, quantize_weight_only_int8
from labkit.quant.report import int8_modules
from labkit.quant.selection import LayerSelection, resolve_layers
from labkit.quant.size import weight_bytes


SHAPE_MODES = ("bf16", "w8", "w8a8", "w8-labkit", "fp8")
DEFAULT_SHAPE_MODES = ("bf16", "w8", "w8a8")


def quantize_mode(model: nn.Module, mode: str, selected: list[str]) -> list[str]:
    """Quantize `selected` in place for one shape mode; returns the names that really are 8-bit afterwards."""
    if mode in ("w8", "w8a8"):
        (quantize_dynamic_int8 if mode == "w8a8" else quantize_weight_only_int8)(model, selected)
        return int8_modules(model)
    if mode == "w8-labkit":
        from torchao.quantization import quantize_

        from labkit.quant.int8_linear import LabkitInt8WeightOnlyConfig
        from labkit.quant.selection import selection_filter

        quantize_(model, LabkitInt8WeightOnlyConfig(), filter_fn=selection_filter(model, selected))
        return int8_modules(model)
    if mode == "fp8":
        from labkit.quant.fp8 import fp8_modules, quantize_fp8_rowwise

        quantize_fp8_rowwise(model, selected)  # refuses, with the reason, below compute capability 8.9
        return fp8_modules(model)
    raise ValueError(f"unknown mode {mode!r}; use {SHAPE_MODES}")


def shape_benchmark(
    shape: str = "llama-2-7b",
    lengths: tuple[int, ...] = (8192, 32768),
    layers: LayerSelection = FEED_FORWARD,
    modes: tuple[str, ...] = DEFAULT_SHAPE_MODES,
    *,
    device: torch.device | str = "cuda",
    backend: str = "fa2",
    decode_prompt: int = 128,
    decode_tokens: int = 32,
    on_row: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict]:
    """bf16 + FA2 against INT8 `layers` + FA2 on a random-weight real shape: weights, prefill latency and peak
    memory per length, decode tokens/s. One model on the device at a time; OOM is a data point.

    Meant for a GPU. `device="cpu", backend="sdpa"` with a tiny shape only exercises the code (tests)."""
    say = log or (lambda s: None)
    device = torch.device(device)
    if backend == "fa2" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise RuntimeError(
            f"the {shape} shape benchmark with FA2 needs an NVIDIA GPU (FlashAttention-2 is CUDA-only and a 7B bf16 "
            "model alone needs ~13.5 GB); on a CPU read the committed GPU results instead"
        )
    check_backend(backend, device, torch.bfloat16)
    bad = [m for m in modes if m not in SHAPE_MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; use {SHAPE_MODES}")
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for mode in modes:
        variant = (f"bf16+{backend}" if mode == "bf16" else f"fp8-ff+{backend}" if mode == "fp8"
                   else f"int8-ff-{mode}+{backend}")
        base = {"model": shape, "weights": "random (speed and memory only)", "variant": variant, "mode": mode}
        model = None
        try:
            release_memory(device)
            t0 = time.perf_counter()
            model = build_from_shape(shape, dtype=torch.bfloat16, device=device)
            set_backend(model, backend)
            if mode != "bf16":
                before = {n: id(m.weight) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
                selected = resolve_layers(model, layers)
                quantized = quantize_mode(model, mode, selected)
                after = {n: id(m.weight) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
                modules = dict(model.named_modules())
                untouched = all(after[n] == before[n] and type(modules[n].weight) is nn.Parameter
                                and type(modules[n].weight.data) is torch.Tensor
                                for n in before if n not in set(selected))
                base.update(int8_layers=len(quantized), int8_matches_selection=quantized == selected,
                            unselected_untouched=untouched)
                if mode == "fp8":  # the same two checks, for FP8 layers
                    base["quantized_format"] = "fp8 e4m3 row-wise"
            base["weight_gib"] = weight_bytes(model) / GIB
            base["build_s"] = time.perf_counter() - t0
            say(f"{shape} {variant}: weights {base['weight_gib']:.2f} GiB")
        except Exception as err:  # noqa: BLE001
            emit({**base, "kind": "build", "ok": False, "oom": is_memory_error(err), "error": error_text(err)})
            say(f"{shape} {variant}: build FAILED {error_text(err)}")
            del model
            release_memory(device)
            continue
        try:
            claim, need_kernel = SHAPE_MODE_CLAIMS[mode]
            ev = check_hybrid(model, [], None, backend, quantized=False, mode=claim,
                              require_weight_kernel=need_kernel)
            base["attention_ok"], base["attention"] = ev["attention_ok"], ev["attention"]
            base["matmul_ok"], base["matmul"] = ev.get("matmul_ok"), ev.get("matmul")
        except Exception as err:  # noqa: BLE001
            base["attention_ok"], base["attention"], base["matmul_ok"] = False, error_text(err), False
        for n in lengths:
            p = prefill_point(model, n)
            row = {**base, "kind": "prefill", "seq_len": n, "ok": p.ok, "oom": p.oom, "latency_ms": p.latency_ms,
                   "p10_ms": p.p10_ms, "p90_ms": p.p90_ms, "repeats": p.repeats, "peak_gib": p.peak_gib,
                   "error": p.error}
            emit(row)
            say(f"  prefill {n:>6}: " + (f"{p.latency_ms:.1f} ms, peak {p.peak_gib:.2f} GiB" if p.ok else
                                         f"{'OOM' if p.oom else 'FAILED'} {p.error or ''}"))
        try:
            d = decode_tokens_per_s(model, decode_prompt, decode_tokens)
            emit({**base, "kind": "decode", "ok": True, "oom": False, **d})
            say(f"  decode: {d['decode_tok_s']:.1f} tok/s")
        except Exception as err:  # noqa: BLE001
            emit({**base, "kind": "decode", "ok": False, "oom": is_memory_error(err), "error": error_text(err)})
            say(f"  decode FAILED {error_text(err)}")
        del model
        release_memory(device)
    return rows
