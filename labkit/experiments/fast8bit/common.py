"""Constants and small helpers shared by the benchmark's parts: variants, shapes, error text, freeing memory."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

PARTS = ("kernel", "block", "decode", "prefill")
FEED_FORWARD = r"\.mlp\.(gate|up|down)_proj$"   # the hybrid's default selection (same regex)
ALL_LINEAR = r"\.layers\.\d+\."                   # every Linear inside the decoder blocks (head stays bf16)
BLOCK_VARIANTS = ("bf16", "torchao-int8-wo", "torchao-w8a8", "labkit-int8", "fp8-rowwise")
PREFILL_VARIANTS = ("bf16", "fp8-ff", "w8a8-ff", "fp8-all", "labkit-int8-ff")
DEFAULT_PREFILL = ("bf16", "fp8-ff", "w8a8-ff", "fp8-all")
DECODE_VARIANTS = ("bf16", "labkit-int8-ff")
FF_SHAPES = ((11008, 4096), (4096, 11008))        # (N, K): gate/up, down of Llama-2-7B
INT8_FAMILIES = {"labkit-int8", "int8-gemm"}           # w8a8: an integer matmul must run
WEIGHT_INT8_FAMILIES = {"labkit-int8", "int8-gemm", "int8-fused"}  # weight-only: the matmul must read INT8
ROOT = Path(__file__).resolve().parents[3]


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
