"""Perplexity of one converted variant, by the fastest path that keeps its numbers, checked on real tokens.

    w8a8 (torchao INT8 dynamic activations)
        "emulated": the converted model's INT8 codes multiplied in float32 (labkit.quant.emulate), after checking
            on the first eval batch that its logits match the real converted model's within the stated tolerance
            (else the variant fails). On a GPU torchao's eager w8a8 path is many times slower than bf16, the
            emulation about as fast as bf16.
        "real": the converted model itself. On a CPU torchao's INT8 matmul (_int_mm) is faster than the float32
            emulation (SmolLM2-135M, 24 x 256 test tokens, bf16, 1 thread: 13.4 s against 20.8 s, the same
            perplexity 39.9291 to 4 decimals), so "auto" picks "real" there and "emulated" on a GPU.
    w8-labkit (INT8 weight-only on labkit's kernel)
        the layer's own forward, checked on the first batch against the torchao model it was converted from (same
        INT8 codes). Perplexity batches have thousands of tokens per call: there the layer dequantizes its codes
        once and calls the matmul library (its prefill path, on a GPU and a CPU alike); the Triton kernel runs
        calls of <= 16 tokens (decode), which the speed columns time and `kernel_decode_check` compares, decoding
        token by token on real tokens, with the torchao model's own decode (a GPU, or a CPU under Triton's
        interpreter).
    fp8 the model as converted: real FP8 kernels on a GPU with compute capability >= 8.9, fake quantization (the
        same e4m3 row-wise rounding in float arithmetic) elsewhere; the row says which.
    anything else: the converted model itself.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from labkit.lm.perplexity import perplexity
from labkit.measure.memory import release_memory
from labkit.quant.emulate import emulated_int8_copy, logit_distance, logits_agreement, model_device

PPL_PATHS = ("auto", "emulated", "real")


class PerplexityCheckError(RuntimeError):
    """The fast perplexity path disagreed with the real converted model on the check batch."""


def resolve_ppl_path(ppl_path: str, device: torch.device | str) -> str:
    """"emulated" or "real" for a w8a8 variant on `device` ("auto": emulated on a GPU, real on a CPU)."""
    if ppl_path not in PPL_PATHS:
        raise ValueError(f"ppl_path={ppl_path!r}; use one of {', '.join(PPL_PATHS)}")
    if ppl_path != "auto":
        return ppl_path
    return "emulated" if torch.device(device).type == "cuda" else "real"


LABKIT_LOGIT_REL_TOL = 2e-2
"""labkit's Linear and torchao's weight-only Linear round differently in bf16 (dequantize-then-multiply against
multiply-then-scale): the same codes give logits ~0.1-0.5% apart, so that check allows 2% (a wrong code or scale
moves them far more); NLL and next-token agreement keep their tolerances."""


def _checked(fast: nn.Module, real: nn.Module, blocks: torch.Tensor, batch: int, row: dict, what: str,
             **tolerance) -> None:
    check = logits_agreement(fast, real, blocks[:batch], **tolerance)
    row["ppl_check"] = {"against": what, **check}
    if not check["ok"]:
        tol = check["tolerance"]
        raise PerplexityCheckError(
            f"fast perplexity path disagrees with {what} on the check batch: NLL {check['nll_fast']:.5f} vs "
            f"{check['nll_real']:.5f} ({check['nll_rel_diff']:.2e} relative, limit {tol['nll_rel']:.0e}), mean logit "
            f"difference {check['logit_rel_diff']:.2e} of the mean logit (limit {tol['logit_rel']:.0e}), next-token "
            f"agreement {check['top1_agreement']:.4f} (limit {tol['top1_min']})")


KERNEL_CHECK_TOKENS = 32
KERNEL_NLL_REL_TOL, KERNEL_TOP1_MIN, KERNEL_LOGIT_REL_TOL = 5e-3, 0.9, 5e-2
"""Token-by-token decode on labkit's Triton kernel (one token per call) against the same decode of the model it was
converted from (same INT8 codes, same attention and KV-cache path: only the matmul differs), in bf16."""


def _forward_and_decode(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of one forward over `ids` [1, n], logits of a teacher-forced decode, one token per call with the
    KV cache), both float32 [n, vocab]."""
    with torch.inference_mode():
        full = model(input_ids=ids, use_cache=False).logits[0].float()
        out = model(input_ids=ids[:, :1], use_cache=True)
        steps = [out.logits[0, -1].float()]
        for t in range(1, ids.shape[1]):
            out = model(input_ids=ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits[0, -1].float())
    return full, torch.stack(steps)


def _agreement(a: torch.Tensor, b: torch.Tensor, target: torch.Tensor) -> dict:
    """NLL of `a` and of `b` on `target`, their relative NLL and mean-logit difference, next-token agreement."""
    d = logit_distance(a, b, target)
    return {"nll": d["nll_a"], "nll_against": d["nll_b"], "nll_rel_diff": d["nll_rel_diff"],
            "logit_rel_diff": d["logit_rel_diff"], "top1_agreement": d["top1_agreement"]}


def kernel_decode_check(model: nn.Module, ids: torch.Tensor, tokens: int = KERNEL_CHECK_TOKENS,
                        reference: nn.Module | None = None) -> dict:
    """Teacher-forced decode of the first `tokens` + 1 ids of one block, one token per call with the KV cache
    (M = 1: labkit's Triton kernel where it runs), judged against `reference`'s decode of the same ids (the torchao
    model with the same codes: same attention and cache path, so only the matmul differs). Without a reference it
    is judged against one forward of `model` over the ids (M > 16: the prefill path), which also carries the
    bf16 differences between decode and prefill attention. Returns both comparisons and `ok`; where the kernel
    cannot run (a CPU without Triton's interpreter) `ok` is None and `kernel` says why."""
    from labkit.quant.int8_kernel import SMALL_M, triton_available

    small_m = max([getattr(m, "small_m", SMALL_M) for m in model.modules() if hasattr(m, "weight_int8")] or [SMALL_M])
    tokens = max(tokens, small_m)  # the one forward must take the prefill path: more than small_m tokens
    device = model_device(model)
    usable, why = triton_available(device)
    if not usable:
        return {"ok": None, "kernel": f"not run: {why}"}
    ids = ids.reshape(-1)[: tokens + 1].unsqueeze(0).to(device)
    target = ids[0, 1:]
    full, step = _forward_and_decode(model, ids)
    vs_forward = _agreement(step, full, target)
    out = {"kernel": why, "tokens": int(ids.shape[1]), "nll_decode": vs_forward["nll"],
           "nll_forward": vs_forward["nll_against"], "decode_vs_forward": vs_forward,
           "tolerance": {"nll_rel": KERNEL_NLL_REL_TOL, "top1_min": KERNEL_TOP1_MIN, "logit_rel": KERNEL_LOGIT_REL_TOL}}
    if reference is not None:
        ref_full, ref_step = _forward_and_decode(reference, ids)
        judged = _agreement(step, ref_step, target)
        out.update(against="the reference model's own token-by-token decode (same codes, attention and cache: "
                           "only the matmul differs)", nll_reference_decode=judged["nll_against"],
                   reference_decode_vs_forward=_agreement(ref_step, ref_full, target))
    else:
        judged = vs_forward
        out["against"] = "one forward of the same model over the same tokens (prefill path)"
    ok = (judged["nll_rel_diff"] <= KERNEL_NLL_REL_TOL and judged["logit_rel_diff"] <= KERNEL_LOGIT_REL_TOL
          and judged["top1_agreement"] >= KERNEL_TOP1_MIN)
    return {"ok": bool(ok), **out, "nll_rel_diff": judged["nll_rel_diff"], "logit_rel_diff": judged["logit_rel_diff"],
            "top1_agreement": judged["top1_agreement"]}


def variant_perplexity(model: nn.Module, mode: str | None, blocks: torch.Tensor, batch: int, row: dict, *,
                       ppl_path: str = "auto", reference: nn.Module | None = None, fp8_numerics: str | None = None,
                       progress: bool = False) -> float:
    """Perplexity of the converted `model` of an 8-bit `mode` (None: float); fills row["ppl_path"] (and
    row["ppl_check"] where a fast path was checked; row["ppl_s"]: seconds). Raises PerplexityCheckError when the
    check fails. `reference`: for w8-labkit, the torchao model it was converted from."""
    device = model_device(model)
    t0 = time.perf_counter()
    if mode == "w8a8" and resolve_ppl_path(ppl_path, device) == "emulated":
        fast, names = emulated_int8_copy(model)
        try:
            _checked(fast, model, blocks, batch, row, "the converted model (torchao INT8 kernels)")
            row["ppl_path"] = (f"emulated: {len(names)} INT8 layers as int8 codes x int8 codes in float32 "
                               "(exact products), checked against the converted model on the first batch")
            ppl = perplexity(fast, blocks, batch, progress=progress)
        finally:
            del fast
            release_memory(device)
    elif mode == "w8-labkit":
        if reference is not None:
            _checked(model, reference, blocks, batch, row, "the torchao INT8 weight-only model with the same codes",
                     logit_rel_tol=LABKIT_LOGIT_REL_TOL)
        row["kernel_check"] = kernel_decode_check(model, blocks[0], reference=reference)
        if row["kernel_check"]["ok"] is False:
            k = row["kernel_check"]
            raise PerplexityCheckError(
                f"labkit's Triton kernel (token-by-token decode) disagrees with {k['against']}: NLL "
                f"{k['nll_decode']:.5f} vs {k.get('nll_reference_decode', k['nll_forward']):.5f}, mean logit "
                f"difference {k['logit_rel_diff']:.2e}, next-token agreement {k['top1_agreement']:.3f} "
                f"(limits {k['tolerance']})")
        ppl = perplexity(model, blocks, batch, progress=progress)
        row["ppl_path"] = ("labkit Int8WeightOnlyLinear: > 16 tokens per call, so int8 codes dequantized once + "
                           "matmul library (its prefill path); the Triton kernel (<= 16 tokens per call) is checked "
                           "by a token-by-token decode of the first block's first tokens against the torchao "
                           "model's own decode (kernel_check)")
    else:
        ppl = perplexity(model, blocks, batch, progress=progress)
        row["ppl_path"] = {None: "the model itself", "w8a8": "the converted model (torchao INT8 kernels)",
                           "w8": "the converted model (torchao INT8 weight-only)"}.get(mode, "the converted model")
        if mode == "fp8":
            row["ppl_path"] = ("real FP8 row-wise kernels (torch._scaled_mm)" if fp8_numerics == "real" else
                               "FP8 e4m3 row-wise by fake quantization (float arithmetic): no FP8 kernels here "
                               "(they need an NVIDIA GPU of compute capability >= 8.9)")
    row["ppl_s"] = time.perf_counter() - t0
    return ppl


__all__ = ["PPL_PATHS", "PerplexityCheckError", "kernel_decode_check", "resolve_ppl_path", "variant_perplexity"]
