"""Notebook 01's experiment: FP32 vs PTQ (dynamic, static) vs QAT INT8 on the embedded BERT (SST-2 / IMDB).

    cfg = QATBertConfig.for_profile("quick")     run_qat_bert(cfg) -> QATBertResult (one row per variant)
    target_checks(rows), accuracy_changes(rows), results_frame(rows), run_legacy(result)
`python -m labkit.bench qat` runs it and writes a result file (labkit.experiments.qat_bert.bench); each seed's
trained models are saved in its run folder: save_trained / load_trained (labkit.experiments.qat_bert.saved_models).
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
from labkit.experiments.qat_bert.saved_models import load_trained, save_trained, saved_stages

__all__ = [
    "DATASETS", "LABELS", "VARIANTS", "QATBertConfig", "QATBertResult", "accuracy_changes", "compile_settings",
    "evaluate", "file_targets", "latency_inputs", "load_data", "load_trained", "measure_latency", "results_frame",
    "run_legacy", "run_qat_bert", "save_trained", "saved_stages", "target_checks", "train",
]
