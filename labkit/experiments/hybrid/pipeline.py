"""The selective hybrid: attention on FlashAttention-2 in bf16, the chosen Linear layers in INT8 (torchao).

One model, one device. Every variant starts from the same float master copy and gets the same recipe:

    base         the float model, untouched                       (bf16; attention fa2 on a GPU, sdpa on a CPU)
    base-ft      the float model after the fine-tune QAT also gets (same data, steps, learning rate, seed)
    ptq-w8       PTQ of the untouched model: selected layers INT8 weight-only
    ptq-w8a8     PTQ of the untouched model: selected layers INT8 weights + dynamic per-token INT8 activations
    ft-ptq-w8    PTQ of the base-ft model (fine-tune first, then PTQ: the stricter baseline for QAT)
    ft-ptq-w8a8  the same with dynamic INT8 activations
    qat-w8       QAT: fake quantizers (weights) on the selection only, fine-tune, convert to INT8 weight-only
    qat-w8a8     QAT: fake quantizers (weights + activations), fine-tune, convert to INT8 dynamic activations

Fine-tuning runs on fp32 master weights (bf16 autocast when the model runs in bf16: pure-bf16 AdamW would
round small updates away) on WikiText-2 *validation*; perplexity is measured on WikiText-2 *test*.
After conversion each variant is checked: attention still runs the expected kernel (profiled), exactly the
selected layers are INT8, and every unselected Linear is untouched (bitwise equal, still a plain Parameter).

`shape_benchmark` does the speed-and-memory half on a real shape with random weights (llama-2-7b): bf16 + FA2
against INT8 feed-forward + FA2. Random weights have the real speed and memory; their outputs mean nothing.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from labkit.quant.selection import LayerSelection, resolve_layers

FEED_FORWARD = r"\.mlp\.(gate|up|down)_proj$"
"""The source article's strategy: the feed-forward (MLP) Linear layers of every block."""

GIB = 2**30


@dataclass(frozen=True)
class Variant:
    """How one variant is made: quantization method (None/ptq/qat), INT8 mode (w8 / w8a8), fine-tuned or not,
    and whether it starts from the base-ft model (fine-tuned once, reused) instead of the untouched one."""

    name: str
    label: str
    method: str | None = None
    mode: str | None = None
    train: bool = False
    from_ft: bool = False

    @property
    def activations(self) -> str | None:
        return "int8-dynamic" if self.mode == "w8a8" else None


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("base", "float, untouched"),
    Variant("base-ft", "float, fine-tuned like QAT", train=True),
    Variant("ptq-w8", "PTQ INT8 weight-only", "ptq", "w8"),
    Variant("ptq-w8a8", "PTQ INT8 dynamic activations", "ptq", "w8a8"),
    Variant("ft-ptq-w8", "fine-tune, then PTQ INT8 weight-only", "ptq", "w8", train=True, from_ft=True),
    Variant("ft-ptq-w8a8", "fine-tune, then PTQ INT8 dynamic activations", "ptq", "w8a8", train=True, from_ft=True),
    Variant("qat-w8", "QAT -> INT8 weight-only", "qat", "w8", train=True),
    Variant("qat-w8a8", "QAT -> INT8 dynamic activations", "qat", "w8a8", train=True),
)}


def attention_backend(device: torch.device | str) -> str:
    """FlashAttention-2 ("fa2") on an NVIDIA GPU; on a CPU PyTorch's SDPA (FA2 has no CPU kernel)."""
    return "fa2" if torch.device(device).type == "cuda" else "sdpa"


# ---------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class HybridConfig:
    """Everything one hybrid run depends on. `for_profile` gives the quick and full settings."""

    model: str = "smollm2-135m"
    layers: LayerSelection = FEED_FORWARD
    device: str | None = None
    dtype: str = "bfloat16"
    variants: tuple[str, ...] = tuple(VARIANTS)
    seq_len: int = 1024               # tokens per block, for perplexity and fine-tuning
    eval_blocks: int | None = None    # test blocks for perplexity (None: the whole split)
    eval_batch: int = 8
    train_steps: int = 120
    train_batch: int = 4
    lr: float = 2e-5
    warmup_frac: float = 0.1
    freeze_embeddings: bool = True    # tied models: the head is frozen with it (same tensor)
    prefill_lengths: tuple[int, ...] = (2048, 8192)
    prefill_warmup: int | None = None  # None: the sweep's defaults by length
    prefill_repeat: int | None = None
    decode_prompt: int = 128
    decode_tokens: int = 64
    decode_repeat: int = 3
    seed: int = 0
    data_dir: str | None = None

    @classmethod
    def for_profile(cls, profile: str | None = None, device: torch.device | str | None = None,
                    **overrides) -> HybridConfig:
        """quick: a CPU smoke run of every step (2 minutes on 2 idle cores; its numbers only show the mechanics);
        full on a GPU: the real experiment; full on a CPU: a reduced but real run (tens of minutes)."""
        from labkit.env import default_device, get_profile

        profile = profile or get_profile()
        device = torch.device(device) if device is not None else default_device()
        if profile == "quick":
            cfg = cls(variants=("base", "base-ft", "ptq-w8a8", "ft-ptq-w8a8", "qat-w8a8"), seq_len=128, eval_blocks=4,
                      eval_batch=4, train_steps=4, train_batch=2, lr=5e-5, prefill_lengths=(64, 256),
                      prefill_warmup=1, prefill_repeat=1, decode_prompt=16, decode_tokens=4, decode_repeat=1)
        elif profile == "full" and device.type != "cuda":
            cfg = cls(variants=("base", "base-ft", "ptq-w8", "ptq-w8a8", "ft-ptq-w8a8", "qat-w8a8"), seq_len=256,
                      eval_blocks=24, eval_batch=4, train_steps=16, train_batch=2, lr=3e-5, prefill_lengths=(512, 2048),
                      prefill_warmup=1, prefill_repeat=2, decode_prompt=64, decode_tokens=8, decode_repeat=2)
        elif profile == "full":
            cfg = cls()
        else:
            raise ValueError(f"unknown profile {profile!r}; use 'quick' or 'full'")
        cfg.device = str(device)
        return replace(cfg, **overrides)

    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def as_dict(self) -> dict:
        d = asdict(self)
        if callable(self.layers):
            d["layers"] = f"<predicate {getattr(self.layers, '__name__', 'callable')}>"
        return d


# ---------------------------------------------------------------------------------------------------------------
# data, perplexity, fine-tuning


def wikitext_blocks(tokenizer, split: str, seq_len: int, max_blocks: int | None = None,
                    data_dir=None) -> torch.Tensor:
    """WikiText-2 `split` as [n_blocks, seq_len] token ids (validation trains, test measures).

    Through labkit.data; on a machine without the `datasets` package (a bare GPU box) the same file is read
    directly from the data folder (`data_dir` or $LABKIT_DATA_DIR), which gives the same tokens."""
    from labkit.data import lm_token_blocks, load_wikitext2

    try:
        texts = load_wikitext2(split, data_dir=data_dir)
    except ImportError as err:  # `datasets` is not installed
        return _wikitext_blocks_without_datasets(tokenizer, split, seq_len, max_blocks, data_dir, err)
    return lm_token_blocks(texts, tokenizer, seq_len, max_blocks)


def _wikitext_blocks_without_datasets(tokenizer, split, seq_len, max_blocks, data_dir, why) -> torch.Tensor:
    import os
    from pathlib import Path

    files = {"validation": "wiki.valid.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
    root = data_dir or os.environ.get("LABKIT_DATA_DIR")
    if split not in files or not root or not (Path(root) / "wikitext2" / files[split]).is_file():
        raise ImportError(f"labkit.data cannot be imported ({why}) and no WikiText-2 file was found for split "
                          f"{split!r}: set LABKIT_DATA_DIR to a folder with wikitext2/{files.get(split, '?')}") from why
    print(f"note: labkit.data unavailable ({why}); reading {Path(root) / 'wikitext2' / files[split]} directly")
    with open(Path(root) / "wikitext2" / files[split], encoding="utf-8") as fh:
        text = "".join(fh.readlines())  # what labkit.data.lm_token_blocks concatenates
    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    n = len(ids) // seq_len if max_blocks is None else min(len(ids) // seq_len, max_blocks)
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8, progress: bool = False) -> float:
    """exp(mean next-token NLL) over every predicted token of `blocks` ([n, seq_len] token ids)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for i in tqdm(range(0, len(blocks), batch_size), desc="perplexity", disable=not progress, leave=False):
        ids = blocks[i:i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
        del logits
    return math.exp(nll / count)


def fine_tune(
    model: nn.Module,
    blocks: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_frac: float = 0.1,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    freeze_embeddings: bool = True,
    progress: bool = True,
    desc: str = "fine-tune",
) -> list[float]:
    """Causal-LM fine-tune (AdamW, linear warm-up then cosine decay, grad-norm clip 1.0); returns the losses.

    The batch order depends only on `seed`, so two models fine-tuned with the same arguments see the same
    data in the same order: this is what makes the float baseline and QAT comparable.
    """
    from tqdm.auto import tqdm

    if steps < 1:
        return []
    device = next(model.parameters()).device
    if freeze_embeddings:
        for mod in model.modules():
            if isinstance(mod, nn.Embedding):
                mod.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, int(steps * warmup_frac))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    order = torch.cat([torch.randperm(len(blocks), generator=gen) for _ in range(math.ceil(need / len(blocks)))])
    losses: list[float] = []
    model.train()
    try:
        bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
        for step in bar:
            ids = blocks[order[step * batch_size:(step + 1) * batch_size]].to(device)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach().item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        model.eval()
        opt.zero_grad(set_to_none=True)
    return losses


# ---------------------------------------------------------------------------------------------------------------
# speed and memory


def decode_tokens_per_s(model: nn.Module, prompt_len: int = 128, new_tokens: int = 64, repeat: int = 3,
                        seed: int = 0) -> dict:
    """Greedy decoding with a KV cache after a `prompt_len` random prompt: tokens per second of the decode
    steps only (prefill excluded), median of `repeat` runs after one full warm-up run (the first variant
    measured must not pay for one-off kernel set-up that the later ones reuse)."""
    import statistics

    from labkit.bench.sweep import random_input_ids

    device = next(model.parameters()).device
    ids = random_input_ids(model, prompt_len, 1, seed)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(n: int) -> float:
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync()
        return n / (time.perf_counter() - t0)

    with torch.inference_mode():
        run(new_tokens)
        rates = [run(new_tokens) for _ in range(repeat)]
    return {"decode_tok_s": statistics.median(rates), "decode_prompt": prompt_len, "decode_tokens": new_tokens}


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"


def release_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and return cached CUDA blocks, so the next model's peak memory is its own."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def measure_speed(model: nn.Module, prefill_lengths, *, prefill_warmup: int | None = None,
                  prefill_repeat: int | None = None, decode_prompt: int = 128, decode_tokens: int = 64,
                  decode_repeat: int = 3) -> dict:
    """Prefill latency and peak memory per length (labkit.bench.sweep.measure_prefill: OOM is a data point)
    and decode tokens/s. Never raises: failures are recorded in the returned dict."""
    from labkit.bench.sweep import is_memory_error, measure_prefill

    out: dict = {}
    for n in prefill_lengths:
        p = measure_prefill(model, n, warmup=prefill_warmup, repeat=prefill_repeat)
        out[f"prefill_ms_{n}"] = p.latency_ms
        out[f"peak_gib_{n}"] = p.peak_gib
        out[f"oom_{n}"] = p.oom
        out["memory_kind"] = p.memory_kind
        if p.error:
            out[f"error_{n}"] = p.error
        if p.baseline_gib is not None and p.peak_gib is not None:
            out[f"activation_gib_{n}"] = p.peak_gib - p.baseline_gib
    try:
        out.update(decode_tokens_per_s(model, decode_prompt, decode_tokens, repeat=decode_repeat))
    except Exception as err:  # noqa: BLE001 - recorded, never a crash
        out.update({"decode_tok_s": None, "decode_error": _error_text(err), "decode_oom": is_memory_error(err)})
        release_memory(next(model.parameters()).device)
    return out


# ---------------------------------------------------------------------------------------------------------------
# checks after conversion


def snapshot_unselected(model: nn.Module, selected: list[str]) -> dict[str, torch.Tensor]:
    """Copies of every unselected Linear's weight, taken just before quantization (to prove it is untouched)."""
    chosen = set(selected)
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n not in chosen}


def check_hybrid(model: nn.Module, selected: list[str], snapshot: dict[str, torch.Tensor] | None,
                 backend: str, quantized: bool, sample_len: int = 64) -> dict:
    """Attention kernel (profiled forward), INT8 layers == selection, unselected Linears untouched.

    Returns a dict with `ok` and the evidence; never raises (a failed check is a result).
    """
    from labkit.attention import verify_backend
    from labkit.bench.sweep import random_input_ids
    from labkit.quant.report import int8_modules

    result: dict = {"backend": backend}
    try:
        ev = verify_backend(model, backend, random_input_ids(model, sample_len), strict=False)
        result.update(attention_ok=ev.ok, attention=str(ev).splitlines()[0], attention_families=ev.families)
    except Exception as err:  # noqa: BLE001
        result.update(attention_ok=False, attention=_error_text(err))
    int8 = int8_modules(model)
    result["int8_layers"] = len(int8)
    result["int8_matches_selection"] = (int8 == selected) if quantized else (int8 == [])
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
                        and (snapshot is None or result["unselected_untouched"]))
    return result


# ---------------------------------------------------------------------------------------------------------------
# the pipeline


@dataclass
class HybridResult:
    """Rows (one per variant), checks, fine-tune losses, and the settings of one run."""

    config: dict
    selected: list[str]
    rows: list[dict] = field(default_factory=list)
    checks: dict[str, dict] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def table(self):
        """The rows as a DataFrame indexed by variant."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("variant")

    def as_dict(self) -> dict:
        return asdict(self)


def make_variant(master: nn.Module, variant: str | Variant, cfg: HybridConfig, selected: list[str],
                 train_blocks: torch.Tensor | None = None, progress: bool = True) -> tuple[nn.Module, dict]:
    """Build one variant from `master`; returns (model on cfg.device, info with losses and checks).

    `master` is the float master copy, or for `from_ft` variants the already fine-tuned base-ft model
    (they are not fine-tuned again)."""
    from labkit.attention import set_backend
    from labkit.quant.ptq import quantize_dynamic_int8, quantize_weight_only_int8
    from labkit.quant.qat import convert_qat, prepare_qat
    from labkit.quant.report import fake_quantized_modules

    v = VARIANTS[variant] if isinstance(variant, str) else variant
    device, dtype = torch.device(cfg.device), cfg.torch_dtype()
    info: dict = {}
    train_here = v.train and not v.from_ft
    model = copy.deepcopy(master).to(device=device, dtype=torch.float32 if train_here else dtype).eval()
    if v.method == "qat":
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
    if v.method == "qat":
        convert_qat(model)
    elif v.method == "ptq":
        (quantize_dynamic_int8 if v.mode == "w8a8" else quantize_weight_only_int8)(model, selected)
    backend = attention_backend(device)
    set_backend(model, backend)
    info["checks"] = check_hybrid(model, selected, snapshot, backend, quantized=v.method is not None)
    del snapshot
    return model, info


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
    from labkit.models import load_causal_lm, parameter_count
    from labkit.quant.size import weight_bytes

    say = log or (lambda s: None)
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if any(VARIANTS[v].from_ft for v in cfg.variants) and "base-ft" not in cfg.variants:
        raise ValueError("ft-ptq-* variants quantize the fine-tuned base-ft model: add 'base-ft' to the variants")
    cfg = replace(cfg, variants=tuple(v for v in VARIANTS if v in cfg.variants))  # base-ft before ft-ptq-*
    if cfg.device is None:
        from labkit.env import default_device

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
    needs_training = any(VARIANTS[v].train and not VARIANTS[v].from_ft for v in cfg.variants)
    if train_blocks is None and needs_training:
        train_blocks = wikitext_blocks(tokenizer, "validation", cfg.seq_len, None, cfg.data_dir)
    result.meta.update(test_tokens=int(test_blocks.numel()),
                       train_tokens=int(cfg.train_steps * cfg.train_batch * cfg.seq_len) if needs_training else 0)

    keep_ft = any(VARIANTS[v].from_ft for v in cfg.variants)
    ft_model: nn.Module | None = None  # base-ft, kept on the CPU for the ft-ptq-* variants
    for name in cfg.variants:
        v = VARIANTS[name]
        t0 = time.perf_counter()
        row: dict = {"variant": name, "label": v.label, "method": v.method or "float", "mode": v.mode,
                     "fine_tuned": v.train, "dtype": cfg.dtype, "attention": attention_backend(device)}
        model_v = None
        try:
            if v.from_ft and ft_model is None:
                raise RuntimeError("base-ft failed, so there is no fine-tuned model to quantize")
            model_v, info = make_variant(ft_model if v.from_ft else master, v, cfg, selected, train_blocks, progress)
            if name == "base-ft" and keep_ft:
                ft_model = copy.deepcopy(model_v).to("cpu")
            result.checks[name] = info["checks"] | ({"fake_quantized_match": info["fake_quantized_match"]}
                                                   if "fake_quantized_match" in info else {})
            if "losses" in info:
                result.losses[name] = info["losses"]
                row["final_train_loss"] = sum(info["losses"][-5:]) / len(info["losses"][-5:])
                row["train_s"] = info["train_s"]
            row["ppl"] = perplexity(model_v, test_blocks, cfg.eval_batch, progress=progress)
            row["size_mb"] = weight_bytes(model_v) / 1e6
            row["int8_layers"] = info["checks"]["int8_layers"]
            row["checks_ok"] = info["checks"]["ok"]
            row.update(measure_speed(model_v, cfg.prefill_lengths, prefill_warmup=cfg.prefill_warmup,
                                     prefill_repeat=cfg.prefill_repeat, decode_prompt=cfg.decode_prompt,
                                     decode_tokens=cfg.decode_tokens, decode_repeat=cfg.decode_repeat))
        except Exception as err:  # noqa: BLE001 - one failed variant must not lose the others
            from labkit.bench.sweep import is_memory_error

            row.update(error=_error_text(err), oom=is_memory_error(err))
            if strict:
                raise
        finally:
            del model_v
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
    lat = ", ".join(f"prefill {k.split('_')[-1]}: {v:.1f} ms" for k, v in row.items()
                    if k.startswith("prefill_ms_") and v is not None)
    dec = f"{row['decode_tok_s']:.1f} tok/s" if row.get("decode_tok_s") else "decode failed"
    return (f"  {row['variant']:<9} ppl {row['ppl']:.3f}  size {row['size_mb']:.1f} MB  {lat}  decode {dec}  "
            f"checks {'ok' if row.get('checks_ok') else 'FAILED'}  ({row['seconds']:.0f} s)")


# ---------------------------------------------------------------------------------------------------------------
# the big shape: speed and memory only


SHAPE_MODES = ("bf16", "w8", "w8a8")


def shape_benchmark(
    shape: str = "llama-2-7b",
    lengths: tuple[int, ...] = (8192, 32768),
    layers: LayerSelection = FEED_FORWARD,
    modes: tuple[str, ...] = SHAPE_MODES,
    *,
    device: torch.device | str = "cuda",
    backend: str = "fa2",
    decode_prompt: int = 128,
    decode_tokens: int = 32,
    on_row: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict]:
    """bf16 + FA2 against INT8 `layers` + FA2 on a random-weight real shape: weights, prefill latency and peak
    memory per length, decode tokens/s. One model on the device at a time; OOM is a data point.

    Meant for a GPU. `device="cpu", backend="sdpa"` with a tiny shape only exercises the code (tests)."""
    from labkit.attention import check_backend, set_backend
    from labkit.bench.sweep import is_memory_error, measure_prefill
    from labkit.models import build_from_shape
    from labkit.quant.ptq import quantize_dynamic_int8, quantize_weight_only_int8
    from labkit.quant.report import int8_modules
    from labkit.quant.size import weight_bytes

    say = log or (lambda s: None)
    device = torch.device(device)
    if backend == "fa2" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise RuntimeError(
            f"the {shape} shape benchmark with FA2 needs an NVIDIA GPU (FlashAttention-2 is CUDA-only and a 7B bf16 "
            "model alone needs ~13.5 GB); on a CPU read the committed GPU results instead"
        )
    check_backend(backend, device, torch.bfloat16)
    bad = [m for m in modes if m not in SHAPE_MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; use {SHAPE_MODES}")
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for mode in modes:
        variant = f"bf16+{backend}" if mode == "bf16" else f"int8-ff-{mode}+{backend}"
        base = {"model": shape, "weights": "random (speed and memory only)", "variant": variant, "mode": mode}
        model = None
        try:
            release_memory(device)
            t0 = time.perf_counter()
            model = build_from_shape(shape, dtype=torch.bfloat16, device=device)
            set_backend(model, backend)
            if mode != "bf16":
                before = {n: id(m.weight) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
                selected = resolve_layers(model, layers)
                (quantize_dynamic_int8 if mode == "w8a8" else quantize_weight_only_int8)(model, selected)
                after = {n: id(m.weight) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
                modules = dict(model.named_modules())
                untouched = all(after[n] == before[n] and type(modules[n].weight) is nn.Parameter
                                and type(modules[n].weight.data) is torch.Tensor
                                for n in before if n not in set(selected))
                int8 = int8_modules(model)
                base.update(int8_layers=len(int8), int8_matches_selection=int8 == selected,
                            unselected_untouched=untouched)
            base["weight_gib"] = weight_bytes(model) / GIB
            base["build_s"] = time.perf_counter() - t0
            say(f"{shape} {variant}: weights {base['weight_gib']:.2f} GiB")
        except Exception as err:  # noqa: BLE001
            emit({**base, "kind": "build", "ok": False, "oom": is_memory_error(err), "error": _error_text(err)})
            say(f"{shape} {variant}: build FAILED {_error_text(err)}")
            del model
            release_memory(device)
            continue
        try:
            ev = check_hybrid(model, [], None, backend, quantized=False)
            base["attention_ok"], base["attention"] = ev["attention_ok"], ev["attention"]
        except Exception as err:  # noqa: BLE001
            base["attention_ok"], base["attention"] = False, _error_text(err)
        for n in lengths:
            p = measure_prefill(model, n)
            row = {**base, "kind": "prefill", "seq_len": n, "ok": p.ok, "oom": p.oom, "latency_ms": p.latency_ms,
                   "peak_gib": p.peak_gib, "error": p.error}
            emit(row)
            say(f"  prefill {n:>6}: " + (f"{p.latency_ms:.1f} ms, peak {p.peak_gib:.2f} GiB" if p.ok else
                                         f"{'OOM' if p.oom else 'FAILED'} {p.error or ''}"))
        try:
            d = decode_tokens_per_s(model, decode_prompt, decode_tokens)
            emit({**base, "kind": "decode", "ok": True, "oom": False, **d})
            say(f"  decode: {d['decode_tok_s']:.1f} tok/s")
        except Exception as err:  # noqa: BLE001
            emit({**base, "kind": "decode", "ok": False, "oom": is_memory_error(err), "error": _error_text(err)})
            say(f"  decode FAILED {_error_text(err)}")
        del model
        release_memory(device)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# targets


EIGHTY_GB_GIB = 80e9 / 2**30  # an "80 GB" H100 in GiB


def evaluate_targets(rows: list[dict], shape_rows: list[dict] | None = None, long_len: int = 32768) -> list[dict]:
    """The issue's targets, judged from measured rows: met True/False, or None when not measured."""
    by = {r["variant"]: r for r in rows if "ppl" in r}
    out: list[dict] = []
    ref = by.get("base-ft")
    for mode in ("w8a8", "w8"):
        qat, ptq = by.get(f"qat-{mode}"), by.get(f"ptq-{mode}")
        if qat and ref:
            gap = qat["ppl"] / ref["ppl"] - 1
            out.append({"target": f"QAT ({mode}) perplexity within 1% of the equally fine-tuned float model",
                        "measured": f"{qat['ppl']:.3f} vs {ref['ppl']:.3f} ({gap:+.2%})", "met": gap <= 0.01})
        if qat and ptq:
            out.append({"target": f"QAT ({mode}) perplexity better than PTQ ({mode}) of the same layers",
                        "measured": f"{qat['ppl']:.3f} vs {ptq['ppl']:.3f}", "met": qat["ppl"] < ptq["ppl"]})
        ft_ptq = by.get(f"ft-ptq-{mode}")
        if qat and ft_ptq:
            out.append({"target": f"(stricter, not in the issue) QAT ({mode}) better than fine-tune-then-PTQ ({mode})",
                        "measured": f"{qat['ppl']:.3f} vs {ft_ptq['ppl']:.3f}", "met": qat["ppl"] < ft_ptq["ppl"]})
    shape_rows = shape_rows or []
    shape = shape_rows[0]["model"] if shape_rows else ""
    weights = {r["mode"]: r["weight_gib"] for r in shape_rows if r.get("weight_gib") is not None}
    for mode in ("w8", "w8a8"):
        if mode in weights and "bf16" in weights:
            ratio = weights[mode] / weights["bf16"]
            out.append({"target": f"{shape} shape: INT8 feed-forward ({mode}) weight memory <= 0.7x bf16",
                        "measured": f"{weights[mode]:.2f} / {weights['bf16']:.2f} GiB = {ratio:.3f}x",
                        "met": ratio <= 0.7})
        long = [r for r in shape_rows if r["mode"] == mode and r.get("kind") == "prefill" and r["seq_len"] == long_len]
        if long:
            r = long[0]
            fits = bool(r["ok"]) and r.get("peak_gib") is not None and r["peak_gib"] <= EIGHTY_GB_GIB  # measured on any GPU, judged for an 80 GB one
            out.append({"target": f"{shape} shape: INT8 feed-forward ({mode}) + FA2 reaches {long_len} tokens "
                                  "within an 80 GB GPU's memory",
                        "measured": (f"ok, peak {r.get('peak_gib') or float('nan'):.1f} GiB (80 GB = {EIGHTY_GB_GIB:.1f} GiB)" if r["ok"]
                                     else ("out of memory" if r["oom"] else f"failed: {r.get('error')}")),
                        "met": fits})
    if not out:
        out.append({"target": "(none measured in this run)", "measured": "", "met": None})
    return out


def latency_effect(rows: list[dict], shape_rows: list[dict] | None = None) -> list[dict]:
    """INT8 variant / bf16 ratios of prefill latency and decode speed (>1 latency ratio = INT8 is slower)."""
    out = []
    by = {r["variant"]: r for r in rows if "ppl" in r}
    base = by.get("base")
    for name, r in by.items():
        if r["method"] == "float" or base is None:
            continue
        for k, v in r.items():
            if k.startswith("prefill_ms_") and v and base.get(k):
                out.append({"model": "trained model", "variant": name, "what": f"prefill {k.split('_')[-1]} tokens",
                            "int8 / float": v / base[k]})
        if r.get("decode_tok_s") and base.get("decode_tok_s"):
            out.append({"model": "trained model", "variant": name, "what": "decode time per token",
                        "int8 / float": base["decode_tok_s"] / r["decode_tok_s"]})
    shape_rows = shape_rows or []
    ref = {(r["kind"], r.get("seq_len")): r for r in shape_rows if r["mode"] == "bf16" and r.get("ok")}
    for r in shape_rows:
        if r["mode"] == "bf16" or not r.get("ok"):
            continue
        b = ref.get((r["kind"], r.get("seq_len")))
        if b is None:
            continue
        if r["kind"] == "prefill":
            out.append({"model": r["model"], "variant": r["variant"], "what": f"prefill {r['seq_len']} tokens",
                        "int8 / float": r["latency_ms"] / b["latency_ms"]})
        elif r["kind"] == "decode":
            out.append({"model": r["model"], "variant": r["variant"], "what": "decode time per token",
                        "int8 / float": b["decode_tok_s"] / r["decode_tok_s"]})
    return out


# ---------------------------------------------------------------------------------------------------------------
# tables and figures for the notebook


def checks_table(checks: dict[str, dict]):
    """One row per variant: attention kernel evidence, INT8 == selection, unselected layers untouched."""
    import pandas as pd

    cols = ["attention", "int8_layers", "int8_matches_selection", "unselected_checked", "unselected_untouched",
            "head_still_tied", "fake_quantized_match", "ok"]
    table = pd.DataFrame.from_dict(checks, orient="index")
    return table[[c for c in cols if c in table.columns]]


def comparison_figure(rows: list[dict], title: str = ""):
    """Bar charts side by side: perplexity, weight size, prefill latency per length, decode tokens/s."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ok = [r for r in rows if "ppl" in r]
    names = [r["variant"] for r in ok]
    lengths = sorted({int(k.split("_")[-1]) for r in ok for k in r if k.startswith("prefill_ms_")})
    panels = ["perplexity (WikiText-2 test, lower is better)", "weights (MB)"]
    panels += [f"prefill {n} tokens (ms)" for n in lengths] + ["decode (tokens/s, higher is better)"]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels)
    colors = ["#7f7f7f" if r["method"] == "float" else "#1f77b4" if r["method"] == "ptq" else "#2ca02c" for r in ok]
    values = [[r["ppl"] for r in ok], [r["size_mb"] for r in ok]]
    values += [[r.get(f"prefill_ms_{n}") for r in ok] for n in lengths] + [[r.get("decode_tok_s") for r in ok]]
    for i, v in enumerate(values, start=1):
        fig.add_trace(go.Bar(x=names, y=v, marker_color=colors, showlegend=False), row=1, col=i)
    fig.update_layout(title=title or "bf16 vs PTQ vs QAT of the selected layers (grey float, blue PTQ, green QAT)",
                      height=380, width=max(900, 260 * len(panels)), margin={"t": 90})
    return fig


def loss_figure(losses: dict[str, list[float]]):
    """Fine-tune loss per step for every fine-tuned variant (same batches, same schedule)."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(y=v, x=list(range(1, len(v) + 1)), mode="lines+markers", name=k)
                     for k, v in losses.items()])
    fig.update_layout(title="Fine-tune on WikiText-2 validation: same data, steps and learning rate",
                      xaxis_title="step", yaxis_title="training loss", height=340, width=700)
    return fig


def shape_figure(shape_rows: list[dict]):
    """Big-shape results: prefill latency and peak memory per length, weights, decode; OOM marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=4, subplot_titles=["weights (GiB)", "prefill latency (ms)",
                                                        "peak memory (GiB)", "decode (tokens/s)"])
    variants = list(dict.fromkeys(r["variant"] for r in shape_rows))
    palette = ["#7f7f7f", "#1f77b4", "#2ca02c", "#d62728"]
    for i, v in enumerate(variants):
        rs = [r for r in shape_rows if r["variant"] == v]
        color = palette[i % len(palette)]
        w = next((r["weight_gib"] for r in rs if r.get("weight_gib") is not None), None)
        fig.add_trace(go.Bar(x=[v], y=[w], marker_color=color, name=v, legendgroup=v), row=1, col=1)
        pre = [r for r in rs if r.get("kind") == "prefill"]
        labels = [f"{r['seq_len'] // 1024}k" + ("" if r["ok"] else " (OOM)" if r["oom"] else " (failed)") for r in pre]
        fig.add_trace(go.Bar(x=labels, y=[r.get("latency_ms") for r in pre], marker_color=color, name=v,
                             legendgroup=v, showlegend=False), row=1, col=2)
        fig.add_trace(go.Bar(x=labels, y=[r.get("peak_gib") for r in pre], marker_color=color, name=v,
                             legendgroup=v, showlegend=False), row=1, col=3)
        dec = [r for r in rs if r.get("kind") == "decode" and r.get("ok")]
        fig.add_trace(go.Bar(x=[v], y=[dec[0]["decode_tok_s"] if dec else None], marker_color=color, name=v,
                             legendgroup=v, showlegend=False), row=1, col=4)
    model = shape_rows[0]["model"] if shape_rows else ""
    fig.update_layout(title=f"{model} shape, random weights (speed and memory only): bf16 + FA2 vs INT8 "
                            "feed-forward + FA2", barmode="group", height=400, width=1200, margin={"t": 90})
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_xaxes(showticklabels=False, row=1, col=4)
    return fig


__all__ = [
    "FEED_FORWARD",
    "VARIANTS",
    "HybridConfig",
    "HybridResult",
    "attention_backend",
    "check_hybrid",
    "checks_table",
    "comparison_figure",
    "decode_tokens_per_s",
    "evaluate_targets",
    "fine_tune",
    "latency_effect",
    "loss_figure",
    "make_variant",
    "measure_speed",
    "perplexity",
    "run_hybrid",
    "shape_benchmark",
    "shape_figure",
    "snapshot_unselected",
    "wikitext_blocks",
]
