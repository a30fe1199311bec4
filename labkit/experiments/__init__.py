"""The experiments the notebooks and `python -m labkit.bench` run, one per lesson:

    experiments.qat_bert    FP32 vs PTQ vs QAT INT8 on BERT / SST-2                (notebook 01, `bench qat`)
    experiments.attention   latency and memory against length per backend        (notebook 02, `bench attention`)
    experiments.kernels     attention kernels alone, TFLOP/s                      (notebook 02, `bench kernels`)
    experiments.hybrid      FA2 + selective INT8 against bf16                     (notebook 03, `bench hybrid`)
    experiments.deploy_bert the QAT BERT on a CPU: torchao vs ONNX Runtime        (notebook 01b, `bench deploy`)

Import the one you need (`from labkit.experiments import hybrid`); nothing heavy loads here.
"""
