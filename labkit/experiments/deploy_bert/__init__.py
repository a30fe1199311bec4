"""`deploy_bert`: the QAT BERT deployed on a CPU, torchao (eager, compiled) and ONNX Runtime side by side.

    python -m labkit.experiments.deploy_bert --profile full --threads 1,all [--write-reference]

Trains the FP32 classifier and its QAT INT8 copy with notebook 01's pipeline and budget (quick or full
profile), exports the ONNX artifacts (labkit.deploy), then measures in ONE process, interleaving rounds
across variants so background load hits every variant alike:
    accuracy/F1 on the eval set of PyTorch FP32, torchao INT8, ORT FP32, ORT QAT INT8 and ORT's
    quantize_dynamic peer; the ONNX INT8 weights against torchao's codes; size on disk of every artifact;
    latency p10/p50/p90 at batch 1 and 8, length 128, for each thread count; a torch.profiler table of the
    torchao INT8 model eager vs compiled (why eager INT8 is slow on a CPU).
Writes `build/deploy_bert_cpu.json` by default, `data/reference/deploy_bert_cpu.json` only with
--write-reference; the file is rewritten after every measurement. Exits non-zero when a step failed.
"""

from labkit.experiments.deploy_bert.driver import cpu_flags, load_reference, run
from labkit.experiments.deploy_bert.int8_profile import profile_int8
from labkit.experiments.deploy_bert.latency import latency_inputs, latency_table
from labkit.experiments.deploy_bert.options import ARTIFACT_OF, ORT_VARIANTS, REFERENCE, add_arguments, parse_threads
from labkit.experiments.deploy_bert.targets import target_checks
from labkit.experiments.deploy_bert.training import train_models

__all__ = ["ARTIFACT_OF", "ORT_VARIANTS", "REFERENCE", "add_arguments", "cpu_flags", "latency_inputs", "latency_table",
           "load_reference", "parse_threads", "profile_int8", "run", "target_checks", "train_models"]
