"""`python -m labkit.bench triton-fa2`: labkit's Triton FlashAttention-2 checked and timed against PyTorch's FA2
and cuDNN (notebook 02b). Runs labkit.attention.triton_fa2_bench into a run folder runs/triton_fa2_<gpu>_<time>/;
`--resume` continues it, `--update-reference` copies a complete full-profile run to data/reference/."""

from __future__ import annotations

from labkit.attention import triton_fa2_bench as bench
from labkit.attention.triton_fa2_bench import check, load_committed, run

EXPERIMENT = bench.EXPERIMENT


def add_arguments(parser) -> None:
    bench.add_options(parser, standalone=False)


__all__ = ["add_arguments", "check", "load_committed", "run"]
