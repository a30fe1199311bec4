"""`python -m labkit.bench triton-fa2`: labkit's Triton FlashAttention-2 checked and timed against PyTorch's FA2
and cuDNN (notebook 02b). Runs labkit.attention.triton_fa2_bench; writes build/triton_fa2_<gpu>.json, or
data/reference/triton_fa2_<gpu>.json with --reference."""

from __future__ import annotations

import shlex

from labkit.attention import triton_fa2_bench as bench


def add_arguments(parser) -> None:
    bench.add_options(parser, profile_and_out=False)


def run(args) -> dict:
    """Run the benchmark; exits non-zero when a check failed or nothing was measured."""
    argv = getattr(args, "argv", None) or []
    rc = bench.run_benchmark(bench.normalise(args), "python -m labkit.bench " + " ".join(shlex.quote(a) for a in argv))
    if rc:
        raise SystemExit(rc)
    return {}
