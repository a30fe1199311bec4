"""Runs the deploy experiment end to end, rewriting the result file after every measurement; `main` is the CLI."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from labkit.experiments.deploy_bert.agreement import _agreement_only
from labkit.experiments.deploy_bert.int8_profile import profile_int8
from labkit.experiments.deploy_bert.latency import latency_inputs, latency_table
from labkit.experiments.deploy_bert.options import ARTIFACT_OF, DEFAULT_OUT, EXPERIMENT, LABELS, ORT_VARIANTS, \
    REFERENCE, add_arguments, parse_threads
from labkit.experiments.deploy_bert.targets import target_checks
from labkit.experiments.deploy_bert.training import train_models


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


def run(args: argparse.Namespace) -> dict:
    from labkit.results.files import write_json
    from labkit.deploy.onnx_export import verify_int8_weights
    from labkit.deploy.onnx_runtime import OnnxClassifier, build_artifacts, evaluate, predict
    from labkit.env import get_profile, package_version, provenance
    from labkit.experiments.qat_bert.pipeline import QATBertConfig
    from labkit.quant.size import size_on_disk_mb

    threads = parse_threads(args.threads)
    batch_sizes = tuple(int(b) for b in str(args.batch_sizes).split(","))
    if any(b < 1 for b in batch_sizes) or args.seq_len < 1:
        raise ValueError(f"--batch-sizes {args.batch_sizes!r} / --seq-len {args.seq_len}: use positive integers")
    profile = getattr(args, "profile", None) or get_profile()
    overrides = {k: v for k, v in {"model": args.model, "fp32_steps": args.fp32_steps,
                                   "extra_steps": args.extra_steps, "n_eval": args.n_eval}.items() if v is not None}
    cfg = QATBertConfig.for_profile(profile, **overrides)
    cfg.validate()
    rounds = args.rounds or (8 if profile == "full" else 2)
    repeat, warmup = (3, 2) if profile == "full" else (2, 1)
    if args.write_reference and getattr(args, "out", None):
        raise ValueError("--write-reference and --out both name the result file; pass only one")
    out = REFERENCE if args.write_reference else Path(getattr(args, "out", None) or DEFAULT_OUT)
    prog = "labkit.bench" if Path(sys.argv[0]).parent.name == "bench" else "labkit.experiments.deploy_bert"
    command = f"python -m {prog} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    data: dict = {
        "provenance": {**provenance(command), "profile": profile,
                       "onnx": package_version("onnx"), "onnxruntime": package_version("onnxruntime")},
        "experiment": EXPERIMENT, "status": "running", "cpu_flags": cpu_flags(),
        "config": {"profile": profile, "model": cfg.model, "dataset": cfg.dataset, "n_train": cfg.n_train,
                   "n_eval": cfg.n_eval, "fp32_steps": cfg.fp32_steps, "extra_steps": cfg.extra_steps,
                   "seed": cfg.seed, "layers": cfg.layers, "embeddings": cfg.embeddings,
                   "activations": cfg.activations, "threads": threads, "batch_sizes": list(batch_sizes),
                   "seq_len": args.seq_len, "rounds": rounds, "repeat": repeat, "warmup": warmup,
                   "compile": not args.no_compile},
        "labels": LABELS, "latency": [], "errors": [],
        "notes": [
            "latency: one process, rounds interleaved across every variant; p10/p50/p90 over rounds x repeat calls "
            "after warm-up (compilation included in warm-up); full-length batches (every position a real token)",
            "the machine is shared with other jobs: spread (p10-p90) is reported, compare within one thread count",
            "accuracy: PyTorch FP32 is the fine-tuned model QAT started from (QAT trained extra_steps more)",
            "ort-peer-int8 runs with ORT's default session options (threads set); the lab's sessions use "
            "ORT_ENABLE_ALL, sequential execution",
        ],
    }
    if args.agreement_only:
        return _agreement_only(args, cfg, out, command)
    print(f"deploy_bert: profile {profile}, threads {threads}, writing {out}", flush=True)
    write_json(out, data)
    t_start = time.perf_counter()
    try:
        if args.train_threads:
            torch.set_num_threads(args.train_threads)
        trained = train_models(cfg, getattr(args, "cache_dir", None))
        fp32, qat, tok, eval_ds = trained["fp32"], trained["qat"], trained["tokenizer"], trained["eval_ds"]
        data["training"] = trained["info"]
        write_json(out, data)
        with tempfile.TemporaryDirectory() as tmp:
            arts = build_artifacts(fp32, qat, tmp)
            data["artifacts"] = {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in arts.items()}
            data["sizes_mb"] = {"torch-fp32": size_on_disk_mb(fp32), "torchao-int8": size_on_disk_mb(qat),
                                **{k: v["size_mb"] for k, v in arts.items()}}
            data["weights_check"] = verify_int8_weights(arts["qat-int8"]["path"], qat)
            write_json(out, data)
            accuracy = {"torch-fp32": evaluate(fp32, eval_ds, tok), "torchao-int8": evaluate(qat, eval_ds, tok)}
            for v in ("ort-fp32", "ort-qat-int8", "ort-peer-int8"):
                accuracy[v] = evaluate(OnnxClassifier(arts[ARTIFACT_OF[v]]["path"], threads=max(threads)), eval_ds, tok)
                data["accuracy"] = accuracy
                write_json(out, data)
            sample = latency_inputs(16, args.seq_len, fp32.config.vocab_size, seed=1)
            ort_q = OnnxClassifier(arts["qat-int8"]["path"])
            data["same_labels_fixed_batch"] = bool(torch.equal(predict(ort_q, sample), predict(qat, sample)))
            ort_paths = {v: arts[ARTIFACT_OF[v]]["path"] for v in ORT_VARIANTS}
            for t in threads:
                latency_table({"torch-fp32": fp32, "torchao-int8": qat}, ort_paths, t, batch_sizes, args.seq_len,
                              fp32.config.vocab_size, rounds, repeat, warmup, compiled=not args.no_compile,
                              on_row=lambda row: (data["latency"].append(row), write_json(out, data)))
                print(f"  latency at {t} thread(s) done", flush=True)
        if not args.no_compile:
            torch.set_num_threads(1)
            data["profile_int8"] = profile_int8(qat, 8, args.seq_len, fp32.config.vocab_size)
        data["status"] = "complete"
    except Exception as err:  # noqa: BLE001 - recorded in the file, then the exit code says it failed
        data["errors"].append(f"{type(err).__name__}: {err}")
        data["status"] = "failed"
        traceback.print_exc()
    data["targets"] = target_checks(data)
    data["seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(out, data)
    for c in data["targets"]:
        print(f"  [{ {True: 'met', False: 'MISSED', None: 'not measured'}.get(c['met'], c['met']) }] "
              f"{c['target']}: {c['measured']}")
    print(f"wrote {out} ({data['status']})", flush=True)
    if data["status"] != "complete":
        raise SystemExit(1)
    return data


def load_reference() -> dict | None:
    """The committed full-profile result file (a complete run), or None when there is none."""
    from labkit.results.reference import load_reference as load

    return load("deploy_bert", "cpu")[0]


def main(argv: list[str] | None = None) -> int:
    package_doc = sys.modules[__package__].__doc__  # the package's docstring describes the experiment
    parser = argparse.ArgumentParser(prog="python -m labkit.experiments.deploy_bert",
                                     description=package_doc.splitlines()[0])
    parser.add_argument("--profile", choices=("quick", "full"), default=None,
                        help="run profile (default: $LABKIT_PROFILE, else full on a GPU, quick on a CPU)")
    parser.add_argument("--out", default=None, help=f"result file (default: {DEFAULT_OUT})")
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0

