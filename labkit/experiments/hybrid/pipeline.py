"""The selective hybrid: attention on FlashAttention-2 in bf16, the chosen Linear layers in 8-bit (torchao).

One model, one device. Every variant (labkit.experiments.hybrid.config.VARIANTS: float, PTQ of the untouched or the
fine-tuned model, QAT; INT8 weight-only or w8a8, FP8 row-wise, INT8 on labkit's kernel) starts from the same float
master copy and gets the same recipe. Fine-tuning runs on fp32 master weights (bf16 autocast when the model runs in
bf16: pure-bf16 AdamW would round small updates away) on WikiText-2 validation; perplexity is measured on WikiText-2
test by the fastest path that keeps a variant's numbers (labkit.experiments.hybrid.evaluate). FP8 kernels need a GPU
of compute capability >= 8.9: elsewhere FP8 variants are evaluated by fake quantization and their rows say so. Speed
is timed once per kind of kernels; the others name it in `speed_of`. After conversion each variant is checked
(`check_hybrid`): the attention kernel that ran (profiled), integer matmuls where a variant claims them
(labkit.quant.kernel_evidence), exactly the selected layers 8-bit, every unselected Linear untouched.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from labkit.attention.backends import set_backend
from labkit.attention.verify import verify_backend
from labkit.env import default_device
from labkit.experiments.hybrid.config import VARIANTS, HybridConfig, Variant, attention_backend, missing_parents
from labkit.experiments.hybrid.evaluate import resolve_ppl_path, variant_perplexity
from labkit.lm.finetune import fine_tune
from labkit.lm.perplexity import wikitext_blocks
from labkit.measure.decode import decode_tokens_per_s
from labkit.measure.memory import error_text, is_memory_error, release_memory
from labkit.measure.prefill import prefill_point, random_input_ids
from labkit.models import load_causal_lm, parameter_count
from labkit.quant.fp8 import (
    convert_fp8_qat,
    fp8_modules,
    fp8_unavailable_reason,
    prepare_fp8_qat,
    quantize_fp8_rowwise,
)
from labkit.quant.kernel_evidence import matmul_evidence
from labkit.quant.ptq import quantize_dynamic_int8, quantize_weight_only_int8
from labkit.quant.qat import convert_qat, prepare_qat
from labkit.quant.report import fake_quantized_modules, int8_modules
from labkit.quant.selection import LayerSelection, resolve_layers, selection_filter
from labkit.quant.size import weight_bytes


# ---------------------------------------------------------------------------------------------------------------
# checks after conversion


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


# ---------------------------------------------------------------------------------------------------------------
# speed, and the run

def prefill_entry(point) -> dict:
    """One prefill length of a variant, as stored in a row's `prefill` list (structured: one dict per length)."""
    activation = (point.peak_gib - point.baseline_gib
                  if point.peak_gib is not None and point.baseline_gib is not None else None)
    return {"seq_len": point.seq_len, "latency_ms": point.latency_ms, "p10_ms": point.p10_ms, "p90_ms": point.p90_ms,
            "repeats": point.repeats, "peak_gib": point.peak_gib, "oom": point.oom,
            "activation_gib": activation, "memory_kind": point.memory_kind, "error": point.error}


def measure_speed(model: nn.Module, prefill_lengths, *, prefill_warmup: int | None = None,
                  prefill_repeat: int | None = None, decode_prompt: int = 128, decode_tokens: int = 64,
                  decode_repeat: int = 3) -> dict:
    """Prefill latency and peak memory per length (`prefill`: one entry per length; OOM is a data point) and
    decode tokens/s. Never raises: failures are recorded in the returned dict."""
    out: dict = {"prefill": [prefill_entry(prefill_point(model, n, warmup=prefill_warmup, repeat=prefill_repeat))
                             for n in prefill_lengths]}
    try:
        out.update(decode_tokens_per_s(model, decode_prompt, decode_tokens, repeat=decode_repeat))
    except Exception as err:  # noqa: BLE001 - recorded, never a crash
        out.update({"decode_tok_s": None, "decode_error": error_text(err), "decode_oom": is_memory_error(err)})
        release_memory(next(model.parameters()).device)
    return out


@dataclass
class HybridResult:
    """Rows (one per variant), checks, fine-tune losses, and the settings of one run."""

    config: dict
    selected: list[str]
    rows: list[dict] = field(default_factory=list)
    checks: dict[str, dict] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def table(self, digits: int | None = None):
        """The rows as a DataFrame indexed by variant (`digits=2`: floats rounded for reading)."""
        import pandas as pd

        table = pd.DataFrame(self.rows).set_index("variant")
        return table if digits is None else table.round(digits)



def _fp8_numerics(device: torch.device) -> str:
    """"real" where FP8 kernels run (NVIDIA GPU, compute capability >= 8.9), else "fake" (fake quantization)."""
    return "real" if fp8_unavailable_reason(device) is None else "fake"


def quantize_mode(model: nn.Module, mode: str, layers: LayerSelection = None) -> list[str]:
    """Put the `layers` selection of `model` in 8-bit `mode`, in place: "w8" / "w8a8" torchao INT8 weight-only /
    dynamic activations, "w8-labkit" labkit's INT8 kernel Linear, "fp8" FP8 row-wise (refused, with the reason,
    below compute capability 8.9). Returns the names that really are 8-bit afterwards."""
    if mode in ("w8", "w8a8"):
        (quantize_dynamic_int8 if mode == "w8a8" else quantize_weight_only_int8)(model, layers)
    elif mode == "w8-labkit":
        from torchao.quantization import quantize_

        from labkit.quant.int8_linear import LabkitInt8WeightOnlyConfig

        quantize_(model, LabkitInt8WeightOnlyConfig(), filter_fn=selection_filter(model, layers))
    elif mode == "fp8":
        quantize_fp8_rowwise(model, layers)
        return fp8_modules(model)
    else:
        raise ValueError(f"unknown 8-bit mode {mode!r}; use w8, w8a8, w8-labkit or fp8")
    return int8_modules(model)


def _quantize(model: nn.Module, v: Variant, selected: list[str], device: torch.device, info: dict) -> None:
    """PTQ, QAT convert, or labkit's kernel Linear on the selected layers of `model` (in place)."""
    if v.mode == "fp8":
        info["fp8_numerics"] = _fp8_numerics(device)
        if info["fp8_numerics"] == "real":
            (convert_fp8_qat(model) if v.method == "qat" else quantize_fp8_rowwise(model, selected))
        elif v.method == "ptq":
            prepare_fp8_qat(model, selected)  # the same FP8 rounding, in float arithmetic (no FP8 kernels here)
    elif v.method == "qat" and v.mode != "w8-labkit":
        convert_qat(model)
    elif v.method is not None:
        quantize_mode(model, v.mode, selected)


def make_variant(master: nn.Module, variant: str | Variant, cfg: HybridConfig, selected: list[str],
                 train_blocks: torch.Tensor | None = None, progress: bool = True) -> tuple[nn.Module, dict]:
    """Build one variant from `master`; returns (model on cfg.device, info with losses and checks).

    `master` is the float master copy, or for a variant with a `parent` that variant's model: the already
    fine-tuned base-ft model for ft-ptq-*, the converted qat-w8 model for qat-w8-labkit (not trained again)."""
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    device, dtype = torch.device(cfg.device), cfg.torch_dtype()
    info: dict = {}
    train_here = v.train and v.parent is None
    if v.from_variant is not None:  # a converted model: its 8-bit tensors keep their dtypes
        model = copy.deepcopy(master).to(device=device).eval()
    else:
        model = copy.deepcopy(master).to(device=device, dtype=torch.float32 if train_here else dtype).eval()
    if v.method == "qat" and v.parent is None:
        if v.mode == "fp8":
            prepare_fp8_qat(model, selected)
        else:
            prepare_qat(model, selected, activations=v.activations)
        info["fake_quantized_match"] = fake_quantized_modules(model) == selected
    if train_here:
        if train_blocks is None:
            raise ValueError(f"variant {v.name!r} fine-tunes: pass train_blocks (WikiText-2 validation)")
        t0 = time.perf_counter()
        info["losses"] = fine_tune(
            model, train_blocks, steps=cfg.train_steps, batch_size=cfg.train_batch, lr=cfg.lr,
            warmup_frac=cfg.warmup_frac, seed=cfg.seed, freeze_embeddings=cfg.freeze_embeddings,
            autocast_dtype=dtype if dtype != torch.float32 else None, progress=progress, desc=f"fine-tune {v.name}")
        info["train_s"] = time.perf_counter() - t0
        model.to(dtype)
    snapshot = snapshot_unselected(model, selected)
    if v.method is not None:
        _quantize(model, v, selected, device, info)
    backend = attention_backend(device)
    set_backend(model, backend)
    mode, eight_bit = (v.mode if v.method is not None else "float"), None
    if v.mode == "fp8":  # real: FP8 tensors run _scaled_mm; fake: fake-quantized Linears run float matmuls
        real = info["fp8_numerics"] == "real"
        mode, eight_bit = ("fp8" if real else "float"), (fp8_modules(model) if real else fake_quantized_modules(model))
    elif v.mode == "w8-labkit":
        mode = "w8"
    info["checks"] = check_hybrid(model, selected, snapshot, backend, quantized=v.method is not None, mode=mode,
                                  eight_bit=eight_bit)
    if "fp8_numerics" in info:
        info["checks"]["fp8_numerics"] = info["fp8_numerics"]
    del snapshot
    return model, info


def _speed_kind(v: Variant, info: dict) -> str:
    """Variants of one kind run the same kernels on the same shapes: their speed is measured once."""
    if v.method is None:
        return "float"
    return f"{v.mode}-{info['fp8_numerics']}" if v.mode == "fp8" else v.mode


def run_hybrid(
    cfg: HybridConfig,
    model: nn.Module | None = None,
    tokenizer=None,
    *,
    test_blocks: torch.Tensor | None = None,
    train_blocks: torch.Tensor | None = None,
    on_row: Callable[[dict, HybridResult], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    strict: bool = False,
) -> HybridResult:
    """Build, check and measure every variant of `cfg.variants`, one at a time on `cfg.device`.

    `model`/`tokenizer`: the float model to start from (left unchanged; default: load `cfg.model`).
    `test_blocks`/`train_blocks`: token ids [n, seq_len] to use instead of WikiText-2 test / validation.
    `on_row(row, result)` is called after each variant (e.g. to save results incrementally).
    A variant that fails is recorded with its error and the run goes on (`strict=True` re-raises instead).
    """
    say = log or (lambda s: None)
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    missing = missing_parents(cfg.variants)
    if missing:
        v, parent = missing[0]
        raise ValueError(f"variant {v!r} starts from {parent!r}'s model: add {parent!r} to the variants")
    resolve_ppl_path(cfg.ppl_path, cfg.device or "cpu")  # refuses a bad ppl_path before any work
    cfg = replace(cfg, variants=tuple(v for v in VARIANTS if v in cfg.variants))  # parents before their children
    if cfg.device is None:
        cfg = replace(cfg, device=str(default_device()))
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("cfg.device is cuda but no CUDA GPU is visible; use device='cpu'")
    if model is None:
        say(f"loading {cfg.model} ...")
        model, tokenizer = load_causal_lm(cfg.model, dtype=torch.float32, device="cpu")
    elif tokenizer is None and (test_blocks is None or train_blocks is None):
        raise ValueError("pass the tokenizer with the model (run_hybrid(cfg, model, tokenizer)), "
                         "or both test_blocks and train_blocks")
    on_cpu_fp32 = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    # variants are deep copies of `master`, which is never modified: no need for a second copy of a CPU fp32 model
    master = model if on_cpu_fp32 else copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    selected = resolve_layers(master, cfg.layers)
    total = parameter_count(master)
    sel_params = sum(p.numel() for n, m in master.named_modules() if n in set(selected) for p in m.parameters())
    result = HybridResult(config=cfg.as_dict(), selected=selected, meta={
        "model": cfg.model, "device": str(device), "dtype": cfg.dtype, "attention": attention_backend(device),
        "attention_note": ("FlashAttention-2 (SDPA forced to the flash kernel)" if device.type == "cuda" else
                           "PyTorch SDPA on the CPU: FlashAttention-2 needs an NVIDIA GPU"),
        "selected_layers": len(selected), "selected_param_share": sel_params / total, "params": total,
    })
    say(f"{len(selected)} layers selected ({sel_params / total:.1%} of {total / 1e6:.1f} M parameters); "
        f"attention: {result.meta['attention_note']}; dtype {cfg.dtype} on {device}")
    if test_blocks is None:
        test_blocks = wikitext_blocks(tokenizer, "test", cfg.seq_len, cfg.eval_blocks, cfg.data_dir)
    needs_training = any(VARIANTS[v].train and VARIANTS[v].parent is None for v in cfg.variants)
    if train_blocks is None and needs_training:
        train_blocks = wikitext_blocks(tokenizer, "validation", cfg.seq_len, None, cfg.data_dir)
    result.meta.update(test_tokens=int(test_blocks.numel()),
                       train_tokens=int(cfg.train_steps * cfg.train_batch * cfg.seq_len) if needs_training else 0)

    parents = {VARIANTS[v].parent for v in cfg.variants} - {None}
    kept: dict[str, nn.Module] = {}  # models other variants start from (base-ft on the CPU, converted ones on device)
    speed_of: dict[str, str] = {}    # kind of kernels -> the variant whose speed was measured
    for name in cfg.variants:
        v = VARIANTS[name]
        t0 = time.perf_counter()
        row: dict = {"variant": name, "label": v.label, "method": v.method or "float", "mode": v.mode,
                     "fine_tuned": v.train, "dtype": cfg.dtype, "attention": attention_backend(device),
                     "seed": cfg.seed}
        model_v = None
        try:
            if v.parent is not None and v.parent not in kept:
                raise RuntimeError(f"{v.parent} failed, so there is no model of it for {name} to start from")
            model_v, info = make_variant(kept.get(v.parent, master), v, cfg, selected, train_blocks, progress)
            if name in parents:
                kept[name] = copy.deepcopy(model_v).to("cpu") if VARIANTS[name].method is None else model_v
            result.checks[name] = info["checks"] | ({"fake_quantized_match": info["fake_quantized_match"]}
                                                   if "fake_quantized_match" in info else {})
            if "losses" in info:
                result.losses[name] = info["losses"]
                row["final_train_loss"] = sum(info["losses"][-5:]) / len(info["losses"][-5:])
                row["train_s"] = info["train_s"]
            if "fp8_numerics" in info:
                row["fp8_numerics"] = info["fp8_numerics"]
            row["ppl"] = variant_perplexity(
                model_v, v.mode if v.method is not None else None, test_blocks, cfg.eval_batch, row,
                ppl_path=cfg.ppl_path, reference=kept.get(v.from_variant), fp8_numerics=info.get("fp8_numerics"),
                progress=progress)
            row["size_mb"] = weight_bytes(model_v) / 1e6
            row["int8_layers"] = info["checks"]["int8_layers"]
            if "fp8_layers" in info["checks"]:
                row["fp8_layers"] = info["checks"]["fp8_layers"]
            row["checks_ok"] = info["checks"]["ok"]
            kind = _speed_kind(v, info)
            if info.get("fp8_numerics") == "fake":  # float arithmetic standing in for FP8: not FP8's size or speed
                row["size_note"] = ("fake-quantized: float weights in memory (real FP8 row-wise: 1 byte per weight "
                                    "+ scales)")
                if cfg.speed:
                    row["speed_note"] = "not timed: fake quantization (no FP8 kernels here) says nothing of FP8 speed"
            elif cfg.speed and cfg.speed_once and kind in speed_of:
                row["speed_of"] = speed_of[kind]  # same kernels on the same shapes: timed once, on that variant
            elif cfg.speed:
                tokens = (min(cfg.decode_tokens, cfg.w8a8_decode_tokens) if v.mode == "w8a8" and cfg.w8a8_decode_tokens
                          else cfg.decode_tokens)
                row.update(measure_speed(model_v, cfg.prefill_lengths, prefill_warmup=cfg.prefill_warmup,
                                         prefill_repeat=cfg.prefill_repeat, decode_prompt=cfg.decode_prompt,
                                         decode_tokens=tokens, decode_repeat=cfg.decode_repeat))
                speed_of[kind] = name
        except Exception as err:  # noqa: BLE001 - one failed variant must not lose the others
            row.update(error=error_text(err), oom=is_memory_error(err))
            if strict:
                raise
        finally:
            del model_v
            for parent in [p for p in kept if not any(VARIANTS[c].parent == p for c in cfg.variants[
                    cfg.variants.index(name) + 1:])]:
                del kept[parent]  # no later variant starts from it
            release_memory(device)
        row["seconds"] = time.perf_counter() - t0
        if name == "base-ft":
            row["fine_tune"] = {"steps": cfg.train_steps, "batch": cfg.train_batch, "seq_len": cfg.seq_len,
                                "lr": cfg.lr, "seed": cfg.seed, "data": "WikiText-2 validation"}
        result.rows.append(row)
        say(_row_line(row))
        if on_row is not None:
            on_row(row, result)
    return result


def _row_line(row: dict) -> str:
    if "error" in row:
        return f"  {row['variant']:<9} FAILED: {row['error']}"
    lat = ", ".join(f"prefill {p['seq_len']}: {p['latency_ms']:.1f} ms" for p in row.get("prefill", [])
                    if p["latency_ms"] is not None)
    dec = f"{row['decode_tok_s']:.1f} tok/s" if row.get("decode_tok_s") else \
        ("decode failed" if "decode_tok_s" in row else
         (f"as {row['speed_of']} (same kernels)" if row.get("speed_of") else "not timed"))
    return (f"  {row['variant']:<9} ppl {row['ppl']:.3f}  size {row['size_mb']:.1f} MB  {lat}  decode {dec}  "
            f"checks {'ok' if row.get('checks_ok') else 'FAILED'}  ({row['seconds']:.0f} s)")
