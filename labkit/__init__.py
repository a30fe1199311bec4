"""labkit: the helper package of the QAT + FlashAttention-2 lab.

Layers, lowest first; a module imports only from its own layer or below (checked by `lint-imports`):
    labkit.env, .data, .models, .metrics   foundations: environment and profile, datasets, models, metrics
    labkit.measure      timing, memory (out-of-memory, release, RSS), prefill and decode measurement
    labkit.results      result files (JSON, JSONL), device slugs, load_reference(experiment)
    labkit.quant        fake quantization, QAT, PTQ, layer selection, sensitivity, INT8 save/load
    labkit.attention    attention backends, kernel proof, tiled FA2, memory model, sweep, kernel benchmark
    labkit.lm           WikiText-2 blocks, perplexity, the causal-LM fine-tune loop
    labkit.train, labkit.deploy   training at scale and deployment
    labkit.plots        every figure, one palette
    labkit.widgets      layer picker and live sweep plot
    labkit.experiments  one per lesson (qat_bert, deploy_bert, attention, kernels, triton_fa2, hybrid, fast8bit,
                        hybrid_qat_fsdp): what the notebooks and the benchmarks run, and their targets
    labkit.bench        `python -m labkit.bench <experiment>`: the one runner of every experiment

Notebooks import the subpackages: `from labkit import attention, experiments, plots, quant, results, widgets`.
Nothing here downloads anything at import time.
"""

__version__ = "0.1.0"

import logging as _logging


class _KnownNoise(_logging.Filter):
    """Drops two import-time messages that say nothing about the lab's work: torchao's optional CUDA
    extensions (mxfp8, cutlass sm90a kernels, unused here) failing to load on a CPU build, and torch's
    deprecation note about torchao registering Enums with pytree."""

    def filter(self, record: _logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (
            (msg.startswith("Failed to load") and ("_C_mxfp8" in msg or "_C_cutlass" in msg))
            or "is an Enum subclass and is now natively supported" in msg
        )


for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).addFilter(_KnownNoise())

# Plotly's renderer is left to plotly: JupyterLab draws its JSON mimetype, and a saved notebook stays small. Only
# `make run`, whose HTML export needs plotly's HTML renderer, sets PLOTLY_RENDERER (plotly reads that variable).
