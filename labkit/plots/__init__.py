"""Every figure of the lab (plotly), coloured from one palette (labkit.plots.palette).

    plots.attention     memory model parts, kernel TFLOP/s, the measured-vs-model offset    (notebook 02)
    plots.qat           the fake-quantizer demo and the accuracy / size / latency bars       (notebook 01)
    plots.hybrid        variants side by side, fine-tune losses, the big shape               (notebook 03)
    plots.sensitivity   the per-layer sensitivity heatmap                                    (notebook 03)
    plots.tiling        one step of the tiled forward, the causal tile map                   (notebooks 02, 02b)
    plots.int8          the INT8 kernel's launch grid, eager vs compiled kernel timelines    (notebook 03b)
    plots.training      the training-memory breakdown per GPU, per phase                     (notebook 04)
"""

from labkit.plots import attention, hybrid, int8, palette, qat, sensitivity, tiling, training
from labkit.plots.attention import baseline_offset_gib, kernel_figure, memory_model_figure
from labkit.plots.hybrid import comparison_figure, loss_figure, shape_figure
from labkit.plots.qat import fake_quant_figure, results_figures, weight_grid_figure
from labkit.plots.int8 import kernel_timeline_figure, launch_grid_figure
from labkit.plots.sensitivity import sensitivity_heatmap
from labkit.plots.tiling import causal_tile_map, step_figure
from labkit.plots.training import training_memory_figure

__all__ = [
    "attention", "baseline_offset_gib", "causal_tile_map", "comparison_figure", "fake_quant_figure", "hybrid", "int8",
    "kernel_figure", "kernel_timeline_figure", "launch_grid_figure", "loss_figure", "memory_model_figure", "palette",
    "qat", "results_figures", "sensitivity", "sensitivity_heatmap", "shape_figure", "step_figure", "tiling",
    "training", "training_memory_figure", "weight_grid_figure",
]
