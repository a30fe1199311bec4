"""Names of the deploy variants, stages and result files, and the command-line options with their checks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EXPERIMENT = "deploy_bert"
DEVICE = "cpu"  # the deployment target: ONNX export, ORT, accuracy and latency all run on the CPU
REFERENCE = Path(__file__).resolve().parents[3] / "data" / "reference" / f"{EXPERIMENT}_{DEVICE}.json"
STAGES = ("accuracy", "latency")
TORCH_VARIANTS = ("torch-fp32", "torch-fp32-compiled", "torchao-int8", "torchao-int8-compiled")
ORT_VARIANTS = ("ort-fp32", "ort-qat-int8", "ort-qat-int8-mha", "ort-qat-int8-unfused", "ort-qat-int8-exact",
                "ort-peer-int8")
LABELS = {
    "torch-fp32": "PyTorch FP32 eager", "torch-fp32-compiled": "PyTorch FP32 compiled (freezing)",
    "torchao-int8": "torchao INT8 eager (QAT)", "torchao-int8-compiled": "torchao INT8 compiled (freezing, QAT)",
    "ort-fp32": "ONNX Runtime FP32 (BERT fusions)",
    "ort-qat-int8": "ONNX Runtime INT8, QAT grid (LayerNorm/GELU fusions)",
    "ort-qat-int8-mha": "ONNX Runtime INT8, QAT grid (+ MultiHeadAttention fusion)",
    "ort-qat-int8-unfused": "ONNX Runtime INT8, QAT grid (no BERT fusions)",
    "ort-qat-int8-exact": "ONNX Runtime INT8, QAT grid (exact rewrites: the unfused logits bit for bit, fewer kernels)",
    "ort-peer-int8": "ONNX Runtime quantize_dynamic PTQ (peer, default session)",
}
ARTIFACT_OF = {"ort-fp32": "fp32", "ort-qat-int8": "qat-int8", "ort-qat-int8-mha": "qat-int8-mha",
               "ort-qat-int8-unfused": "qat-int8-unfused", "ort-qat-int8-exact": "qat-int8-exact",
               "ort-peer-int8": "peer"}
INT8_DEPLOY = ("torchao-int8-compiled", "ort-qat-int8", "ort-qat-int8-mha", "ort-qat-int8-unfused",
               "ort-qat-int8-exact")


def parse_threads(text: str) -> list[int]:
    """'1,all' -> [1, os.cpu_count()]; refuses anything else with the fix."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if part == "all":
            out.append(os.cpu_count() or 1)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise ValueError(f"--threads {text!r}: {part!r} is not a thread count; use e.g. '1,all' or '1,2'")
    return list(dict.fromkeys(out))


def parse_stages(text: str) -> tuple[str, ...]:
    """'accuracy,latency' -> the stages in run order; refuses unknown or empty lists with the fix."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    unknown = [p for p in parts if p not in STAGES]
    if not parts or unknown:
        raise ValueError(f"--stages {text!r}: {'unknown stage(s) ' + ', '.join(unknown) if unknown else 'no stage'}; "
                         f"use a comma-separated subset of {','.join(STAGES)}")
    return tuple(s for s in STAGES if s in parts)


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2): distinct whole numbers of at least 0."""
    try:
        values = tuple(int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise ValueError(f"--seeds {text!r}: give distinct comma-separated seeds of at least 0, like 0,1,2")
    return values


def parse_positive_ints(text: str, name: str) -> tuple[int, ...]:
    """'1,8' -> (1, 8); refuses anything but whole numbers of at least 1."""
    try:
        values = tuple(int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"{name} {text!r}: use comma-separated whole numbers of at least 1, like 1,8")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The deploy experiment's own options (`--profile`, `--out`, `--resume`, `--update-reference` are the
    benchmark's shared options, added by the command line)."""
    parser.add_argument("--model", default=None, help="classifier name (labkit.models) or hub id (default minilm-l6)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="comma-separated stages to run: accuracy (per seed: train or load, export, accuracy and "
                             "label agreement of every variant), latency (once). Default: both")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (full: 0,1,2; quick: 0)")
    parser.add_argument("--models-from", default=None, metavar="RUN_DIR",
                        help="load each seed's trained FP32 and QAT models from a `bench qat` run folder "
                             "(runs/<run>/models/seed<k>/) instead of training them")
    parser.add_argument("--train-device", choices=("cpu", "cuda", "auto"), default=None,
                        help="where training runs (full: auto = a GPU when visible); export, ORT, accuracy and "
                             "latency always run on the CPU")
    parser.add_argument("--threads", default="1,all", help="latency thread counts, e.g. '1,all' (default)")
    parser.add_argument("--batch-sizes", default="1,8", help="latency batch sizes (default 1,8)")
    parser.add_argument("--seq-len", type=int, default=128, help="latency sequence length (default 128)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (default: profile's)")
    parser.add_argument("--fp32-steps", type=int, default=None, help="FP32 fine-tuning steps (default: profile's)")
    parser.add_argument("--extra-steps", type=int, default=None, help="QAT steps (default: profile's)")
    parser.add_argument("--n-train", type=int, default=None, help="training rows (default: profile's)")
    parser.add_argument("--n-eval", type=int, default=None, help="eval rows (default: profile's; full = all)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile variants (also the compiled-vs-eager noise floor)")
    parser.add_argument("--train-threads", type=int, default=None, help="torch threads while training on the CPU")
