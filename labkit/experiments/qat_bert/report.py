"""Notebook 01's verdicts and tables from measured rows, and the deprecated torch.ao recipe run on the same model."""

from __future__ import annotations

import copy

from labkit.experiments.qat_bert.latency import latency_inputs
from labkit.experiments.qat_bert.pipeline import QATBertConfig, QATBertResult, batches, evaluate, train
from labkit.measure.timing import time_callable
from labkit.quant.legacy import (
    legacy_convert,
    legacy_prepare_qat,
    legacy_quantized_modules,
    legacy_size_mb,
    naive_mistakes,
)



def _row(rows: list[dict], variant: str) -> dict:
    for r in rows:
        if r["variant"] == variant:
            return r
    raise KeyError(f"no row for variant {variant!r}; rows have {[r['variant'] for r in rows]}")


def target_checks(rows: list[dict]) -> list[dict]:
    """The lab's three INT8 deployment targets, each stated from measured numbers: met / missed / not measured.

    accuracy within 0.3 points of FP32 trained as long (a loss a user would not notice), latency at most half
    of FP32's at batch 8 and size at most 0.3x FP32 (what makes INT8 worth deploying on a CPU)."""
    fp32, fp32x, qat = _row(rows, "fp32"), _row(rows, "fp32-extra"), _row(rows, "qat")
    checks = []
    gap = (fp32x["accuracy"] - qat["accuracy"]) * 100
    checks.append({
        "target": "QAT accuracy within 0.3 points of FP32 (same training budget)",
        "measured": f"QAT {qat['accuracy'] * 100:.2f} vs FP32+extra {fp32x['accuracy'] * 100:.2f}: "
                    f"QAT {-gap:+.2f} points (against the first FP32 {fp32['accuracy'] * 100:.2f}: "
                    f"{(qat['accuracy'] - fp32['accuracy']) * 100:+.2f})",
        "value": gap, "limit": 0.3, "met": gap <= 0.3,
    })
    for mode, suffix in (("eager", ""), ("compiled", "_compiled")):
        a, b = qat.get(f"latency_ms_b8{suffix}"), fp32.get(f"latency_ms_b8{suffix}")
        if a is None or b is None:
            checks.append({"target": f"INT8 latency <= 0.5x FP32 at batch 8, len 128 ({mode})",
                           "measured": "not measured in this run", "value": None, "limit": 0.5, "met": None})
            continue
        ratio = a / b
        checks.append({
            "target": f"INT8 latency <= 0.5x FP32 at batch 8, len 128 ({mode})",
            "measured": f"QAT INT8 {a:.1f} ms vs FP32 {b:.1f} ms: {ratio:.2f}x",
            "value": ratio, "limit": 0.5, "met": ratio <= 0.5,
        })
    ratio = qat["size_mb"] / fp32["size_mb"]
    checks.append({
        "target": "INT8 size <= 0.3x FP32, embeddings included",
        "measured": f"QAT INT8 {qat['size_mb']:.1f} MB vs FP32 {fp32['size_mb']:.1f} MB: {ratio:.2f}x",
        "value": ratio, "limit": 0.3, "met": ratio <= 0.3,
    })
    return checks


def accuracy_changes(rows: list[dict]) -> list[dict]:
    """Accuracy/F1 change (points) of each INT8 variant against the FP32 model with the same training:
    PTQ against the first FP32 model, QAT against FP32 + extra steps."""
    out = []
    for variant, ref in (("ptq-dynamic", "fp32"), ("ptq-static", "fp32"), ("qat", "fp32-extra")):
        r, f = _row(rows, variant), _row(rows, ref)
        out.append({"variant": r["label"], "against": f["label"],
                    "accuracy change (points)": (r["accuracy"] - f["accuracy"]) * 100,
                    "F1 change (points)": (r["f1"] - f["f1"]) * 100})
    return out


def results_frame(rows: list[dict]):
    """The results table as a pandas DataFrame (accuracy and F1 in %, one row per variant)."""
    import pandas as pd

    cols = ["label", "accuracy", "f1", "size_mb", "latency_ms_b1", "latency_ms_b8", "latency_ms_b1_compiled",
            "latency_ms_b8_compiled", "train_steps", "int8_modules"]
    df = pd.DataFrame(rows)
    df = df[[c for c in cols if c in df.columns]].copy()
    df["accuracy"] *= 100
    df["f1"] *= 100
    return df.rename(columns={"label": "variant", "accuracy": "accuracy %", "f1": "F1 %", "size_mb": "size MB",
                              "latency_ms_b1": "b1 eager ms", "latency_ms_b8": "b8 eager ms",
                              "latency_ms_b1_compiled": "b1 compiled ms", "latency_ms_b8_compiled": "b8 compiled ms",
                              "train_steps": "train steps", "int8_modules": "INT8 modules"}).set_index("variant")


# ------------------------------------------------------------------------------------------- legacy


def run_legacy(result: QATBertResult, steps: int | None = None, progress: bool = True) -> dict:
    """The deprecated torch.ao.quantization eager-mode QAT recipe on the same FP32 model, layers, data and
    extra steps (needs `run_qat_bert(..., keep_models=True)`), plus the naive mistakes, measured."""
    if "fp32" not in result.models:
        raise ValueError("run_legacy needs the models: call run_qat_bert(cfg, keep_models=True) first")
    cfg = QATBertConfig(**{k: v for k, v in result.config.items() if k in QATBertConfig.__dataclass_fields__})
    cfg.latency_batch_sizes = tuple(cfg.latency_batch_sizes)
    steps = steps or cfg.extra_steps
    fp32 = result.models["fp32"]
    sample = next(batches(result.eval_ds, result.tokenizer, 8))
    mistakes = naive_mistakes(fp32, sample, cfg.layers)
    model = legacy_prepare_qat(copy.deepcopy(fp32), cfg.layers)
    info = train(model, result.train_ds, result.tokenizer, cfg, steps, cfg.extra_lr, "legacy-qat")
    legacy_convert(model)
    metrics = evaluate(model, result.eval_ds, result.tokenizer, desc="eval legacy")
    x = latency_inputs(8, cfg.latency_seq_len, fp32.config.vocab_size, cfg.seed)
    lat = time_callable(lambda: model(**x), warmup=cfg.latency_warmup,
                        repeat=cfg.latency_rounds * cfg.latency_repeat)
    lat_fp32 = time_callable(lambda: fp32(**x), warmup=cfg.latency_warmup,
                             repeat=cfg.latency_rounds * cfg.latency_repeat)
    return {
        "row": {"variant": "legacy-qat", "label": "legacy eager QAT (torch.ao)", **metrics,
                "size_mb": legacy_size_mb(model), "quantized_modules": len(legacy_quantized_modules(model)),
                "train_steps": cfg.fp32_steps + info["steps"], "latency_ms_b8": lat.median_ms,
                "fp32_latency_ms_b8_same_session": lat_fp32.median_ms},
        "mistakes": mistakes,
    }
