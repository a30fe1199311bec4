"""Making 8-bit fast on the GPU: INT8 and FP8 feed-forward layers against bf16, eager and compiled (notebook 03b).

Four parts (`--parts`, all by default; GPU only):
  kernel   labkit's INT8 Triton kernel alone on the Llama-2-7B feed-forward shapes: launch-configuration sweep,
           correctness against an fp64 reference, latency and achieved memory bandwidth against bf16 cuBLAS and
           against a measured device-to-device copy;
  block    one feed-forward block (gate/up 4096->11008, down 11008->4096, SiLU) at M = 1 ... 8192 tokens: bf16,
           torchao INT8 weight-only, torchao INT8 dynamic (w8a8), labkit INT8, FP8 row-wise; eager and compiled;
           the CUDA kernels each one ran (an INT8 variant that ran no integer/labkit kernel fails its check);
  decode   llama-2-7b shape, random weights: greedy decode, batch 1, static KV cache, 128-token prompt, 136 new
           tokens, eager and compiled (CUDA graphs): bf16 against INT8 feed-forward on labkit's kernel;
  prefill  the same shape at 8k tokens, eager and compiled: bf16, FP8 row-wise FF, INT8 w8a8 FF, FP8 all linear,
           labkit INT8 FF.
Every measurement is appended to <out>.jsonl as it is made and the JSON file is rewritten; failures and
out-of-memory are data points. Default output: build/fast8bit_<device>.json; `--reference` writes
data/reference/fast8bit_<device>.json instead. Exit status 1 when a part could not run at all.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

PARTS = ("kernel", "block", "decode", "prefill")
FEED_FORWARD = r"\.mlp\.(gate|up|down)_proj$"   # the hybrid's default selection (same regex)
ALL_LINEAR = r"\.layers\.\d+\."                   # every Linear inside the decoder blocks (head stays bf16)
BLOCK_VARIANTS = ("bf16", "torchao-int8-wo", "torchao-w8a8", "labkit-int8", "fp8-rowwise")
PREFILL_VARIANTS = ("bf16", "fp8-ff", "w8a8-ff", "fp8-all", "labkit-int8-ff")
DEFAULT_PREFILL = ("bf16", "fp8-ff", "w8a8-ff", "fp8-all")
DECODE_VARIANTS = ("bf16", "labkit-int8-ff")
FF_SHAPES = ((11008, 4096), (4096, 11008))        # (N, K): gate/up, down of Llama-2-7B
INT8_FAMILIES = {"labkit-int8", "int8-gemm"}           # w8a8: an integer matmul must run
WEIGHT_INT8_FAMILIES = {"labkit-int8", "int8-gemm", "int8-fused"}  # weight-only: the matmul must read INT8
ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--ms", default="1,16,128,2048,8192", help="token counts M for the block part")
    parser.add_argument("--block-variants", default=",".join(BLOCK_VARIANTS))
    parser.add_argument("--shape", default="llama-2-7b", help="random-weight model shape for decode/prefill")
    parser.add_argument("--prompt", type=int, default=128, help="decode: prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=136, help="decode: new tokens per run")
    parser.add_argument("--decode-repeat", type=int, default=5, help="decode: timed runs per variant")
    parser.add_argument("--decode-variants", default=",".join(DECODE_VARIANTS),
                        help="comma-separated: bf16, labkit-int8-ff, torchao-int8-wo-ff")
    parser.add_argument("--prefill-len", type=int, default=8192)
    parser.add_argument("--prefill-variants", default=",".join(DEFAULT_PREFILL),
                        help=f"comma-separated subset of {','.join(PREFILL_VARIANTS)}")
    parser.add_argument("--no-eager", action="store_true", help="decode/prefill: compiled only")
    parser.add_argument("--no-sweep", action="store_true", help="kernel: skip the launch-configuration sweep")
    parser.add_argument("--reference", action="store_true",
                        help="write data/reference/fast8bit_<device>.json (default: build/fast8bit_<device>.json)")


def _check_args(args) -> None:
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise SystemExit(f"--parts={args.parts!r}: unknown part(s) {bad}; choose from {','.join(PARTS)}")
    for flag, value, allowed in (("--block-variants", args.block_variants, BLOCK_VARIANTS),
                                 ("--prefill-variants", args.prefill_variants, PREFILL_VARIANTS),
                                 ("--decode-variants", args.decode_variants,
                                  DECODE_VARIANTS + ("torchao-int8-wo-ff",))):
        bad = [v for v in value.split(",") if v and v not in allowed]
        if bad:
            raise SystemExit(f"{flag}={value!r}: unknown variant(s) {bad}; choose from {','.join(allowed)}")
    try:
        ms = [int(m) for m in args.ms.split(",") if m]
    except ValueError:
        raise SystemExit(f"--ms={args.ms!r}: give comma-separated positive integers, e.g. 1,16,128") from None
    if not ms or min(ms) < 1:
        raise SystemExit(f"--ms={args.ms!r}: give comma-separated positive integers, e.g. 1,16,128")
    for flag, value in (("--prompt", args.prompt), ("--new-tokens", args.new_tokens),
                        ("--decode-repeat", args.decode_repeat), ("--prefill-len", args.prefill_len)):
        if value < 1:
            raise SystemExit(f"{flag}={value}: must be at least 1")
    if args.new_tokens < 2:
        raise SystemExit(f"--new-tokens={args.new_tokens}: must be at least 2 (the first comes from the prefill)")


def default_out(reference: bool) -> Path:
    """build/fast8bit_<device>.json, or with `reference` data/reference/fast8bit_<device>.json."""
    from labkit.results.files import device_slug

    folder = ROOT / ("data/reference" if reference else "build")
    return folder / f"fast8bit_{device_slug()}.json"


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------
# kernel


def _sweep_candidates(m: int):
    from labkit.quant.int8_kernel import KernelConfig as C

    if m == 1:
        return [C(16, 32, 256, 1, 4, 4), C(16, 32, 512, 1, 4, 4), C(16, 64, 256, 1, 8, 4), C(16, 32, 256, 1, 4, 6),
                C(16, 16, 512, 1, 4, 4), C(16, 32, 256, 1, 2, 4), C(16, 16, 1024, 1, 4, 3), C(1, 8, 2048, 1, 4, 3),
                C(1, 4, 1024, 1, 2, 4), C(1, 8, 1024, 1, 4, 6), C(1, 16, 1024, 1, 4, 4), C(1, 8, 1024, 1, 8, 4),
                C(1, 4, 2048, 1, 4, 4), C(16, 32, 128, 1, 4, 8),
                C(1, 16, 512, 1, 4, 4), C(1, 32, 512, 1, 4, 4), C(1, 8, 1024, 1, 4, 4), C(1, 16, 1024, 1, 8, 3),
                C(1, 32, 256, 1, 4, 4), C(1, 16, 512, 2, 4, 4), C(1, 16, 512, 4, 4, 4), C(1, 32, 512, 2, 8, 4),
                C(1, 64, 256, 1, 8, 3), C(1, 8, 512, 1, 2, 4), C(1, 16, 256, 4, 4, 4), C(1, 32, 1024, 1, 8, 2),
                C(1, 8, 512, 2, 2, 4), C(16, 64, 128, 1, 4, 4), C(16, 32, 256, 1, 4, 4)]
    return [C(16, 64, 128, 1, 4, 4), C(16, 32, 128, 1, 4, 4), C(16, 64, 256, 1, 4, 3), C(16, 128, 128, 1, 4, 3),
            C(16, 32, 256, 2, 4, 4), C(16, 64, 128, 2, 4, 4), C(16, 64, 128, 4, 4, 4), C(16, 32, 512, 1, 4, 3),
            C(16, 16, 256, 1, 4, 4), C(16, 128, 64, 1, 4, 4), C(16, 32, 256, 1, 4, 4), C(16, 64, 256, 2, 8, 3)]


def kernel_part(record, sweep: bool = True, ms=(1, 4, 16)) -> None:
    """Copy bandwidth, then per FF shape and M: the sweep (best config kept in TUNED), correctness, latency."""
    import torch.nn.functional as F

    from labkit.measure.generation import time_cuda, time_cuda_graph
    from labkit.quant import int8_kernel as ik

    dev = torch.device("cuda")
    src = torch.empty(2**30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    t = time_cuda(lambda: dst.copy_(src), warmup=3, repeat=20)
    copy_tb_s = 2 * src.numel() / (t["p50_ms"] / 1e3) / 1e12
    record({"part": "kernel", "kind": "copy-bandwidth", "bytes_moved": 2 * src.numel(), **t,
            "tb_s": copy_tb_s, "note": "device-to-device copy of 1 GiB, bytes read + written"})
    del src, dst
    _free()
    gen = torch.Generator(device=dev).manual_seed(0)
    for n, k in FF_SHAPES:
        copies = max(2, math.ceil(240e6 / (n * k)))   # rotate > L2 (50 MB) so every call reads from HBM
        codes = [torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev, generator=gen) for _ in range(copies)]
        scales = [torch.rand(n, device=dev, generator=gen) * 1e-2 + 1e-3 for _ in range(copies)]
        wbf = [(c.to(torch.bfloat16) * s.to(torch.bfloat16)[:, None]) for c, s in zip(codes, scales)]
        for m in ms:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16, generator=gen)
            if sweep and m in (1, 16):
                best = None
                for cfg in _sweep_candidates(m):
                    it = iter(range(10**9))
                    def call(cfg=cfg, it=it):
                        i = next(it) % copies
                        return ik.int8_weight_only_mm(x, codes[i], scales[i], cfg)
                    try:
                        ref = ik.reference_mm(x, codes[0], scales[0])
                        y = ik.int8_weight_only_mm(x, codes[0], scales[0], cfg)
                        err = float((y.double() - ref).norm() / ref.norm())
                        tg = time_cuda_graph(call, calls=2 * copies, repeat=10)
                        row = {"part": "kernel", "kind": "sweep", "n": n, "k": k, "m": m, "config": cfg.__dict__,
                               "rel_err": err, **tg, "ok": err < 1e-2}
                        if row["ok"] and (best is None or tg["p50_ms"] < best[1]):
                            best = (cfg, tg["p50_ms"])
                    except Exception as exc:  # noqa: BLE001 - a config that fails to compile is a data point
                        row = {"part": "kernel", "kind": "sweep", "n": n, "k": k, "m": m, "config": cfg.__dict__,
                               "ok": False, "error": _error(exc)}
                    record(row, quiet=True)
                if best is not None:
                    ik.TUNED[(m, n, k)] = best[0]
                    record({"part": "kernel", "kind": "tuned", "n": n, "k": k, "m": m, "config": best[0].__dict__,
                            "p50_ms": best[1]})
            # correctness on fresh inputs: poisoned output buffer is impossible to see through the API, so the
            # check is against the fp64 reference on every element (NaN fails)
            cfg = ik.pick_config(m, n, k)
            xs = torch.randn(m, k, device=dev, dtype=torch.bfloat16, generator=gen)
            y = ik.int8_weight_only_mm(xs, codes[1], scales[1])
            ref = ik.reference_mm(xs, codes[1], scales[1])
            err = float((y.double() - ref).norm() / ref.norm())
            finite = bool(torch.isfinite(y).all())
            it1, it2 = iter(range(10**9)), iter(range(10**9))
            lab = lambda: ik.int8_weight_only_mm(x, codes[next(it1) % copies], scales[0])  # noqa: E731
            bf = lambda: F.linear(x, wbf[next(it2) % copies])  # noqa: E731
            t_lab_e, t_bf_e = time_cuda(lab, repeat=50), time_cuda(bf, repeat=50)
            t_lab_g = time_cuda_graph(lab, calls=2 * copies, repeat=20)
            t_bf_g = time_cuda_graph(bf, calls=2 * copies, repeat=20)
            lab_bytes, bf_bytes = ik.weight_only_bytes(m, n, k), 2 * n * k + 2 * m * k + 2 * m * n
            row = {"part": "kernel", "kind": "kernel", "n": n, "k": k, "m": m, "config": cfg.__dict__,
                   "rel_err": err, "finite": finite, "ok": finite and err < 1e-2,
                   "labkit_eager": t_lab_e, "bf16_eager": t_bf_e, "labkit_graph": t_lab_g, "bf16_graph": t_bf_g,
                   "labkit_bytes": lab_bytes, "bf16_bytes": bf_bytes,
                   "labkit_tb_s": lab_bytes / (t_lab_g["p50_ms"] / 1e3) / 1e12,
                   "bf16_tb_s": bf_bytes / (t_bf_g["p50_ms"] / 1e3) / 1e12,
                   "speedup_vs_bf16_graph": t_bf_g["p50_ms"] / t_lab_g["p50_ms"],
                   "speedup_vs_bf16_eager": t_bf_e["p50_ms"] / t_lab_e["p50_ms"]}
            row["labkit_frac_of_copy"] = row["labkit_tb_s"] / copy_tb_s
            record(row)
        del codes, scales, wbf
        _free()


# ---------------------------------------------------------------------------------------------------------------
# block


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
    """Every variant x eager/compiled x M: latency quantiles, compile time, correctness, kernels, kernel check."""
    from labkit.measure.generation import cuda_kernels, first_call_s, time_cuda
    from labkit.quant.fp8 import fp8_unavailable_reason

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
            for m in ms:
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


# ---------------------------------------------------------------------------------------------------------------
# end to end on the 7B shape


def _build(shape: str, variant: str, attn: str):
    from labkit.models import build_from_shape

    model = build_from_shape(shape, dtype=torch.bfloat16, device="cuda", attn_implementation="sdpa")
    if attn == "fa2":
        from labkit.attention import set_backend

        set_backend(model, "fa2")
    layers = ALL_LINEAR if variant.endswith("-all") else FEED_FORWARD
    quantize_variant(model, variant, layers)
    return model


def _weight_gib(model) -> float:
    from labkit.quant.size import weight_bytes

    return weight_bytes(model) / 2**30


def decode_part(record, args, variants) -> None:
    from labkit.measure.generation import static_cache_decode

    for variant in variants:
        for compiled in ((True,) if args.no_eager else (False, True)):
            base = {"part": "decode", "model": args.shape, "weights": "random (speed only)", "variant": variant,
                    "compiled": compiled, "attention": "sdpa (static cache passes a mask; the flash kernel takes none)"}
            model = None
            try:
                torch._dynamo.reset()
                model = _build(args.shape, variant, "sdpa")
                base["weight_gib"] = _weight_gib(model)
                repeat = args.decode_repeat if compiled else max(2, args.decode_repeat // 2)
                try:
                    r = static_cache_decode(model, args.prompt, args.new_tokens, compiled=compiled, repeat=repeat,
                                            profile_step=True)
                except Exception as err:  # noqa: BLE001 - a graph break: measure it anyway, and say so
                    if not compiled or _is_oom(err):
                        raise
                    base["fullgraph_error"] = _error(err)
                    torch._dynamo.reset()
                    r = static_cache_decode(model, args.prompt, args.new_tokens, compiled=True, repeat=repeat,
                                            fullgraph=False, profile_step=True)
                kernels = r.pop("kernels")
                record({**base, "ok": True, **r, "kernels": kernels[:10], **kernel_check(variant, 1, kernels)})
            except Exception as err:  # noqa: BLE001
                record({**base, "ok": False, "oom": _is_oom(err), "error": _error(err),
                        "traceback": traceback.format_exc(limit=6)})
            del model
            torch._dynamo.reset()
            _free()


def prefill_part(record, args, variants) -> None:
    from labkit.measure.generation import compiled_prefill, cuda_kernels, random_ids
    from labkit.quant.fp8 import fp8_unavailable_reason

    n = args.prefill_len
    for variant in variants:
        base = {"part": "prefill", "model": args.shape, "weights": "random (speed only)", "variant": variant,
                "seq_len": n, "attention": "fa2",
                "layers": "all linear in the blocks" if variant.endswith("-all") else
                ("feed-forward" if variant != "bf16" else None)}
        if variant.startswith("fp8") and (why := fp8_unavailable_reason("cuda")):
            record({**base, "ok": False, "skipped": why})
            continue
        model = None
        try:
            torch._dynamo.reset()
            model = _build(args.shape, variant, "fa2")
            base["weight_gib"] = _weight_gib(model)
            if not args.no_eager:
                try:
                    r = compiled_prefill(model, n, compiled=False, budget_s=3.0)
                    record({**base, "ok": True, **r})
                except Exception as err:  # noqa: BLE001
                    record({**base, "compiled": False, "ok": False, "oom": _is_oom(err), "error": _error(err)})
                _free()
            r = compiled_prefill(model, n, compiled=True, budget_s=4.0)
            ids = random_ids(model, n)
            kernels = cuda_kernels(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), warmup=0)
            record({**base, "ok": True, **r, "compile_mode": "default, per decoder layer", "kernels": kernels[:10],
                    **kernel_check(variant, n, kernels)})
        except Exception as err:  # noqa: BLE001
            record({**base, "compiled": True, "ok": False, "oom": _is_oom(err), "error": _error(err),
                    "traceback": traceback.format_exc(limit=6)})
        del model
        torch._dynamo.reset()
        _free()


# ---------------------------------------------------------------------------------------------------------------
# targets


def _p50(rows, **match):
    """The matching successful row of the latest session (rows carry `session` once merged)."""
    found = [r for r in rows if r.get("ok") and all(r.get(k) == v for k, v in match.items())]
    return max(found, key=lambda r: r.get("session", 0)) if found else None


def _ratio_verdict(ratio: float, target: float, lo: float, hi: float) -> bool | str:
    """Met / missed, or "within noise" when the target lies inside the ratio's spread (p10..p90, and across
    sessions where there are several): a difference smaller than its noise is not a result."""
    if lo < target <= hi or lo <= target < hi:
        return "within noise"
    return ratio >= target


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """The targets of the fast 8-bit work, judged from the measured rows (met True/False/"within noise")."""
    out = []
    for n, k in FF_SHAPES:
        r = _p50(rows, part="kernel", kind="kernel", n=n, k=k, m=1)
        if r:
            lab, bf = r["labkit_graph"]["p50_ms"] * 1e3, r["bf16_graph"]["p50_ms"] * 1e3
            lo = r["bf16_graph"]["p10_ms"] / r["labkit_graph"]["p90_ms"]
            hi = r["bf16_graph"]["p90_ms"] / r["labkit_graph"]["p10_ms"]
            s = bf / lab
            out.append({"target": f"labkit kernel, M=1, {k}->{n}: >= 1.6x bf16 cuBLAS (device time, calls replayed "
                                  "from a CUDA graph)",
                        "measured": f"{bf:.1f} / {lab:.1f} us = {s:.2f}x (spread {lo:.2f}-{hi:.2f}x)",
                        "met": _ratio_verdict(s, 1.6, lo, hi)})
            se = r["speedup_vs_bf16_eager"]
            out.append({"target": f"labkit kernel, M=1, {k}->{n}: >= 1.6x bf16 cuBLAS, each call launched on its own "
                                  "from Python (launch cost included)",
                        "measured": f"{r['bf16_eager']['p50_ms'] * 1e3:.1f} / {r['labkit_eager']['p50_ms'] * 1e3:.1f} us"
                                    f" = {se:.2f}x: Triton's Python launch path costs more than the kernel",
                        "met": se >= 1.6})
            out.append({"target": f"labkit kernel, M=1, {k}->{n}: >= 70% of the measured copy bandwidth",
                        "measured": f"{r['labkit_tb_s']:.2f} TB/s = {r['labkit_frac_of_copy']:.0%}",
                        "met": r["labkit_frac_of_copy"] >= 0.70})
    sessions = sorted({r.get("session", 0) for r in rows if r.get("part") == "decode"})
    ratios = []
    for sess in sessions:
        bf = _p50([r for r in rows if r.get("session", 0) == sess], part="decode", variant="bf16", compiled=True)
        lk = _p50([r for r in rows if r.get("session", 0) == sess], part="decode", variant="labkit-int8-ff",
                  compiled=True)
        if bf and lk:
            ratios.append((sess, lk, bf, lk["p50_tok_s"] / bf["p50_tok_s"]))
    if ratios:
        sess, lk, bf, ratio = ratios[-1]
        lo, hi = lk["p10_tok_s"] / bf["p90_tok_s"], lk["p90_tok_s"] / bf["p10_tok_s"]
        lo, hi = min([lo] + [x[3] for x in ratios]), max([hi] + [x[3] for x in ratios])
        others = "; other sessions " + ", ".join(f"{x[3]:.3f}x" for x in ratios[:-1]) if len(ratios) > 1 else ""
        out.append({"target": "decode (static cache, compiled): INT8 FF on labkit's kernel >= 1.3x bf16",
                    "measured": f"{lk['p50_tok_s']:.1f} vs {bf['p50_tok_s']:.1f} tok/s = {ratio:.3f}x "
                                f"(p10-p90 and sessions {lo:.3f}-{hi:.3f}x{others})",
                    "met": _ratio_verdict(ratio, 1.3, lo, hi)})
    pb = _p50(rows, part="prefill", variant="bf16", compiled=True)
    for variant, target in (("fp8-ff", 1.12), ("w8a8-ff", 0.95), ("fp8-all", None)):
        pv = _p50(rows, part="prefill", variant=variant, compiled=True)
        if pb and pv:
            speed = pb["p50_ms"] / pv["p50_ms"]
            lo, hi = pb["p10_ms"] / pv["p90_ms"], pb["p90_ms"] / pv["p10_ms"]
            out.append({"target": f"prefill {pb['seq_len']} compiled: {variant} "
                                  + (f">= {target}x bf16 speed" if target else "speed vs bf16 (no target)"),
                        "measured": f"{pb['p50_ms']:.1f} / {pv['p50_ms']:.1f} ms = {speed:.2f}x "
                                    f"(spread {lo:.2f}-{hi:.2f}x)",
                        "met": _ratio_verdict(speed, target, lo, hi) if target else None})
    for r in rows:
        if r.get("part") in ("block", "decode", "prefill") and r.get("ok") and r.get("kernel_ok") is False:
            out.append({"target": f"kernel truth: {r['part']} {r['variant']} "
                                  f"{'compiled' if r.get('compiled') else 'eager'}"
                                  + (f" M={r['m']}" if "m" in r else ""),
                        "measured": r["kernel_note"], "met": False})
    return out


# ---------------------------------------------------------------------------------------------------------------
# driver


def run(args) -> dict:
    """Run the chosen parts, writing each measurement as it is made; returns the result."""
    from labkit.env import provenance

    _check_args(args)
    parts = [p for p in args.parts.split(",") if p]
    if not torch.cuda.is_available():
        raise SystemExit("fast8bit measures GPU kernels and needs an NVIDIA GPU; on a CPU read the committed "
                         "data/reference/fast8bit_*.json instead (notebook 03b shows it)")
    out = Path(args.out) if getattr(args, "out", None) else default_out(args.reference)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    jsonl.unlink(missing_ok=True)
    argv = getattr(args, "argv", None)  # set by `python -m labkit.bench fast8bit ...`
    command = ("python -m labkit.bench " + " ".join(shlex.quote(a) for a in argv) if argv is not None else
               "python -m labkit.experiments.fast8bit " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    started = time.perf_counter()
    result = {"experiment": "fast8bit", "status": "running", "provenance": provenance(command),
              "config": {k: v for k, v in vars(args).items() if not callable(v) and k != "argv"}, "rows": [], "targets": [],
              "errors": [], "notes": [
                  "timings: p10/p50/p90 over `repeats` calls after warm-up; ms unless named tok_s",
                  "kernel part: weights rotate over several copies (> L2) so each call reads HBM; *_graph timings "
                  "replay the calls from one CUDA graph (no launch gaps)",
                  "compiled block: torch.compile(mode='reduce-overhead') (CUDA graphs); compiled prefill: each "
                  "decoder layer compiled (regional compilation); compiled decode: the decode step compiled with "
                  "mode='reduce-overhead', fullgraph=True",
                  "compile_s: first call's wall time minus one steady-state call",
                  "decode attention: SDPA (a static KV cache needs a mask, which the flash kernel does not take); "
                  "prefill attention: FA2 (SDPA forced to the flash kernel)",
                  "llama-2-7b: random weights, speed and memory only",
              ]}

    def save(status: str = "running") -> None:
        result["status"] = status
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        result["targets"] = evaluate_targets(result["rows"])
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
        tmp.replace(out)

    def record(row: dict, quiet: bool = False) -> None:
        row = {"t_s": round(time.perf_counter() - started, 1), **row}
        result["rows"].append(row)
        with jsonl.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        save()
        if not quiet:
            print(_summary(row), flush=True)

    print(f"[fast8bit] parts {parts} on {torch.cuda.get_device_name()}; writing {out}", flush=True)
    save()
    ms = [int(m) for m in args.ms.split(",") if m]
    jobs = {"kernel": lambda: kernel_part(record, sweep=not args.no_sweep),
            "block": lambda: block_part(record, ms, [v for v in args.block_variants.split(",") if v]),
            "decode": lambda: decode_part(record, args, [v for v in args.decode_variants.split(",") if v]),
            "prefill": lambda: prefill_part(record, args, [v for v in args.prefill_variants.split(",") if v])}
    for part in parts:
        try:
            jobs[part]()
        except Exception as err:  # noqa: BLE001 - the file keeps what was measured
            result["errors"].append({"part": part, "error": _error(err), "traceback": traceback.format_exc(limit=8)})
            print(f"[fast8bit] part {part} FAILED: {_error(err)}", flush=True)
        _free()
    save("complete" if not result["errors"] else "incomplete")
    print("[fast8bit] targets:")
    for t in result["targets"]:
        mark = {True: "MET   ", False: "MISSED", None: "n/a   "}.get(t["met"], str(t["met"]))
        print(f"  {mark} {t['target']}: {t['measured']}", flush=True)
    if result["errors"]:
        raise SystemExit(1)
    return result


def _summary(row: dict) -> str:
    part = row.get("part")
    if not row.get("ok", True):
        return f"  {part} {row.get('variant', row.get('kind'))} m={row.get('m', '')} " \
               f"{'compiled' if row.get('compiled') else ''} FAILED/SKIPPED: {row.get('error') or row.get('skipped')}"
    if part == "kernel" and row.get("kind") == "kernel":
        return (f"  kernel {row['k']}->{row['n']} M={row['m']}: labkit {row['labkit_graph']['p50_ms'] * 1e3:.1f} us "
                f"({row['labkit_tb_s']:.2f} TB/s, {row['labkit_frac_of_copy']:.0%} of copy) vs bf16 "
                f"{row['bf16_graph']['p50_ms'] * 1e3:.1f} us; eager {row['labkit_eager']['p50_ms'] * 1e3:.1f} vs "
                f"{row['bf16_eager']['p50_ms'] * 1e3:.1f} us; err {row['rel_err']:.1e} cfg {row['config']}")
    if part == "kernel":
        return f"  kernel {row.get('kind')}: " + ", ".join(f"{k}={v}" for k, v in row.items()
                                                          if k in ("n", "k", "m", "config", "p50_ms", "tb_s"))
    if part == "block":
        return (f"  block {row['variant']:<16} {'compiled' if row['compiled'] else 'eager   '} M={row['m']:<5} "
                f"p50 {row['p50_ms']:.3f} ms (p10 {row['p10_ms']:.3f} p90 {row['p90_ms']:.3f}, n={row['repeats']}) "
                f"err {row['rel_err_vs_bf16']:.1e} first {row['first_call_s']:.1f}s kernels: {row['kernel_note']}")
    if part == "decode":
        return (f"  decode {row['variant']:<16} {'compiled' if row['compiled'] else 'eager'}: "
                f"{row['p50_tok_s']:.1f} tok/s (p10 {row['p10_tok_s']:.1f} p90 {row['p90_tok_s']:.1f}) "
                f"compile {row.get('compile_s', 0):.0f}s weights {row['weight_gib']:.2f} GiB; {row['kernel_note']}")
    if part == "prefill":
        return (f"  prefill {row['variant']:<16} {'compiled' if row['compiled'] else 'eager'} {row['seq_len']}: "
                f"{row['p50_ms']:.1f} ms (p10 {row['p10_ms']:.1f} p90 {row['p90_ms']:.1f}, n={row['repeats']}) "
                f"compile {row.get('compile_s', 0):.0f}s {row.get('kernel_note', '')}")
    return f"  {row}"


def merge_sessions(paths: list[str | Path], command: str | None = None) -> dict:
    """One result from several sessions' files (a lent GPU may allow only minutes per call, so the parts can run
    in separate calls). Rows get `session` (1, 2, ... in file order); kernel families and checks are re-derived
    from the recorded kernel names with this version's classifier; targets are judged on the merged rows (the
    latest session's row per measurement, every session's decode ratio for the noise band)."""
    from labkit.measure.generation import classify_kernel

    results = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    if not results:
        raise SystemExit("--merge needs at least one result file")
    bad = [str(p) for p, r in zip(paths, results) if r.get("experiment") != "fast8bit"]
    if bad:
        raise SystemExit(f"--merge: {bad} are not fast8bit result files")
    rows, sessions = [], []
    for i, res in enumerate(results, start=1):
        prov = res["provenance"]
        parts = sorted({r["part"] for r in res["rows"]})
        sessions.append({"session": i, "date": prov["date"], "command": prov["command"], "parts": parts,
                         "status": res["status"], "device_name": prov["device_name"]})
        for r in res["rows"]:
            r = {**r, "session": i}
            if r.get("kernels"):
                for k in r["kernels"]:
                    k["family"] = "memory" if k["name"].startswith(("Memcpy", "Memset")) else classify_kernel(k["name"])
                if r.get("ok") and r["part"] in ("block", "decode", "prefill"):
                    m = r.get("m", 1 if r["part"] == "decode" else r.get("seq_len", 1))
                    r.update(kernel_check(r["variant"], m, r["kernels"]))
            rows.append(r)
    # a part measured again in a later session replaces the earlier one, except decode (kept for the noise band)
    latest = {}
    for r in rows:
        latest[r["part"]] = max(latest.get(r["part"], 0), r["session"])
    rows = [r for r in rows if r["part"] == "decode" or r["session"] == latest[r["part"]]]
    merged = {**results[-1], "rows": rows, "status": "complete" if all(
        s["status"] == "complete" for s in sessions) else "incomplete", "errors": [e for r in results for e in r["errors"]]}
    merged["provenance"] = {**results[-1]["provenance"], "command": command or "python -m labkit.experiments.fast8bit "
                            "--merge " + " ".join(str(p) for p in paths), "sessions": sessions}
    merged["notes"] = results[-1]["notes"] + [
        "merged from several sessions (provenance.sessions): each row carries its session; kernel families were "
        "re-derived from the recorded kernel names (top 8 by time per measurement) with the final classifier",
        "all parts in one run on a GPU: python -m labkit.experiments.fast8bit (about 10 minutes on an H100)",
    ]
    merged["targets"] = evaluate_targets(rows)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.experiments.fast8bit", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="result file (default: build/fast8bit_<device>.json)")
    add_arguments(parser)
    parser.add_argument("--merge", nargs="+", default=None, metavar="FILE",
                        help="merge result files of several sessions into one (no GPU needed)")
    args = parser.parse_args(argv)
    if args.merge:
        out = Path(args.out) if args.out else default_out(args.reference).with_name("fast8bit_merged.json")
        if args.reference and not args.out:
            out = ROOT / "data" / "reference" / "fast8bit_h100.json"
        command = "python -m labkit.experiments.fast8bit " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        merged = merge_sessions(args.merge, command)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(merged, indent=1, default=str) + "\n", encoding="utf-8")
        print(f"wrote {out}: {len(merged['rows'])} rows from {len(args.merge)} sessions")
        for t in merged["targets"]:
            print(f"  {str(t['met']):<13} {t['target']}: {t['measured']}")
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------------------------------------------
# reading committed results (notebook 03b)


def load_reference(slug: str = "h100", directory: str | Path | None = None) -> dict | None:
    """The committed data/reference/fast8bit_<slug>.json (a complete run), or None when this checkout has none."""
    from labkit.results.reference import load_reference as load

    data, _ = load("fast8bit", slug, directory=directory)
    return data


def block_table(result: dict, value: str = "p50_ms"):
    """Block part as a table: one row per (variant, eager/compiled), one column per M; failures show their reason."""
    import pandas as pd

    rows = []
    for r in result["rows"]:
        if r.get("part") != "block" or "m" not in r:
            continue
        cell = r.get(value) if r.get("ok") else ("OOM" if r.get("oom") else "failed")
        rows.append({"variant": r["variant"], "mode": "compiled" if r["compiled"] else "eager", "M": r["m"],
                     value: cell})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.pivot_table(index=["variant", "mode"], columns="M", values=value, aggfunc="first", sort=False)


def kernel_table(result: dict):
    """Kernel part: labkit's kernel against bf16 cuBLAS per shape and M (device times from CUDA-graph replay)."""
    import pandas as pd

    rows = []
    for r in result["rows"]:
        if r.get("part") == "kernel" and r.get("kind") == "kernel":
            rows.append({"shape (K->N)": f"{r['k']}->{r['n']}", "M": r["m"],
                         "labkit us": r["labkit_graph"]["p50_ms"] * 1e3, "bf16 cuBLAS us": r["bf16_graph"]["p50_ms"] * 1e3,
                         "speed-up": r["speedup_vs_bf16_graph"], "labkit TB/s": r["labkit_tb_s"],
                         "share of copy bandwidth": r["labkit_frac_of_copy"],
                         "labkit us (launched from Python)": r["labkit_eager"]["p50_ms"] * 1e3,
                         "bf16 us (launched from Python)": r["bf16_eager"]["p50_ms"] * 1e3, "rel. error": r["rel_err"]})
    return pd.DataFrame(rows)


def e2e_table(result: dict):
    """Decode and prefill rows of the 7B shape: variant, eager/compiled, p10/p50/p90, compile seconds, kernel check."""
    import pandas as pd

    rows = []
    for r in result["rows"]:
        if r.get("part") not in ("decode", "prefill"):
            continue
        row = {"part": r["part"], "variant": r["variant"], "mode": "compiled" if r.get("compiled") else "eager"}
        if not r.get("ok"):
            row["note"] = r.get("skipped") or r.get("error")
        elif r["part"] == "decode":
            row.update({"p10": r["p10_tok_s"], "p50": r["p50_tok_s"], "p90": r["p90_tok_s"], "unit": "tok/s",
                        "repeats": r["repeats"], "compile s": r.get("compile_s"), "weights GiB": r.get("weight_gib"),
                        "kernel check": r.get("kernel_note")})
        else:
            row.update({"p10": r["p10_ms"], "p50": r["p50_ms"], "p90": r["p90_ms"], "unit": "ms",
                        "repeats": r["repeats"], "compile s": r.get("compile_s"), "weights GiB": r.get("weight_gib"),
                        "kernel check": r.get("kernel_note")})
        rows.append(row)
    return pd.DataFrame(rows)
