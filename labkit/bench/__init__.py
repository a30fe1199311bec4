"""`python -m labkit.bench <experiment> [options]` (or `labkit-bench`): run an experiment into its run folder.

The one runner of every experiment (the protocol: labkit.experiments.protocol). It derives each experiment's flags
from its settings dataclass, refuses bad input before any model loads (exit 2), owns the run folder
(runs/<name>_<device>_<time>/ or --out), --resume and the attempts (labkit.results.run), judges the targets when the
run ends, and with --update-reference copies a complete full-profile run to data/reference/<name>_<device>.json.
Exit status: 0 complete, 1 failed, 2 bad arguments, 130 interrupted. `torchrun -m labkit.bench hybrid-qat` starts
it in every process of a job; only rank 0 writes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import MISSING, fields

from labkit.experiments.protocol import names, positive_float, positive_int, positive_ints
from labkit.results.files import REFERENCE_DIR, command_line
from labkit.results.run import Run, RunSetupError, publish, run_paths

# command name -> (bench module, one-line help)
EXPERIMENTS = {
    "qat": ("labkit.experiments.qat_bert.bench", "QAT vs PTQ vs FP32 on BERT (notebook 01)"),
    "deploy": ("labkit.experiments.deploy_bert.bench",
               "the QAT BERT deployed on a CPU: torchao vs ONNX Runtime vs ORT quantize_dynamic (notebook 01b)"),
    "attention": ("labkit.experiments.attention",
                  "latency and peak memory against sequence length per backend (notebook 02)"),
    "kernels": ("labkit.experiments.kernels", "attention kernels alone, TFLOP/s per backend (notebook 02)"),
    "triton-fa2": ("labkit.experiments.triton_fa2",
                   "labkit's Triton FlashAttention-2: checks and TFLOP/s against fa2 and cudnn (notebook 02b)"),
    "hybrid": ("labkit.experiments.hybrid.bench", "FA2 + selective INT8 against bf16 (notebook 03)"),
    "fast8bit": ("labkit.experiments.fast8bit.bench",
                 "8-bit that pays on the GPU: labkit's INT8 kernel, torchao INT8/FP8, compiled decode and prefill "
                 "(notebook 03b)"),
    "hybrid-qat": ("labkit.experiments.hybrid_qat_fsdp", "QAT sharded over N GPUs with FSDP2 (torchrun; notebook 04)"),
}


def add_flags(parser: argparse.ArgumentParser, settings_class: type) -> None:
    """One option per `flag(...)` field of the settings: the type from the annotation (whole numbers >= 1,
    numbers > 0, comma lists), on/off for a bool (`--no-x` when it is on by default); an option not given stays
    out of the namespace, so the profile's default stands."""
    for f in fields(settings_class):
        meta, kind = f.metadata, str(f.type)
        if "help" not in meta:
            continue
        flag = (meta["flag"] or f.name).replace("_", "-")
        if kind.startswith("bool"):
            on = f.default is not MISSING and f.default
            parser.add_argument(f"--no-{flag}" if on else f"--{flag}", dest=f.name, default=argparse.SUPPRESS,
                                action="store_false" if on else "store_true", help=meta["help"])
            continue
        parse = meta["parse"] or (positive_ints if kind.startswith("tuple[int") else names(meta["choices"])
                                  if kind.startswith("tuple[str") else positive_int if kind.startswith("int")
                                  else positive_float if kind.startswith("float") else str)
        parser.add_argument(f"--{flag}", dest=f.name, type=parse, default=argparse.SUPPRESS, help=meta["help"],
                            choices=meta["choices"] if parse is str else None)


def build_parser(chosen: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and each experiment's sub-parser; only the `chosen` experiment's module is imported (its flags)."""
    parser = argparse.ArgumentParser(prog="python -m labkit.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    subparsers = {}
    for name, (module_name, help_text) in EXPERIMENTS.items():
        p = subparsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        if name != chosen:
            continue
        p.add_argument("--profile", choices=("quick", "full"), default=None,
                       help="run profile (default: $LABKIT_PROFILE, else quick)")
        p.add_argument("--out", default=None,
                       help="result file or folder of this run (default: a new folder runs/<experiment>_<device>_"
                            "<time>/); never the committed reference folder")
        p.add_argument("--resume", action="store_true",
                       help="continue the interrupted or failed run of --out from its JSONL, skipping what it "
                            "already measured")
        p.add_argument("--update-reference", action="store_true",
                       help="at the end, copy the result to data/reference/<experiment>_<device>.json; only a "
                            "complete full-profile run can do so")
        add_flags(p, importlib.import_module(module_name).Settings)
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if a in EXPERIMENTS), None)
    parser, subparsers = build_parser(chosen)
    given = vars(parser.parse_args(argv))
    exp = importlib.import_module(EXPERIMENTS[given.pop("experiment")][0])
    options = argparse.Namespace(**{k: given.pop(k) for k in ("profile", "out", "resume", "update_reference")})
    writer = int(os.environ.get("RANK", "0")) == 0  # in a torchrun job only rank 0 writes
    try:  # every argument, before any model loads
        settings = exp.Settings.for_profile(options.profile, **given)
        slug = settings.device_slug()
        options.paths = run_paths(exp.NAME, slug, options.out, resume=options.resume) if writer else (None, None)
        if hasattr(exp, "check"):
            exp.check(settings, options)
        if options.update_reference and settings.profile != "full":
            raise RunSetupError(f"--update-reference with --profile {settings.profile}: only a complete full-profile "
                                "run can replace a committed reference; run with --profile full, or leave "
                                "--update-reference out")
    except ValueError as err:
        subparsers[chosen].error(str(err))

    from labkit.env import provenance

    def judge(result: dict) -> None:
        result["targets"] = [t.as_dict() for t in exp.targets(result)]

    result = {"experiment": exp.NAME, "provenance": provenance(command_line(argv), settings.profile),
              "config": settings.as_dict()}
    run = Run(result, *options.paths, resume=options.resume, summarize=judge)
    if writer:
        print(f"{chosen}: profile {settings.profile}; writing {run.json_path}", flush=True)
    with run:
        exp.measure(settings, run)
    if writer:
        for t in result.get("targets", []):
            print(f"  [{t['verdict']}] {t['target']}: {t['measured']}", flush=True)
        if options.update_reference:
            publish(run, REFERENCE_DIR / f"{exp.NAME}_{slug}.json")
    return run.exit_code


__all__ = ["EXPERIMENTS", "build_parser", "main"]
