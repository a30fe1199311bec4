"""Checks after conversion: attention still runs the expected kernel (profiled), the INT8 layers really multiply
in integer arithmetic where they claim to (profiled: labkit.quant.kernel_evidence), exactly the selected layers are
INT8, and every unselected Linear is untouched (bitwise equal, still a plain Parameter)."""

from __future__ import annotations

import torch
from torch import nn

from labkit.attention.verify import verify_backend
from labkit.measure.memory import error_text
from labkit.measure.prefill import random_input_ids
from labkit.quant.kernel_evidence import matmul_evidence
from labkit.quant.report import int8_modules


def snapshot_unselected(model: nn.Module, selected: list[str]) -> dict[str, torch.Tensor]:
    """Copies of every unselected Linear's weight, taken just before quantization (to prove it is untouched)."""
    chosen = set(selected)
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n not in chosen}


def check_hybrid(model: nn.Module, selected: list[str], snapshot: dict[str, torch.Tensor] | None,
                 backend: str, quantized: bool, sample_len: int = 64, mode: str | None = None,
                 require_weight_kernel: bool = False, eight_bit: list[str] | None = None) -> dict:
    """Attention kernel (profiled forward), INT8 layers == selection, unselected Linears untouched, and with `mode`
    ("w8a8", "w8", "fp8" or "float") the matmuls that ran: a w8a8 model that ran no integer matmul fails.
    `eight_bit`: for FP8 variants, the names of the FP8 (or FP8 fake-quantized) modules, checked == selection
    instead of the INT8 ones (which must then be none).

    Returns a dict with `ok` and the evidence; never raises (a failed check is a result).
    """
    result: dict = {"backend": backend}
    try:
        ev = verify_backend(model, backend, random_input_ids(model, sample_len), strict=False)
        result.update(attention_ok=ev.ok, attention=str(ev).splitlines()[0], attention_families=ev.families)
    except Exception as err:  # noqa: BLE001
        result.update(attention_ok=False, attention=error_text(err))
    if mode is not None:
        try:
            ids = random_input_ids(model, sample_len)
            mm = matmul_evidence(model, lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), mode,
                                 require_weight_kernel=require_weight_kernel)
            result.update(matmul_ok=mm.ok, matmul=str(mm), matmul_evidence=mm.as_dict())
        except Exception as err:  # noqa: BLE001
            result.update(matmul_ok=False, matmul=error_text(err))
    int8 = int8_modules(model)
    result["int8_layers"] = len(int8)
    if eight_bit is None:
        result["int8_matches_selection"] = (int8 == selected) if quantized else (int8 == [])
    else:
        result["fp8_layers"] = len(eight_bit)
        result["int8_matches_selection"] = int8 == []
        result["fp8_matches_selection"] = eight_bit == selected
    changed, not_plain = [], []
    if snapshot is not None:
        modules = dict(model.named_modules())
        for name, before in snapshot.items():
            w = getattr(modules.get(name), "weight", None)
            if type(w) is not nn.Parameter or type(w.data) is not torch.Tensor:
                not_plain.append(name)
            elif w.dtype != before.dtype or not torch.equal(w.detach(), before):
                changed.append(name)
    result.update(unselected_checked=len(snapshot or {}), unselected_changed=changed[:5],
                  unselected_not_plain=not_plain[:5],
                  unselected_untouched=snapshot is not None and not changed and not not_plain)
    emb = getattr(model, "get_input_embeddings", lambda: None)()
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if emb is not None and head is not None and getattr(model.config, "tie_word_embeddings", False):
        result["head_still_tied"] = head.weight is emb.weight
    result["ok"] = bool(result.get("attention_ok") and result["int8_matches_selection"]
                        and result.get("fp8_matches_selection", True)
                        and (snapshot is None or result["unselected_untouched"])
                        and result.get("matmul_ok", True))
    return result
