"""Notebook 01's experiment over several seeds: accuracy as mean +- sd, verdicts no finer than the spread.

Each seed is a whole run (its own FP32 fine-tune, data order, QAT), so the spread covers everything a reader
would see change on a re-run. Latency does not depend on the seed: it is measured on the first seed only.
`done` takes the rows of seeds an interrupted run already finished (from its JSONL), which are not run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from labkit.experiments.qat_bert import pipeline
from labkit.experiments.qat_bert.pipeline import QATBertConfig, QATBertResult
from labkit.experiments.qat_bert.report import target_checks
from labkit.measure.stats import seed_summary


def run_seeds(
    cfg: QATBertConfig,
    *,
    done: dict[int, list[dict]] | None = None,
    on_seed: Callable[[int, QATBertResult], None] | None = None,
    on_stage: Callable[[str, float], None] | None = None,
    progress: bool = True,
    models_dir=None,
) -> tuple[QATBertResult | None, dict[int, list[dict]]]:
    """Run `cfg.seeds` in order; returns (the full result of the first seed run here, or None when it was in
    `done`; rows by seed). `on_seed(seed, result)` is called as each seed finishes. `models_dir`: the run folder
    where each seed's trained models are saved (and reloaded from, for a seed an earlier attempt cut short)."""
    cfg.validate()
    rows: dict[int, list[dict]] = dict(done or {})
    first: QATBertResult | None = None
    for i, seed in enumerate(cfg.seeds):
        if seed in rows:
            continue
        result = pipeline.run_qat_bert(replace(cfg, seed=seed, latency=cfg.latency and i == 0), progress=progress,
                                       on_stage=on_stage, **({"models_dir": models_dir} if models_dir else {}))
        rows[seed] = result.rows
        if first is None:
            first = result
        if on_seed is not None:
            on_seed(seed, result)
    return first, {s: rows[s] for s in cfg.seeds if s in rows}


def seeds_report(cfg: QATBertConfig, rows_by_seed: dict[int, list[dict]], n_eval: int | None) -> dict:
    """The result-file block for several seeds: per-variant mean/sd, the targets judged over the seeds."""
    runs = [rows_by_seed[s] for s in cfg.seeds if s in rows_by_seed]
    if not runs:
        raise ValueError("no seed finished: nothing to report")
    first = runs[0]
    return {
        "seeds": [s for s in cfg.seeds if s in rows_by_seed],
        "summary": seed_summary(runs, ["accuracy", "f1"]),
        "targets": target_checks(first, runs, n_eval),
    }


__all__ = ["run_seeds", "seeds_report"]
