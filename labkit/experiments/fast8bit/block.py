"""Block part: one Llama feed-forward block per 8-bit variant, eager and compiled, with its kernel check."""

from __future__ import annotations

import torch
from torch import nn

from labkit.experiments.fast8bit.common import INT8_FAMILIES, WEIGHT_INT8_FAMILIES, _error, _free, _is_oom


class FeedForward(nn.Module):
    """Llama's feed-forward block: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int = 4096, inner: int = 11008) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def quantize_variant(model: nn.Module, variant: str, layers=None) -> nn.Module:
    """Apply one 8-bit variant in place to the `layers` selection (None: every Linear)."""
    from torchao.quantization import (Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, PerRow,
                                      quantize_)

    from labkit.quant.fp8 import quantize_fp8_rowwise
    from labkit.quant.int8_linear import LabkitInt8WeightOnlyConfig
    from labkit.quant.selection import selection_filter

    base = variant.removesuffix("-ff").removesuffix("-all")
    if base in ("bf16",):
        return model
    if base in ("fp8", "fp8-rowwise"):
        return quantize_fp8_rowwise(model, layers)
    config = {"torchao-int8-wo": Int8WeightOnlyConfig(granularity=PerRow()),
              "torchao-w8a8": Int8DynamicActivationInt8WeightConfig(granularity=PerRow()),
              "w8a8": Int8DynamicActivationInt8WeightConfig(granularity=PerRow()),
              "labkit-int8": LabkitInt8WeightOnlyConfig()}[base]
    quantize_(model, config, filter_fn=selection_filter(model, layers))
    return model


def _expected_families(variant: str, m: int) -> set[str] | None:
    """Kernel families a variant must show in its matmuls; None: no requirement (bf16)."""
    if variant.startswith("labkit-int8"):
        return {"labkit-int8"} if m <= 16 else None   # above 16 tokens: dequantize + cuBLAS by design
    if variant.startswith("torchao-int8-wo"):
        return WEIGHT_INT8_FAMILIES
    if variant.startswith(("torchao-w8a8", "w8a8")):
        return INT8_FAMILIES
    if variant.startswith("fp8"):
        return {"fp8-gemm"}
    return None


def kernel_check(variant: str, m: int, kernels: list[dict]) -> dict:
    """Did the variant run the kind of matmul kernel it claims? (torchao's safe int_mm can silently fall back)."""
    from labkit.measure.generation import kernel_families

    fams = kernel_families(kernels)
    want = _expected_families(variant, m)
    matmul_fams = sorted(f for f in fams if f.endswith("gemm") or f in ("labkit-int8", "int8-fused"))
    if want is None:
        return {"kernel_ok": True, "matmul_families": matmul_fams,
                "kernel_note": "no 8-bit kernel required (bf16, or labkit above 16 tokens: dequantize + cuBLAS)"}
    ok = bool(want & set(fams))
    note = "ran " + "/".join(sorted(want & set(fams))) if ok else \
        f"ran no {'/'.join(sorted(want))} kernel: matmuls were {', '.join(matmul_fams) or 'none seen'}"
    return {"kernel_ok": ok, "matmul_families": matmul_fams, "kernel_note": note}


def block_part(record, ms, variants) -> None:
    """Every variant x eager/compiled x M: latency quantiles, compile time (`compile_s`, apart from the run time),
    correctness, kernels, kernel check. Measurements `record.done(...)` finds are not made again."""
    from labkit.measure.generation import cuda_kernels, first_call_s, time_cuda
    from labkit.quant.fp8 import fp8_unavailable_reason

    if all(record.done(part="block", variant=v, compiled=c, m=m) or record.done(part="block", variant=v,
                                                                               compiled=c, m=None)
           for v in variants for c in (False, True) for m in ms):
        return  # every block measurement is in the run's JSONL
    dev = torch.device("cuda")
    torch.manual_seed(0)
    master = FeedForward().to(dev, torch.bfloat16).eval()
    torch._dynamo.config.recompile_limit = 64
    xs = {m: torch.randn(m, 4096, device=dev, dtype=torch.bfloat16) for m in ms}
    with torch.inference_mode():
        refs = {m: master(xs[m]) for m in ms}
    for variant in variants:
        for compiled in (False, True):
            base = {"part": "block", "variant": variant, "compiled": compiled,
                    "compile_mode": "reduce-overhead" if compiled else None}
            todo = [m for m in ms if record.done(part="block", variant=variant, compiled=compiled, m=m) is None]
            if not todo or record.done(part="block", variant=variant, compiled=compiled, m=None) is not None:
                continue  # measured (or skipped, or failed to quantize) by an earlier attempt of this run
            if variant.startswith("fp8") and (why := fp8_unavailable_reason(dev)):
                record({**base, "ok": False, "skipped": why})
                continue
            torch._dynamo.reset()
            block = FeedForward().to(dev, torch.bfloat16).eval()
            block.load_state_dict(master.state_dict())
            try:
                quantize_variant(block, variant)
            except Exception as err:  # noqa: BLE001
                record({**base, "ok": False, "error": "quantize: " + _error(err)})
                continue
            fn_model = torch.compile(block, mode="reduce-overhead") if compiled else block
            for m in todo:
                x = xs[m]
                row = {**base, "m": m}
                try:
                    first = first_call_s(lambda: fn_model(x))
                    with torch.inference_mode():
                        y = fn_model(x).clone()
                    err = float((y.double() - refs[m].double()).norm() / refs[m].double().norm())
                    t = time_cuda(lambda: fn_model(x), warmup=2, repeat=30, budget_s=2.0)
                    kernels = cuda_kernels(lambda: fn_model(x))
                    row.update(ok=True, first_call_s=first, rel_err_vs_bf16=err, **t, kernels=kernels[:8],
                               **kernel_check(variant, m, kernels))
                    if compiled:
                        row["compile_s"] = max(first - t["p50_ms"] / 1e3, 0.0)
                except Exception as err:  # noqa: BLE001 - failure or OOM is a data point
                    row.update(ok=False, oom=_is_oom(err), error=_error(err))
                record(row)
                _free()
            del block, fn_model
            _free()
