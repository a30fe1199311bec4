"""Names of the deploy variants and result files, and the command-line options with their checks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EXPERIMENT = "deploy_bert"
REFERENCE = Path(__file__).resolve().parents[3] / "data" / "reference" / f"{EXPERIMENT}_cpu.json"
DEFAULT_OUT = Path("build") / f"{EXPERIMENT}_cpu.json"
TORCH_VARIANTS = ("torch-fp32", "torch-fp32-compiled", "torchao-int8", "torchao-int8-compiled")
ORT_VARIANTS = ("ort-fp32", "ort-qat-int8", "ort-qat-int8-mha", "ort-qat-int8-unfused", "ort-peer-int8")
LABELS = {
    "torch-fp32": "PyTorch FP32 eager", "torch-fp32-compiled": "PyTorch FP32 compiled (freezing)",
    "torchao-int8": "torchao INT8 eager (QAT)", "torchao-int8-compiled": "torchao INT8 compiled (freezing, QAT)",
    "ort-fp32": "ONNX Runtime FP32 (BERT fusions)",
    "ort-qat-int8": "ONNX Runtime INT8, QAT grid (LayerNorm/GELU fusions)",
    "ort-qat-int8-mha": "ONNX Runtime INT8, QAT grid (+ MultiHeadAttention fusion)",
    "ort-qat-int8-unfused": "ONNX Runtime INT8, QAT grid (no BERT fusions)",
    "ort-peer-int8": "ONNX Runtime quantize_dynamic PTQ (peer, default session)",
}
ARTIFACT_OF = {"ort-fp32": "fp32", "ort-qat-int8": "qat-int8", "ort-qat-int8-mha": "qat-int8-mha",
               "ort-qat-int8-unfused": "qat-int8-unfused", "ort-peer-int8": "peer"}
INT8_DEPLOY = ("torchao-int8-compiled", "ort-qat-int8", "ort-qat-int8-mha", "ort-qat-int8-unfused")


def parse_threads(text: str) -> list[int]:
    """'1,all' -> [1, os.cpu_count()]; refuses anything else with the fix."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            out.append(os.cpu_count() or 1)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise ValueError(f"--threads {text!r}: {part!r} is not a thread count; use e.g. '1,all' or '1,2'")
    return list(dict.fromkeys(out))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="minilm-l6", help="classifier name (labkit.models) or hub id")
    parser.add_argument("--threads", default="1,all", help="thread counts to measure, e.g. '1,all' (default)")
    parser.add_argument("--batch-sizes", default="1,8", help="latency batch sizes (default 1,8)")
    parser.add_argument("--seq-len", type=int, default=128, help="latency sequence length (default 128)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (default: profile's)")
    parser.add_argument("--fp32-steps", type=int, default=None, help="FP32 fine-tuning steps (default: profile's)")
    parser.add_argument("--extra-steps", type=int, default=None, help="QAT steps (default: profile's)")
    parser.add_argument("--n-eval", type=int, default=None, help="eval rows (default: profile's; full = all)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--train-threads", type=int, default=None, help="torch threads while training")
    parser.add_argument("--cache-dir", default=None,
                        help="save the trained models here (safetensors) and reuse them on a rerun with the same budget")
    parser.add_argument("--agreement-only", action="store_true",
                        help="only add the label-agreement block to an existing result file (needs --cache-dir)")
    parser.add_argument("--write-reference", action="store_true",
                        help=f"write the committed reference {REFERENCE.relative_to(REFERENCE.parents[2])}")
