"""`python -m labkit.bench <experiment> [--profile quick|full] [--out FILE]`: run a benchmark, write a result file.

Argument parsing only: each experiment module (labkit.experiments.*) declares its options with
`add_arguments(parser)` and runs with `run(args) -> dict`; results carry provenance (device, versions, date,
command) and are written as JSON, by default under data/reference/.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# experiment name -> (module, one-line help)
EXPERIMENTS = {
    "qat": ("labkit.experiments.qat_bert.bench", "QAT vs PTQ vs FP32 on BERT (notebook 01)"),
    "attention": ("labkit.experiments.attention",
                  "latency and peak memory against sequence length per backend (notebook 02)"),
    "kernels": ("labkit.experiments.kernels", "attention kernels alone, TFLOP/s per backend (notebook 02)"),
    "hybrid": ("labkit.experiments.hybrid.bench", "FA2 + selective INT8 against bf16 (notebook 03)"),
    "triton-fa2": ("labkit.experiments.triton_fa2",
                   "labkit's Triton FlashAttention-2: checks and TFLOP/s against fa2 and cudnn (notebook 02b)"),
    "fast8bit": ("labkit.experiments.fast8bit",
                 "8-bit that pays on the GPU: labkit's INT8 kernel, torchao INT8/FP8, compiled decode and prefill "
                 "(notebook 03b)"),
    "hybrid-qat": ("labkit.experiments.hybrid_qat_fsdp", "QAT sharded over N GPUs with FSDP2 (torchrun; notebook 04)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every experiment's options."""
    parser = argparse.ArgumentParser(prog="python -m labkit.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, (module_name, help_text) in EXPERIMENTS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--profile", choices=("quick", "full"), default=None,
                       help="run profile (default: $LABKIT_PROFILE, else full on a GPU, quick on a CPU)")
        p.add_argument("--out", default=None, help="result file (default: data/reference/<experiment>_<device>.json)")
        importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    importlib.import_module(EXPERIMENTS[args.experiment][0]).run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
