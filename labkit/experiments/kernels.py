"""`python -m labkit.bench kernels`: attention kernels alone, TFLOP/s per backend (labkit.attention.kernels).

Writes a run folder runs/kernels_<device>_<time>/ (result.json, and result.jsonl with each finished row);
`--update-reference` copies a complete full-profile run to data/reference/kernels_<device>.json.
"""

from __future__ import annotations

from labkit.attention.kernels import KERNEL_BACKENDS, kernel_benchmark
from labkit.env import get_profile, provenance
from labkit.results.files import command_line, device_slug
from labkit.results.run import Run, check_run_options, publish


def check(args) -> None:
    """Every argument, before any work: sets args.profile_name, args.backend_list and args.paths."""
    args.profile_name = args.profile or get_profile()
    backends = list(args.backends) if getattr(args, "backends", None) else None
    unknown = [b for b in backends or () if b not in KERNEL_BACKENDS]
    if unknown:
        raise ValueError(f"--backends {','.join(backends)}: unknown kernel backend {unknown[0]!r}; "
                         f"choose from {', '.join(KERNEL_BACKENDS)}")
    args.backend_list = backends
    check_run_options(args, "kernels", device_slug(), args.profile_name)


def run(args) -> dict:
    """Run the kernel benchmark into the run's files; returns the result (with its status)."""
    if not hasattr(args, "paths"):
        check(args)
    result = {"provenance": provenance(command_line(getattr(args, "argv", None)), args.profile_name),
              "experiment": "kernels",
              "config": {"profile": args.profile_name}, "rows": []}
    run_ = Run(result, *args.paths, resume=args.resume)
    with run_:
        measured = kernel_benchmark(args.profile_name, backends=args.backend_list, previous=run_.recorded("kernel"),
                                    on_row=lambda row: (result["rows"].append(row), run_.record("kernel", row)))
        result.update(measured, config={**measured["config"], "profile": args.profile_name})
        if not any(r["ok"] for r in result["rows"]):
            run_.fail("no kernel was measured: " + "; ".join(sorted({r["error"] or "" for r in result["rows"]}))[:300])
    publish(run_, args, "kernels", device_slug())
    return result
