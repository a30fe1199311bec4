"""Training the FP32 classifier and its QAT INT8 copy (notebook 01's pipeline), cached as safetensors."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def _cache_key(cfg) -> str:
    return f"{cfg.model}-{cfg.dataset}-n{cfg.n_train}-s{cfg.fp32_steps}+{cfg.extra_steps}-b{cfg.batch_size}-seed{cfg.seed}"


def _load_cached(cfg, cache_dir: Path):
    """(fp32, qat, info) saved by an earlier run with the same training settings, else None."""
    import json

    from labkit.models import load_classifier
    from labkit.quant.io import load_quantized
    from labkit.quant.qat import STATE_ATTR, QATState

    folder = cache_dir / _cache_key(cfg)
    if not (folder / "info.json").is_file():
        return None
    meta = json.loads((folder / "info.json").read_text())
    factory = lambda: load_classifier(cfg.model, num_labels=2, device="cpu")[0]  # noqa: E731
    fp32, qat = load_quantized(folder / "fp32", factory), load_quantized(folder / "qat", factory)
    setattr(qat, STATE_ATTR, QATState(**meta["qat_state"]))
    return fp32, qat, meta["info"]


def train_models(cfg, cache_dir: str | Path | None = None) -> dict:
    """FP32 fine-tune then QAT (notebook 01's pipeline and budget): models, tokenizer, eval set, seconds.
    With `cache_dir`, trained weights are saved there (safetensors) and reused by a later run with the same
    training settings."""
    import dataclasses
    import json

    from labkit.models import load_classifier
    from labkit.experiments.qat_bert.pipeline import load_data, make_qat, train
    from labkit.quant.io import save_quantized
    from labkit.quant.qat import qat_state

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    fp32, tokenizer = load_classifier(cfg.model, num_labels=2, device="cpu")
    train_ds, eval_ds = load_data(cfg, tokenizer)
    cached = _load_cached(cfg, Path(cache_dir)) if cache_dir else None
    if cached:
        fp32, qat, info = cached
        info["from_cache"] = str(Path(cache_dir) / _cache_key(cfg))
        return {"fp32": fp32.eval(), "qat": qat.eval(), "tokenizer": tokenizer, "eval_ds": eval_ds, "info": info}
    fp32_info = train(fp32, train_ds, tokenizer, cfg, cfg.fp32_steps, cfg.lr, "fp32")
    t1 = time.perf_counter()
    qat, qat_info = make_qat(fp32, cfg, train_ds, tokenizer)
    qat_info["steps"] += cfg.fp32_steps
    info = {"fp32": fp32_info, "qat": qat_info, "fp32_s": round(t1 - t0, 1),
            "qat_s": round(time.perf_counter() - t1, 1), "n_train": len(train_ds), "n_eval": len(eval_ds)}
    if cache_dir:
        folder = Path(cache_dir) / _cache_key(cfg)
        save_quantized(fp32, folder / "fp32")
        save_quantized(qat, folder / "qat")
        state = dataclasses.asdict(qat_state(qat))
        (folder / "info.json").write_text(json.dumps({"info": info, "qat_state": state}))
    return {"fp32": fp32.eval(), "qat": qat.eval(), "tokenizer": tokenizer, "eval_ds": eval_ds, "info": info}
