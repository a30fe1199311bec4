"""`deploy_bert`: the QAT BERT deployed on a CPU, torchao (eager, compiled) and ONNX Runtime side by side.

    python -m labkit.bench deploy --profile full [--models-from RUN_DIR] [--stages accuracy,latency]
        [--out RUN_DIR --resume] [--update-reference]

Two stages, each resumable, into a run folder runs/deploy_bert_cpu_<time>/ (result.json + result.jsonl, one line
per finished seed or latency table):
    accuracy  per seed (full: 0,1,2): train the FP32 classifier and its QAT INT8 copy with notebook 01's recipe
              (training may run on a GPU, --train-device) or load them from a `bench qat` run (--models-from);
              export the ONNX artifacts (labkit.deploy) and, on the CPU, measure accuracy/F1 of PyTorch FP32,
              torchao INT8 eager and compiled, ORT FP32, ORT QAT INT8 (three fusion levels and the exact
              rewrites) and ORT's quantize_dynamic peer, the sentences each labels differently from torchao eager,
              the ONNX INT8 weights against torchao's codes and the size on disk of every artifact;
    latency   once, on one set of models (timing does not depend on the weights): p10/p50/p90 at batch 1 and 8,
              length 128, for each thread count, rounds interleaved across variants; a torch.profiler table
              of the torchao INT8 model eager vs compiled (why eager INT8 is slow on a CPU) and ORT's profiler
              by op group of the lab's INT8 graphs and the peer (where their time goes).
The accuracy stage can run on a GPU machine and the latency stage later on the deployment CPU, by --resume of
the same run folder. Targets are judged over the seeds (mean, sd). --update-reference copies a complete
full-profile run with both stages to data/reference/deploy_bert_cpu.json. Exit status 0 complete, 1 failed,
2 bad arguments, 130 interrupted.
"""

from labkit.experiments.deploy_bert.agreement import label_agreement, seed_accuracy
from labkit.experiments.deploy_bert.driver import check, cpu_flags, finish, load_reference, run
from labkit.experiments.deploy_bert.int8_profile import ORT_OP_GROUPS, profile_int8, profile_ort
from labkit.experiments.deploy_bert.latency import latency_inputs, latency_table
from labkit.experiments.deploy_bert.options import (
    ARTIFACT_OF,
    ORT_VARIANTS,
    REFERENCE,
    STAGES,
    add_arguments,
    parse_stages,
    parse_threads,
)
from labkit.experiments.deploy_bert.targets import match_check, target_checks
from labkit.experiments.deploy_bert.training import train_models

__all__ = ["ARTIFACT_OF", "ORT_OP_GROUPS", "ORT_VARIANTS", "REFERENCE", "STAGES", "add_arguments", "check",
           "cpu_flags", "finish", "label_agreement", "latency_inputs", "latency_table", "load_reference", "match_check",
           "parse_stages", "parse_threads", "profile_int8", "profile_ort", "run", "seed_accuracy", "target_checks",
           "train_models"]
