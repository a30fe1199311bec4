"""The FP32 classifier and its QAT INT8 copy for one seed: trained with notebook 01's recipe (the same
QATBertConfig, epochs and learning rates as `bench qat`), or loaded from a `bench qat` run folder."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

SAVED_STAGES = ("fp32", "qat")  # what deploy needs from a `bench qat` run: the fine-tune and QAT (before convert)


def saved_model_files(run_dir: str | Path, seed: int) -> dict[str, Path]:
    """The description files `bench qat` writes for `seed` (runs/<run>/models/seed<k>/<stage>.json), by stage."""
    folder = Path(run_dir)
    folder = folder.parent if folder.suffix == ".json" else folder
    return {s: folder / "models" / f"seed{int(seed)}" / f"{s}.json" for s in SAVED_STAGES}


def check_models_from(run_dir: str | Path, seeds, model: str) -> None:
    """Refuse, before any work, a --models-from folder that lacks a seed's FP32 or QAT model, or holds another
    model's; the message names the argument, the value and the fix."""
    import json

    folder = Path(run_dir)
    if not folder.exists():
        raise ValueError(f"--models-from {run_dir}: no such folder; give the run folder of a `bench qat` run that "
                         "saved its models (runs/qat_bert_<device>_<time>/)")
    for seed in seeds:
        for stage, path in saved_model_files(folder, seed).items():
            if not path.is_file():
                raise ValueError(f"--models-from {run_dir}: no saved {stage!r} model of seed {seed} ({path} is "
                                 "missing); run `bench qat` with these seeds there, or choose --seeds it saved")
            described = json.loads(path.read_text(encoding="utf-8"))
            saved = described.get("model")
            if saved not in (None, model):
                raise ValueError(f"--models-from {run_dir}: seed {seed} holds {saved!r}, not --model {model!r}; "
                                 f"pass --model {saved}")
            dataset = described.get("info", {}).get("training", {}).get("dataset")
            if dataset not in (None, "sst2"):
                raise ValueError(f"--models-from {run_dir}: seed {seed} was trained on {dataset!r}; deploy evaluates "
                                 "on SST-2: give a `bench qat --dataset sst2` run")


def load_models(run_dir: str | Path, seed: int, model: str) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(fp32, converted QAT INT8, training info) of `seed` saved by `bench qat` in `run_dir`."""
    from labkit.experiments.qat_bert.saved_models import load_trained, trained_info
    from labkit.models import load_classifier
    from labkit.quant.qat import convert_qat

    def fresh():
        return load_classifier(model, num_labels=2, device="cpu")[0]

    fp32 = load_trained(run_dir, seed, "fp32", fresh())
    qat = convert_qat(load_trained(run_dir, seed, "qat", fresh()))
    info = {s: trained_info(run_dir, seed, s).get("info", {}) for s in SAVED_STAGES}
    return fp32.eval(), qat.eval(), {**info, "from": str(run_dir)}


def train_models(cfg, models_from: str | Path | None = None) -> dict:
    """FP32 fine-tune then QAT for `cfg.seed` (notebook 01's pipeline and budget; epochs resolved against the
    training rows as `bench qat` does), or the same two models loaded from a `bench qat` run folder.
    Returns the models (on the CPU), the tokenizer, the eval set and what was trained."""
    from labkit.experiments.qat_bert.pipeline import load_data, make_qat, train
    from labkit.models import load_classifier

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    fp32, tokenizer = load_classifier(cfg.model, num_labels=2, device="cpu")
    train_ds, eval_ds = load_data(cfg, tokenizer)
    if models_from is not None:
        fp32, qat, info = load_models(models_from, cfg.seed, cfg.model)
        return {"fp32": fp32, "qat": qat, "tokenizer": tokenizer, "eval_ds": eval_ds,
                "info": {**info, "n_eval": len(eval_ds), "load_s": round(time.perf_counter() - t0, 1)}}
    fp32_steps, extra_steps = cfg.steps_for(len(train_ds))
    cfg = replace(cfg, fp32_steps=fp32_steps, extra_steps=extra_steps)
    fp32_info = train(fp32, train_ds, tokenizer, cfg, cfg.fp32_steps, cfg.lr, "fp32")
    t1 = time.perf_counter()
    qat, qat_info = make_qat(fp32, cfg, train_ds, tokenizer)
    qat_info["steps"] += cfg.fp32_steps
    info = {"fp32": fp32_info, "qat": qat_info, "fp32_s": round(t1 - t0, 1),
            "qat_s": round(time.perf_counter() - t1, 1), "n_train": len(train_ds), "n_eval": len(eval_ds)}
    return {"fp32": fp32.eval(), "qat": qat.eval(), "tokenizer": tokenizer, "eval_ds": eval_ds, "info": info}


def timing_models(cfg) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(fp32, QAT INT8) for timing only: the pretrained checkpoint and its QAT conversion without training.
    Same layers, shapes, INT8 kernels and fusions as a trained pair; CPU kernel time does not depend on the
    weight values."""
    import copy

    from labkit.models import load_classifier
    from labkit.quant.qat import convert_qat, prepare_qat

    fp32 = load_classifier(cfg.model, num_labels=2, device="cpu")[0].eval()
    qat = prepare_qat(copy.deepcopy(fp32).train(), cfg.layers, activations=cfg.activations, embeddings=cfg.embeddings)
    return fp32, convert_qat(qat.eval()).eval()
