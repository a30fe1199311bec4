"""Per-layer sensitivity to INT8: quantize ONE Linear layer alone and measure how much the outputs move.

For every selected Linear layer, in turn, the layer runs with the same INT8 numerics as QAT
(`prepare_qat(..., activations="int8-dynamic")`) and PTQ (`quantize_dynamic_int8`): weights INT8 symmetric
per output channel, and with mode="w8a8" inputs INT8 symmetric per token (mode="w8a8-asym": asymmetric per
token, as activations="int8-dynamic-asym"), while every other layer stays in float. A test checks that one
layer's output here equals PTQ's real INT8 output within float rounding. Two damages are measured on a few calibration batches
against the untouched model:
    kl         mean over tokens of KL(p_float || p_quantized) of the next-token distributions (nats)
    ppl_delta  perplexity increase in percent on the same batches
The layer is never modified: its `forward` is shadowed for the duration of the measurement and restored
after (so tied weights, e.g. a Llama lm_head sharing the embedding table, are safe).

`describe_linears` names each Linear's block and role (q, k, v, o, gate, up, down, lm_head), which the
heatmap (labkit.plots.sensitivity) and the layer picker share.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from labkit.quant.selection import LayerSelection, linear_layers, resolve_layers

ROLES = ("q", "k", "v", "o", "gate", "up", "down", "lm_head")
FEED_FORWARD_ROLES = ("gate", "up", "down")
ATTENTION_ROLES = ("q", "k", "v", "o")
MODES = ("w8", "w8a8", "w8a8-asym")
METRICS = ("kl", "ppl_delta")

# (role, pattern on the module name); first match wins. Llama/Mistral/Qwen names first, then BERT/GPT-style.
_ROLE_PATTERNS = (
    ("q", r"(q_proj|\.query|\.q_lin|\.wq)$"),
    ("k", r"(k_proj|\.key|\.k_lin|\.wk)$"),
    ("v", r"(v_proj|\.value|\.v_lin|\.wv)$"),
    ("o", r"(o_proj|out_proj|attention\.output\.dense|\.out_lin|\.wo)$"),
    ("gate", r"(gate_proj|\.w1)$"),
    ("up", r"(up_proj|intermediate\.dense|\.fc1|\.lin1|\.w3)$"),
    ("down", r"(down_proj|output\.dense|\.fc2|\.lin2|\.w2)$"),
    ("lm_head", r"(^|\.)(lm_head|embed_out)$"),
)
_BLOCK = re.compile(r"\.(\d+)\.")


def layer_role(name: str) -> tuple[int | None, str]:
    """(block index or None, role) of a Linear module name; role is "other" when it is not recognised."""
    match = _BLOCK.search("." + name)
    block = int(match.group(1)) if match else None
    for role, pattern in _ROLE_PATTERNS:
        if re.search(pattern, name):
            return (None if role == "lm_head" else block), role
    return block, "other"


def _tied_linears(model: nn.Module) -> set[str]:
    """Names of Linear layers whose weight is the same tensor as an embedding table (tied weights)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) in tables}


def describe_linears(model: nn.Module) -> pd.DataFrame:
    """One row per Linear layer: name, block, role, params (weight + bias), in/out features, tied (to an embedding)."""
    tied = _tied_linears(model)
    rows = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        block, role = layer_role(name)
        params = mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
        rows.append({"name": name, "block": block, "role": role, "params": params,
                     "in_features": mod.in_features, "out_features": mod.out_features, "tied": name in tied})
    table = pd.DataFrame(rows, columns=["name", "block", "role", "params", "in_features", "out_features", "tied"])
    return table.astype({"block": "Int64"})  # None (lm_head) stays <NA>, indices stay integers


# ---------------------------------------------------------------------------------------------------------------
# quantizing one layer alone


def _fake_quantizers(mode: str):
    """(weight fake quantizer, activation fake quantizer or None), with the numerics of labkit.quant.qat."""
    from torchao.quantization.qat import IntxFakeQuantizer

    from labkit.quant.qat import SymmetricPerTokenFakeQuantizer, activation_fake_config, weight_fake_config

    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; use 'w8' (INT8 weights), 'w8a8' (INT8 weights and "
                         "INT8 symmetric per-token inputs, as QAT with activations='int8-dynamic' and PTQ "
                         "quantize_dynamic_int8) or 'w8a8-asym' (asymmetric per-token inputs)")
    act = {"w8": None, "w8a8": SymmetricPerTokenFakeQuantizer(),
           "w8a8-asym": IntxFakeQuantizer(activation_fake_config()) if mode == "w8a8-asym" else None}[mode]
    return IntxFakeQuantizer(weight_fake_config()), act


@contextmanager
def quantized_alone(module: nn.Linear, mode: str = "w8a8") -> Iterator[nn.Linear]:
    """Within the block, `module` computes with INT8-rounded weights (and inputs for w8a8); restored after.

    The parameter is not touched: a quantized copy of the weight is used by a shadowing `forward`.
    """
    if not isinstance(module, nn.Linear):
        raise TypeError(f"quantized_alone needs an nn.Linear, got {type(module).__name__}")
    weight_fq, act_fq = _fake_quantizers(mode)
    with torch.no_grad():
        w_q = weight_fq(module.weight.detach().float()).to(module.weight.dtype)
    bias = module.bias

    def forward(x: torch.Tensor) -> torch.Tensor:
        if act_fq is not None:
            x = act_fq(x.float()).to(x.dtype)
        return F.linear(x, w_q, bias)

    had_own = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield module
    finally:
        if had_own:
            module.forward = previous
        else:
            del module.forward


# ---------------------------------------------------------------------------------------------------------------
# the measurement


def _as_batches(batches) -> list[torch.Tensor]:
    if isinstance(batches, torch.Tensor):
        if batches.dim() != 2:
            raise ValueError(f"calibration token ids must be [n_rows, seq_len], got shape {tuple(batches.shape)}")
        return [b.unsqueeze(0) for b in batches]
    out = [torch.as_tensor(b) for b in batches]
    if not out:
        raise ValueError("no calibration batches: pass at least one tensor of token ids")
    return [b if b.dim() == 2 else b.unsqueeze(0) for b in out]


def _log_probs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities for positions 0..T-2, float32, shape [B*(T-1), vocab]."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    return F.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])


def _damage(model, batches, refs) -> tuple[float, float]:
    """(mean KL(ref || model), mean NLL) over every predicted token of every batch."""
    kl_sum, nll_sum, n = 0.0, 0.0, 0
    for ids, (ref_lp, targets) in zip(batches, refs):
        lp = _log_probs(model, ids)
        kl_sum += float(F.kl_div(lp, ref_lp, log_target=True, reduction="sum"))
        nll_sum += float(F.nll_loss(lp, targets, reduction="sum"))
        n += targets.numel()
    return kl_sum / n, nll_sum / n


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    batches: torch.Tensor | Sequence[torch.Tensor],
    layers: LayerSelection = None,
    *,
    mode: str = "w8a8",
    progress: bool = True,
) -> pd.DataFrame:
    """Damage of quantizing each selected Linear layer ALONE, as a tidy table sorted like the model.

    model    a causal LM (transformers-style: `model(input_ids=...).logits`); left exactly as it was
    batches  token ids, [n, seq_len] (one row per batch) or a list of [B, seq_len] tensors
    layers   which Linear layers to score (any LayerSelection; default every one, the output head included:
             scoring a layer is not quantizing it)
    mode     "w8a8" (INT8 weights + symmetric per-token INT8 inputs, as QAT/PTQ int8-dynamic), "w8a8-asym"
             (asymmetric per-token inputs) or "w8" (INT8 weights only)
    Columns: name, block, role, params, kl, nll, ppl, ppl_delta (percent vs the float model).
    `table.attrs` holds the float model's perplexity on the same batches and the settings.
    """
    from tqdm.auto import tqdm

    names = list(linear_layers(model)) if layers is None else resolve_layers(model, layers)
    _fake_quantizers(mode)  # validate the mode before the expensive part
    device = next(model.parameters()).device
    batches = [b.to(device) for b in _as_batches(batches)]
    was_training = model.training
    model.eval()
    try:
        refs = []
        for ids in batches:
            refs.append((_log_probs(model, ids), ids[:, 1:].reshape(-1)))
        _, base_nll = _damage(model, batches, refs)
        base_ppl = math.exp(base_nll)
        info = describe_linears(model).set_index("name")
        modules = dict(model.named_modules())
        rows = []
        for name in tqdm(names, desc=f"sensitivity ({mode})", disable=not progress, leave=True):
            with quantized_alone(modules[name], mode):
                kl, nll = _damage(model, batches, refs)
            ppl = math.exp(nll)
            block = info.at[name, "block"]
            rows.append({"name": name, "block": None if pd.isna(block) else int(block), "role": info.at[name, "role"],
                         "params": int(info.at[name, "params"]), "kl": kl, "nll": nll, "ppl": ppl,
                         "ppl_delta": 100.0 * (ppl / base_ppl - 1.0)})
    finally:
        model.train(was_training)
    table = pd.DataFrame(rows).astype({"block": "Int64"})
    table.attrs.update({"base_ppl": base_ppl, "mode": mode, "tokens": int(sum(r[1].numel() for r in refs)),
                        "batches": len(batches)})
    return table


def least_sensitive(
    table: pd.DataFrame, percent: float = 50.0, metric: str = "kl", exclude: Sequence[str] = ()
) -> list[str]:
    """Names of the `percent` % least damaging layers of a sensitivity table (at least one), model order kept."""
    if metric not in table.columns:
        raise ValueError(f"metric {metric!r} is not a column of the sensitivity table; use one of {METRICS}")
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    scored = table[~table["name"].isin(list(exclude))]
    if scored.empty:
        return []
    k = max(1, math.ceil(len(scored) * percent / 100.0))
    chosen = set(scored.sort_values(metric, kind="stable")["name"].head(k))
    return [n for n in table["name"] if n in chosen]


__all__ = [
    "FEED_FORWARD_ROLES",
    "ROLES",
    "describe_linears",
    "layer_role",
    "layer_sensitivity",
    "least_sensitive",
    "quantized_alone",
]
