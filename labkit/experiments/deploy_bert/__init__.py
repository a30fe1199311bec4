"""Notebook 01b's experiment: the QAT BERT deployed on a CPU, torchao (eager, compiled) and ONNX Runtime side by side.

    train_models(cfg)                       the FP32 fine-tune and its QAT INT8 copy (notebook 01's recipe)
    ort_paths(artifacts), ORT_VARIANTS      the ONNX Runtime variants of `labkit.deploy.onnx_runtime.build_artifacts`
    latency_table(...), latency_inputs      p10/p50/p90 of every variant at one thread count, rounds interleaved
    profile_int8(...), profile_ort(...)     where INT8 inference spends its time (torch.profiler, ORT's profiler)
    cpu_flags(), targets(result)            the CPU's INT8 instruction sets; the deploy claims, judged
`python -m labkit.bench deploy` runs it over seeds into a run folder (labkit.experiments.deploy_bert.bench); the
committed full run is `labkit.results.load_reference("deploy_bert", "cpu")`.
"""

from labkit.experiments.deploy_bert.bench import targets
from labkit.experiments.deploy_bert.pipeline import (
    LABELS,
    ORT_OP_GROUPS,
    ORT_VARIANTS,
    cpu_flags,
    label_agreement,
    latency_table,
    ort_paths,
    profile_int8,
    profile_ort,
    seed_accuracy,
    train_models,
)
from labkit.experiments.qat_bert.pipeline import latency_inputs

__all__ = ["LABELS", "ORT_OP_GROUPS", "ORT_VARIANTS", "cpu_flags", "label_agreement", "latency_inputs", "latency_table",
           "ort_paths", "profile_int8", "profile_ort", "seed_accuracy", "targets", "train_models"]
