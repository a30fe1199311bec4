"""Exercise checks of notebooks 01 (QAT on BERT) and 01b (deploying it on a CPU).

Each check builds its own truth from labkit's reference code (the quantizer of `labkit.quant.fake`, torchao's
per-token scheme) and fails on a wrong answer with a hint; a placeholder answer is "not attempted".

    01  check_ste_fake_quant, check_error_ratio, check_bits_ratio, check_size_prediction, check_ffn_qat
    01b check_per_token_codes, check_op_counts, check_fastest_batch1
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from labkit.checks import ClaimFailed
from labkit.exercises import answer_value, call_answer, claim

_EPS = torch.finfo(torch.float32).eps  # torchao's floor for a per-token scale


# -- notebook 01 --------------------------------------------------------------------------------------------------

def check_ste_fake_quant(fake_quant_ste) -> None:
    """`fake_quant_ste(x, scale, qmin, qmax)`: symmetric fake quantization whose backward is the straight-through
    estimator: the forward gives `clamp(round(x / scale), qmin, qmax) * scale`, the gradient is 1 where the code
    fits the grid and 0 where it was clipped."""
    from labkit.quant.fake import fake_quantize

    x = torch.linspace(-1.5, 1.5, 601, dtype=torch.float32, requires_grad=True)
    scale = torch.tensor(0.25)
    out = call_answer(fake_quant_ste, "fake_quant_ste", x, scale, -4, 3)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ClaimFailed(f"fake_quant_ste should return a tensor shaped like x {tuple(x.shape)}; got "
                          f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
    truth = fake_quantize(x.detach(), scale, torch.tensor(0.0), qmin=-4, qmax=3)
    claim("exercise: STE forward == fake quantization (3-bit grid)", out.detach(), truth, tol=1e-6,
          hint="forward: clamp(round(x / scale), qmin, qmax) * scale")
    if not out.requires_grad:
        raise ClaimFailed("fake_quant_ste's output has no gradient path to x: wrap the rounding in a "
                          "torch.autograd.Function (or use x + (q - x).detach()), do not compute it under no_grad")
    grad, = torch.autograd.grad(out.sum(), x)
    codes = torch.round(x.detach() / scale)
    inside = (codes >= -4) & (codes <= 3)
    claim("exercise: STE gradient where the code fits the grid", grad[inside].unique().tolist(), [1.0],
          hint="the straight-through estimator passes the gradient through round() as if it were the identity")
    claim("exercise: STE gradient where the value was clipped", grad[~inside].unique().tolist(), [0.0],
          hint="clipped values do not move with x: their gradient is 0 (mask it with the codes inside the grid)")


def _mean_error(w: torch.Tensor, **kw) -> torch.Tensor:
    from labkit.quant.fake import fake_quantize_tensor

    return (w - fake_quantize_tensor(w, **kw)[0]).abs().mean()


def check_error_ratio(ratio, weight: torch.Tensor) -> None:
    """Per-tensor mean |error| / per-channel mean |error| of `weight` (symmetric INT8)."""
    ratio = float(answer_value(ratio, "ex1_ratio"))
    truth = (_mean_error(weight) / _mean_error(weight, dim=0)).item()
    claim("exercise 1: per-tensor / per-channel mean error", ratio, truth, tol=1e-3,
          hint="fake_quantize_tensor(W) is per tensor, fake_quantize_tensor(W, dim=0) per channel (per row); "
               "divide the per-tensor mean |W - W_hat| by the per-channel one")


def check_bits_ratio(prediction, measured, weight: torch.Tensor) -> None:
    """4-bit / 8-bit per-channel mean error of `weight`: measured exactly, predicted within 25%."""
    prediction = float(answer_value(prediction, "ex2_prediction"))
    measured = float(answer_value(measured, "ex2_measured"))
    truth = (_mean_error(weight, bits=4, dim=0) / _mean_error(weight, bits=8, dim=0)).item()
    claim("exercise 2: measured 4-bit / 8-bit error", measured, truth, tol=1e-3,
          hint="fake_quantize_tensor(W, bits=4, dim=0) against bits=8, mean |W - W_hat| of each")
    claim("exercise 2: prediction within 25% of the measurement", abs(prediction / truth - 1), 0.25, op="<=",
          hint="the mean rounding error is proportional to the grid step, and the step to 1 / (number of levels)")


def check_size_prediction(prediction_mb, model, layers: list[str]) -> None:
    """A copy of the model with exactly `layers` INT8 (embeddings FP32), and its size predicted within 5%."""
    from labkit.quant.report import int8_modules
    from labkit.quant.size import size_on_disk_mb

    model = answer_value(model, "ex3_model")
    prediction_mb = float(answer_value(prediction_mb, "ex3_prediction_mb"))
    claim("exercise 3: INT8 modules == the Linear selection", int8_modules(model), list(layers),
          hint="quant.quantize_dynamic_int8(copy.deepcopy(model), layers), without quantize_embeddings_int8")
    claim("exercise 3: predicted / measured size", round(prediction_mb / size_on_disk_mb(model), 3), 1.0, tol=0.05,
          hint="INT8 Linear weight: 1 byte per element + 4 bytes per row; every other parameter: 4 bytes")


def _int8_weight(module) -> torch.Tensor | None:
    """A converted torchao INT8 Linear's weight as float (codes x scales), or None for a float weight."""
    w = getattr(module, "weight", None)
    if w is None or type(w) in (torch.Tensor, torch.nn.Parameter) or not hasattr(w, "dequantize"):
        return None
    return w.dequantize().float()


def check_ffn_qat(ex4_layers, ex4_model, start_model, num_layers: int) -> None:
    """QAT of the feed-forward Linears only: the right selection, exactly those INT8, and trained: its INT8 weights
    differ from those of `start_model` prepared and converted without training (which only rounds its weights)."""
    from labkit.quant.report import int8_modules

    ex4_layers = list(answer_value(ex4_layers, "ex4_layers"))
    ex4_model = answer_value(ex4_model, "ex4_model")
    names = [n for n, _ in start_model.named_modules()]
    truth = [n for n in names if n.endswith(("intermediate.dense", "output.dense"))
             and ".attention." not in n and ".encoder.layer." in f".{n}"]
    claim("exercise 4: 2 feed-forward Linears per block", len(ex4_layers), 2 * num_layers,
          hint="intermediate.dense and the block's own output.dense; not attention.output.dense")
    claim("exercise 4: your selection == the feed-forward Linears", sorted(ex4_layers), sorted(truth),
          hint=r"a pattern such as encoder\.layer\.\d+\.(intermediate|output)\.dense$")
    claim("exercise 4: INT8 modules == your selection", int8_modules(ex4_model), ex4_layers,
          hint="prepare_qat(copy, ex4_layers, activations='int8-dynamic'), train, then convert_qat")
    import copy

    from labkit.quant.qat import convert_qat, prepare_qat

    untrained = convert_qat(prepare_qat(copy.deepcopy(start_model).train(), ex4_layers, activations="int8-dynamic"))
    modules, start = dict(ex4_model.named_modules()), dict(untrained.named_modules())
    moved = 0
    for name in ex4_layers:
        w, w0 = _int8_weight(modules[name]), _int8_weight(start[name])
        if w is not None and w0 is not None and w.shape == w0.shape:
            moved += int((w != w0).sum())
    claim("exercise 4: INT8 weights that differ from converting the starting model untrained", moved, 0, op=">",
          hint="train the prepared copy (train(ex4_model, train_ds, tokenizer, cfg, cfg.extra_steps, cfg.extra_lr, "
               "'qat')) before convert_qat: converting without training only rounds the starting weights")


# -- notebook 01b -------------------------------------------------------------------------------------------------

def per_token_codes_reference(x: torch.Tensor) -> torch.Tensor:
    """The u8 codes the deployed graph feeds to MatMulIntegerToFloat: torchao's per-token symmetric INT8, + 128."""
    s = (x.abs().amax(-1, keepdim=True) / 127.5).clamp(min=_EPS)
    return (torch.clamp(torch.round(x * (1.0 / s)), -128, 127) + 128).to(torch.uint8)


def check_per_token_codes(per_token_codes) -> None:
    """`per_token_codes(x)` on tokens of three magnitudes: uint8, equal to the reference codes everywhere."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 384, generator=gen) * torch.tensor([0.1, 1.0, 30.0]).view(3, 1, 1)
    out = call_answer(per_token_codes, "per_token_codes", x)
    if not isinstance(out, torch.Tensor):
        raise ClaimFailed(f"per_token_codes should return a tensor; got {type(out).__name__}")
    claim("exercise 1: dtype of the codes", str(out.dtype), "torch.uint8", hint=".to(torch.uint8) after adding 128")
    truth = per_token_codes_reference(x)
    claim("exercise 1: codes == per-token symmetric INT8 + 128", out.int(), truth.int(), tol=0,
          hint="one scale per token (reduce the last axis): absmax / 127.5, floored at float32 eps; "
               "round(x * (1 / scale)), clamp to [-128, 127], + 128")


def op_counts_reference(path: str | Path) -> dict[str, int]:
    """How many nodes of each operator type the ONNX graph at `path` has."""
    import onnx

    return dict(Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node))


def check_op_counts(op_counts, path: str | Path, int8_linears: int) -> None:
    """`op_counts(path)` == the graph's operator counts, and one MatMulIntegerToFloat per INT8 Linear."""
    out = call_answer(op_counts, "op_counts", str(path))
    if not isinstance(out, dict):
        raise ClaimFailed(f"op_counts should return a dict {{op_type: count}}; got {type(out).__name__}")
    truth = op_counts_reference(path)
    claim("exercise 2: operator counts of the QAT INT8 graph", {k: int(v) for k, v in out.items()}, truth,
          hint="onnx.load(path).graph.node: count node.op_type over every node (collections.Counter)")
    claim("exercise 2: MatMulIntegerToFloat nodes == INT8 Linears in the model",
          int(out.get("MatMulIntegerToFloat", 0)), int(int8_linears),
          hint="each INT8 Linear becomes one integer GEMM with its float rescale")


def check_fastest_batch1(answer, ref: dict, file: str = "deploy_bert_cpu.json") -> None:
    """(variant, p50 / torch-fp32 p50) of the fastest variant at batch 1, 1 thread, in a committed deploy run."""
    variant, ratio = answer_value(answer, "ex3")
    one = [r for r in ref["latency"] if r["threads"] == 1 and r["batch"] == 1]
    best = min(one, key=lambda r: r["p50_ms"])
    base = next(r["p50_ms"] for r in one if r["variant"] == "torch-fp32")
    claim("exercise 3: fastest variant at batch 1, 1 thread", variant, best["variant"], committed=file,
          hint="filter ref['latency'] to threads == 1 and batch == 1, take the smallest p50_ms")
    claim("exercise 3: its p50 / PyTorch FP32 eager p50", float(ratio), best["p50_ms"] / base, tol=1e-6,
          committed=file, hint="divide by the p50_ms of the torch-fp32 row at batch 1, 1 thread")


__all__ = ["check_bits_ratio", "check_error_ratio", "check_fastest_batch1", "check_ffn_qat", "check_op_counts",
           "check_per_token_codes", "check_size_prediction", "check_ste_fake_quant", "op_counts_reference",
           "per_token_codes_reference"]
