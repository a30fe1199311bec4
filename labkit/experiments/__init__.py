"""The experiments the notebooks and `python -m labkit.bench` run, one per lesson (what an experiment declares for
the runner: labkit.experiments.protocol). Each module's `__all__` is what its notebook calls:

    experiments.qat_bert         FP32 vs PTQ vs QAT INT8 on BERT / SST-2                (notebook 01, `bench qat`)
    experiments.deploy_bert      the QAT BERT on a CPU: torchao vs ONNX Runtime        (notebook 01b, `bench deploy`)
    experiments.attention        latency and memory against length per backend        (notebook 02, `bench attention`)
    experiments.kernels          attention kernels alone, TFLOP/s                      (notebook 02, `bench kernels`)
    experiments.triton_fa2       labkit's Triton FA2 checked and timed                 (notebook 02b, `bench triton-fa2`)
    experiments.hybrid           FA2 + selective INT8 against bf16                     (notebook 03, `bench hybrid`)
    experiments.fast8bit         INT8 / FP8 that pay on the GPU                        (notebook 03b, `bench fast8bit`)
    experiments.hybrid_qat_fsdp  QAT at 7B with FSDP2; its combined reference in       (notebook 04, `bench hybrid-qat`)
                                 experiments.hybrid_qat_fsdp_results
Import the one you need (`from labkit.experiments import hybrid`); nothing heavy loads here.
"""
