"""`python -m labkit.bench qat`: notebook 01's comparison over seeds (quick: CI-sized; full: all 67,349 SST-2
training rows, 3 epochs then 1 more for QAT and the FP32 reference, the whole dev set, 3 seeds, training on a GPU
when one is visible), and its targets. Each seed is a whole run (its own fine-tune, data order and QAT), recorded
when it finishes; latency comes with the first seed. Each seed's trained models are saved in the run folder as they
finish (saved_models), so `--resume` skips finished seeds and reloads a cut-short seed's models.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from labkit.experiments.qat_bert.pipeline import QATBertConfig, run_qat_bert, variant_row
from labkit.experiments.qat_bert.saved_models import saved_stages
from labkit.measure.stats import (
    Target,
    format_spread,
    paired_differences,
    per_seed,
    ratio_verdict,
    seed_summary,
    spread,
    verdict,
    verdict_text,
)

NAME = "qat_bert"
Settings = QATBertConfig
ACCURACY_LIMIT = -0.3  # points: QAT may trail FP32 trained as long by at most this much
LATENCY_LIMIT = 0.5
SIZE_LIMIT = 0.3
NOTES = [
    ("latency (first seed only: it does not depend on the seed): median of interleaved rounds (every variant timed "
     "in each round), after warm-up, with p10/p90 and the repeat count; seq len 128, all positions real tokens; "
     "compiled = torch.compile under inductor freezing (config patch) for every variant alike"),
    "size: bytes of the safetensors checkpoint save_quantized writes (every weight, embeddings included)",
    "fp32-extra trains the FP32 model for the same extra steps, data and schedule as QAT",
    ("accuracy: mean +- sd over the seeds (each seed its own fine-tune, data order and QAT); a target is met or "
     "missed only with >= 3 seeds and a margin beyond the spread and one eval example, else within noise"),
    "matmul_checks: the profiled matmul operators of each variant (an INT8 variant must run integer kernels)",
]


def check(settings: QATBertConfig, options) -> None:
    """The config, the model (its config only) and the layer pattern (resolved on a weightless copy)."""
    from labkit.models import UnknownModelError, meta_model
    from labkit.quant.selection import EmptySelectionError, resolve_layers

    try:
        settings.validate()
    except ValueError as err:
        raise ValueError(f"--dataset/--steps/--seeds/--train-device: {err}") from None
    try:
        skeleton = meta_model(settings.model, "classifier")
    except UnknownModelError as err:
        raise ValueError(f"--model {settings.model!r}: {err}") from None
    try:
        resolve_layers(skeleton, settings.layers)
    except EmptySelectionError as err:
        raise ValueError(f"--model {settings.model!r}: the layers the experiment quantizes ({settings.layers!r}) are "
                         f"not in this model: {err}") from None


def measure(settings: QATBertConfig, run) -> None:
    cfg = settings
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run.result["config"]["layers"] = str(cfg.layers)
    earlier = {r["seed"]: r for r in run.recorded("seed")}
    folder = run.json_path.parent if run.json_path else None
    for seed in (s for s in cfg.seeds if s not in earlier and folder is not None):
        if saved := saved_stages(folder, seed):
            print(f"resume: seed {seed} reloads its trained {', '.join(saved)} from {folder / 'models'}", flush=True)
    for i, seed in enumerate(cfg.seeds):
        if seed in earlier:
            continue
        res = run_qat_bert(replace(cfg, seed=seed, latency=cfg.latency and i == 0), models_dir=folder,
                           on_stage=lambda stage, s: run.record("stage", {"stage": stage, "seconds": s}))
        item = {"seed": seed, "rows": res.rows}
        if i == 0:  # latency and the one-off checks come with the first seed
            item.update(config=res.config, threads=res.threads, round_trip=res.round_trip,
                        int8_modules={k: len(v) for k, v in res.int8_modules.items()}, stage_seconds=res.stage_seconds)
        for row in res.rows:
            run.record("variant", {**row, "seed": seed}, quiet=True)
        earlier[seed] = run.record("seed", item, quiet=True)
    by_seed = {s: earlier[s]["rows"] for s in cfg.seeds}
    first = earlier[cfg.seeds[0]]
    run.result.update({
        "config": {**first.get("config", run.result["config"]), "seeds": list(cfg.seeds)},
        "rows": by_seed[cfg.seeds[0]], "threads": first.get("threads"), "seeds": list(cfg.seeds),
        "seed_summary": seed_summary(list(by_seed.values()), ["accuracy", "f1"]),
        "seed_rows": {str(s): rows for s, rows in by_seed.items()}, "matmul_checks": matmul_checks(by_seed[cfg.seeds[0]]),
        **{k: first.get(k) for k in ("round_trip", "int8_modules", "stage_seconds")}, "notes": NOTES})
    for c in run.result["matmul_checks"]:
        if not c["ok"]:
            run.fail(f"integer kernel check: {c['variant']} ({c['mode']}): {c['evidence']}")


def matmul_checks(rows: list[dict]) -> list[dict]:
    """One check per variant and mode (eager, compiled) that was profiled: did its matmuls match its claim (an INT8
    variant with INT8 activations must have run integer kernels)? Each: variant, mode, ok, evidence."""
    return [{"variant": r["variant"], "mode": kind, "ok": r[f"matmul_{kind}_ok"], "evidence": r.get(f"matmul_{kind}")}
            for r in rows for kind in ("eager", "compiled") if f"matmul_{kind}_ok" in r]


def _timing(row: dict, key: str) -> tuple[float, float, float] | None:
    """(p10, median, p90) of a latency column, the median standing in for a missing percentile."""
    mid = row.get(key)
    return None if mid is None else (row.get(f"{key}_p10") or mid, mid, row.get(f"{key}_p90") or mid)


def targets(result: dict) -> list[Target]:
    """The lab's three INT8 deployment targets, from a result's rows (and its seed rows; a file written before seeds
    were recorded is one seed): accuracy within 0.3 points of FP32 trained as long (a loss a user would not notice),
    latency at most half of FP32's at batch 8 and size at most 0.3x FP32 (what makes INT8 worth deploying on a CPU).

    Accuracy is judged on the per-seed differences QAT - (FP32 + extra steps): met / missed only with >= 3 seeds and
    a mean farther from the limit than the spread (and than one eval example, 100 / n_eval points). Latency: within
    noise when 0.5 lies inside the ratio's p10/p90 spread."""
    rows = result["rows"]
    runs = list((result.get("seed_rows") or {}).values()) or [rows]
    n_eval = result.get("config", {}).get("n_eval_actual")
    fp32, qat = variant_row(rows, "fp32"), variant_row(rows, "qat")
    diffs = paired_differences(runs, "qat", "fp32-extra", "accuracy", scale=100)
    qat_acc, ref_acc, first_acc = (spread([100 * a for a in per_seed(runs, v, "accuracy")])
                                   for v in ("qat", "fp32-extra", "fp32"))
    v = verdict(diffs, ACCURACY_LIMIT, at_least=True, resolution=100 / n_eval if n_eval else 0.0)
    out = [Target.judged("QAT accuracy within 0.3 points of FP32 (same training budget)",
                         f"QAT {format_spread(qat_acc)} vs FP32+extra {format_spread(ref_acc)} (first FP32 "
                         f"{format_spread(first_acc)}); QAT - FP32 per seed: {verdict_text(v)} points", v,
                         seeds=v["n"], sd=v["sd"], noise=v["noise"])]
    for mode, suffix in (("eager", ""), ("compiled", "_compiled")):
        target = f"INT8 latency <= 0.5x FP32 at batch 8, len 128 ({mode})"
        a, b = _timing(qat, f"latency_ms_b8{suffix}"), _timing(fp32, f"latency_ms_b8{suffix}")
        if a is None or b is None:
            out.append(Target.not_measured(target))
            continue
        r = ratio_verdict(a, b, LATENCY_LIMIT, at_most=True)
        out.append(Target.judged(target, f"QAT INT8 {a[1]:.1f} ms (p10-p90 {a[0]:.1f}-{a[2]:.1f}) vs FP32 {b[1]:.1f} "
                                         f"ms ({b[0]:.1f}-{b[2]:.1f}): {r['ratio']:.2f}x (spread {r['ratio_low']:.2f}-"
                                         f"{r['ratio_high']:.2f})", r))
    ratio = qat["size_mb"] / fp32["size_mb"]
    out.append(Target.exact("INT8 size <= 0.3x FP32, embeddings included",
                            f"QAT INT8 {qat['size_mb']:.1f} MB vs FP32 {fp32['size_mb']:.1f} MB: {ratio:.2f}x "
                            "(exact: bytes of the saved checkpoint)", ratio <= SIZE_LIMIT, ratio, SIZE_LIMIT))
    return out


__all__ = ["NAME", "Settings", "check", "matmul_checks", "measure", "targets"]
