"""`python -m labkit.bench triton-fa2`: labkit's Triton FlashAttention-2 checked and timed against PyTorch's FA2 and
cuDNN (notebook 02b), with the measurements of labkit.attention.triton_fa2_bench. NVIDIA GPU only.

1. correctness at real shapes (`check` rows): O, dQ, dK, dV against float32 math attention, on fresh random inputs
   (the seed is recorded); a failed check fails the run;
2. forward and backward TFLOP/s (`timing` rows) of each backend, batch 1, causal, bf16, N = 1k ... 32k, head dims
   64 and 128; the backward's GPU time per kernel against its wall time at the shortest N (`breakdown`);
3. optionally (--prefill) the Llama-2-7B-shape prefill latency with each backend (random weights).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from labkit.attention import triton_fa2_bench as bench
from labkit.experiments import protocol
from labkit.experiments.protocol import flag, positive_ints
from labkit.measure.stats import Target

NAME = "triton_fa2"
CHECKS = {  # (batch, heads, kv_heads, N, head_dim, dtype, causal)
    "full": ((1, 32, 32, 4096, 128, "bfloat16", True), (1, 32, 8, 4096, 128, "bfloat16", True),
             (2, 16, 4, 4000, 64, "float16", False), (1, 8, 8, 4321, 64, "bfloat16", True),
             (1, 8, 2, 2048, 128, "float16", False)),
    "quick": ((1, 4, 2, 500, 64, "bfloat16", True), (1, 4, 4, 512, 128, "float16", False)),
}


@dataclass
class Settings(protocol.Settings):
    seq_lens: tuple[int, ...] = flag((1024, 2048), "comma-separated N (full: 1024 ... 32768)")
    head_dims: tuple[int, ...] = flag((64,), "comma-separated head dims (full: 128,64)")
    heads: int = 8
    backends: tuple[str, ...] = flag(bench.BACKENDS, "comma-separated backends", choices=bench.BACKENDS)
    check: bool = flag(True, "skip the correctness checks")
    backward: bool = flag(True, "time the forward only")
    prefill: tuple[int, ...] = flag((), "comma-separated N for a Llama-2-7B-shape prefill sweep (random weights; "
                                        "default: none)", parse=positive_ints)
    prefill_layers: int | None = flag(None, "layers of that model (default: all 32)")
    PROFILE_DEFAULTS = {"full": dict(seq_lens=(1024, 2048, 4096, 8192, 16384, 32768), head_dims=(128, 64), heads=32)}


def check(settings: Settings, options) -> None:
    protocol.require_gpu("triton-fa2 times CUDA kernels and needs an NVIDIA GPU; the committed H100 figures are in "
                         "data/reference/triton_fa2_h100.json (notebook 02b shows them)")


def measure(settings: Settings, run) -> None:
    s, result = settings, run.result
    try:
        import triton

        result["provenance"]["triton"] = triton.__version__
    except ImportError:
        result["provenance"]["triton"] = None
    result["config"].update(checks=CHECKS[s.profile], dtype="bfloat16", batch=1, causal=True,
                            flops="forward 4*B*H*N^2*d (halved when causal); backward 2.5x the forward",
                            timing="triton.testing.do_bench median (L2 flushed between calls), warmup 50 ms, rep 200 ms")
    result.update(checks=[], rows=[], backward_breakdown=[], prefill=[])
    if s.check:
        seed = int.from_bytes(os.urandom(4), "little")  # fresh inputs each run; the seed is recorded
        for i, case in enumerate(CHECKS[s.profile]):
            row = run.once("check", lambda i=i, case=case: bench.check_case(*case, seed=seed + i), case=i)
            result["checks"].append(row)
            if not row["ok"]:
                run.fail(f"correctness check {i} {case}: triton-fa2 failed or went beyond the tolerance (see `checks`)")
    for d in s.head_dims:
        for n in s.seq_lens:
            for backward in (False, True) if s.backward else (False,):
                for backend in s.backends:
                    result["rows"].append(run.once(
                        "timing", lambda: bench.time_case(backend, n, d, s.heads, True, backward), backend=backend,
                        direction="backward" if backward else "forward", seq_len=n, head_dim=d))
    for backend in s.backends if s.backward else ():  # short sequences: is the backward host- or GPU-bound?
        def breakdown(backend=backend) -> dict:
            try:
                return bench.kernel_breakdown(backend, min(s.seq_lens), max(s.head_dims), s.heads)
            except Exception as err:  # noqa: BLE001 - a row
                return {"error": bench._error(err)}
        result["backward_breakdown"].append(run.once("breakdown", breakdown, backend=backend))
    model = None
    for n in s.prefill:
        for backend in s.backends:
            def prefill(backend=backend, n=n) -> dict:
                nonlocal model
                if model is None:
                    from labkit.models import build_from_shape

                    model = build_from_shape("llama-2-7b", dtype=torch.bfloat16, device="cuda",
                                             num_layers=s.prefill_layers)
                return bench.prefill_case(model, backend, n)
            result["prefill"].append(run.once("prefill", prefill, backend=backend, seq_len=n))
    if not any(r.get("ok") for r in result["rows"] + result["checks"] + result["prefill"]):
        run.fail("nothing was measured: every check and timing failed (see the rows' error)")
    print("\n".join(bench.summary(result["rows"])), flush=True)


def targets(result: dict) -> list[Target]:
    """Every correctness check within the dtype's tolerance (no timing target: the timings are the lesson)."""
    checks = result.get("checks", [])
    if not checks:
        return [Target.not_measured("triton-fa2 O, dQ, dK, dV within the dtype's tolerance of float32 attention")]
    bad = [c for c in checks if not c.get("ok")]
    return [Target.exact("triton-fa2 O, dQ, dK, dV within the dtype's tolerance of float32 attention",
                         f"{len(checks) - len(bad)} of {len(checks)} checks within tolerance", not bad)]


__all__ = ["CHECKS", "NAME", "Settings", "check", "measure", "targets"]
