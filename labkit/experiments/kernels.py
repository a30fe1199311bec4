"""`python -m labkit.bench kernels`: attention kernels alone, TFLOP/s per backend (labkit.attention.kernels)."""

from __future__ import annotations

from labkit.attention.kernels import KERNEL_BACKENDS, kernel_benchmark
from labkit.env import get_profile, provenance
from labkit.results.files import default_out, write_json


def add_arguments(parser) -> None:
    parser.add_argument("--backends", default=None, help="comma-separated kernel backends "
                        f"(default: all of {', '.join(KERNEL_BACKENDS[:-1])})")


def run(args) -> dict:
    """Write data/reference/kernels_<device>.json (or --out)."""
    profile = args.profile or get_profile()
    backends = args.backends.split(",") if getattr(args, "backends", None) else None
    result = {"provenance": provenance(), **kernel_benchmark(profile, backends=backends)}
    out = args.out or default_out("kernels")
    write_json(out, result)
    print(f"wrote {out}")
    return result
