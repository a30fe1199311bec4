"""`python -m labkit.bench qat`: FP32 vs PTQ (dynamic, static) vs QAT INT8 on the embedded BERT (notebook 01).

    quick  256 SST-2 training rows, 200 dev rows, a few dozen steps; compiled latency for FP32 and QAT only
           (CI-sized: a few minutes on 2 cores)
    full   8,000 training rows, the whole SST-2 dev set (872), 250 FP32 steps of 32 (one epoch) then 250 more
           for QAT and for the FP32 reference; every variant eager and compiled (about 25-35 min on 2 cores)

Writes a run folder runs/qat_bert_cpu_<time>/: result.json with provenance (device, CPU, threads, versions, date,
command), the config, one row per variant (accuracy, f1, size_mb, latency_ms_b1, latency_ms_b8 eager,
*_compiled ...), the target checks and the save/load round-trip check; result.jsonl with each finished stage and
row as it happens. The five models live in memory, so `--resume` reuses a finished result and otherwise runs the
experiment again from the start. `--update-reference` copies a complete full-profile run to
data/reference/qat_bert_cpu.json.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import torch

from labkit.env import get_profile, provenance
from labkit.experiments.qat_bert import pipeline
from labkit.experiments.qat_bert.pipeline import QATBertConfig
from labkit.experiments.qat_bert.report import target_checks
from labkit.models import UnknownModelError, meta_model
from labkit.quant.selection import EmptySelectionError, resolve_layers
from labkit.results.files import command_line
from labkit.results.run import Run, check_run_options, publish

EXPERIMENT = "qat_bert"


def check(args: argparse.Namespace) -> None:
    """Every argument, before any model loads: the config, the model (its config only) and the layer pattern
    (resolved on a weightless copy), the run's files. Sets args.cfg, args.profile_name and args.paths."""
    profile = args.profile or get_profile()
    overrides = {k: v for k, v in {
        "dataset": args.dataset, "model": args.model, "n_train": args.n_train, "n_eval": args.n_eval,
        "fp32_steps": args.fp32_steps, "extra_steps": args.extra_steps,
    }.items() if v is not None}
    if args.no_compile:
        overrides["compile"] = False
    cfg = QATBertConfig.for_profile(profile, **overrides)
    try:
        cfg.validate()
    except ValueError as err:
        raise ValueError(f"--dataset/--steps: {err}") from None
    try:
        skeleton = meta_model(cfg.model, "classifier")
    except UnknownModelError as err:
        raise ValueError(f"--model {cfg.model!r}: {err}") from None
    try:
        resolve_layers(skeleton, cfg.layers)
    except EmptySelectionError as err:
        raise ValueError(f"--model {cfg.model!r}: the layers the experiment quantizes ({cfg.layers!r}) are not in "
                         f"this model: {err}") from None
    check_run_options(args, EXPERIMENT, "cpu", profile)
    args.cfg, args.profile_name = cfg, profile


def run(args: argparse.Namespace) -> dict:
    """Run the experiment into the run's files; returns the result (with its status)."""
    if not hasattr(args, "cfg"):
        check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, profile = args.cfg, args.profile_name
    data: dict = {"provenance": provenance(command_line(getattr(args, "argv", None)), profile),
                  "experiment": EXPERIMENT, "config": {**asdict(cfg), "layers": str(cfg.layers)}, "rows": []}
    run_ = Run(data, *args.paths, resume=args.resume)
    print(f"qat: profile {profile}, {cfg.dataset}, {cfg.model}, {torch.get_num_threads()} threads; "
          f"writing {run_.json_path}", flush=True)
    with run_:
        finished = run_.recorded("result")
        if finished:
            print("resume: the earlier attempt finished; its result is reused", flush=True)
            data.update({k: v for k, v in finished[-1].items() if k not in ("provenance", "status", "reason")})
        else:
            if args.resume:
                print("resume: the models of the earlier attempt were in memory only; the experiment runs again "
                      "from the start", flush=True)
            result = pipeline.run_qat_bert(cfg, on_stage=lambda stage, s: run_.record("stage", {"stage": stage,
                                                                                                  "seconds": s}))
            for row in result.rows:
                run_.record("variant", row)
            data.update({
                "config": result.config,
                "threads": result.threads,
                "rows": result.rows,
                "targets": target_checks(result.rows),
                "round_trip": result.round_trip,
                "int8_modules": {k: len(v) for k, v in result.int8_modules.items()},
                "stage_seconds": result.stage_seconds,
                "notes": NOTES,
            })
            run_.record("result", {k: v for k, v in data.items() if k not in ("files", "resumed")})
        for check_ in data["targets"]:
            status = {True: "met", False: "MISSED", None: "not measured"}[check_["met"]]
            print(f"  [{status}] {check_['target']}: {check_['measured']}")
    publish(run_, args, EXPERIMENT, "cpu")
    return data


NOTES = [
    ("latency: median of interleaved rounds (every variant timed in each round), after warm-up; "
     "seq len 128, all positions real tokens; compiled = torch.compile under inductor freezing "
     "(config patch) for every variant alike"),
    "size: bytes of the safetensors checkpoint save_quantized writes (every weight, embeddings included)",
    "fp32-extra trains the FP32 model for the same extra steps, data and schedule as QAT",
]
