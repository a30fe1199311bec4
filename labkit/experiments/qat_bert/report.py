"""Notebook 01's verdicts and tables from measured rows, and the deprecated torch.ao recipe run on the same model."""

from __future__ import annotations

import copy

from labkit.experiments.qat_bert.latency import latency_inputs
from labkit.experiments.qat_bert.pipeline import QATBertConfig, QATBertResult, batches, evaluate, train
from labkit.measure.stats import (
    format_spread,
    paired_differences,
    per_seed,
    ratio_verdict,
    spread,
    verdict,
    verdict_text,
)
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


ACCURACY_LIMIT = -0.3  # points: QAT may trail FP32 trained as long by at most this much
LATENCY_LIMIT = 0.5
SIZE_LIMIT = 0.3


def target_checks(rows: list[dict], runs: list[list[dict]] | None = None, n_eval: int | None = None) -> list[dict]:
    """The lab's three INT8 deployment targets, each stated from measured numbers.

    accuracy within 0.3 points of FP32 trained as long (a loss a user would not notice), latency at most half
    of FP32's at batch 8 and size at most 0.3x FP32 (what makes INT8 worth deploying on a CPU).
    `runs`: the rows of every seed (default: `rows` alone). The accuracy verdict comes from the per-seed
    differences QAT - (FP32 + extra steps): "met"/"missed" only with >= 3 seeds and a mean farther from the limit
    than the spread (and than one eval example, 100 / n_eval points), else "within noise" or "no verdict".
    Latency: "within noise" when 0.5 lies inside the ratio's p10/p90 spread. Each check has "verdict" and "met"
    (True / False / None)."""
    runs = runs or [rows]
    fp32, fp32x, qat = _row(rows, "fp32"), _row(rows, "fp32-extra"), _row(rows, "qat")
    checks = []
    diffs = paired_differences(runs, "qat", "fp32-extra", "accuracy", scale=100)
    qat_acc, ref_acc, first_acc = (spread([100 * a for a in per_seed(runs, v, "accuracy")])
                                   for v in ("qat", "fp32-extra", "fp32"))
    resolution = 100 / n_eval if n_eval else 0.0
    v = verdict(diffs, ACCURACY_LIMIT, at_least=True, resolution=resolution)
    checks.append({
        "target": "QAT accuracy within 0.3 points of FP32 (same training budget)",
        "measured": f"QAT {format_spread(qat_acc)} vs FP32+extra {format_spread(ref_acc)} (first FP32 "
                    f"{format_spread(first_acc)}); QAT - FP32 per seed: {verdict_text(v)} points",
        "value": v["mean"], "limit": ACCURACY_LIMIT, "verdict": v["verdict"], "met": v["met"], "seeds": v["n"],
        "sd": v["sd"], "noise": v["noise"],
    })
    for mode, suffix in (("eager", ""), ("compiled", "_compiled")):
        target = f"INT8 latency <= 0.5x FP32 at batch 8, len 128 ({mode})"
        a, b = _timing(qat, f"latency_ms_b8{suffix}"), _timing(fp32, f"latency_ms_b8{suffix}")
        if a is None or b is None:
            checks.append({"target": target, "measured": "not measured in this run", "value": None,
                           "limit": LATENCY_LIMIT, "verdict": "not measured", "met": None})
            continue
        r = ratio_verdict(a, b, LATENCY_LIMIT, at_most=True)
        checks.append({
            "target": target,
            "measured": f"QAT INT8 {a[1]:.1f} ms (p10-p90 {a[0]:.1f}-{a[2]:.1f}) vs FP32 {b[1]:.1f} ms "
                        f"({b[0]:.1f}-{b[2]:.1f}): {r['ratio']:.2f}x (spread {r['ratio_low']:.2f}-{r['ratio_high']:.2f})",
            "value": r["ratio"], "limit": LATENCY_LIMIT, "verdict": r["verdict"], "met": r["met"],
        })
    ratio = qat["size_mb"] / fp32["size_mb"]
    checks.append({
        "target": "INT8 size <= 0.3x FP32, embeddings included",
        "measured": f"QAT INT8 {qat['size_mb']:.1f} MB vs FP32 {fp32['size_mb']:.1f} MB: {ratio:.2f}x "
                    "(exact: bytes of the saved checkpoint)",
        "value": ratio, "limit": SIZE_LIMIT, "verdict": "met" if ratio <= SIZE_LIMIT else "missed",
        "met": ratio <= SIZE_LIMIT,
    })
    return checks


def file_targets(result: dict) -> list[dict]:
    """The targets of a result file judged again by today's rules (its rows and seed rows): a file written before
    seeds were recorded gets "no verdict" on accuracy, whatever it said then."""
    runs = list((result.get("seed_rows") or {}).values()) or None
    return target_checks(result["rows"], runs, result.get("config", {}).get("n_eval_actual"))


def _timing(row: dict, key: str) -> tuple[float, float, float] | None:
    """(p10, median, p90) of a latency column, the median standing in for a missing percentile."""
    mid = row.get(key)
    if mid is None:
        return None
    return (row.get(f"{key}_p10") or mid, mid, row.get(f"{key}_p90") or mid)


def matmul_checks(rows: list[dict]) -> list[dict]:
    """One check per variant and mode (eager, compiled) that was profiled: did its matmuls match its claim (an INT8
    variant with INT8 activations must have run integer kernels)? Each: variant, mode, ok, evidence."""
    out = []
    for r in rows:
        for kind in ("eager", "compiled"):
            if f"matmul_{kind}_ok" in r:
                out.append({"variant": r["variant"], "mode": kind, "ok": r[f"matmul_{kind}_ok"],
                            "evidence": r.get(f"matmul_{kind}")})
    return out


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
