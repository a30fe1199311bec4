"""`python -m labkit.bench qat`: FP32 vs PTQ (dynamic, static) vs QAT INT8 on the embedded BERT (notebook 01).

    quick  256 SST-2 training rows, 200 dev rows, a few dozen steps; compiled latency for FP32 and QAT only
           (CI-sized: a few minutes on 2 cores)
    full   all 67,349 SST-2 training rows, 3 epochs of batch 32 (6,315 FP32 steps, lr 5e-5) then 1 more epoch
           (2,105 steps, lr 2e-5) for QAT and for the FP32 reference; the whole dev set (872); 3 seeds (accuracy
           as mean +- sd); every variant eager and compiled. Training runs on a GPU when one is visible; on 2 CPU
           cores it would take hours.

Writes a run folder runs/qat_bert_cpu_<time>/: result.json with provenance (device, CPU, threads, versions, date,
command), the config, one row per variant (accuracy, f1, size_mb, latency_ms_b1, latency_ms_b8 eager,
*_compiled ...), the target checks and the save/load round-trip check; result.jsonl with each finished stage and
seed as it finishes; models/seed<k>/<stage>.safetensors with each seed's trained models (fp32, fp32-extra, and qat
before its conversion) as each training stage finishes (labkit.experiments.qat_bert.saved_models). `--resume`
reuses the finished seeds, and for a seed cut short loads its saved models instead of training them again, then
measures the rest. `--update-reference` copies a complete full-profile run to data/reference/qat_bert_cpu.json.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import torch

from labkit.env import get_profile, provenance
from labkit.experiments.qat_bert.pipeline import QATBertConfig
from labkit.experiments.qat_bert.report import matmul_checks
from labkit.experiments.qat_bert.saved_models import saved_stages
from labkit.experiments.qat_bert.seeds import run_seeds, seeds_report
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
        "fp32_epochs": getattr(args, "fp32_epochs", None), "extra_epochs": getattr(args, "extra_epochs", None),
        "lr": getattr(args, "lr", None), "extra_lr": getattr(args, "extra_lr", None),
        "seeds": getattr(args, "seeds", None), "train_device": getattr(args, "train_device", None),
    }.items() if v is not None}
    if args.no_compile:
        overrides["compile"] = False
    cfg = QATBertConfig.for_profile(profile, **overrides)
    try:
        cfg.validate()
    except ValueError as err:
        raise ValueError(f"--dataset/--steps/--seeds/--train-device: {err}") from None
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
        # every seed is one whole run (its own fine-tune, data order, QAT); a seed an earlier attempt finished is
        # in the JSONL and is not run again; a seed cut short reloads the trained models it saved in the run folder
        earlier = {r["seed"]: r for r in run_.recorded("seed")}
        if earlier:
            print(f"resume: seeds {sorted(earlier)} already finished", flush=True)
        if args.resume:
            for seed in (s for s in cfg.seeds if s not in earlier):
                if saved := saved_stages(run_.json_path.parent, seed):
                    print(f"resume: seed {seed} reloads its trained {', '.join(saved)} "
                          f"from {run_.json_path.parent / 'models'}", flush=True)

        def on_seed(seed: int, result) -> None:
            item = {"seed": seed, "rows": result.rows}
            if seed == cfg.seeds[0]:  # latency and the one-off checks come with the first seed
                item.update(config=result.config, threads=result.threads, round_trip=result.round_trip,
                            int8_modules={k: len(v) for k, v in result.int8_modules.items()},
                            stage_seconds=result.stage_seconds)
            for row in result.rows:
                run_.record("variant", {**row, "seed": seed})
            earlier[seed] = item
            run_.record("seed", item)

        _, rows_by_seed = run_seeds(cfg, done={s: r["rows"] for s, r in earlier.items()}, on_seed=on_seed,
                                    on_stage=lambda stage, s: run_.record("stage", {"stage": stage, "seconds": s}),
                                    models_dir=run_.json_path.parent)
        first = earlier.get(cfg.seeds[0], {})
        seeds = seeds_report(cfg, rows_by_seed, first.get("config", {}).get("n_eval_actual"))
        matmul = matmul_checks(rows_by_seed[cfg.seeds[0]])
        for c in matmul:
            if not c["ok"]:
                run_.fail(f"integer kernel check: {c['variant']} ({c['mode']}): {c['evidence']}")
        data.update({
            "config": {**first.get("config", data["config"]), "seeds": list(cfg.seeds)},
            "threads": first.get("threads"),
            "rows": rows_by_seed[cfg.seeds[0]],
            "seeds": seeds["seeds"],
            "seed_summary": seeds["summary"],
            "seed_rows": {str(s): rows for s, rows in rows_by_seed.items()},
            "targets": seeds["targets"],
            "matmul_checks": matmul,
            "round_trip": first.get("round_trip"),
            "int8_modules": first.get("int8_modules"),
            "stage_seconds": first.get("stage_seconds"),
            "notes": NOTES,
        })
        run_.record("result", {k: v for k, v in data.items() if k not in ("files", "resumed")})
        for check_ in data["targets"]:
            print(f"  [{check_.get('verdict', 'n/a')}] {check_['target']}: {check_['measured']}")
    publish(run_, args, EXPERIMENT, "cpu")
    return data


NOTES = [
    ("latency (first seed only: it does not depend on the seed): median of interleaved rounds (every variant timed "
     "in each round), after warm-up, with p10/p90 and the repeat count; seq len 128, all positions real tokens; "
     "compiled = torch.compile under inductor freezing (config patch) for every variant alike"),
    "size: bytes of the safetensors checkpoint save_quantized writes (every weight, embeddings included)",
    "fp32-extra trains the FP32 model for the same extra steps, data and schedule as QAT",
    ("accuracy: mean +- sd over the seeds (each seed its own fine-tune, data order and QAT); a target is met or "
     "missed only with >= 3 seeds and a margin beyond the spread and one eval example, else within noise"),
    "matmul_checks: the profiled matmul operators of each variant (an INT8 variant must run integer kernels)",
]
