"""Notebook 01's experiment: FP32 vs PTQ (dynamic, static) vs QAT INT8 on the embedded BERT (SST-2 / IMDB).

    cfg = QATBertConfig.for_profile("quick")     run_qat_bert(cfg) -> QATBertResult (one row per variant)
    target_checks(rows), accuracy_changes(rows), results_frame(rows), run_legacy(result)
`python -m labkit.bench qat` runs it and writes a result file (labkit.experiments.qat_bert.bench).
"""

from labkit.experiments.qat_bert.latency import compile_settings, latency_inputs, measure_latency
from labkit.experiments.qat_bert.pipeline import (
    DATASETS,
    LABELS,
    VARIANTS,
    QATBertConfig,
    QATBertResult,
    evaluate,
    load_data,
    run_qat_bert,
    train,
)
from labkit.experiments.qat_bert.report import (
    accuracy_changes,
    file_targets,
    results_frame,
    run_legacy,
    target_checks,
)

__all__ = [
    "DATASETS", "LABELS", "VARIANTS", "QATBertConfig", "QATBertResult", "accuracy_changes", "compile_settings",
    "evaluate", "latency_inputs", "load_data", "measure_latency", "results_frame", "run_legacy", "run_qat_bert",
    "target_checks", "train", "file_targets",
]
