"""Notebook 01's experiment: FP32 vs PTQ (dynamic, static) vs QAT INT8 on the embedded BERT (SST-2 / IMDB).

    cfg = QATBertConfig.for_profile("quick")       the settings (also `bench qat`'s flags)
    load_data, batches, train, evaluate             the recipe's steps, called cell by cell in the notebook
    run_qat_bert(cfg) -> QATBertResult              every variant built, evaluated and timed (one row each)
    results_frame(rows), accuracy_changes(rows)     the tables; targets(result): the claims, judged
    run_legacy(result)                              the deprecated torch.ao recipe on the same model, measured
    save_trained / load_trained / saved_stages      the trained models a `bench qat` run keeps in its run folder
`python -m labkit.bench qat` runs it over seeds into a run folder (labkit.experiments.qat_bert.bench).
"""

from labkit.experiments.qat_bert.bench import targets
from labkit.experiments.qat_bert.pipeline import (
    DATASETS,
    LABELS,
    VARIANTS,
    QATBertConfig,
    QATBertResult,
    accuracy_changes,
    batches,
    compile_settings,
    evaluate,
    latency_inputs,
    load_data,
    results_frame,
    run_legacy,
    run_qat_bert,
    train,
    trained_pair,
)
from labkit.experiments.qat_bert.saved_models import SeedModels, cached_run, load_trained, save_trained, saved_stages

__all__ = [
    "DATASETS", "LABELS", "VARIANTS", "QATBertConfig", "QATBertResult", "accuracy_changes", "batches",
    "compile_settings", "evaluate", "latency_inputs", "load_data", "load_trained", "results_frame", "run_legacy",
    "run_qat_bert", "save_trained", "saved_stages", "targets", "train", "trained_pair", "SeedModels", "cached_run",
]
