"""The hybrid over several seeds: the fine-tuned variants (base-ft, qat-*, ft-ptq-*) again with each seed's data
order, so every perplexity comparison carries its spread; speed is measured on the first seed only.

Variants without training (base, ptq-*) do not depend on the seed: their first-seed rows stand in every seed's
comparison. `done` takes the rows of seeds an interrupted run already finished, which are not run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torch import nn

from labkit.experiments.hybrid.config import VARIANTS, HybridConfig
from labkit.experiments.hybrid.pipeline import HybridResult, run_hybrid


def seed_variants(variants: tuple[str, ...]) -> tuple[str, ...]:
    """The variants whose result depends on the seed (they fine-tune, or quantize a fine-tuned model)."""
    return tuple(v for v in variants if VARIANTS[v].train)


def run_hybrid_seeds(
    cfg: HybridConfig,
    model: nn.Module | None = None,
    tokenizer=None,
    *,
    done: dict[int, list[dict]] | None = None,
    on_seed: Callable[[int, HybridResult], None] | None = None,
    **kwargs,
) -> tuple[HybridResult | None, dict[int, list[dict]]]:
    """run_hybrid for the first seed (every variant, with speed), then the seed-dependent variants for each further
    seed (no speed); returns (the first seed's result, or None when it was in `done`; rows by seed, each seed's
    rows completed with the first seed's seed-independent rows). kwargs go to run_hybrid (on_row, log, ...)."""
    if not cfg.seeds:
        raise ValueError("cfg.seeds is empty: give at least one seed, e.g. (0, 1, 2)")
    rows: dict[int, list[dict]] = dict(done or {})
    first_seed = cfg.seeds[0]
    first: HybridResult | None = None
    if first_seed not in rows:
        first = run_hybrid(replace(cfg, seed=first_seed), model, tokenizer, **kwargs)
        rows[first_seed] = first.rows
        if on_seed is not None:
            on_seed(first_seed, first)
    trained = seed_variants(cfg.variants)
    for seed in cfg.seeds[1:]:
        if seed in rows or not trained:
            continue
        more = run_hybrid(replace(cfg, seed=seed, speed=False, variants=trained), model, tokenizer, **kwargs)
        rows[seed] = more.rows
        if on_seed is not None:
            on_seed(seed, more)
    fixed = [r for r in rows[first_seed] if r["variant"] not in trained]
    by_seed = {}
    for seed in cfg.seeds:
        if seed in rows:
            own = {r["variant"] for r in rows[seed]}
            by_seed[seed] = rows[seed] + [r for r in fixed if r["variant"] not in own]
    return first, by_seed


__all__ = ["run_hybrid_seeds", "seed_variants"]
