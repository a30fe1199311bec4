"""`python -m labkit.bench attention`: prefill latency and peak memory against sequence length, per backend
(notebook 02), after the kernel benchmark (labkit.experiments.kernels).

    full   (GPU) llama-2-7b shape, random weights, bf16, batch 1, N = 512 ... 32768, every available backend,
           the kernel benchmark and its plain-script check; about 3-5 minutes on an H100.
    quick  (CPU or GPU) tiny-llama, N = 64, 128, 256: the same code path in about a minute.

The result's `rows` (backend, seq_len, latency_ms, peak_gib, oom, ...) are the sweep's points, each recorded as
`point` when it finishes; `kernels`, the memory model's curves and the backend status come with them. Notebook 02
reads a committed file with `provenance_lines` and `summary_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labkit.attention.backends import BACKENDS, backend_status
from labkit.attention.memory_model import GIB, ModelShape, memory_curves, predicted_peak_bytes
from labkit.attention.sweep import ModelSpec, sweep
from labkit.experiments import kernels, protocol
from labkit.experiments.protocol import flag
from labkit.measure.memory import device_memory_gib, release_memory
from labkit.measure.stats import Target, non_monotone
from labkit.models import EMBEDDED_CAUSAL_LMS, SHAPES

NAME = "attention"
SWEEP_ORDER = ("fa2", "triton-fa2", "sdpa", "cudnn", "flash-attn", "eager")  # the fast ones first, eager last


@dataclass
class Settings(protocol.Settings):
    model: str = flag("tiny-llama", "shape or embedded model", choices=(*SHAPES, *EMBEDDED_CAUSAL_LMS))
    backends: tuple[str, ...] = flag(tuple(b for b in SWEEP_ORDER if BACKENDS[b].in_sweep),
                                     "comma-separated (default: every backend; an unavailable one is recorded with "
                                     "its reason)", choices=tuple(BACKENDS))
    seq_lens: tuple[int, ...] = flag((64, 128, 256), "comma-separated sequence lengths (full: 512 ... 32768)")
    batch_size: int = flag(1, "batch size")
    dtype: str | None = flag(None, "default: bfloat16 on a GPU, float32 on a CPU",
                             choices=("bfloat16", "float16", "float32"))
    allow_beyond_context: bool = flag(False, "let a trained model run past its context length (random-weight "
                                             "shapes always may)")
    kernels: bool = flag(True, "skip the kernel benchmark")
    verify: bool = flag(True, "skip the profiler check of the kernel")
    PROFILE_DEFAULTS = {"full": dict(model="llama-2-7b", seq_lens=(512, 1024, 2048, 4096, 8192, 16384, 32768),
                                     dtype="bfloat16")}


def check(settings: Settings, options) -> None:
    if settings.profile == "full" and not torch.cuda.is_available():
        raise ValueError("--profile full: the full attention profile (llama-2-7b shape, up to 32k tokens) needs an "
                         "NVIDIA GPU; on a CPU use --profile quick")
    context = SHAPES[settings.model].get("max_position_embeddings")
    if (settings.model in EMBEDDED_CAUSAL_LMS and context and max(settings.seq_lens) > context
            and not settings.allow_beyond_context):
        raise ValueError(f"--seq-lens {max(settings.seq_lens)}: longer than {settings.model}'s context of {context} "
                         "tokens; use shorter lengths or add --allow-beyond-context")


def measure(settings: Settings, run) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = ModelSpec(settings.model, settings.dtype)
    dtype, shape, lens = spec.torch_dtype(device), ModelShape.named(settings.model), settings.seq_lens
    grid = [n for n in sorted({*lens, *[int(2 ** (k / 4)) for k in range(24, 61)]}) if min(lens) <= n <= max(lens)]
    capacity, capacity_label = device_memory_gib(device)
    result = run.result
    result["config"].update(
        dtype=str(dtype).removeprefix("torch."),
        measured="model(input_ids, use_cache=False, logits_to_keep=1): full forward (prefill), no KV cache kept, "
                 "logits of the last token only; random token ids",
        weights="trained (embedded SmolLM2-135M)" if settings.model in EMBEDDED_CAUSAL_LMS
        else "random (same shapes, kernels, speed and memory as the trained model)")
    result.update(device_memory_gib=capacity, device_memory_label=capacity_label, backend_status=backend_status(device),
                  memory_model={"shape": shape.as_dict(), "batch_size": settings.batch_size,
                                "dtype": str(dtype).removeprefix("torch."),
                                "curves": memory_curves(shape, grid, settings.batch_size, dtype)})
    if settings.kernels:  # first, in a process the profiler has not touched yet (the sweep's kernel check uses it)
        result["kernels"] = kernels.measure_kernels(kernels.Settings(profile=settings.profile), run)
        release_memory(device)
    previous = run.recorded("point")
    result["rows"] = list(previous)
    sweep(spec, settings.backends, lens, settings.batch_size, device=device, progress=False, previous=previous,
          on_point=lambda row: result["rows"].append(run.record("point", row)),
          verify=device.type == "cuda" and settings.verify)
    if not any(r["ok"] for r in result["rows"]):
        errors = sorted({r["error"] for r in result["rows"] if r.get("error")})
        run.fail("no point was measured" + (f": {errors[0]}" if errors else ""))
    # latency should grow with N: a drop is flagged ("clear" when even the p10-p90 spreads do not overlap)
    result["non_monotone"] = non_monotone(result["rows"])


def _row(rows: list[dict], backend: str, n: int) -> dict | None:
    return next((r for r in rows if r["backend"] == backend and r["seq_len"] == n), None)


def targets(result: dict) -> list[Target]:
    """The lab's attention targets. Why these: eager attention materialises N x N scores, so it should run out of
    memory by 16k tokens on an 80 GB card; FA2 should be clearly faster (>= 4x) and lighter (<= half the peak) at
    8k, reach 32k, and the kernel benchmark should agree with a plain script (within 10%)."""
    rows, out = result.get("rows", []), []
    target = "eager runs out of memory at or before 16k tokens"
    eager_fail = sorted(r["seq_len"] for r in rows if r["backend"] == "eager" and r.get("oom") and not r.get("skipped"))
    eager_16k = _row(rows, "eager", 16384)
    if eager_fail:
        out.append(Target.exact(target, f"eager first out of memory at N={eager_fail[0]}", eager_fail[0] <= 16384))
    elif eager_16k and eager_16k["ok"]:
        out.append(Target.exact(target, f"eager ran at N=16384 ({eager_16k['peak_gib']:.1f} GiB peak)", False))
    else:
        out.append(Target.not_measured(target, "no eager out-of-memory point recorded"))
    fa2, eager = _row(rows, "fa2", 8192), _row(rows, "eager", 8192)
    speed, mem = "at 8k, fa2 at least 4x faster than eager", "at 8k, fa2 peak memory at most half of eager's"
    if fa2 and eager and fa2["ok"] and eager["ok"]:
        s, m = eager["latency_ms"] / fa2["latency_ms"], fa2["peak_gib"] / eager["peak_gib"]
        out.append(Target.exact(speed, f"{s:.2f}x ({eager['latency_ms']:.0f} ms against {fa2['latency_ms']:.0f} ms)",
                                s >= 4, s, 4.0))
        out.append(Target.exact(mem, f"{m:.2f} ({fa2['peak_gib']:.1f} GiB against {eager['peak_gib']:.1f} GiB)",
                                m <= 0.5, m, 0.5))
    else:
        out += [Target.not_measured(t, "fa2 or eager not measured at 8192") for t in (speed, mem)]
    for backend in ("fa2", "sdpa"):
        r, target = _row(rows, backend, 32768), f"{backend} reaches 32k tokens"
        if r is None:
            out.append(Target.not_measured(target, "not run"))
        else:
            out.append(Target.exact(target, "ran at N=32768" + (f" ({r['peak_gib']:.1f} GiB, {r['latency_ms']:.0f} ms)"
                                                                 if r["ok"] else f": {r.get('error')}"), r["ok"]))
    return out + [kernels.plain_script_target(result.get("kernels", {}))]


# ---------------------------------------------------------------------------------------------------------------
# reading a result file (notebook 02)


def provenance_lines(result: dict) -> str:
    """A short human-readable provenance block."""
    p, cfg = result.get("provenance", {}), result.get("config", {})
    v = p.get("versions", {})
    return "\n".join([
        f"device       {p.get('device_name')} (compute capability {p.get('compute_capability')}), "
        f"{result.get('device_memory_gib', 0):.1f} GiB",
        f"driver       {p.get('driver')}, CUDA {p.get('cuda')}, cuDNN {p.get('cudnn')}",
        f"versions     torch {v.get('torch')}, transformers {v.get('transformers')}, flash-attn {v.get('flash-attn')}",
        f"date         {p.get('date')}",
        f"command      {p.get('command')}",
        f"model        {cfg.get('model')} ({cfg.get('weights', '')}), {cfg.get('dtype')}, "
        f"batch {cfg.get('batch_size')}",
        f"measured     {cfg.get('measured', '')}",
        f"status       {result.get('status')}",
    ])


def summary_rows(result: dict, baseline: str = "eager") -> list[dict]:
    """Per measured point: latency, speed-up over `baseline` at the same N, peak memory and the memory model's
    prediction for it (from the shape and dtype stored in the result)."""
    mm = result.get("memory_model", {})
    shape = ModelShape(**mm["shape"]) if "shape" in mm else None
    rows = [r for r in result.get("rows", []) if r.get("ok")]
    base = {r["seq_len"]: r for r in rows if r["backend"] == baseline}
    out = []
    for r in sorted(rows, key=lambda r: (r["seq_len"], r["backend"])):
        b = base.get(r["seq_len"])
        model = (predicted_peak_bytes(shape, r["seq_len"], r["backend"], r.get("batch_size", 1),
                                      mm.get("dtype", "bfloat16")) / GIB) if shape else None
        out.append(dict(seq_len=r["seq_len"], backend=r["backend"], latency_ms=r["latency_ms"],
                        speedup_vs_eager=b["latency_ms"] / r["latency_ms"] if b else None,
                        peak_gib=r["peak_gib"], model_peak_gib=model))
    return out


__all__ = ["NAME", "SWEEP_ORDER", "Settings", "check", "measure", "provenance_lines", "summary_rows", "targets"]
