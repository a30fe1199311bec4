"""Notebook 03's experiment: attention on FlashAttention-2 in bf16, the chosen Linear layers in INT8 (torchao).

    config     the variants (base, base-ft, ptq-*, ft-ptq-*, qat-* in INT8 w8 / w8a8 and FP8, qat-w8-labkit) and
               HybridConfig.for_profile
    pipeline   make_variant, run_hybrid: build, check and measure every variant (rows saved as they finish)
    evaluate   perplexity by the fastest faithful path (w8a8: exact float32 emulation, checked on one batch)
    checks     after conversion: attention kernel, INT8 == selection, unselected layers untouched
    shape      the llama-2-7b shape with random weights: speed and memory only (GPU)
    targets    met / missed / not measured, INT8-over-float ratios, the notebook's tables
    bench      `python -m labkit.bench hybrid`
"""

from labkit.experiments.hybrid.checks import check_hybrid, snapshot_unselected
from labkit.experiments.hybrid.config import FEED_FORWARD, VARIANTS, HybridConfig, Variant, attention_backend
from labkit.experiments.hybrid.evaluate import PerplexityCheckError, variant_perplexity
from labkit.experiments.hybrid.pipeline import HybridResult, make_variant, measure_speed, run_hybrid
from labkit.experiments.hybrid.shape import SHAPE_MODES, shape_benchmark
from labkit.experiments.hybrid.targets import (
    EIGHTY_GB_GIB,
    checks_table,
    evaluate_targets,
    file_targets,
    latency_effect,
    ppl_paths_table,
    prefill_table,
    rows_table,
    targets_table,
)
from labkit.experiments.hybrid.seeds import run_hybrid_seeds

__all__ = [
    "EIGHTY_GB_GIB", "FEED_FORWARD", "SHAPE_MODES", "VARIANTS", "HybridConfig", "HybridResult",
    "PerplexityCheckError", "Variant", "variant_perplexity",
    "attention_backend", "check_hybrid", "checks_table", "evaluate_targets", "file_targets", "latency_effect",
    "make_variant", "measure_speed", "ppl_paths_table", "prefill_table", "rows_table", "run_hybrid", "run_hybrid_seeds", "shape_benchmark",
    "snapshot_unselected", "targets_table",
]
