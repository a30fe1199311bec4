"""`python -m labkit.bench attention`: prefill latency and peak memory against sequence length, per backend.

    full   (GPU) llama-2-7b shape, random weights, bf16, batch 1, N = 512 ... 32768, every available backend,
           the kernel benchmark and its plain-script check; about 3-5 minutes on an H100.
    quick  (CPU or GPU) tiny-llama, N = 64, 128, 256: the same code path in about a minute.

Writes a run folder runs/attention_<device>_<time>/ (device: "cpu" or a GPU slug such as "h100"): result.json
with provenance, `rows` (backend, seq_len, latency_ms, peak_gib, oom, ...), `kernels`, the memory model and the
backend status; result.jsonl with each finished point, appended as it happens (`--resume` continues from it).
`--update-reference` copies a complete full-profile run to data/reference/attention_<device>.json.
"""

from __future__ import annotations

from pathlib import Path

import torch

from labkit.attention.backends import BACKENDS, backend_status
from labkit.attention.kernels import kernel_benchmark
from labkit.attention.memory_model import GIB, ModelShape, memory_curves, predicted_peak_bytes
from labkit.attention.sweep import ModelSpec, sweep
from labkit.env import get_profile, provenance
from labkit.measure.memory import device_memory_gib, release_memory
from labkit.measure.stats import non_monotone
from labkit.models import EMBEDDED_CAUSAL_LMS, SHAPES
from labkit.results.files import command_line, device_slug
from labkit.results.run import Run, check_run_options, publish

# the fast ones first, eager (which OOMs) last
SWEEP_ORDER = ("fa2", "triton-fa2", "sdpa", "cudnn", "flash-attn", "eager")

PROFILES = {
    "full": dict(model="llama-2-7b", seq_lens=[512, 1024, 2048, 4096, 8192, 16384, 32768], batch_size=1,
                 dtype="bfloat16"),
    "quick": dict(model="tiny-llama", seq_lens=[64, 128, 256], batch_size=1, dtype=None),
}


def check(args) -> None:
    """Every argument, before any model loads: sets args.cfg, args.backend_list, args.device, args.paths."""
    profile = args.profile or get_profile()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if profile == "full" and device.type != "cuda":
        raise ValueError("--profile full: the full attention profile (llama-2-7b shape, up to 32k tokens) needs an "
                         "NVIDIA GPU; on a CPU use --profile quick")
    cfg = dict(PROFILES[profile], profile=profile)
    for key in ("model", "seq_lens", "batch_size", "dtype"):
        if getattr(args, key, None):
            cfg[key] = list(getattr(args, key)) if key == "seq_lens" else getattr(args, key)
    if cfg["model"] not in SHAPES and cfg["model"] not in EMBEDDED_CAUSAL_LMS:
        raise ValueError(f"--model {cfg['model']!r}: not a model this sweep can build; use one of "
                         f"{', '.join([*SHAPES, *EMBEDDED_CAUSAL_LMS])}")
    context = SHAPES[cfg["model"]].get("max_position_embeddings")
    trained = cfg["model"] in EMBEDDED_CAUSAL_LMS
    if trained and context and max(cfg["seq_lens"]) > context and not args.allow_beyond_context:
        raise ValueError(f"--seq-lens {max(cfg['seq_lens'])}: longer than {cfg['model']}'s context of {context} "
                         "tokens; use shorter lengths or add --allow-beyond-context")
    backends = list(args.backends) if getattr(args, "backends", None) else [
        b for b in SWEEP_ORDER if BACKENDS[b].in_sweep]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"--backends {','.join(backends)}: unknown backend {unknown[0]!r}; "
                         f"choose from {', '.join(BACKENDS)}")
    check_run_options(args, "attention", device_slug(device), profile)
    args.cfg, args.backend_list, args.device = cfg, backends, device


def run(args) -> dict:
    """Run the sweep (+ kernel benchmark) into the run's files; returns the result (with its status)."""
    if not hasattr(args, "cfg"):
        check(args)
    cfg, backends, device, profile = args.cfg, args.backend_list, args.device, args.cfg["profile"]
    spec = ModelSpec(cfg["model"], cfg["dtype"])
    capacity, capacity_label = device_memory_gib(device)
    shape = ModelShape.named(cfg["model"])
    dtype = spec.torch_dtype(device)
    grid = sorted({*cfg["seq_lens"], *[int(2 ** (k / 4)) for k in range(4 * 6, 4 * 15 + 1)]})
    grid = [n for n in grid if min(cfg["seq_lens"]) <= n <= max(cfg["seq_lens"])]
    result = {
        "provenance": provenance(command_line(getattr(args, "argv", None)), cfg["profile"]),
        "experiment": "attention",
        "config": {**cfg, "dtype": str(dtype).removeprefix("torch."), "backends": backends,
                   "measured": "model(input_ids, use_cache=False, logits_to_keep=1): full forward (prefill), "
                               "no KV cache kept, logits of the last token only; random token ids",
                   "weights": "random (same shapes, kernels, speed and memory as the trained model)"
                   if cfg["model"] != "smollm2-135m" else "trained (embedded SmolLM2-135M)"},
        "device_memory_gib": capacity,
        "device_memory_label": capacity_label,
        "backend_status": backend_status(device),
        "rows": [],
        "memory_model": {"shape": shape.as_dict(), "batch_size": cfg["batch_size"],
                         "dtype": str(dtype).removeprefix("torch."),
                         "curves": memory_curves(shape, grid, cfg["batch_size"], dtype)},
    }
    run_ = Run(result, *args.paths, resume=args.resume)

    def on_point(row: dict) -> None:
        result["rows"].append(row)
        run_.record("point", row)
        status = "ok" if row["ok"] else "OOM" if row["oom"] else "skipped" if row["skipped"] else "FAILED"
        mem = f"{row['peak_gib']:.2f} GiB" if row.get("peak_gib") is not None else "-"
        lat = f"{row['latency_ms']:.1f} ms" if row.get("latency_ms") is not None else "-"
        print(f"  {row['backend']:<10} N={row['seq_len']:<6} {status:<7} {lat:>12} {mem:>11}"
              + (f"  {row['error'][:90]}" if row.get("error") and not row["ok"] else ""), flush=True)

    with run_:
        if not getattr(args, "no_kernels", False):
            # first, in a process the profiler has not touched yet (the sweep's kernel check uses it)
            print("kernel benchmark (attention alone) ...", flush=True)
            result["kernels"] = kernel_benchmark(profile, device, progress=True, previous=run_.recorded("kernel"),
                                                 on_row=lambda row: run_.record("kernel", row))
            for r in result["kernels"]["rows"]:
                status = f"{r['ms']:.3f} ms  {r['tflops']:.3g} TFLOP/s" if r["ok"] else (r["error"] or "")[:90]
                print(f"  {r['backend']:<10} N={r['seq_len']:<6} {status}")
            for c in result["kernels"]["plain_script_check"]:
                print(f"  plain-script check N={c['seq_len']}: harness/plain = {c['ratio']}  {c['error'] or ''}")
            run_.save()
            release_memory(device)
        print(f"attention sweep ({profile}): {cfg['model']} {result['config']['dtype']} batch {cfg['batch_size']} "
              f"on {device_slug(device)}, N={cfg['seq_lens']}, backends={backends}; writing {run_.json_path}",
              flush=True)
        previous = run_.recorded("point")
        result["rows"] = list(previous)
        sweep(spec, backends, cfg["seq_lens"], cfg["batch_size"], device=device, on_point=on_point,
              progress=False, verify=device.type == "cuda" and not getattr(args, "no_verify", False),
              previous=previous)
        if not any(r["ok"] for r in result["rows"]):
            errors = sorted({r["error"] for r in result["rows"] if r.get("error")})
            run_.fail("no point was measured" + (f": {errors[0]}" if errors else ""))
        # latency should grow with N: a drop is flagged ("clear" when even the p10-p90 spreads do not overlap)
        result["non_monotone"] = non_monotone(result["rows"])
        for f in result["non_monotone"]:
            print(f"  note: {f['backend']} latency drops from N={f['seq_len_from']} to N={f['seq_len_to']} "
                  f"({f['latency_ms_from']:.2f} -> {f['latency_ms_to']:.2f} ms, "
                  f"{'beyond' if f['clear'] else 'within'} the p10-p90 spread)", flush=True)
    publish(run_, args, "attention", device_slug(device))
    return result


# ---------------------------------------------------------------------------------------------------------------
# reading a result file (notebook 02): provenance, targets, summary


def provenance_lines(result: dict) -> str:
    """A short human-readable provenance block."""
    p = result.get("provenance", {})
    v = p.get("versions", {})
    cfg = result.get("config", {})
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


def _row(rows: list[dict], backend: str, n: int) -> dict | None:
    return next((r for r in rows if r["backend"] == backend and r["seq_len"] == n), None)


def check_targets(result: dict) -> list[dict]:
    """The lab's attention targets, checked against a result file: [{target, measured, passed}] (None: no data).

    Why these: eager attention materialises N x N scores, so it should run out of memory by 16k tokens on an
    80 GB card; FA2 should be clearly faster (>= 4x) and lighter (<= half the peak) at 8k, reach 32k, and the
    kernel benchmark should agree with a plain script (within 10%) so the harness adds no overhead."""
    rows = result.get("rows", [])
    checks = []

    eager_fail = sorted(r["seq_len"] for r in rows if r["backend"] == "eager" and r.get("oom") and not r.get("skipped"))
    eager_16k = _row(rows, "eager", 16384)
    if eager_fail:
        measured, passed = f"eager first out of memory at N={eager_fail[0]}", eager_fail[0] <= 16384
    elif eager_16k and eager_16k["ok"]:
        measured, passed = f"eager ran at N=16384 ({eager_16k['peak_gib']:.1f} GiB peak)", False
    else:
        measured, passed = "no eager out-of-memory point recorded", None
    checks.append(dict(target="eager runs out of memory at or before 16k tokens", measured=measured, passed=passed))

    fa2, eager = _row(rows, "fa2", 8192), _row(rows, "eager", 8192)
    if fa2 and eager and fa2["ok"] and eager["ok"]:
        speed = eager["latency_ms"] / fa2["latency_ms"]
        mem = fa2["peak_gib"] / eager["peak_gib"]
        checks.append(dict(target="at 8k, fa2 at least 4x faster than eager", measured=f"{speed:.2f}x "
                           f"({eager['latency_ms']:.0f} ms against {fa2['latency_ms']:.0f} ms)", passed=speed >= 4))
        checks.append(dict(target="at 8k, fa2 peak memory at most half of eager's", measured=f"{mem:.2f} "
                           f"({fa2['peak_gib']:.1f} GiB against {eager['peak_gib']:.1f} GiB)", passed=mem <= 0.5))
    else:
        for target in ("at 8k, fa2 at least 4x faster than eager", "at 8k, fa2 peak memory at most half of eager's"):
            checks.append(dict(target=target, measured="fa2 or eager not measured at 8192", passed=None))

    for backend in ("fa2", "sdpa"):
        r = _row(rows, backend, 32768)
        checks.append(dict(target=f"{backend} reaches 32k tokens",
                           measured=("ran at N=32768" + (f" ({r['peak_gib']:.1f} GiB, {r['latency_ms']:.0f} ms)"
                                                          if r["ok"] else f": {r.get('error')}")) if r else "not run",
                           passed=bool(r and r["ok"]) if r else None))

    plain = [c for c in result.get("kernels", {}).get("plain_script_check", []) if c.get("ratio") is not None]
    if plain:
        worst = min(plain, key=lambda c: c["ratio"])
        checks.append(dict(target="kernel benchmark fa2 within 10% of a plain script",
                           measured=", ".join(f"N={c['seq_len']}: {c['harness_tflops']:.0f} against "
                                              f"{c['plain_tflops']:.0f} TFLOP/s" for c in plain),
                           passed=abs(1 - worst["ratio"]) <= 0.10 and all(abs(1 - c["ratio"]) <= 0.10 for c in plain)))
    else:
        checks.append(dict(target="kernel benchmark fa2 within 10% of a plain script",
                           measured="no plain-script comparison in the file", passed=None))
    return checks


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
