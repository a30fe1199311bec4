"""`python -m labkit.bench qat`: FP32 vs PTQ (dynamic, static) vs QAT INT8 on the embedded BERT (notebook 01).

    quick  256 SST-2 training rows, 200 dev rows, a few dozen steps; compiled latency for FP32 and QAT only
           (CI-sized: a few minutes on 2 cores)
    full   8,000 training rows, the whole SST-2 dev set (872), 250 FP32 steps of 32 (one epoch) then 250 more
           for QAT and for the FP32 reference; every variant eager and compiled (about 25-35 min on 2 cores)

Writes data/reference/qat_bert_<device>.json: provenance (device, CPU, threads, versions, date, command),
the config, one row per variant (accuracy, f1, size_mb, latency_ms_b1, latency_ms_b8 eager, *_compiled ...),
the target checks and the save/load round-trip check.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from labkit.env import get_profile, provenance
from labkit.experiments.qat_bert import pipeline
from labkit.experiments.qat_bert.pipeline import QATBertConfig
from labkit.experiments.qat_bert.report import target_checks
from labkit.results.files import REFERENCE_DIR, command_line, write_json

EXPERIMENT = "qat_bert"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="sst2", help="sst2 (default) or imdb")
    parser.add_argument("--model", default="minilm-l6", help="classifier name (labkit.models) or hub id")
    parser.add_argument("--n-train", type=int, default=None, help="training rows (default: the profile's)")
    parser.add_argument("--n-eval", type=int, default=None, help="eval rows (default: the profile's; full = all)")
    parser.add_argument("--fp32-steps", type=int, default=None, help="FP32 fine-tuning steps")
    parser.add_argument("--extra-steps", type=int, default=None, help="QAT steps = the FP32 reference's extra steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile latency")


def default_path() -> Path:
    """data/reference/qat_bert_cpu.json: the experiment runs on the CPU (its deployment target) everywhere."""
    return REFERENCE_DIR / f"{EXPERIMENT}_cpu.json"


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = args.profile or get_profile()
    overrides = {k: v for k, v in {
        "dataset": args.dataset, "model": args.model, "n_train": args.n_train, "n_eval": args.n_eval,
        "fp32_steps": args.fp32_steps, "extra_steps": args.extra_steps,
    }.items() if v is not None}
    if args.no_compile:
        overrides["compile"] = False
    cfg = QATBertConfig.for_profile(profile, **overrides)
    cfg.validate()
    out = Path(args.out) if args.out else default_path()
    command = command_line(getattr(args, "argv", None))
    print(f"qat: profile {profile}, {cfg.dataset}, {cfg.model}, {torch.get_num_threads()} threads; writing {out}",
          flush=True)
    result = pipeline.run_qat_bert(cfg)
    data = {
        "provenance": {**provenance(command), "profile": profile},
        "experiment": EXPERIMENT,
        "config": result.config,
        "threads": result.threads,
        "rows": result.rows,
        "targets": target_checks(result.rows),
        "round_trip": result.round_trip,
        "int8_modules": {k: len(v) for k, v in result.int8_modules.items()},
        "stage_seconds": result.stage_seconds,
        "notes": [
            ("latency: median of interleaved rounds (every variant timed in each round), after warm-up; "
             "seq len 128, all positions real tokens; compiled = torch.compile under inductor freezing "
             "(config patch) for every variant alike"),
            "size: bytes of the safetensors checkpoint save_quantized writes (every weight, embeddings included)",
            "fp32-extra trains the FP32 model for the same extra steps, data and schedule as QAT",
        ],
    }
    write_json(out, data)
    for check in data["targets"]:
        status = {True: "met", False: "MISSED", None: "not measured"}[check["met"]]
        print(f"  [{status}] {check['target']}: {check['measured']}")
    print(f"wrote {out}")
    return data
