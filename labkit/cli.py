"""`python -m labkit.bench <experiment> [--profile quick|full] [--out FILE]`: run a benchmark, write a result file.

Each experiment module exposes `add_arguments(parser)` and `run(args) -> dict`; results carry provenance
(device, versions, date, command) and are written as JSON, by default under data/reference/.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# experiment name -> (module, one-line help)
EXPERIMENTS = {
    "qat": ("labkit.bench.qat", "QAT vs PTQ vs FP32 on BERT (notebook 01)"),
    "attention": ("labkit.bench.attention", "latency and peak memory against sequence length per backend (notebook 02)"),
    "kernels": ("labkit.bench.kernels", "attention kernels alone, TFLOP/s per backend (notebook 02)"),
    "hybrid": ("labkit.bench.hybrid", "FA2 + selective INT8 against bf16 (notebook 03)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, (module_name, help_text) in EXPERIMENTS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--profile", choices=("quick", "full"), default=None,
                       help="run profile (default: $LABKIT_PROFILE, else full on a GPU, quick on a CPU)")
        p.add_argument("--out", default=None, help="result file (default: data/reference/<experiment>_<device>.json)")
        try:
            importlib.import_module(module_name).add_arguments(p)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
    args = parser.parse_args(argv)
    module = importlib.import_module(EXPERIMENTS[args.experiment][0])
    module.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
