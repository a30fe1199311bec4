"""Runs the deploy experiment into a run folder (labkit.results.run): `check` refuses bad input before any work,
`run` measures the stages, appending each finished seed and latency table to the JSONL; `main` is the CLI."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from labkit.experiments.deploy_bert.options import (
    ARTIFACT_OF,
    DEVICE,
    EXPERIMENT,
    LABELS,
    ORT_VARIANTS,
    STAGES,
    TORCH_VARIANTS,
    add_arguments,
    parse_positive_ints,
    parse_seeds,
    parse_stages,
    parse_threads,
)

NOTES = [
    "accuracy (stage 'accuracy'): per seed, one FP32 fine-tune and its QAT copy (notebook 01's recipe, or loaded "
    "from a `bench qat` run); every variant evaluated on the same eval set, every batch padded to 128 tokens; "
    "targets judged on the mean over seeds with the sd",
    "label agreement: sentences each variant labels differently from torchao eager; torchao compiled vs eager runs "
    "the same INT8 codes and scales, so its count is the float-rounding noise floor of per-token INT8. Why it is "
    "not zero: with scale = absmax / 127.5 each token's largest element lands on +-127.5, a rounding tie, so a "
    "one-ulp difference in the float ops before it (LayerNorm, softmax order) decides its code (-127 or -128)",
    "latency (stage 'latency', measured once): one set of models, the first seed's when the run has them, else the "
    "pretrained checkpoint and its QAT conversion without training; CPU kernel time does not depend on the weight "
    "values. One process, rounds interleaved across every variant; p10/p50/p90 over rounds x repeat calls after "
    "warm-up (compilation included in warm-up); full-length batches (every position a real token)",
    "the machine is shared with other jobs: spread (p10-p90) is reported, compare within one thread count",
    "ort-peer-int8 runs with ORT's default session options (threads set); the lab's sessions use ORT_ENABLE_ALL, "
    "sequential execution",
    "each seed and the latency block carry the provenance of the process that measured them (the accuracy stage "
    "may run on another machine's CPU, with training on its GPU)",
]


def cpu_flags() -> dict:
    """The CPU's INT8-relevant instruction sets, from /proc/cpuinfo (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
    return {f: f in flags for f in wanted}


def _recorded_kinds(jsonl: Path) -> dict[str, list[dict]]:
    from labkit.results.files import read_jsonl

    out: dict[str, list[dict]] = {}
    for row in read_jsonl(jsonl) if jsonl.is_file() else []:
        out.setdefault(row.get("kind"), []).append(row)
    return out


def check(args: argparse.Namespace) -> None:
    """Every argument, before any model loads: stages, seeds, thread counts, the training config, the model, the
    --models-from folder, the run's files, and that --update-reference will have every stage. Sets args.cfg,
    args.profile_name, args.stage_list, args.thread_list, args.batch_list and args.paths."""
    from labkit.env import get_profile
    from labkit.experiments.deploy_bert.training import check_models_from
    from labkit.experiments.qat_bert.pipeline import QATBertConfig
    from labkit.models import UnknownModelError, meta_model
    from labkit.results.run import RunSetupError, check_run_options

    profile = getattr(args, "profile", None) or get_profile()
    args.stage_list = parse_stages(args.stages)
    args.thread_list = parse_threads(args.threads)
    args.batch_list = parse_positive_ints(args.batch_sizes, "--batch-sizes")
    for name in ("seq_len", "rounds", "fp32_steps", "extra_steps", "n_train", "n_eval", "train_threads"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value}: use a whole number of at least 1")
    overrides = {k: v for k, v in {
        "model": args.model, "fp32_steps": args.fp32_steps, "extra_steps": args.extra_steps, "n_train": args.n_train,
        "n_eval": args.n_eval, "train_device": args.train_device,
        "seeds": parse_seeds(args.seeds) if args.seeds is not None else None}.items() if v is not None}
    if args.no_compile:
        overrides["compile"] = False
    cfg = QATBertConfig.for_profile(profile, **overrides)
    if args.models_from is not None and args.train_device is None:
        cfg = replace(cfg, train_device="cpu")  # nothing is trained
    try:
        cfg.validate()
    except ValueError as err:
        raise ValueError(f"--seeds/--steps/--train-device: {err}") from None
    try:
        meta_model(cfg.model, "classifier")
    except UnknownModelError as err:
        raise ValueError(f"--model {cfg.model!r}: {err}") from None
    check_run_options(args, EXPERIMENT, DEVICE, profile)
    recorded = _recorded_kinds(args.paths[1]) if args.resume else {}
    seeds_done = {r["seed"] for r in recorded.get("seed", [])}
    if args.models_from is not None:  # only the seeds this call still has to load: a resume may take them elsewhere
        wanted = [s for s in cfg.seeds if s not in seeds_done] if "accuracy" in args.stage_list else cfg.seeds[:1]
        check_models_from(args.models_from, wanted, cfg.model)
    if getattr(args, "update_reference", False):
        missing = [s for s in STAGES if s not in args.stage_list and not (
            set(cfg.seeds) <= seeds_done if s == "accuracy" else "latency_done" in recorded)]
        if missing:
            raise RunSetupError(f"--update-reference with --stages {','.join(args.stage_list)}: the reference needs "
                                f"every stage, and this run has no {' or '.join(missing)} results "
                                f"{'for every seed ' if 'accuracy' in missing else ''}to reuse; add "
                                f"{','.join(missing)} to --stages (or --resume the run that measured them)")
    args.cfg, args.profile_name = cfg, profile


def timed_variants(compiled: bool) -> set[str]:
    """Every variant a latency table of this version holds."""
    torch_variants = {v for v in TORCH_VARIANTS if compiled or not v.endswith("-compiled")}
    return torch_variants | set(ORT_VARIANTS)


def latency_tables(previous: list[dict]) -> dict[int, list[dict]]:
    """The newest finished latency table per thread count in a run's JSONL rows (in order): the "latency" rows
    recorded before that thread count's "latency_done". A table measured again replaces the earlier one; rows of a
    table cut short (no "latency_done") are dropped."""
    pending: dict[int, list[dict]] = {}
    tables: dict[int, list[dict]] = {}
    for row in previous:
        kind = row.get("kind")
        if kind == "latency":
            pending.setdefault(row["threads"], []).append({k: v for k, v in row.items() if k != "kind"})
        elif kind == "latency_done":
            tables[row["threads"]] = pending.pop(row["threads"], [])
    return tables


def _summaries(seed_results: dict) -> dict:
    """Accuracy (points) and label disagreement per variant over the seeds: mean, sd, per seed."""
    from labkit.measure.stats import spread

    seeds = [seed_results[k] for k in sorted(seed_results, key=int)]
    acc, differ = {}, {}
    for variant in dict.fromkeys(v for s in seeds for v in s["accuracy"]):
        vals = [100 * s["accuracy"][variant]["accuracy"] for s in seeds if variant in s["accuracy"]]
        sp = spread(vals)
        acc[variant] = {"mean": sp.mean, "sd": sp.sd, "n": sp.n, "per_seed": vals}
        counts = [s["differ_from_torchao_eager"][variant] for s in seeds if variant in s["differ_from_torchao_eager"]]
        differ[variant] = {"mean": sum(counts) / len(counts), "per_seed": counts}
    return {"accuracy_summary": acc, "agreement_summary": differ}


def _latency_models(cfg, models_from, in_memory: dict | None):
    """The one set of models latency is timed on: this run's first seed, else `bench qat`'s first seed, else
    the untrained QAT conversion of the pretrained checkpoint (timing does not depend on the weights)."""
    from labkit.experiments.deploy_bert.training import load_models, timing_models

    if in_memory:
        return in_memory["fp32"], in_memory["qat"], f"seed {cfg.seeds[0]} of this run"
    if models_from is not None:
        fp32, qat, _ = load_models(models_from, cfg.seeds[0], cfg.model)
        return fp32, qat, f"seed {cfg.seeds[0]} loaded from {models_from}"
    fp32, qat = timing_models(cfg)
    return fp32, qat, "the pretrained checkpoint and its QAT conversion, untrained (timing only)"


def run(args: argparse.Namespace) -> dict:
    """Run the asked stages into the run's files; returns the result (with its status)."""
    import tempfile

    from labkit.deploy.onnx_runtime import build_artifacts
    from labkit.env import package_version, provenance
    from labkit.experiments.deploy_bert.agreement import seed_accuracy
    from labkit.experiments.deploy_bert.int8_profile import PROFILED_ORT, profile_int8, profile_ort
    from labkit.experiments.deploy_bert.latency import latency_table
    from labkit.experiments.deploy_bert.targets import target_checks
    from labkit.experiments.deploy_bert.training import train_models
    from labkit.results.files import command_line
    from labkit.results.run import Run, publish

    if not hasattr(args, "cfg"):
        check(args)
    cfg, profile = args.cfg, args.profile_name
    threads, batch_sizes = args.thread_list, args.batch_list
    rounds = args.rounds or (8 if profile == "full" else 2)
    repeat, warmup = (3, 2) if profile == "full" else (2, 1)
    compiled = cfg.compile
    command = command_line(getattr(args, "argv", None))

    def here() -> dict:
        return {**provenance(command, profile), "onnx": package_version("onnx"),
                "onnxruntime": package_version("onnxruntime"), "cpu_flags": cpu_flags()}

    data: dict = {
        "provenance": here(), "experiment": EXPERIMENT, "cpu_flags": cpu_flags(),
        "config": {**asdict(cfg), "layers": str(cfg.layers), "seeds": list(cfg.seeds), "stages": list(args.stage_list),
                   "models_from": args.models_from, "threads": threads, "batch_sizes": list(batch_sizes),
                   "seq_len": args.seq_len, "rounds": rounds, "repeat": repeat, "warmup": warmup, "compile": compiled},
        "labels": LABELS, "notes": NOTES, "seeds": [], "seed_results": {}, "latency": [],
    }
    run_ = Run(data, *args.paths, resume=args.resume)
    print(f"deploy: profile {profile}, stages {','.join(args.stage_list)}, seeds {list(cfg.seeds)}, latency threads "
          f"{threads}; writing {run_.json_path}", flush=True)
    with run_:
        for row in run_.recorded("seed"):
            data["seed_results"][str(row["seed"])] = row
        tables = latency_tables(run_.previous)
        wanted = timed_variants(compiled)
        done_threads = {t for t, rows in tables.items() if wanted <= {r["variant"] for r in rows}}
        if set(tables) - done_threads:
            print(f"resume: the latency at threads {sorted(set(tables) - done_threads)} lacks variant(s) this "
                  "version times; measuring it again", flush=True)
        data["latency"] = [r for t in sorted(done_threads) for r in tables[t]]
        for r in run_.recorded("latency_done")[-1:]:
            data["latency_info"] = {**r, "threads": sorted(done_threads)}
        for r in run_.recorded("profile_int8")[-1:]:
            data["profile_int8"] = r["profile"]
        for r in run_.recorded("profile_ort")[-1:]:
            data["profile_ort"] = r["profile"]
        if run_.previous:
            print(f"resume: seeds {sorted(int(k) for k in data['seed_results'])} and latency at threads "
                  f"{sorted(done_threads)} already measured", flush=True)
        first_models: dict | None = None
        if "accuracy" in args.stage_list:
            for seed in cfg.seeds:
                if str(seed) in data["seed_results"]:
                    continue
                print(f"  seed {seed}: {'loading' if args.models_from else 'training'} the FP32 and QAT models",
                      flush=True)
                if args.train_threads:
                    torch.set_num_threads(args.train_threads)
                trained = train_models(replace(cfg, seed=seed), args.models_from)
                row = {"seed": seed, "training": trained["info"], "provenance": here(),
                       **seed_accuracy(trained["fp32"], trained["qat"], trained["eval_ds"], trained["tokenizer"],
                                       compiled=compiled)}
                data["seed_results"][str(seed)] = row
                run_.record("seed", row)
                if seed == cfg.seeds[0]:
                    first_models = {"fp32": trained["fp32"], "qat": trained["qat"]}
        if "latency" in args.stage_list and (set(threads) - done_threads or "profile_ort" not in data
                                             or (compiled and "profile_int8" not in data)):
            fp32, qat, which = _latency_models(cfg, args.models_from, first_models)
            info = {"models": which, "provenance": here()}
            with tempfile.TemporaryDirectory() as tmp:
                arts = build_artifacts(fp32, qat, tmp)
                ort_paths = {v: arts[ARTIFACT_OF[v]]["path"] for v in ORT_VARIANTS}
                for t in threads:
                    if t in done_threads:
                        continue
                    rows = latency_table({"torch-fp32": fp32, "torchao-int8": qat}, ort_paths, t, batch_sizes,
                                         args.seq_len, fp32.config.vocab_size, rounds, repeat, warmup,
                                         compiled=compiled)
                    for row in rows:
                        data["latency"].append(row)
                        run_.record("latency", row)
                    done_threads.add(t)
                    data["latency_info"] = {**info, "threads": sorted(done_threads)}
                    run_.record("latency_done", {**info, "threads": t})
                    print(f"  latency at {t} thread(s) done", flush=True)
                if "profile_ort" not in data:  # where the deployed INT8 graphs spend their time, 1 thread
                    data["profile_ort"] = profile_ort({v: ort_paths[v] for v in PROFILED_ORT}, 8, args.seq_len,
                                                      fp32.config.vocab_size)
                    run_.record("profile_ort", {"profile": data["profile_ort"], "models": which,
                                                "provenance": here()})
            if compiled and "profile_int8" not in data:
                torch.set_num_threads(1)
                data["profile_int8"] = profile_int8(qat, 8, args.seq_len, fp32.config.vocab_size)
                run_.record("profile_int8", {"profile": data["profile_int8"]})
        finish(data, target_checks)
        run_.record("result", {k: v for k, v in data.items() if k not in ("files", "resumed", "status", "reason")})
    publish(run_, args, EXPERIMENT, DEVICE)
    return data


def finish(data: dict, target_checks) -> None:
    """Fill the summary blocks of a result from its seeds and latency rows, and judge the targets."""
    seed_results = data.get("seed_results", {})
    data["seeds"] = sorted(int(k) for k in seed_results)
    if seed_results:
        data.update(_summaries(seed_results))
        data["sizes_mb"] = seed_results[str(data["seeds"][0])].get("sizes_mb", {})
    data["stages_done"] = {"accuracy": data["seeds"], "latency": sorted({r["threads"] for r in data["latency"]})}
    data["targets"] = target_checks(data)
    for c in data["targets"]:
        print(f"  [{c['verdict']}] {c['target']}: {c['measured']}", flush=True)


def load_reference() -> dict | None:
    """The committed full-profile result file (a complete run), or None when there is none."""
    from labkit.results.reference import load_reference as load

    return load(EXPERIMENT, DEVICE)[0]


def main(argv: list[str] | None = None) -> int:
    """`python -m labkit.experiments.deploy_bert ...` = `python -m labkit.bench deploy ...`."""
    from labkit.results.run import EXIT_CODES

    argv = sys.argv[1:] if argv is None else list(argv)
    package_doc = sys.modules[__package__].__doc__  # the package's docstring describes the experiment
    parser = argparse.ArgumentParser(prog="python -m labkit.experiments.deploy_bert",
                                     description=package_doc.splitlines()[0])
    parser.add_argument("--profile", choices=("quick", "full"), default=None,
                        help="run profile (default: $LABKIT_PROFILE, else quick)")
    parser.add_argument("--out", default=None, help="result file or folder of this run (default: a new folder "
                                                    "runs/deploy_bert_cpu_<time>/)")
    parser.add_argument("--resume", action="store_true", help="continue the run of --out from its JSONL")
    parser.add_argument("--update-reference", action="store_true",
                        help="at the end, copy a complete full-profile run to data/reference/deploy_bert_cpu.json")
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = ["deploy", *argv]
    try:
        check(args)
    except ValueError as err:
        parser.error(str(err))
    return EXIT_CODES.get(run(args).get("status"), 1)
