"""`python -m labkit.bench fast8bit`: INT8 and FP8 feed-forward layers against bf16 on the GPU, eager and compiled
(notebook 03b), in four parts (`--parts`), each row recorded under its part: `kernel` (labkit's INT8 Triton kernel
alone on the Llama-2-7B feed-forward shapes: launch-config sweep, correctness, latency, bandwidth against bf16 cuBLAS
and a device copy), `block` (one feed-forward block per 8-bit variant at M = 1 ... 8192, with the kernels it ran),
`decode` and `prefill` (the 7B shape with random weights: static-cache decode, 8k prefill). A part that cannot run
fails the run; a failure or out-of-memory inside one is a data point."""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass

import torch
from torch import nn

from labkit.experiments import protocol
from labkit.experiments.hybrid.pipeline import quantize_mode
from labkit.experiments.protocol import flag
from labkit.measure.memory import error_text, is_memory_error, release_memory
from labkit.measure.stats import Target, ratio_verdict
from labkit.quant.selection import ALL_LINEAR, FEED_FORWARD

NAME = "fast8bit"
PARTS = ("kernel", "block", "decode", "prefill")
BLOCK_VARIANTS = ("bf16", "torchao-int8-wo", "torchao-w8a8", "labkit-int8", "fp8-rowwise")
PREFILL_VARIANTS = ("bf16", "fp8-ff", "w8a8-ff", "fp8-all", "labkit-int8-ff")
DECODE_VARIANTS = ("bf16", "labkit-int8-ff", "torchao-int8-wo-ff")
FF_SHAPES = ((11008, 4096), (4096, 11008))        # (N, K): gate/up, down of Llama-2-7B
INT8_FAMILIES = {"labkit-int8", "int8-gemm"}           # w8a8: an integer matmul must run
WEIGHT_INT8_FAMILIES = {"labkit-int8", "int8-gemm", "int8-fused"}  # weight-only: the matmul must read INT8
NOTES = [
    "timings: p10/p50/p90 over `repeats` calls after warm-up; ms unless named tok_s",
    "kernel part: weights rotate over several copies (> L2) so each call reads HBM; *_graph timings "
    "replay the calls from one CUDA graph (no launch gaps)",
    "compiled block: torch.compile(mode='reduce-overhead') (CUDA graphs); compiled prefill: each "
    "decoder layer compiled (regional compilation); compiled decode: the decode step compiled with "
    "mode='reduce-overhead', fullgraph=True",
    "compile_s: first call's wall time minus one steady-state call (run time: the p10/p50/p90 timings)",
    "decode attention: SDPA (a static KV cache needs a mask, which the flash kernel does not take); "
    "prefill attention: FA2 (SDPA forced to the flash kernel)",
    "llama-2-7b: random weights, speed and memory only",
    "`attempt` on a row: the attempt of the run that measured it (a run continued with --resume has several)",
]


@dataclass
class Settings(protocol.Settings):
    parts: tuple[str, ...] = flag(PARTS, f"comma-separated subset of {','.join(PARTS)}", choices=PARTS)
    ms: tuple[int, ...] = flag((1, 16, 128), "token counts M for the block part (full: 1,16,128,2048,8192)")
    block_variants: tuple[str, ...] = flag(BLOCK_VARIANTS, "comma-separated block variants", choices=BLOCK_VARIANTS)
    shape: str = flag("llama-2-7b", "random-weight model shape for decode/prefill")
    prompt: int = flag(128, "decode: prompt tokens")
    new_tokens: int = flag(136, "decode: new tokens per run (at least 2: the first comes from the prefill)")
    decode_repeat: int = flag(2, "decode: timed runs per variant (full: 5)")
    decode_variants: tuple[str, ...] = flag(DECODE_VARIANTS[:2], "comma-separated decode variants",
                                            choices=DECODE_VARIANTS)
    prefill_len: int = flag(1024, "prefill tokens (full: 8192)")
    prefill_variants: tuple[str, ...] = flag(PREFILL_VARIANTS[:4], "comma-separated prefill variants",
                                             choices=PREFILL_VARIANTS)
    eager: bool = flag(True, "decode/prefill: compiled only")
    sweep: bool = flag(True, "kernel: skip the launch-configuration sweep")
    PROFILE_DEFAULTS = {"full": dict(ms=(1, 16, 128, 2048, 8192), decode_repeat=5, prefill_len=8192)}


def check(settings: Settings, options) -> None:
    protocol.require_gpu("fast8bit measures GPU kernels and needs an NVIDIA GPU; on a CPU read the committed "
                         "data/reference/fast8bit_*.json instead (notebook 03b shows it)")
    if settings.new_tokens < 2:
        raise ValueError(f"--new-tokens {settings.new_tokens}: must be at least 2 (the first comes from the prefill)")
    if options.update_reference and set(settings.parts) != set(PARTS):
        raise ValueError(f"--update-reference with --parts {','.join(settings.parts)}: the committed reference holds "
                         f"every part; leave --parts out (all of {','.join(PARTS)})")


class Part:
    """The rows of one part: `done(**match)` is the row an earlier attempt recorded for that measurement (None: not
    measured; a key given as None matches rows without it); calling it records a row as it is made."""

    def __init__(self, run, name: str):
        self.run, self.name, self.previous = run, name, run.recorded(name)

    def done(self, **match) -> dict | None:
        return next((r for r in self.previous if all(r.get(k) == v for k, v in match.items())), None)

    def __call__(self, row: dict, quiet: bool = False) -> None:
        self.run.result["rows"].append(self.run.record(self.name, row, quiet=quiet))


def measure(settings: Settings, run) -> None:
    run.result.update(rows=[r for p in PARTS for r in run.recorded(p)], errors=[], notes=NOTES)
    jobs = {"kernel": lambda rec: kernel_part(rec, sweep=settings.sweep),
            "block": lambda rec: block_part(rec, settings.ms, settings.block_variants),
            "decode": lambda rec: decode_part(rec, settings, settings.decode_variants),
            "prefill": lambda rec: prefill_part(rec, settings, settings.prefill_variants)}
    for part in settings.parts:
        try:
            jobs[part](Part(run, part))
        except Exception as err:  # noqa: BLE001 - the file keeps what was measured; the run fails
            run.result["errors"].append({"part": part, "error": error_text(err),
                                         "traceback": traceback.format_exc(limit=8)})
            run.fail(f"part {part}: {error_text(err)}")
        release_memory()


# ---------------------------------------------------------------------------------------------------------------
# kernel part: labkit's INT8 Triton kernel alone


SWEEP = {  # launch configurations tried (block_m, block_n, block_k, split_k, warps, stages), by M
    1: [(16, 32, 256, 1, 4, 4), (16, 32, 512, 1, 4, 4), (16, 64, 256, 1, 8, 4), (16, 32, 256, 1, 4, 6),
        (16, 16, 512, 1, 4, 4), (16, 32, 256, 1, 2, 4), (16, 16, 1024, 1, 4, 3), (1, 8, 2048, 1, 4, 3),
        (1, 4, 1024, 1, 2, 4), (1, 8, 1024, 1, 4, 6), (1, 16, 1024, 1, 4, 4), (1, 8, 1024, 1, 8, 4),
        (1, 4, 2048, 1, 4, 4), (16, 32, 128, 1, 4, 8), (1, 16, 512, 1, 4, 4), (1, 32, 512, 1, 4, 4),
        (1, 8, 1024, 1, 4, 4), (1, 16, 1024, 1, 8, 3), (1, 32, 256, 1, 4, 4), (1, 16, 512, 2, 4, 4),
        (1, 16, 512, 4, 4, 4), (1, 32, 512, 2, 8, 4), (1, 64, 256, 1, 8, 3), (1, 8, 512, 1, 2, 4),
        (1, 16, 256, 4, 4, 4), (1, 32, 1024, 1, 8, 2), (1, 8, 512, 2, 2, 4), (16, 64, 128, 1, 4, 4)],
    16: [(16, 64, 128, 1, 4, 4), (16, 32, 128, 1, 4, 4), (16, 64, 256, 1, 4, 3), (16, 128, 128, 1, 4, 3),
         (16, 32, 256, 2, 4, 4), (16, 64, 128, 2, 4, 4), (16, 64, 128, 4, 4, 4), (16, 32, 512, 1, 4, 3),
         (16, 16, 256, 1, 4, 4), (16, 128, 64, 1, 4, 4), (16, 32, 256, 1, 4, 4), (16, 64, 256, 2, 8, 3)],
}


def kernel_part(record, sweep: bool = True, ms=(1, 4, 16)) -> None:
    """Copy bandwidth, then per FF shape and M: the sweep (best config kept in TUNED), correctness, latency.
    Measurements `record.done(...)` finds (an earlier attempt of the run made them) are not made again."""
    import torch.nn.functional as F

    from labkit.measure.generation import time_cuda, time_cuda_graph
    from labkit.quant import int8_kernel as ik

    dev = torch.device("cuda")
    left = [(n, k) for n, k in FF_SHAPES if not all(record.done(part="kernel", kind="kernel", n=n, k=k, m=m)
                                                    for m in ms)]
    for n, k in FF_SHAPES:  # the tuned configs an earlier attempt found apply to this run's later parts too
        for m in ms:
            if (tuned := record.done(part="kernel", kind="tuned", n=n, k=k, m=m)) is not None:
                ik.TUNED[(m, n, k)] = ik.KernelConfig(**tuned["config"])
    if not left:
        return  # every kernel measurement is in the run's JSONL
    if (copied := record.done(part="kernel", kind="copy-bandwidth")) is not None:
        copy_tb_s = copied["tb_s"]
    else:
        src = torch.empty(2**30, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        t = time_cuda(lambda: dst.copy_(src), warmup=3, repeat=20)
        copy_tb_s = 2 * src.numel() / (t["p50_ms"] / 1e3) / 1e12
        record({"part": "kernel", "kind": "copy-bandwidth", "bytes_moved": 2 * src.numel(), **t,
                "tb_s": copy_tb_s, "note": "device-to-device copy of 1 GiB, bytes read + written"})
        del src, dst
        release_memory()
    gen = torch.Generator(device=dev).manual_seed(0)
    for n, k in left:
        copies = max(2, math.ceil(240e6 / (n * k)))   # rotate > L2 (50 MB) so every call reads from HBM
        codes = [torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev, generator=gen) for _ in range(copies)]
        scales = [torch.rand(n, device=dev, generator=gen) * 1e-2 + 1e-3 for _ in range(copies)]
        wbf = [(c.to(torch.bfloat16) * s.to(torch.bfloat16)[:, None]) for c, s in zip(codes, scales)]
        for m in ms:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16, generator=gen)
            if record.done(part="kernel", kind="tuned", n=n, k=k, m=m) is None and sweep and m in (1, 16):
                best = None
                for cfg in (ik.KernelConfig(*c) for c in SWEEP[m]):
                    if (old := record.done(part="kernel", kind="sweep", n=n, k=k, m=m, config=cfg.__dict__)):
                        if old.get("ok") and (best is None or old["p50_ms"] < best[1]):
                            best = (cfg, old["p50_ms"])
                        continue
                    it = iter(range(10**9))
                    def call(cfg=cfg, it=it):
                        i = next(it) % copies
                        return ik.int8_weight_only_mm(x, codes[i], scales[i], cfg)
                    row = {"part": "kernel", "kind": "sweep", "n": n, "k": k, "m": m, "config": cfg.__dict__}
                    try:
                        ref = ik.reference_mm(x, codes[0], scales[0])
                        y = ik.int8_weight_only_mm(x, codes[0], scales[0], cfg)
                        err = float((y.double() - ref).norm() / ref.norm())
                        tg = time_cuda_graph(call, calls=2 * copies, repeat=10)
                        row.update(rel_err=err, **tg, ok=err < 1e-2)
                        if row["ok"] and (best is None or tg["p50_ms"] < best[1]):
                            best = (cfg, tg["p50_ms"])
                    except Exception as exc:  # noqa: BLE001 - a config that fails to compile is a data point
                        row.update(ok=False, error=error_text(exc))
                    record(row, quiet=True)
                if best is not None:
                    ik.TUNED[(m, n, k)] = best[0]
                    record({"part": "kernel", "kind": "tuned", "n": n, "k": k, "m": m, "config": best[0].__dict__,
                            "p50_ms": best[1]})
            if record.done(part="kernel", kind="kernel", n=n, k=k, m=m) is not None:
                continue
            # correctness on fresh inputs, against the fp64 reference on every element (NaN fails)
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
        release_memory()


# ---------------------------------------------------------------------------------------------------------------
# block part: one Llama feed-forward block per 8-bit variant, eager and compiled, with its kernel check


class FeedForward(nn.Module):
    """Llama's feed-forward block: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int = 4096, inner: int = 11008) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


MODE_OF = {"torchao-int8-wo": "w8", "torchao-w8a8": "w8a8", "w8a8": "w8a8", "labkit-int8": "w8-labkit", "fp8": "fp8",
           "fp8-rowwise": "fp8"}  # a variant's 8-bit mode (labkit.experiments.hybrid.pipeline.quantize_mode)


def quantize_variant(model: nn.Module, variant: str, layers=None) -> nn.Module:
    """Apply one 8-bit variant in place to the `layers` selection (None: every Linear)."""
    if (base := variant.removesuffix("-ff").removesuffix("-all")) != "bf16":
        quantize_mode(model, MODE_OF[base], layers)
    return model


def kernel_check(variant: str, m: int, kernels: list[dict]) -> dict:
    """Did the variant run the kind of matmul kernel it claims? (torchao's safe int_mm can silently fall back)."""
    from labkit.measure.generation import kernel_families

    fams = kernel_families(kernels)
    want = ((({"labkit-int8"} if m <= 16 else None) if variant.startswith("labkit-int8")  # > 16: dequantize + cuBLAS
             else WEIGHT_INT8_FAMILIES if variant.startswith("torchao-int8-wo")
             else INT8_FAMILIES if variant.startswith(("torchao-w8a8", "w8a8"))
             else {"fp8-gemm"} if variant.startswith("fp8") else None))
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

    def finished(v, c) -> bool:  # measured at every M, or skipped / failed to quantize as a whole
        return (record.done(part="block", variant=v, compiled=c, m=None) is not None
                or all(record.done(part="block", variant=v, compiled=c, m=m) for m in ms))

    if all(finished(v, c) for v in variants for c in (False, True)):
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
            if finished(variant, compiled):
                continue  # measured (or skipped, or failed to quantize) by an earlier attempt of this run
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
                record({**base, "ok": False, "error": "quantize: " + error_text(err)})
                continue
            fn_model = torch.compile(block, mode="reduce-overhead") if compiled else block
            for m in (m for m in ms if record.done(part="block", variant=variant, compiled=compiled, m=m) is None):
                x, row = xs[m], {**base, "m": m}
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
                    row.update(ok=False, oom=is_memory_error(err), error=error_text(err))
                record(row)
                release_memory()
            del block, fn_model
            release_memory()


# ---------------------------------------------------------------------------------------------------------------
# decode and prefill parts: the 7B shape end to end (random weights), bf16 against 8-bit feed-forward layers


def _build(shape: str, variant: str, attn: str):
    from labkit.attention import set_backend
    from labkit.models import build_from_shape

    model = build_from_shape(shape, dtype=torch.bfloat16, device="cuda", attn_implementation="sdpa")
    if attn == "fa2":
        set_backend(model, "fa2")
    return quantize_variant(model, variant, ALL_LINEAR if variant.endswith("-all") else FEED_FORWARD)


def _weight_gib(model) -> float:
    from labkit.quant.size import weight_bytes

    return weight_bytes(model) / 2**30


def decode_part(record, s: Settings, variants) -> None:
    from labkit.measure.generation import static_cache_decode

    for variant in variants:
        for compiled in (False, True) if s.eager else (True,):
            if record.done(part="decode", variant=variant, compiled=compiled) is not None:
                continue  # measured by an earlier attempt of this run
            base = {"part": "decode", "model": s.shape, "weights": "random (speed only)", "variant": variant,
                    "compiled": compiled, "attention": "sdpa (static cache passes a mask; the flash kernel takes none)"}
            model = None
            try:
                torch._dynamo.reset()
                model = _build(s.shape, variant, "sdpa")
                base["weight_gib"] = _weight_gib(model)
                repeat = s.decode_repeat if compiled else max(2, s.decode_repeat // 2)
                try:
                    r = static_cache_decode(model, s.prompt, s.new_tokens, compiled=compiled, repeat=repeat,
                                            profile_step=True)
                except Exception as err:  # noqa: BLE001 - a graph break: measure it anyway, and say so
                    if not compiled or is_memory_error(err):
                        raise
                    base["fullgraph_error"] = error_text(err)
                    torch._dynamo.reset()
                    r = static_cache_decode(model, s.prompt, s.new_tokens, compiled=True, repeat=repeat,
                                            fullgraph=False, profile_step=True)
                kernels = r.pop("kernels")
                record({**base, "ok": True, **r, "kernels": kernels[:10], **kernel_check(variant, 1, kernels)})
            except Exception as err:  # noqa: BLE001
                record({**base, "ok": False, "oom": is_memory_error(err), "error": error_text(err),
                        "traceback": traceback.format_exc(limit=6)})
            del model
            torch._dynamo.reset()
            release_memory()


def prefill_part(record, s: Settings, variants) -> None:
    from labkit.measure.generation import compiled_prefill, cuda_kernels
    from labkit.measure.prefill import random_input_ids
    from labkit.quant.fp8 import fp8_unavailable_reason

    n = s.prefill_len
    for variant in variants:
        base = {"part": "prefill", "model": s.shape, "weights": "random (speed only)", "variant": variant,
                "seq_len": n, "attention": "fa2",
                "layers": "all linear in the blocks" if variant.endswith("-all") else
                ("feed-forward" if variant != "bf16" else None)}
        eager = s.eager and record.done(part="prefill", variant=variant, compiled=False) is None
        compiled = record.done(part="prefill", variant=variant, compiled=True) is None
        if record.done(part="prefill", variant=variant, compiled=None) is not None or not (eager or compiled):
            continue  # measured (or skipped) by an earlier attempt of this run
        if variant.startswith("fp8") and (why := fp8_unavailable_reason("cuda")):
            record({**base, "ok": False, "skipped": why})
            continue
        model = None
        try:
            torch._dynamo.reset()
            model = _build(s.shape, variant, "fa2")
            base["weight_gib"] = _weight_gib(model)
            if eager:
                try:
                    record({**base, "ok": True, **compiled_prefill(model, n, compiled=False, budget_s=3.0)})
                except Exception as err:  # noqa: BLE001
                    record({**base, "compiled": False, "ok": False, "oom": is_memory_error(err),
                            "error": error_text(err)})
                release_memory()
            if compiled:
                r = compiled_prefill(model, n, compiled=True, budget_s=4.0)
                ids = random_input_ids(model, n)
                kernels = cuda_kernels(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), warmup=0)
                record({**base, "ok": True, **r, "compile_mode": "default, per decoder layer",
                        "kernels": kernels[:10], **kernel_check(variant, n, kernels)})
        except Exception as err:  # noqa: BLE001
            record({**base, "compiled": True, "ok": False, "oom": is_memory_error(err), "error": error_text(err),
                    "traceback": traceback.format_exc(limit=6)})
        del model
        torch._dynamo.reset()
        release_memory()


# ---------------------------------------------------------------------------------------------------------------
# targets


def _row(rows, **match) -> dict | None:
    return next((r for r in rows if r.get("ok") and all(r.get(k) == v for k, v in match.items())), None)


def _q(t: dict, unit: str = "ms") -> tuple[float, float, float]:
    return t[f"p10_{unit}"], t[f"p50_{unit}"], t[f"p90_{unit}"]


def targets(result: dict) -> list[Target]:
    """The fast 8-bit targets, judged from the measured rows: a ratio is within noise when the target lies inside
    its p10-p90 spread."""
    rows, out = result.get("rows", []), []
    for n, k in FF_SHAPES:
        r = _row(rows, part="kernel", kind="kernel", n=n, k=k, m=1)
        if r is None:
            continue
        for mode, how in (("graph", "device time, calls replayed from a CUDA graph"),
                          ("eager", "each call launched on its own from Python (launch cost included)")):
            lab, bf = r[f"labkit_{mode}"], r[f"bf16_{mode}"]
            v = ratio_verdict(_q(bf), _q(lab), 1.6, at_most=False)
            out.append(Target.judged(f"labkit kernel, M=1, {k}->{n}: >= 1.6x bf16 cuBLAS ({how})",
                                     f"{bf['p50_ms'] * 1e3:.1f} / {lab['p50_ms'] * 1e3:.1f} us = {v['ratio']:.2f}x "
                                     f"(spread {v['ratio_low']:.2f}-{v['ratio_high']:.2f}x)", v))
        out.append(Target.exact(f"labkit kernel, M=1, {k}->{n}: >= 70% of the measured copy bandwidth",
                                f"{r['labkit_tb_s']:.2f} TB/s = {r['labkit_frac_of_copy']:.0%}",
                                r["labkit_frac_of_copy"] >= 0.70, r["labkit_frac_of_copy"], 0.70))
    bf, lk = (_row(rows, part="decode", variant=v, compiled=True) for v in ("bf16", "labkit-int8-ff"))
    if bf and lk:
        v = ratio_verdict(_q(lk, "tok_s"), _q(bf, "tok_s"), 1.3, at_most=False)
        out.append(Target.judged("decode (static cache, compiled): INT8 FF on labkit's kernel >= 1.3x bf16",
                                 f"{lk['p50_tok_s']:.1f} vs {bf['p50_tok_s']:.1f} tok/s = {v['ratio']:.3f}x "
                                 f"(p10-p90 {v['ratio_low']:.3f}-{v['ratio_high']:.3f}x)", v))
    pb = _row(rows, part="prefill", variant="bf16", compiled=True)
    for variant, limit in (("fp8-ff", 1.12), ("w8a8-ff", 0.95), ("fp8-all", None)):
        pv = _row(rows, part="prefill", variant=variant, compiled=True)
        if pb and pv:
            v = ratio_verdict(_q(pb), _q(pv), limit or 1.0, at_most=False)
            measured = (f"{pb['p50_ms']:.1f} / {pv['p50_ms']:.1f} ms = {v['ratio']:.2f}x "
                        f"(spread {v['ratio_low']:.2f}-{v['ratio_high']:.2f}x)")
            target = f"prefill {pb['seq_len']} compiled: {variant} " + (f">= {limit}x bf16 speed" if limit
                                                                         else "speed vs bf16 (no target)")
            out.append(Target.judged(target, measured, v) if limit else Target(target, measured, "no verdict",
                                                                                v["ratio"]))
    for r in rows:
        if r.get("part") in ("block", "decode", "prefill") and r.get("ok") and r.get("kernel_ok") is False:
            out.append(Target.exact(f"kernel truth: {r['part']} {r['variant']} "
                                    f"{'compiled' if r.get('compiled') else 'eager'}"
                                    + (f" M={r['m']}" if "m" in r else ""), r["kernel_note"], False))
    return out
