"""Every figure of the lab (plotly), coloured from one palette (labkit.plots.palette).

    plots.attention     memory model parts, kernel TFLOP/s, the measured-vs-model offset    (notebook 02)
    plots.qat           the fake-quantizer demo and the accuracy / size / latency bars       (notebook 01)
    plots.hybrid        variants side by side, fine-tune losses, the big shape               (notebook 03)
    plots.sensitivity   the per-layer sensitivity heatmap                                    (notebook 03)
"""

from labkit.plots import attention, hybrid, palette, qat, sensitivity
from labkit.plots.attention import baseline_offset_gib, kernel_figure, memory_model_figure
from labkit.plots.hybrid import comparison_figure, loss_figure, shape_figure
from labkit.plots.qat import fake_quant_figure, results_figures, weight_grid_figure
from labkit.plots.sensitivity import sensitivity_heatmap

__all__ = [
    "attention", "baseline_offset_gib", "comparison_figure", "fake_quant_figure", "hybrid", "kernel_figure",
    "loss_figure", "memory_model_figure", "palette", "qat", "results_figures", "sensitivity",
    "sensitivity_heatmap", "shape_figure", "weight_grid_figure",
]
