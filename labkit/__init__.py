"""labkit: the helper package of the QAT + FlashAttention-2 lab.

Submodules, one job each:
    labkit.env        environment report and run profile (quick / full)
    labkit.data       SST-2, IMDB, WikiText-2 from a local folder or the hub
    labkit.models     embedded and hub models, random-weight model shapes
    labkit.metrics    accuracy and F1 through `evaluate`, offline
    labkit.quant      fake quantization, QAT, PTQ, layer selection, INT8 save/load
    labkit.attention  attention backends (eager, sdpa, fa2, flash-attn, cudnn), memory model
    labkit.bench      timing, sweeps, kernel benchmark, benchmark commands
    labkit.widgets    layer picker and live VRAM plot
    labkit.hybrid     sensitivity analysis and the FA2 + INT8 hybrid pipeline

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


def _plotly_renders_in_exported_html() -> None:
    """In a Jupyter kernel plotly defaults to its JSON mimetype alone, which JupyterLab draws but an HTML export
    (`make run`) drops. Add plotly's HTML renderer (plotly.js embedded, so it works offline), unless the user
    chose a renderer with PLOTLY_RENDERER."""
    import os
    import sys

    if "ipykernel" not in sys.modules or os.environ.get("PLOTLY_RENDERER"):
        return
    try:
        import plotly.io as pio
    except ImportError:
        return
    if pio.renderers.default == "plotly_mimetype":
        pio.renderers.default = "plotly_mimetype+notebook"


_plotly_renders_in_exported_html()
